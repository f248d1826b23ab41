"""The law's tables: one row per cell (bound, interval, seed spread, prediction) and the log-log fits.

`load_cell` reads one cell's `eval.csv` (identity, geometry) and the `eval_docs.csv` beside
it (the per-document dense sums); `measure` groups cells that differ only in their seed,
measures each group's bound on its pooled documents, bootstraps it (`ropelaw.law.bootstrap`)
and fits the law. Rows are sorted by (model, method, base, tune_len).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ropelaw import UserError, theory
from ropelaw.law import bootstrap
from ropelaw.law.estimators import CENSORED, DOC_COLUMNS, NO, Curve, curve
from ropelaw.methods import TRAINING_FREE

GROUP = ["model", "method", "base", "tune_len"]
IDENTITY = GROUP + ["head_dim", "train_len", "orig_base", "eval_set"]
EVAL_COLUMNS = IDENTITY + ["scope", "end", "nll_sum", "tokens", "correct"]  # of eval.csv, as the law reads it
EVAL_NUMBERS = ["base", "tune_len", "head_dim", "train_len", "orig_base", "end", "nll_sum", "tokens", "correct"]
EVAL_FIX = "run the evaluate rule of that cell (again)"
FIT_KEY = ["model", "method", "tune_len"]
SEED_DIR = re.compile(r"_seed(\d+)$")


@dataclass(frozen=True)
class Measured:
    """One cell (one seed) as the law reads it."""

    info: dict  # IDENTITY values, plus the method's `kind` where eval.csv or eval.json names it
    seed: int | None
    curve: Curve
    docs_key: tuple  # the evaluation set: (model, longest length, number of documents)
    max_nll: float  # pooled NLL and tokens of the longest prefix
    max_tokens: float
    prefix_ppl: tuple[tuple[int, float], ...] = ()  # (length, prefix perplexity) of every evaluated length


def read_table(path, columns: list[str], fix: str, numeric: list[str] = ()) -> pd.DataFrame:
    """A CSV table that must exist, parse and hold `columns`, those of `numeric` as numbers in every row;
    anything else is one UserError naming the file and `fix`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} is missing; {fix}")
    try:
        table = pd.read_csv(path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: not a readable CSV table ({str(err).splitlines()[0]}); {fix}") from None
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise UserError(f"{path}: columns {missing} missing; {fix}")
    wrong = [c for c in numeric if not pd.api.types.is_numeric_dtype(table[c]) or table[c].isna().any()]
    if wrong:
        raise UserError(f"{path}: columns {wrong} hold empty values or values that are not numbers (a cut or "
                        f"edited file?); {fix}")
    return table


def _seed(table: pd.DataFrame, path: Path) -> int | None:
    """The cell's seed: a `seed` column of eval.csv, else the `_seed{s}` of its directory, else none."""
    if "seed" in table.columns:
        return int(table.seed.iloc[0])
    match = SEED_DIR.search(path.parent.name)
    return int(match.group(1)) if match else None


def _kind(table: pd.DataFrame, path: Path) -> dict:
    """{"kind": the method's kind} (a variant's built-in kind) from eval.csv or eval.json, where either says."""
    if "kind" in table.columns:
        return {"kind": str(table.kind.iloc[0])}
    sidecar = path.with_name("eval.json")
    if sidecar.is_file():
        try:
            kind = json.loads(sidecar.read_text()).get("method", {}).get("kind")
        except (json.JSONDecodeError, AttributeError) as err:
            raise UserError(f"{sidecar} is not the evaluation's JSON ({err}); re-run the cell's evaluate rule") from err
        if kind:
            return {"kind": str(kind)}
    return {}


def load_cell(eval_csv: str, estimator: str) -> Measured:
    path = Path(eval_csv)
    docs_path = path.with_name("eval_docs.csv")
    table = read_table(path, EVAL_COLUMNS, EVAL_FIX, EVAL_NUMBERS)
    prefix = table[table.scope == "prefix"].sort_values("end")
    if prefix.empty:
        raise UserError(f"{path} has no prefix rows; re-run the cell's evaluate rule")
    info = {key: prefix[key].iloc[0] for key in IDENTITY}
    info = {k: (int(v) if isinstance(v, np.integer) else float(v) if isinstance(v, np.floating) else v) for k, v in info.items()}
    info |= _kind(table, path)
    docs = read_table(docs_path, DOC_COLUMNS, EVAL_FIX, DOC_COLUMNS)
    longest = prefix.iloc[-1]
    return Measured(
        info=info, seed=_seed(table, path),
        curve=curve(estimator, docs, int(info["tune_len"]), int(info["train_len"]), str(docs_path)),
        docs_key=(info["model"], int(docs.pass_len.max()), int(docs.doc.nunique())),
        max_nll=float(longest.nll_sum), max_tokens=float(longest.tokens),
        prefix_ppl=tuple((int(r.end), math.exp(r.nll_sum / r.tokens)) for r in prefix.itertuples()),
    )


def _prediction(info: dict) -> dict:
    """The theory's regime and bound for a cell (none for training-free methods other than untuned)."""
    head_dim, train_len, orig_base = int(info["head_dim"]), int(info["train_len"]), float(info["orig_base"])
    base, tune_len = info["base"], info["tune_len"]
    regime = theory.regime(base, train_len, tune_len, orig_base)
    t_law = theory.t_extra(base, head_dim, train_len, orig_base)
    predicted = t_law if regime == "larger" else float(tune_len)
    if info.get("kind", info["method"]) in TRAINING_FREE and info["method"] != "untuned":
        regime, t_law, predicted = "training-free", math.nan, math.nan  # the law predicts base changes
    return {
        "beta0": theory.critical_base(train_len, tune_len, orig_base), "regime": regime,
        "d_extra": theory.critical_dim(head_dim, train_len, orig_base),
        "t_extra_law": t_law, "predicted_bound": predicted,
    }


def _group_row(seeds: list[Measured], doc_w: np.ndarray, seed_w: np.ndarray, factor: float) -> tuple[dict, np.ndarray, np.ndarray]:
    """(row, replicate bounds, replicate censoring) of the cells of one group (its seeds)."""
    curves = [m.curve for m in seeds]
    n_docs, m = doc_w.shape[1], len(seeds)
    bound, censor, ref = (v[0] for v in bootstrap.pooled_bounds(curves, np.ones((1, n_docs)), np.ones((1, m)), factor))
    reps, rep_censor, _ = bootstrap.pooled_bounds(curves, doc_w, seed_w, factor)
    per_seed, seed_censor, _ = bootstrap.pooled_bounds(curves, np.ones((m, n_docs)), np.eye(m), factor)
    info = seeds[0].info
    row = {key: info[key] for key in IDENTITY} | {k: info[k] for k in ("kind",) if k in info} | _prediction(info)
    lo, hi = bootstrap.interval(reps)
    row |= {
        "ref_len": seeds[0].curve.ref_window[1], "ref_ppl": float(ref), "measured_bound": float(bound),
        "censored": CENSORED[int(censor)], "max_eval_len": seeds[0].docs_key[1],
        "ppl_at_max": math.exp(sum(s.max_nll for s in seeds) / sum(s.max_tokens for s in seeds)),
        "ratio_measured_to_predicted": bound / row["predicted_bound"],
        "bound_lo": lo, "bound_hi": hi, "boot_censored": float(np.mean(rep_censor != NO)),
        "ratio_lo": lo / row["predicted_bound"], "ratio_hi": hi / row["predicted_bound"],
        "n_seeds": m, "seeds": " ".join("default" if s.seed is None else str(s.seed) for s in seeds),
        "seed_bound_min": float(per_seed.min()), "seed_bound_max": float(per_seed.max()),
        "seed_bound_sd": float(np.std(per_seed, ddof=1)) if m > 1 else math.nan,
        "seeds_censored": int(np.sum(seed_censor != NO)), "n_docs": n_docs,
    }
    return row, reps, rep_censor


def _groups(cells: list[Measured]) -> dict[tuple, list[Measured]]:
    groups: dict[tuple, list[Measured]] = {}
    for cell in cells:
        groups.setdefault(tuple(cell.info[k] for k in GROUP), []).append(cell)
    for key, seeds in groups.items():
        seeds.sort(key=lambda s: -1 if s.seed is None else s.seed)
        if len({s.seed for s in seeds}) < len(seeds):
            raise UserError(f"cell {key} appears twice with the same seed; pass each eval.csv once")
        if len({s.docs_key for s in seeds}) > 1 or len({tuple(s.curve.x) for s in seeds}) > 1:
            raise UserError(f"the seeds of cell {key} were evaluated on different documents or lengths; "
                            "give them the same evaluation lengths")
    return dict(sorted(groups.items()))


def cell_table(cells: list[Measured], factor: float, replicates: int, seed: int) -> tuple[pd.DataFrame, dict]:
    """(one row per group of seeds, {group key: (replicate bounds, censoring)})."""
    if factor <= 1:
        raise UserError(f"law.factor must be > 1 (got {factor})")
    if replicates < 1:
        raise UserError(f"law.bootstrap must be >= 1 replicate (got {replicates})")
    rng = np.random.default_rng(seed)
    groups = _groups(cells)
    doc_w = {key: bootstrap.counts(rng, key[2], replicates) for key in sorted({c.docs_key for c in cells})}
    rows, reps = [], {}
    for key, seeds in groups.items():
        seed_w = bootstrap.counts(rng, len(seeds), replicates)
        row, bounds, censor = _group_row(seeds, doc_w[seeds[0].docs_key], seed_w, factor)
        rows.append(row)
        reps[key] = (bounds, censor)
    return pd.DataFrame(rows), reps


SEED_COLUMNS = GROUP + ["length", "n_seeds", "seeds", "ppl_min", "ppl_max", "ppl_geomean", "spread", "sd_log_ppl",
                        "measured_bound", "censored", "length_over_bound"]


def seed_table(cells: list[Measured], table: pd.DataFrame) -> pd.DataFrame:
    """How far the seeds of a cell agree at each evaluated length: the prefix perplexity's lowest and highest over
    the seeds, their geometric mean, `spread` = highest / lowest - 1 and the standard deviation of its log, beside
    the cell's pooled bound from `table` (cell_table's) and length / bound. Cells with one seed have no rows."""
    rows = []
    bounds = {tuple(r[k] for k in GROUP): r for r in table.to_dict("records")}
    for key, seeds in _groups(cells).items():
        if len(seeds) < 2:
            continue
        cell = bounds[key]
        per_length: dict[int, list[float]] = {}
        for measured in seeds:
            for length, ppl in measured.prefix_ppl:
                per_length.setdefault(length, []).append(ppl)
        for length, ppls in sorted(per_length.items()):
            if len(ppls) != len(seeds):  # _groups refuses seeds evaluated on different lengths; kept safe here
                continue
            logs = np.log(ppls)
            rows.append(dict(zip(GROUP, key)) | {
                "length": length, "n_seeds": len(seeds), "seeds": cell["seeds"], "ppl_min": min(ppls),
                "ppl_max": max(ppls), "ppl_geomean": float(np.exp(logs.mean())), "spread": max(ppls) / min(ppls) - 1,
                "sd_log_ppl": float(np.std(logs, ddof=1)), "measured_bound": cell["measured_bound"],
                "censored": cell["censored"], "length_over_bound": length / cell["measured_bound"]})
    return pd.DataFrame(rows, columns=SEED_COLUMNS)


def _fit_rows(group: pd.DataFrame, reps: dict) -> tuple[dict, pd.DataFrame]:
    """Fit columns of one (model, method, T_tune) and its replicate fits."""
    usable = group[(group.regime == "larger") & (group.censored == "no")]
    out = {"n_cells_fitted": len(usable)}
    nan = math.nan
    out |= dict.fromkeys(["fitted_slope", "fitted_intercept", "c_geomean", "boot_censored"], nan)
    for name in ("fitted_slope", "fitted_intercept", "c_geomean"):
        out[f"{name}_lo"] = out[f"{name}_hi"] = nan
    replicates = pd.DataFrame(columns=["replicate", "slope", "intercept", "c_geomean"])
    if usable.empty:
        return out, replicates
    keys = [tuple(r) for r in usable[GROUP].itertuples(index=False)]
    bounds = np.stack([reps[k][0] for k in keys], axis=1)  # [R, cells]
    censored = np.stack([reps[k][1] != NO for k in keys], axis=1)
    log_c = np.log(bounds / usable.predicted_bound.to_numpy())
    out["c_geomean"] = math.exp(np.log(usable.ratio_measured_to_predicted).mean())
    out["c_geomean_lo"], out["c_geomean_hi"] = (math.exp(v) for v in bootstrap.interval(log_c.mean(1)))
    out["boot_censored"] = float(censored.any(1).mean())
    slopes = intercepts = np.full(len(bounds), nan)
    if usable.base.nunique() >= 2:
        log_base = np.log(usable.base.to_numpy(dtype=float))
        point = bootstrap.fit_lines(log_base, np.log(usable.measured_bound.to_numpy(dtype=float))[None])
        out["fitted_slope"], out["fitted_intercept"] = float(point[0][0]), float(point[1][0])
        slopes, intercepts = bootstrap.fit_lines(log_base, np.log(bounds))
        out["fitted_slope_lo"], out["fitted_slope_hi"] = bootstrap.interval(slopes)
        out["fitted_intercept_lo"], out["fitted_intercept_hi"] = bootstrap.interval(intercepts)
    replicates = pd.DataFrame({"replicate": np.arange(len(bounds)), "slope": slopes, "intercept": intercepts,
                               "c_geomean": np.exp(log_c.mean(1))})
    return out, replicates


def fit_table(cells: pd.DataFrame, reps: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(log-log fit of measured bound against base per (model, method, T_tune), their replicates)."""
    rows, replicates = [], []
    for key, group in cells.groupby(FIT_KEY, sort=True):
        first = group.iloc[0]
        if first.get("kind", key[1]) in TRAINING_FREE or first.regime == "training-free":
            continue
        out, reps_table = _fit_rows(group, reps)
        rows.append(dict(zip(FIT_KEY, key)) | out | {
            "theory_slope": first.d_extra / first.head_dim, "theory_intercept": math.log(2 * math.pi)})
        replicates.append(reps_table.assign(**dict(zip(FIT_KEY, key))))
    columns = FIT_KEY + ["n_cells_fitted", "fitted_slope", "fitted_intercept", "theory_slope", "theory_intercept",
                         "fitted_slope_lo", "fitted_slope_hi", "fitted_intercept_lo", "fitted_intercept_hi",
                         "c_geomean", "c_geomean_lo", "c_geomean_hi", "boot_censored"]
    reps_columns = FIT_KEY + ["replicate", "slope", "intercept", "c_geomean"]
    replicates = pd.concat(replicates, ignore_index=True)[reps_columns] if replicates else pd.DataFrame(columns=reps_columns)
    return pd.DataFrame(rows, columns=columns), replicates
