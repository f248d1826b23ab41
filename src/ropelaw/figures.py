"""Every figure, drawn from the result tables alone (so they can be regenerated at will).

    ropelaw figures KIND --evals results/*/*/*/eval.csv --cells results/law/cells.csv \
        --fit results/law/fit.csv --bootstrap results/law/bootstrap.csv [--passkey results/law/passkey.csv] \
        --study NAME [--model M --tune-len T --method X --base B] --out FILE.png FILE.pdf

One KIND per call (one Snakemake job per figure, so the report can label each by its cell):
- `ppl_vs_length` (per model and T_tune): perplexity and accuracy against context length, bases
  <= beta0 left and > beta0 right (the paper's two sweeps), the untuned model and the
  training-free methods dashed in both, log-scaled attention dotted; seeds pooled, with a band
  from the lowest to the highest seed.
- `passkey_vs_length` (where passkey retrieval ran): perplexity above retrieval accuracy.
- `passkey_heatmap` (per cell): retrieval accuracy, depth x length, its measured bound dashed.
- `bound_vs_base`: the theory's T_extra against the measured bounds with their 90% intervals,
  censored bounds as open triangles with arrows, the fitted line with its bootstrap band.
- `critical_dimension`: the period 2*pi*beta^(2n/d) of every dimension pair against T_train.
Every figure names its evaluation set; the law's figures name the bound rule and its factor.
Styling (colours per base, tick labels, fixed file metadata) lives in `ropelaw.plotstyle`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.backend_bases import FigureCanvasBase

from ropelaw import UserError, methods, provenance, theory
from ropelaw.cells import heatmap_figure, length_figure
from ropelaw.law import GROUP, PASSKEY_COLUMNS, load_evals, read_table
from ropelaw.methods import ON_TUNED
from ropelaw.plotstyle import (BETA, BETA0, T_EXTRA, T_TRAIN, T_TUNE, base_colors, base_label, interval_text,
                               length_label, log_axis, new_figure, save, suptitle, wrap)

UNTUNED = "untuned"
KINDS = ("ppl_vs_length", "passkey_vs_length", "passkey_heatmap", "bound_vs_base", "critical_dimension")
METRICS = {"ppl": "perplexity", "accuracy": "next-token accuracy", "retrieval": "passkey retrieval accuracy"}
CONVENTION = "targets 1..L-1, no BOS"  # the evaluation's convention where eval.csv does not name one


@dataclass(frozen=True)
class Tables:
    evals: pd.DataFrame  # prefix rows, seeds pooled
    cells: pd.DataFrame
    fit: pd.DataFrame | None = None
    boot: pd.DataFrame | None = None
    passkey: pd.DataFrame | None = None

    @property
    def colors(self) -> dict:
        return base_colors(self.cells.base)


def prefix_rows(evals: pd.DataFrame) -> pd.DataFrame:
    """Prefix perplexity and accuracy per cell and length, the seeds of a cell pooled (sums, then division), with
    each metric's lowest and highest value over the seeds (`ppl_lo`, `ppl_hi`, ...) and `n_seeds`."""
    prefix = evals[evals.scope == "prefix"]
    if "seed" not in prefix.columns:
        prefix = prefix.assign(seed=np.nan)
    keys = GROUP + ["end"]
    sums = prefix.groupby(keys, as_index=False)[["nll_sum", "tokens", "correct"]].sum()
    first = prefix.drop_duplicates(keys)[keys + ["head_dim", "train_len", "orig_base", "eval_set"]
                                         + [c for c in ("convention",) if c in prefix.columns]]
    table = first.merge(sums, on=keys)
    per_seed = prefix.groupby(keys + ["seed"], as_index=False, dropna=False)[["nll_sum", "tokens", "correct"]].sum()
    per_seed = per_seed.assign(ppl=np.exp(per_seed.nll_sum / per_seed.tokens), accuracy=per_seed.correct / per_seed.tokens)
    spread = per_seed.groupby(keys, as_index=False).agg(
        ppl_lo=("ppl", "min"), ppl_hi=("ppl", "max"), accuracy_lo=("accuracy", "min"), accuracy_hi=("accuracy", "max"),
        n_seeds=("ppl", "size"))
    table = table.merge(spread, on=keys)
    return table.assign(ppl=np.exp(table.nll_sum / table.tokens), accuracy=table.correct / table.tokens, scope="prefix")


