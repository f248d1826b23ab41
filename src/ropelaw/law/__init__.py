"""The law: measured extrapolation bounds with intervals, against the theory's, and the log-log fit.

    ropelaw law --evals results/*/*/*/eval.csv --estimator segment --factor 1.5 \
        --bootstrap 1000 --bootstrap-seed 0 \
        --out-cells results/law/cells.csv --out-fit results/law/fit.csv \
        --out-bootstrap results/law/bootstrap.csv [--out-seeds results/law/seeds.csv] \
        [--passkey results/*/*/*/passkey.csv --out-passkey results/law/passkey.csv]

Every rule reads the per-document dense sums `eval_docs.csv` beside each `eval.csv`
(segments of target positions [start, end) on a grid of 4 points per octave, plus the
evaluated lengths), so the bound is measured at a finer resolution than
`evaluation.lengths`. The rules (a reproduction decision, fixed before looking at results;
the paper does not say how it measured its "largest supported context"):

- `segment` (`law.estimator`, the default): the first position at which the perplexity of
  the tokens in a window exceeds `law.factor` x the perplexity of an in-distribution
  window. A window is one dense segment (a quarter octave of positions above T_train/4),
  placed at its geometric midpoint. The in-distribution window is the octave of positions
  [T_ref/2, T_ref), T_ref the largest segment edge <= min(T_tune, T_train): positions the
  model saw in pre-training and in fine-tuning. It does not move with T_tune (>= T_train),
  as the theory asks: for beta > beta0 the bound depends on beta alone. Chosen as the
  default because a prefix average dilutes a failure over every earlier position (it
  crosses late and, below about 1.5x, measures how the text changes, not extrapolation).
- `prefix`: the rule before segments: the first length L at which the prefix perplexity
  (targets 1..L-1) exceeds `law.factor` x the prefix perplexity at the largest segment
  edge <= T_tune. Its bound moves with T_tune through its reference.

Both interpolate the crossing linearly in (log length, log perplexity) between the last
point at or below the threshold and the first above it, and stop at the first crossing (a
later recovery does not extend the bound). A curve that never crosses is right-censored at
its last point (`censored = right`: the bound is at least that); one above the threshold at
the first point after the reference is left-censored (`censored = left`: at most that).
Censored bounds stay in the table and never enter the fit.

Uncertainty (`ropelaw.law.bootstrap`): `law.bootstrap` replicates resample the evaluation
documents (and the seeds of a cell evaluated with several seeds) with replacement;
`bound_lo`/`bound_hi` and the fit's `*_lo`/`*_hi` are 90% percentile intervals;
`boot_censored` is the share of replicates in which the bound (or, in fit.csv, any fitted
bound) was censored. Cells that differ only in their seed are one row, measured on the
pooled documents of its seeds; `seed_bound_min/max/sd` give the spread of the seeds' own bounds, and
`seeds.csv` (`seed_table`) the spread of their prefix perplexity at every evaluated length, beside
length / bound: how far past its bound a one-seed comparison still means anything.

The fit: for each (model, method, T_tune), least squares of log(bound) on log(base) over
the cells with base > beta0 whose bound is not censored, beside the theory's slope
d_extra/d and intercept log(2*pi); C = measured / predicted per cell
(`ratio_measured_to_predicted`) and its geometric mean over the fitted cells (`c_geomean`).
`bootstrap.csv` holds every replicate's slope, intercept and C (the figures draw the band).

Passkey retrieval (`ropelaw passkey`), where run, joins the cells: `passkey_accuracy` over
every prompt and `passkey_accuracy_len{L}` per length; the accuracy of every (cell, length,
depth) goes to its own table (empty when no passkey table is given).
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from ropelaw import UserError, provenance
from ropelaw.law.estimators import ESTIMATORS
from ropelaw.law.tables import (EVAL_COLUMNS, EVAL_FIX, EVAL_NUMBERS, GROUP, cell_table, fit_table, load_cell,
                                read_table, seed_table)

PASSKEY_COLUMNS = GROUP + ["length", "depth", "prompts", "correct", "accuracy"]
PASSKEY_ROWS = GROUP + ["length", "depth", "correct"]  # of a cell's passkey.csv, as the law reads it
__all__ = ["GROUP", "PASSKEY_COLUMNS", "cell_table", "fit_table", "load_cell", "load_evals", "measure", "seed_table"]


def measure(eval_paths: list[str], estimator: str, factor: float, replicates: int, seed: int):
    """(cells, fit, bootstrap replicates, seed spread) tables of the cells whose eval.csv are given."""
    if estimator not in ESTIMATORS:
        raise UserError(f"law.estimator must be one of {', '.join(ESTIMATORS)} (got {estimator!r})")
    measured = [load_cell(p, estimator) for p in eval_paths]
    cells, reps = cell_table(measured, factor, replicates, seed)
    fits, boot = fit_table(cells, reps)
    settings = {"estimator": estimator, "factor": factor, "bootstrap": replicates, "bootstrap_seed": seed,
                "interval_level": 0.9}
    return cells.assign(**settings), fits.assign(**settings), boot, seed_table(measured, cells)


def passkey_table(passkey: pd.DataFrame) -> pd.DataFrame:
    """Retrieval accuracy per (cell, seed where there are seeds, length, depth), over its trials."""
    if passkey.empty:
        return pd.DataFrame(columns=PASSKEY_COLUMNS)
    seed = ["seed"] if "seed" in passkey.columns else []  # one heatmap per seed of a cell
    grouped = passkey.groupby(GROUP + seed + ["length", "depth"], sort=True, dropna=False).correct
    return grouped.agg(prompts="size", correct="sum", accuracy="mean").reset_index()


def join_passkey(cells: pd.DataFrame, passkey: pd.DataFrame) -> pd.DataFrame:
    """`cells` with overall and per-length retrieval accuracy (none added without passkey rows)."""
    if passkey.empty:
        return cells
    overall = passkey.groupby(GROUP).correct.mean().rename("passkey_accuracy")
    by_length = passkey.pivot_table(index=GROUP, columns="length", values="correct", aggfunc="mean")
    by_length.columns = [f"passkey_accuracy_len{length}" for length in by_length.columns]
    return cells.merge(pd.concat([overall, by_length], axis=1).reset_index(), on=GROUP, how="left")


def load_evals(paths: list[str], columns: list[str] = EVAL_COLUMNS, numeric: list[str] = EVAL_NUMBERS,
               fix: str = EVAL_FIX) -> pd.DataFrame:
    """Several per-cell tables (eval.csv by default) as one; a missing, unreadable or incomplete one is a UserError."""
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        raise UserError(f"evaluation tables missing: {missing}; run the evaluate rule first")
    return pd.concat([read_table(p, columns, fix, numeric) for p in paths], ignore_index=True)


def add_arguments(parser) -> None:
    parser.add_argument("--evals", required=True, nargs="+", help="per-cell eval.csv files (eval_docs.csv beside each)")
    parser.add_argument("--estimator", default="segment", choices=ESTIMATORS, help="the bound rule (module docstring)")
    parser.add_argument("--factor", type=float, default=1.5, help="perplexity ratio that ends the bound")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap replicates")
    parser.add_argument("--bootstrap-seed", type=int, default=0, help="seed of the bootstrap's generator")
    parser.add_argument("--out-cells", required=True, help="output CSV, one row per cell")
    parser.add_argument("--out-fit", required=True, help="output CSV of the log-log fits")
    parser.add_argument("--out-bootstrap", help="output CSV of every replicate's fit (the figures' band)")
    parser.add_argument("--out-seeds", help="output CSV of the seeds' spread per cell and length (cells with seeds)")
    parser.add_argument("--passkey", nargs="*", default=[], help="per-cell passkey.csv files (none: no retrieval columns)")
    parser.add_argument("--out-passkey", help="output CSV of retrieval accuracy per cell, length and depth")


def check_arguments(args) -> None:
    """Every argument that can be checked before a table is read: the numbers, and the output files
    (an existing folder there would be replaced by the table)."""
    if args.passkey and not args.out_passkey:
        raise UserError("--passkey needs --out-passkey, the table of accuracy per cell, length and depth")
    if not (math.isfinite(args.factor) and args.factor > 1):
        raise UserError(f"--factor {args.factor}: use a finite ratio > 1 (law.factor)")
    if args.bootstrap < 1:
        raise UserError(f"--bootstrap {args.bootstrap}: use 1 or more replicates (law.bootstrap)")
    if args.bootstrap_seed < 0:
        raise UserError(f"--bootstrap-seed {args.bootstrap_seed}: use an integer >= 0 (law.bootstrap_seed)")
    for flag in ("--out-cells", "--out-fit", "--out-bootstrap", "--out-seeds", "--out-passkey"):
        path = getattr(args, flag[2:].replace("-", "_"))
        if path:
            provenance.check_out(path, flag, f"{flag[6:]}.csv")


def run(args) -> None:
    check_arguments(args)
    passkey = (load_evals(args.passkey, PASSKEY_ROWS, ["base", "tune_len", "length", "depth", "correct"],
                          "run the passkey rule of that cell (again)") if args.passkey else pd.DataFrame())
    cells, fits, boot, seeds = measure(args.evals, args.estimator, args.factor, args.bootstrap, args.bootstrap_seed)
    cells = join_passkey(cells, passkey)
    tables = [(cells, args.out_cells), (fits, args.out_fit), (boot, args.out_bootstrap), (seeds, args.out_seeds)]
    if args.out_passkey:
        tables.append((passkey_table(passkey), args.out_passkey))
    for table, path in tables:
        if path:
            with provenance.atomic_path(path) as tmp:
                table.to_csv(tmp, index=False)
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        shown = ["regime", "predicted_bound", "measured_bound", "bound_lo", "bound_hi", "censored"]
        print(cells[GROUP + shown + list(cells.filter(like="passkey_accuracy"))].to_string(index=False))
        print(fits.to_string(index=False))
