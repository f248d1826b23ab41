"""The law: measured extrapolation bounds against the theory's, and the log-log fit.

    ropelaw law --evals results/*/*/*/eval.csv --ppl-factor 1.5 \
        --out-cells results/law/cells.csv --out-fit results/law/fit.csv \
        [--passkey results/*/*/*/passkey.csv --out-passkey results/law/passkey.csv]

Bound-detection rule (a reproduction decision, fixed before looking at results;
the paper does not say how it measured its "largest supported context"):
the measured bound of a cell is the largest evaluated length L such that
ppl(L') <= ppl_factor * ppl(T_ref) for every evaluated length T_ref <= L' <= L,
where T_ref is the largest evaluated length <= T_tune. If no evaluated length
breaks the rule, the bound is censored: it is at least the longest length.

The fit: for each (model, method, T_tune), a least-squares line through
(log base, log measured bound) over the cells with base > beta0 whose bound
is not censored, reported beside the theory's slope d_extra/d.

Passkey retrieval (`ropelaw passkey`), where run, joins the cells: `passkey_accuracy` over
every prompt and `passkey_accuracy_len{L}` per length; the accuracy of every (cell, length,
depth) goes to its own table (empty when no passkey table is given).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from ropelaw import UserError, provenance, theory
from ropelaw.methods import TRAINING_FREE

GROUP = ["model", "method", "base", "tune_len"]
PASSKEY_COLUMNS = GROUP + ["length", "depth", "prompts", "correct", "accuracy"]


def measured_bound(lengths: np.ndarray, ppl: np.ndarray, tune_len: int, factor: float) -> tuple[int, float, bool]:
    """(bound, reference ppl, censored) for one cell's prefix perplexities sorted by length."""
    ref_idx = np.flatnonzero(lengths <= tune_len)
    if not len(ref_idx):
        raise UserError(f"no evaluated length <= tuning length {tune_len}; add one to evaluation.lengths")
    ref = ref_idx[-1]
    limit = factor * ppl[ref]
    bound = int(lengths[ref])
    for length, value in zip(lengths[ref:], ppl[ref:]):
        if not value <= limit:  # also catches nan/inf
            return bound, float(ppl[ref]), False
        bound = int(length)
    return bound, float(ppl[ref]), True


def cell_table(evals: pd.DataFrame, factor: float) -> pd.DataFrame:
    """One row per cell: measured and predicted bounds."""
    rows = []
    prefix = evals[evals.scope == "prefix"]
    for key, group in prefix.groupby(GROUP, sort=True):
        group = group.sort_values("end")
        first = group.iloc[0]
        head_dim, train_len, orig_base = int(first.head_dim), int(first.train_len), float(first.orig_base)
        model, method, base, tune_len = key
        bound, ref_ppl, censored = measured_bound(group.end.to_numpy(), group.ppl.to_numpy(), tune_len, factor)
        beta0 = theory.critical_base(train_len, tune_len, orig_base)
        regime = theory.regime(base, train_len, tune_len, orig_base)
        t_law = theory.t_extra(base, head_dim, train_len, orig_base)
        predicted = t_law if regime == "larger" else float(tune_len)
        if method in TRAINING_FREE and method != "untuned":  # the law predicts base changes, not these
            regime, t_law, predicted = "training-free", math.nan, math.nan
        rows.append({
            "model": model, "method": method, "base": int(base), "tune_len": int(tune_len),
            "head_dim": head_dim, "train_len": train_len, "orig_base": orig_base,
            "eval_set": first.eval_set, "beta0": beta0, "regime": regime,
            "d_extra": theory.critical_dim(head_dim, train_len, orig_base),
            "t_extra_law": t_law, "predicted_bound": predicted,
            "ref_len": int(group.end[group.end <= tune_len].max()), "ref_ppl": ref_ppl,
            "measured_bound": bound, "censored": censored,
            "max_eval_len": int(group.end.max()), "ppl_at_max": float(group.ppl.iloc[-1]),
            "ratio_measured_to_predicted": bound / predicted,
        })
    return pd.DataFrame(rows)