def convention(tables: Tables) -> str:
    column = tables.evals.get("convention")
    # rows of passkey lengths beyond the evaluated ones (with_retrieval's outer merge) have none
    return CONVENTION if column is None else ", ".join(sorted(column.dropna().astype(str).unique()))


def rule_note(first: pd.Series) -> str:
    """The bound rule of a law table's row, as the figures state it."""
    return f"bound: law.estimator = {first.estimator}, law.factor = {first.factor:g}; 90% bootstrap intervals"


def _curves(ax, data, metric, colors, tune_len):
    """One line per tuned cell (its seeds pooled); where a cell has several seeds, a band from their lowest to
    their highest value."""
    for base in sorted(data.base.unique()):
        for method, style in (("base", "-"), ("base_logn", ":")):
            part = data[(data.base == base) & (data.method == method)].dropna(subset=[metric]).sort_values("end")
            if len(part):
                extra = " + log-scaled attention" if method == "base_logn" else ""
                ax.plot(part.end, part[metric], ls=style, marker="o", ms=3, color=colors[int(base)],
                        label=f"{BETA} = {base_label(base)}{extra}")
                if f"{metric}_lo" in part and "n_seeds" in part and (part.n_seeds > 1).any():
                    ax.fill_between(part.end, part[f"{metric}_lo"], part[f"{metric}_hi"], color=colors[int(base)],
                                    alpha=0.2, lw=0)


def _seeds_note(data: pd.DataFrame) -> list[str]:
    """The title's line on seed bands, where any cell has several seeds."""
    counts = sorted(data.n_seeds[data.n_seeds > 1].unique()) if "n_seeds" in data else []
    return [f"bands: lowest to highest of {', '.join(str(int(n)) for n in counts)} seeds (lines: seeds pooled)"] \
        if counts else []


def _references(ax, prefix, metric, orig_base, kinds: dict, colors: dict, tune_len: int, in_panel=lambda base: True):
    """The untuned model and the other methods, in every panel. A method that trains its own model (a variant of
    kind base, or a method like PI) has one line per base tuned at `tune_len`, in its base's colour and only in
    the panel its base belongs to (`in_panel`); a training-free method one line per base, in every panel."""
    untuned = prefix[prefix.method == UNTUNED].dropna(subset=[metric]).sort_values("end")
    if len(untuned):
        ax.plot(untuned.end, untuned[metric], "k--", marker="x", ms=4, label=f"untuned ({BETA} = {base_label(orig_base)})")
    baselines = prefix[~prefix.method.isin((*ON_TUNED, UNTUNED))].dropna(subset=[metric])
    names = sorted(baselines.method.unique())
    for method, color, marker in zip(names, sns.color_palette("Dark2", len(names)), "sv^Dp*h"):
        kind = kinds.get(method, method)
        trained = methods.trains(kind) or kind in ON_TUNED  # a base_logn variant evaluates a tuned model
        rows = baselines[(baselines.method == method) & (baselines.tune_len == tune_len if trained else True)]
        for base, part in rows.groupby("base", sort=True):  # a variant may tune several bases: one line each
            if trained and not in_panel(base):
                continue
            logn = " + log-scaled attention" if kind == "base_logn" else ""
            note = f"{BETA} = {base_label(base)}, tuned{logn}" if trained else "training-free"
            part = part.sort_values("end")
            ax.plot(part.end, part[metric], ls=":" if logn else "--", marker=marker, ms=3,
                    color=colors[int(base)] if trained else color, label=f"{method} ({note})")


def beta0_label(beta0: float) -> str:
    """beta0 to one decimal: rounded to an integer, SmolLM2's 304,201.7 at 16K read 304,202, above its own
    cell at the floor (304,201), which the panel "beta <= beta0" holds."""
    return f"{beta0:,.0f}" if float(beta0).is_integer() else f"{beta0:,.1f}"


