"""Every figure, drawn from the result tables alone (so they can be regenerated at will).

    ropelaw figures --evals results/*/*/*/eval.csv --cells results/law/cells.csv \
        [--passkey results/law/passkey.csv] --study NAME --out-dir results/figures --formats png pdf

- `ppl_vs_length`: perplexity and accuracy against context length, one column
  for bases <= beta0 and one for bases > beta0 (the paper's two sweeps), the
  untuned model and the training-free methods dashed in both, log-scaled
  attention on a tuned base dotted; one figure per (model, T_tune).
- `passkey_vs_length` (where passkey retrieval ran): the same panels with
  perplexity above passkey retrieval accuracy (mean over depths), to read together.
- `passkey_heatmap`: retrieval accuracy of one cell, depth x length, with its
  measured perplexity bound marked; one figure per cell.
- `bound_vs_base`: the theory's T_extra = 2*pi*beta^(d_extra/d) against the
  measured bound of every cell (censored bounds drawn as up-triangles).
- `critical_dimension`: the period 2*pi*beta^(2n/d) of every dimension pair
  against T_train, for the original base and the grid's bases.
Every figure names its evaluation set (the Books3 substitute, where one is used).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from ropelaw import provenance, theory  # noqa: E402
from ropelaw.law import GROUP, load_evals  # noqa: E402
from ropelaw.methods import ON_TUNED  # noqa: E402

UNTUNED = "untuned"
METRICS = {"ppl": "perplexity", "accuracy": "next-token accuracy", "retrieval": "passkey retrieval accuracy"}


def _save(fig, out_dir: Path, name: str, formats: list[str]) -> list[Path]:
    paths = []
    for fmt in formats:
        path = out_dir / f"{name}.{fmt}"
        with provenance.atomic_path(path) as tmp:
            fig.savefig(tmp, format=fmt, dpi=150, bbox_inches="tight")
        paths.append(path)
    plt.close(fig)
    return paths


def _base_label(base: int) -> str:
    """20, 10,000 below 1e5; 1.5e5, 1e6 above."""
    if base < 100000:
        return f"{base:,}"
    mantissa, exponent = f"{base:.2e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def ppl_vs_length(evals: pd.DataFrame, cells: pd.DataFrame, model: str, tune_len: int, study: str, metrics=("ppl", "accuracy")):
    prefix = evals[(evals.scope == "prefix") & (evals.model == model)]
    untuned = prefix[prefix.method == UNTUNED]
    # Training-free methods act on the untuned model: references in both panels, like it.
    baselines = prefix[~prefix.method.isin((*ON_TUNED, UNTUNED))]
    tuned = prefix[prefix.method.isin(ON_TUNED) & (prefix.tune_len == tune_len)]
    info = cells[(cells.model == model)].iloc[0]
    beta0 = theory.critical_base(info.train_len, tune_len, info.orig_base)
    fig, axes = plt.subplots(len(metrics), 2, figsize=(12, 4 * len(metrics)), sharex=True, sharey="row", squeeze=False)
    panels = [("smaller", tuned[tuned.base <= beta0], "Blues_r"), ("larger", tuned[tuned.base > beta0], "Reds")]
    for col, (regime, data, palette) in enumerate(panels):
        bases = sorted(data.base.unique())
        colors = dict(zip(bases, sns.color_palette(palette, max(len(bases), 1) + 1)))
        for row, metric in enumerate(metrics):
            ax = axes[row, col]
            for base in bases:
                for method, style in (("base", "-"), ("base_logn", ":")):
                    part = data[(data.base == base) & (data.method == method)].dropna(subset=[metric]).sort_values("end")
                    if len(part):
                        label = f"base {_base_label(base)}" + (" + log-scaled attention" if method == "base_logn" else "")
                        ax.plot(part.end, part[metric], ls=style, marker="o", ms=3, color=colors[base], label=label)
            if len(untuned):
                part = untuned.dropna(subset=[metric]).sort_values("end")
                ax.plot(part.end, part[metric], "k--", marker="x", ms=4, label=f"untuned (base {_base_label(int(info.orig_base))})")
            groups = list(baselines.groupby("method", sort=True))
            for (method, part), color, marker in zip(groups, sns.color_palette("Dark2", len(groups)), "sv^Dp*h"):
                part = part.dropna(subset=[metric]).sort_values("end")
                ax.plot(part.end, part[metric], ls="--", marker=marker, ms=3, color=color, label=f"{method} (untuned, training-free)")
            ax.axvline(info.train_len, color="grey", lw=1, ls=":")
            if tune_len != info.train_len:
                ax.axvline(tune_len, color="grey", lw=1, ls="-.")
            if regime == "larger" and metric in ("ppl", "retrieval"):
                for base in bases:
                    bound = theory.t_extra(base, info.head_dim, info.train_len, info.orig_base)
                    ax.axvline(bound, color=colors[base], lw=0.8, alpha=0.6)
            ax.set_xscale("log", base=2)
            if metric == "ppl":
                ax.set_yscale("log")
                ax.set_title(f"{regime} bases (beta {'<=' if regime == 'smaller' else '>'} beta0 = {beta0:,.0f})")
            if metric == "retrieval":
                ax.set_ylim(-0.05, 1.05)
            ax.set_xlabel("context length (tokens)")
            ax.set_ylabel(METRICS[metric])
            ax.grid(True, which="both", alpha=0.3)
        axes[0, col].legend(fontsize=7, loc="upper left")
    fig.suptitle(
        f"{study}: {model}, T_train = {info.train_len}, T_tune = {tune_len}; evaluated on {info.eval_set}\n"
        "dotted: T_train; thin lines (right): predicted bound 2*pi*beta^(d_extra/d)",
        fontsize=10,
    )
    return fig


def with_retrieval(evals: pd.DataFrame, passkey: pd.DataFrame) -> pd.DataFrame:
    """Prefix rows of `evals` with a `retrieval` column: passkey accuracy over depths, by length."""
    sums = passkey.groupby(GROUP + ["length"], as_index=False)[["correct", "prompts"]].sum()
    retrieval = sums.assign(retrieval=sums.correct / sums.prompts).rename(columns={"length": "end"})
    prefix = evals[evals.scope == "prefix"]
    return prefix.merge(retrieval[GROUP + ["end", "retrieval"]], on=GROUP + ["end"], how="outer").assign(scope="prefix")


def passkey_heatmap(passkey: pd.DataFrame, cell: pd.Series, study: str):
    """Retrieval accuracy of one cell, depth x length; dashed: its measured perplexity bound."""
    grid = passkey.pivot(index="depth", columns="length", values="accuracy")
    fig, ax = plt.subplots(figsize=(2 + 0.9 * grid.shape[1], 1.5 + 0.45 * grid.shape[0]))
    sns.heatmap(grid, vmin=0, vmax=1, cmap="RdYlGn", annot=True, fmt=".2f", ax=ax,
                cbar_kws={"label": "retrieval accuracy"})
    columns_within = int((grid.columns <= cell.measured_bound).sum())
    if 0 < columns_within < grid.shape[1]:
        ax.axvline(columns_within, color="k", ls="--", lw=1.5)
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("depth of the key")
    bound = f"{'>= ' if cell.censored else ''}{int(cell.measured_bound)}"
    ax.set_title(
        f"{study}: {cell.model}, {cell.method}, base {_base_label(int(cell.base))}, T_tune = {cell.tune_len}\n"
        f"{int(passkey.prompts.max())} prompts per square; perplexity bound {bound} (dashed)"
        f"{'' if np.isnan(cell.predicted_bound) else f', predicted {cell.predicted_bound:,.0f}'}; filler: {cell.eval_set}",
        fontsize=8,
    )
    return fig


def bound_vs_base(cells: pd.DataFrame, study: str):
    tuned = cells[cells.method == "base"]
    groups = list(tuned.groupby(["model", "tune_len"], sort=True))
    fig, axes = plt.subplots(1, max(len(groups), 1), figsize=(6 * max(len(groups), 1), 5), squeeze=False)
    for ax, ((model, tune_len), group) in zip(axes[0], groups):
        first = group.iloc[0]
        lo, hi = group.base.min() / 2, group.base.max() * 2
        grid = np.geomspace(max(first.beta0, lo), hi, 200)
        law = [theory.t_extra(b, first.head_dim, first.train_len, first.orig_base) for b in grid]
        ax.plot(grid, law, "k-", label="theory: 2*pi*beta^(d_extra/d)")
        ax.axhline(tune_len, color="grey", ls=":", label="T_tune")
        ax.axvline(first.beta0, color="grey", ls="--", label=f"beta0 = {first.beta0:,.0f}")
        for censored, marker, label in ((False, "o", "measured bound"), (True, "^", "measured (censored: >= longest length)")):
            part = group[group.censored == censored]
            if len(part):
                ax.scatter(part.base, part.measured_bound, marker=marker, s=40, label=label, zorder=3)
        ax.set_xscale("log")
        ax.set_yscale("log", base=2)
        ax.set_xlabel("rotary base beta")
        ax.set_ylabel("extrapolation bound (tokens)")
        ax.set_title(f"{model}, T_tune = {tune_len}", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    factor_note = "bound: largest length with ppl <= factor x ppl(T_tune) (law.ppl_factor)"
    fig.suptitle(f"{study}: predicted vs measured bound; evaluated on {cells.eval_set.iloc[0]}\n{factor_note}", fontsize=10)
    return fig


def critical_dimension(cells: pd.DataFrame, study: str):
    models = list(cells.groupby("model", sort=True))
    fig, axes = plt.subplots(1, len(models), figsize=(7 * len(models), 4.5), squeeze=False)
    for ax, (model, group) in zip(axes[0], models):
        first = group.iloc[0]
        d, t_train, b0 = int(first.head_dim), int(first.train_len), float(first.orig_base)
        d_extra = theory.critical_dim(d, t_train, b0)
        pairs = np.arange(d // 2)
        bases = sorted({b0, *group.base.astype(float)})
        colors = sns.color_palette("viridis", len(bases))
        for color, base in zip(colors, bases):
            style = dict(lw=2.5, color="k") if base == b0 else dict(lw=1, color=color)
            ax.plot(pairs, theory.periods(d, base), label=f"base {_base_label(int(base))}", **style)
        ax.axhline(t_train, color="red", ls="--", label=f"T_train = {t_train}")
        ax.axvline(d_extra / 2 - 0.5, color="red", ls=":", label=f"d_extra = {d_extra} (pair {d_extra // 2})")
        ax.set_yscale("log")
        ax.set_xlabel("dimension pair n (dims 2n, 2n+1)")
        ax.set_ylabel("period 2*pi*beta^(2n/d) (tokens)")
        ax.set_title(f"{model}: d = {d}; pairs left of the dotted line complete a period within T_train", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
    fig.suptitle(f"{study}: the critical dimension", fontsize=10)
    return fig


def draw_all(evals: pd.DataFrame, cells: pd.DataFrame, study: str, out_dir: Path, formats: list[str], passkey: pd.DataFrame | None = None) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    sns.set_theme(style="whitegrid", context="paper")
    written = []
    tuned = cells[cells.method != UNTUNED]
    for (model, tune_len), _ in tuned.groupby(["model", "tune_len"], sort=True):
        fig = ppl_vs_length(evals, cells, model, tune_len, study)
        written += _save(fig, out_dir, f"ppl_vs_length_{model}_len{tune_len}", formats)
    if passkey is not None and len(passkey):
        both = with_retrieval(evals, passkey)
        for (model, tune_len), _ in tuned.groupby(["model", "tune_len"], sort=True):
            fig = ppl_vs_length(both, cells, model, tune_len, study, metrics=("ppl", "retrieval"))
            written += _save(fig, out_dir, f"passkey_vs_length_{model}_len{tune_len}", formats)
        for _, part in passkey.merge(cells, on=GROUP).groupby(GROUP, sort=True):
            cell = part.iloc[0]
            name = f"passkey_heatmap_{cell.model}_{cell.method}_base{cell.base}_len{cell.tune_len}"
            written += _save(passkey_heatmap(part, cell, study), out_dir, name, formats)
    written += _save(bound_vs_base(cells, study), out_dir, "bound_vs_base", formats)
    written += _save(critical_dimension(cells, study), out_dir, "critical_dimension", formats)
    return written


def add_arguments(parser) -> None:
    parser.add_argument("--evals", required=True, nargs="+", help="per-cell eval.csv files")
    parser.add_argument("--cells", required=True, help="results/law/cells.csv")
    parser.add_argument("--passkey", default=None, help="results/law/passkey.csv (retrieval figures when not empty)")
    parser.add_argument("--study", default="ropelaw", help="study name for titles")
    parser.add_argument("--out-dir", required=True, help="directory for the figures")
    parser.add_argument("--formats", nargs="+", default=["png", "pdf"], help="file formats")


def run(args) -> None:
    passkey = pd.read_csv(args.passkey) if args.passkey else None
    written = draw_all(load_evals(args.evals), pd.read_csv(args.cells), args.study, Path(args.out_dir), args.formats, passkey)
    for path in written:
        print(path)