def fit_table(cells: pd.DataFrame) -> pd.DataFrame:
    """Log-log slope of measured bound against base, per (model, method, T_tune), beside d_extra/d."""
    rows = []
    for (model, method, tune_len), group in cells.groupby(["model", "method", "tune_len"], sort=True):
        if method in TRAINING_FREE:
            continue
        usable = group[(group.regime == "larger") & ~group.censored & (group.measured_bound > group.ref_len)]
        slope = intercept = math.nan
        if len(usable) >= 2 and usable.base.nunique() >= 2:
            slope, intercept = np.polyfit(np.log(usable.base.astype(float)), np.log(usable.measured_bound.astype(float)), 1)
        first = group.iloc[0]
        rows.append({
            "model": model, "method": method, "tune_len": tune_len, "n_cells_fitted": len(usable),
            "fitted_slope": slope, "fitted_intercept": intercept,
            "theory_slope": first.d_extra / first.head_dim, "theory_intercept": math.log(2 * math.pi),
        })
    columns = ["model", "method", "tune_len", "n_cells_fitted", "fitted_slope", "fitted_intercept",
               "theory_slope", "theory_intercept"]
    return pd.DataFrame(rows, columns=columns)


def passkey_table(passkey: pd.DataFrame) -> pd.DataFrame:
    """Retrieval accuracy per (cell, length, depth), over its trials."""
    if passkey.empty:
        return pd.DataFrame(columns=PASSKEY_COLUMNS)
    grouped = passkey.groupby(GROUP + ["length", "depth"], sort=True).correct
    return grouped.agg(prompts="size", correct="sum", accuracy="mean").reset_index()


def join_passkey(cells: pd.DataFrame, passkey: pd.DataFrame) -> pd.DataFrame:
    """`cells` with overall and per-length retrieval accuracy (none added without passkey rows)."""
    if passkey.empty:
        return cells
    overall = passkey.groupby(GROUP).correct.mean().rename("passkey_accuracy")
    by_length = passkey.pivot_table(index=GROUP, columns="length", values="correct", aggfunc="mean")
    by_length.columns = [f"passkey_accuracy_len{length}" for length in by_length.columns]
    return cells.merge(pd.concat([overall, by_length], axis=1).reset_index(), on=GROUP, how="left")


def load_evals(paths: list[str]) -> pd.DataFrame:
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        raise UserError(f"evaluation tables missing: {missing}; run the evaluate rule first")
    return pd.concat([pd.read_csv(p) for p in paths], ignore_index=True)


def add_arguments(parser) -> None:
    parser.add_argument("--evals", required=True, nargs="+", help="per-cell eval.csv files")
    parser.add_argument("--ppl-factor", type=float, default=1.5, help="see the module docstring")
    parser.add_argument("--out-cells", required=True, help="output CSV, one row per cell")
    parser.add_argument("--out-fit", required=True, help="output CSV of the log-log fits")
    parser.add_argument("--passkey", nargs="*", default=[], help="per-cell passkey.csv files (none: no retrieval columns)")
    parser.add_argument("--out-passkey", help="output CSV of retrieval accuracy per cell, length and depth")


def run(args) -> None:
    if args.ppl_factor <= 1:
        raise UserError(f"law.ppl_factor must be > 1 (got {args.ppl_factor})")
    if args.passkey and not args.out_passkey:
        raise UserError("--passkey needs --out-passkey, the table of accuracy per cell, length and depth")
    passkey = load_evals(args.passkey) if args.passkey else pd.DataFrame()
    cells = cell_table(load_evals(args.evals), args.ppl_factor)
    fits = fit_table(cells)
    cells = join_passkey(cells, passkey)
    outputs = [(cells, args.out_cells), (fits, args.out_fit)]
    if args.out_passkey:
        outputs.append((passkey_table(passkey), args.out_passkey))
    for table, path in outputs:
        with provenance.atomic_path(path) as tmp:
            table.to_csv(tmp, index=False)
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        shown = ["regime", "predicted_bound", "measured_bound", "censored"] + list(cells.filter(like="passkey_accuracy"))
        print(cells[GROUP + shown].to_string(index=False))
        print(fits.to_string(index=False))