def ppl_vs_length(tables: Tables, model: str, tune_len: int, study: str, metrics=("ppl", "accuracy")):
    prefix = tables.evals[tables.evals.model == model]
    tuned = prefix[prefix.method.isin(ON_TUNED) & (prefix.tune_len == tune_len)]
    info = tables.cells[tables.cells.model == model].iloc[0]
    kinds = dict(zip(tables.cells.method, tables.cells.get("kind", tables.cells.method).fillna(tables.cells.method)))
    beta0 = theory.critical_base(info.train_len, tune_len, info.orig_base)
    fig, axes = new_figure(len(metrics), 2, (12, 3.8 * len(metrics) + 0.6), sharex=True, sharey="row")
    below = lambda base: base <= beta0  # noqa: E731
    panels = [(f"{BETA} $\\leq$ {BETA0} = {beta0_label(beta0)}", below),
              (f"{BETA} > {BETA0} = {beta0_label(beta0)}", lambda base: not below(base))]
    for col, (title, in_panel) in enumerate(panels):
        data = tuned[tuned.base.map(in_panel).astype(bool)]
        for row, metric in enumerate(metrics):
            ax = axes[row, col]
            _curves(ax, data, metric, tables.colors, tune_len)
            _references(ax, prefix, metric, info.orig_base, kinds, tables.colors, tune_len, in_panel)
            ax.axvline(info.train_len, color="grey", lw=1, ls=":")
            if tune_len != info.train_len:
                ax.axvline(tune_len, color="grey", lw=1, ls="-.")
            if col == 1 and metric in ("ppl", "retrieval"):
                for base in sorted(data.base.unique()):
                    bound = theory.t_extra(base, info.head_dim, info.train_len, info.orig_base)
                    ax.axvline(bound, color=tables.colors[int(base)], lw=0.8, alpha=0.6)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log" if metric == "ppl" else "linear")
            if metric == "retrieval":
                ax.set_ylim(-0.05, 1.05)
            ax.set_ylabel(METRICS[metric])
            ax.grid(True, which="major", alpha=0.3)
        axes[0, col].set_title(title, fontsize=10)
        axes[-1, col].set_xlabel("context length (tokens)")
        if axes[0, col].get_legend_handles_labels()[1]:
            axes[0, col].legend(fontsize=7, loc="upper left")
        else:  # e.g. a part of a study with small bases only: say why the panel is empty
            axes[0, col].text(0.5, 0.5, "no cell in this panel", transform=axes[0, col].transAxes, ha="center",
                              va="center", color="grey")
    log_axis(axes[0, 0].xaxis, "length")
    if "ppl" in metrics:
        log_axis(axes[list(metrics).index("ppl"), 0].yaxis, "value")
    suptitle(fig, [
        f"{study}: {model}, {T_TRAIN} = {length_label(info.train_len)}, {T_TUNE} = {length_label(tune_len)}; "
        f"evaluated on {info.eval_set} ({convention(tables)})",
        f"dotted: {T_TRAIN}; dash-dotted: {T_TUNE}; thin lines (right): predicted bound {T_EXTRA}",
        *_seeds_note(tuned)], 12)
    return fig


def with_retrieval(evals: pd.DataFrame, passkey: pd.DataFrame) -> pd.DataFrame:
    """Prefix rows with a `retrieval` column: passkey accuracy over depths, by length."""
    sums = passkey.groupby(GROUP + ["length"], as_index=False)[["correct", "prompts"]].sum()
    retrieval = sums.assign(retrieval=sums.correct / sums.prompts).rename(columns={"length": "end"})
    return evals.merge(retrieval[GROUP + ["end", "retrieval"]], on=GROUP + ["end"], how="outer").assign(scope="prefix")


def passkey_heatmap(passkey: pd.DataFrame, cell: pd.Series, study: str):
    """Retrieval accuracy of one cell, depth x length; dashed: its measured perplexity bound."""
    grid = passkey.pivot(index="depth", columns="length", values="accuracy")
    grid.columns = [length_label(c) for c in grid.columns]
    lengths = passkey.length.drop_duplicates().sort_values().to_numpy()
    width = max(5.0, 2.5 + 0.9 * grid.shape[1])
    fig, axes = new_figure(1, 1, (width, 2.6 + 0.45 * grid.shape[0]))
    ax = axes[0, 0]
    sns.heatmap(grid, vmin=0, vmax=1, cmap="RdYlGn", annot=True, fmt=".2f", ax=ax, cbar_kws={"label": "retrieval accuracy"})
    columns_within = int((lengths <= cell.measured_bound).sum())
    if 0 < columns_within < grid.shape[1]:
        ax.axvline(columns_within, color="k", ls="--", lw=1.5)
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("depth of the key")
    sign = {"right": r"$\geq$ ", "left": r"$\leq$ "}.get(cell.censored, "")
    predicted = "" if np.isnan(cell.predicted_bound) else f", predicted {length_label(cell.predicted_bound)}"
    ax.set_title(wrap([
        f"{study}: {cell.model}, {cell.method}, {BETA} = {base_label(cell.base)}, {T_TUNE} = {length_label(cell.tune_len)}",
        f"prompts per square: {int(passkey.prompts.max())}; perplexity bound {sign}{length_label(cell.measured_bound)} "
        f"(dashed){predicted}", f"{rule_note(cell)}; filler: {cell.eval_set}"], width, 8), fontsize=8)
    return fig


