"""Bootstrap over documents and seeds: percentile intervals for bounds, the log-log fit and C.

One replicate draws the evaluation documents with replacement (multinomial counts over the
documents of each evaluation set, shared by every cell that reads that set, so cells stay
paired as they were measured) and, for a cell with several seeds, the seeds with replacement;
the chosen seeds' documents are pooled (sums, then the division) and the bound recomputed.
The fit and the constant C are recomputed on every replicate's bounds. Intervals are the
5th and 95th percentiles over the replicates (`LEVEL` = 0.9). The generator is numpy's
PCG64 seeded with `law.bootstrap_seed`; draws are taken in a fixed order (evaluation sets,
then cells, sorted), so the tables are reproducible.
"""

from __future__ import annotations

import numpy as np

from ropelaw.law.estimators import Curve, crossing

LEVEL = 0.9


def counts(rng: np.random.Generator, n: int, replicates: int) -> np.ndarray:
    """[replicates, n] counts of a draw of n items with replacement (all ones for n = 1)."""
    if n == 1:
        return np.ones((replicates, 1))
    return rng.multinomial(n, np.full(n, 1.0 / n), size=replicates).astype(float)


def pooled_bounds(curves: list[Curve], doc_weights: np.ndarray, seed_weights: np.ndarray, factor: float):
    """(bound [R], censoring [R], ref ppl [R]) of the seeds' curves, pooled with seed_weights [R, seeds]
    after weighting their documents with doc_weights [R, docs] (the same documents for every seed)."""
    first = curves[0]
    nll = sum(w[:, None] * (doc_weights @ c.nll) for w, c in zip(seed_weights.T, curves))
    tokens = sum(w[:, None] * (doc_weights @ c.tokens) for w, c in zip(seed_weights.T, curves))
    ref_nll = sum(w * (doc_weights @ c.ref_nll) for w, c in zip(seed_weights.T, curves))
    ref_tokens = sum(w * (doc_weights @ c.ref_tokens) for w, c in zip(seed_weights.T, curves))
    ref = np.exp(ref_nll / ref_tokens)
    bound, censor = crossing(first.x, np.exp(nll / tokens), ref, factor)
    return bound, censor, ref


def fit_lines(log_base: np.ndarray, log_bound: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares (slope [R], intercept [R]) of log_bound [R, k] against log_base [k]."""
    centred = log_base - log_base.mean()
    slope = (log_bound - log_bound.mean(-1, keepdims=True)) @ centred / (centred @ centred)
    return slope, log_bound.mean(-1) - slope * log_base.mean()


def interval(values: np.ndarray) -> tuple[float, float]:
    """The central LEVEL percentile interval of replicate values (NaN when there are none)."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if not len(values):
        return float("nan"), float("nan")
    tail = 100 * (1 - LEVEL) / 2
    lo, hi = np.percentile(values, [tail, 100 - tail])
    return float(lo), float(hi)