def _fit_band(ax, fit: pd.Series, boot: pd.DataFrame | None, bases: np.ndarray):
    """The fitted line over the fitted bases, with the pointwise 90% band of the bootstrap fits."""
    grid = np.geomspace(bases.min(), bases.max(), 100)
    label = f"fit: slope {interval_text(fit.fitted_slope, fit.fitted_slope_lo, fit.fitted_slope_hi)}"
    ax.plot(grid, np.exp(fit.fitted_intercept) * grid ** fit.fitted_slope, color="tab:blue", lw=1.5, label=label)
    if boot is not None:
        reps = boot[(boot.model == fit.model) & (boot.method == fit.method) & (boot.tune_len == fit.tune_len)].dropna()
        if len(reps):
            lines = np.exp(reps.intercept.to_numpy()[:, None] + reps.slope.to_numpy()[:, None] * np.log(grid))
            lo, hi = np.percentile(lines, [5, 95], axis=0)
            ax.fill_between(grid, lo, hi, color="tab:blue", alpha=0.15, lw=0, label="fit: 90% bootstrap band")


def _bounds(ax, group: pd.DataFrame, colors: dict):
    """Measured bounds with their intervals; censored ones open, with an arrow the way the bound can go."""
    for row in group.itertuples():
        color = colors[int(row.base)]
        if row.censored == "no":
            yerr = [[row.measured_bound - row.bound_lo], [row.bound_hi - row.measured_bound]]
            ax.errorbar([row.base], [row.measured_bound], yerr=yerr, fmt="o", color=color, ms=6, capsize=3, zorder=3)
            continue
        up = row.censored == "right"
        ax.scatter([row.base], [row.measured_bound], marker="^" if up else "v", s=60, facecolors="none",
                   edgecolors=[color], linewidths=1.5, zorder=3)
        tip = row.measured_bound * (1.6 if up else 1 / 1.6)
        ax.annotate("", xy=(row.base, tip), xytext=(row.base, row.measured_bound), annotation_clip=False,
                    arrowprops=dict(arrowstyle="->", color=color, lw=1.2))
        ax.update_datalim([(row.base, tip * (1.2 if up else 1 / 1.2))])


def bound_vs_base(tables: Tables, study: str):
    tuned = tables.cells[tables.cells.method == "base"]
    groups = list(tuned.groupby(["model", "tune_len"], sort=True))
    width = 6.2 * max(len(groups), 1)
    fig, axes = new_figure(1, max(len(groups), 1), (width, 6.4))
    if not groups:  # e.g. a part whose cells are all variants (part a's learning rates): say so, not empty axes
        axes[0, 0].axis("off")
        others = ", ".join(sorted(tables.cells.method.unique()))
        axes[0, 0].text(0.5, 0.5, f"no cell of method 'base' in this study (its methods: {others}):\n"
                        "no measured bound to set against the theory", ha="center", va="center", wrap=True)
    for ax, ((model, tune_len), group) in zip(axes[0], groups):
        first = group.iloc[0]
        grid = np.geomspace(max(first.beta0, group.base.min() / 2), group.base.max() * 2, 200)
        ax.plot(grid, [theory.t_extra(b, first.head_dim, first.train_len, first.orig_base) for b in grid],
                "k-", label=f"theory: {T_EXTRA}, slope {first.d_extra / first.head_dim:.3f}")
        ax.axhline(tune_len, color="grey", ls=":", label=T_TUNE)
        ax.axvline(first.beta0, color="grey", ls="--", label=f"{BETA0} = {beta0_label(first.beta0)}")
        fit = None if tables.fit is None else tables.fit[(tables.fit.model == model) & (tables.fit.method == "base")
                                                         & (tables.fit.tune_len == tune_len)]
        fitted = group[(group.regime == "larger") & (group.censored == "no")]
        if fit is not None and len(fit) and np.isfinite(fit.iloc[0].fitted_slope):
            _fit_band(ax, fit.iloc[0], tables.boot, fitted.base.to_numpy(dtype=float))
            c = fit.iloc[0]
            ax.plot([], [], " ", label=f"C = measured/predicted: {interval_text(c.c_geomean, c.c_geomean_lo, c.c_geomean_hi)}")
        _bounds(ax, group, tables.colors)
        ax.autoscale_view()
        ax.plot([], [], "o", color="grey", label="measured bound, 90% interval")
        ax.plot([], [], "^", mfc="none", color="grey", label="censored (arrow: the bound lies beyond)")
        ax.set_xscale("log")
        ax.set_yscale("log", base=2)
        log_axis(ax.xaxis, "base")
        log_axis(ax.yaxis, "length")
        ax.set_xlabel(f"rotary base {BETA}")
        ax.set_ylabel("extrapolation bound (tokens)")
        ax.set_title(f"{model}, {T_TUNE} = {length_label(tune_len)}", fontsize=10)
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2)
    suptitle(fig, [f"{study}: predicted vs measured bound; evaluated on {tables.cells.eval_set.iloc[0]} "
                   f"({convention(tables)})", rule_note(tables.cells.iloc[0])], width)
    return fig


def critical_dimension(tables: Tables, study: str):
    models = list(tables.cells.groupby("model", sort=True))
    fig, axes = new_figure(1, len(models), (7.5 * len(models), 4.8))
    for ax, (model, group) in zip(axes[0], models):
        first = group.iloc[0]
        d, t_train, b0 = int(first.head_dim), int(first.train_len), float(first.orig_base)
        d_extra = theory.critical_dim(d, t_train, b0)
        for base in sorted({int(b0), *group.base.astype(int)}):
            style = dict(lw=2.5, color="k") if base == int(b0) else dict(lw=1, color=tables.colors[base])
            ax.plot(np.arange(d // 2), theory.periods(d, base), label=f"{BETA} = {base_label(base)}", **style)
        ax.axhline(t_train, color="red", ls="--", label=f"{T_TRAIN} = {length_label(t_train)}")
        ax.axvline(d_extra / 2 - 0.5, color="red", ls=":", label=f"$d_\\mathrm{{extra}}$ = {d_extra} (pair {d_extra // 2})")
        ax.set_yscale("log")
        log_axis(ax.yaxis, "value")
        ax.set_xlabel("dimension pair n (dims 2n, 2n+1)")
        ax.set_ylabel(f"period $2\\pi\\beta^{{2n/d}}$ (tokens)")
        ax.set_title(f"{model}: d = {d}; pairs left of the dotted line complete a period within {T_TRAIN}", fontsize=9)
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
    suptitle(fig, [f"{study}: the critical dimension"], 7.5 * len(models))
    return fig


def _seed_rows(passkey: pd.DataFrame, seed: int | None) -> pd.DataFrame:
    """The passkey rows of one seed of a cell (the rows without a seed when `seed` is None)."""
    if "seed" not in passkey.columns:
        return passkey
    return passkey[passkey.seed.isna()] if seed is None else passkey[passkey.seed == seed]


def draw(kind: str, tables: Tables, study: str, model=None, tune_len=None, method=None, base=None, seed=None):
    """One figure of `kind` (KINDS); model/tune_len pick a ppl_vs_length, with method/base (and seed) a heatmap's cell."""
    if kind in ("ppl_vs_length", "passkey_vs_length"):
        tuned = tables.cells[tables.cells.method != UNTUNED]  # as figure_names() names these figures
        pairs = sorted({(m, int(t)) for m, t in tuned[["model", "tune_len"]].itertuples(index=False)})
        if (model, int(tune_len)) not in pairs:
            raise UserError(f"--model {model} --tune-len {tune_len}: no tuned cell of the cells table has them; "
                            f"it has {', '.join(f'{m} at {t}' for m, t in pairs) or 'none'}")
        if kind == "ppl_vs_length":
            return ppl_vs_length(tables, model, int(tune_len), study)
        both = Tables(with_retrieval(tables.evals, tables.passkey), tables.cells)
        return ppl_vs_length(both, model, int(tune_len), study, metrics=("ppl", "retrieval"))
    if kind == "passkey_heatmap":
        key = (model, method, int(base), int(tune_len))
        part = _seed_rows(tables.passkey, seed).merge(tables.cells, on=GROUP)
        part = part[[tuple(r) == key for r in part[GROUP].itertuples(index=False)]]
        if part.empty:
            raise UserError(f"no passkey rows for cell {key} in the passkey table")
        return passkey_heatmap(part, part.iloc[0], study)
    if kind == "bound_vs_base":
        return bound_vs_base(tables, study)
    return critical_dimension(tables, study)


def figure_names(cells: pd.DataFrame, passkey: pd.DataFrame | None) -> dict[str, dict]:
    """{file stem: draw() arguments} of every figure the tables make (the workflow's names)."""
    names = {"bound_vs_base": {"kind": "bound_vs_base"}, "critical_dimension": {"kind": "critical_dimension"}}
    tuned = cells[cells.method != UNTUNED][["model", "tune_len"]].drop_duplicates()
    kinds = ["ppl_vs_length"] + (["passkey_vs_length"] if passkey is not None and len(passkey) else [])
    for kind in kinds:
        for model, tune_len in tuned.itertuples(index=False):
            names[length_figure(kind, model, tune_len)] = dict(kind=kind, model=model, tune_len=tune_len)
    if passkey is not None and len(passkey):
        keys = passkey.assign(seed=passkey.get("seed"))[GROUP + ["seed"]].drop_duplicates()
        for model, method, base, tune_len, seed in keys.itertuples(index=False):
            seed = None if pd.isna(seed) else int(seed)
            names[heatmap_figure(model, method, base, tune_len, seed)] = dict(
                kind="passkey_heatmap", model=model, method=method, base=base, tune_len=tune_len, seed=seed)
    return names


def add_arguments(parser) -> None:
    parser.add_argument("kind", choices=KINDS, help="which figure")
    parser.add_argument("--evals", required=True, nargs="+", help="per-cell eval.csv files")
    parser.add_argument("--cells", required=True, help="results/law/cells.csv")
    parser.add_argument("--fit", help="results/law/fit.csv (the fitted line of bound_vs_base)")
    parser.add_argument("--bootstrap", help="results/law/bootstrap.csv (the fit's band)")
    parser.add_argument("--passkey", help="results/law/passkey.csv (retrieval figures)")
    parser.add_argument("--study", default="ropelaw", help="study name for titles")
    for name, kind in (("--model", str), ("--method", str), ("--base", int), ("--tune-len", int)):
        parser.add_argument(name, type=kind, help="the figure's model / cell (per-model and per-cell kinds)")
    parser.add_argument("--seed-suffix", default="", help="a heatmap's seed as in its cell path: '' or _seed{s}")
    parser.add_argument("--out", required=True, nargs="+", help="output files; the format is the suffix")


def run(args) -> None:
    formats = FigureCanvasBase.get_supported_filetypes()
    for out in args.out:
        if Path(out).suffix.lstrip(".") not in formats:
            raise UserError(f"--out {out}: the suffix names the format; use one of .{', .'.join(sorted(formats))}")
        provenance.check_out(out, "--out", f"{args.kind}.png")
    law = "run the law rule (again)"
    read = lambda path, columns: read_table(path, columns, law) if path else None  # noqa: E731
    tables = Tables(prefix_rows(load_evals(args.evals)), read(args.cells, GROUP), read(args.fit, ["model", "method", "tune_len"]),
                    read(args.bootstrap, ["model", "method", "tune_len"]), read(args.passkey, PASSKEY_COLUMNS))
    needs = {"ppl_vs_length": ("model", "tune_len"), "passkey_vs_length": ("model", "tune_len", "passkey"),
             "passkey_heatmap": ("model", "method", "base", "tune_len", "passkey")}.get(args.kind, ())
    missing = [f"--{n.replace('_', '-')}" for n in needs if getattr(args, n) is None]
    if missing:
        raise UserError(f"ropelaw figures {args.kind} needs {' '.join(missing)}")
    if args.seed_suffix and not re.fullmatch(r"_seed\d+", args.seed_suffix):
        raise UserError(f"--seed-suffix must be empty or _seed<number> (got {args.seed_suffix!r})")
    seed = int(args.seed_suffix.removeprefix("_seed")) if args.seed_suffix else None
    fig = draw(args.kind, tables, args.study, args.model, args.tune_len, args.method, args.base, seed)
    for path in save(fig, args.out):
        print(path)
