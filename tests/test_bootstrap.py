"""Bootstrap intervals: nominal coverage on synthetic studies of known truth, seeds, reproducibility."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ropelaw.law import bootstrap
from ropelaw.law.estimators import Curve, crossing
from ropelaw.law.tables import Measured, cell_table, fit_table

X = np.geomspace(64, 4096, 25)  # scanned window midpoints, 4 per octave
TOKENS = np.diff(np.geomspace(48, 4096 * 2 ** 0.125, 26))  # tokens per window, growing with length


def log_ppl(knee: float) -> np.ndarray:
    """Flat at log 20, then slope 1 in log-log from a window midpoint: crosses 1.5x at knee * 1.5."""
    return math.log(20.0) + np.maximum(0.0, np.log(X / knee))


def cell(base: float, knee: float, rng, n_docs: int, noise: float, seed=None) -> Measured:
    """One synthetic cell: every document's window log-ppl is the curve plus document and window noise."""
    level = rng.normal(size=(n_docs, 1)) + rng.normal(size=(n_docs, 1)) * np.log(X / X[0]) / 4
    shifts = noise * (level + rng.normal(size=(n_docs, len(X))))
    ref_shift = noise * (level[:, 0] + rng.normal(size=n_docs))
    tokens = np.tile(TOKENS, (n_docs, 1))
    info = dict(model="m", method="base", base=int(base), tune_len=4096, head_dim=128, train_len=4096,
                orig_base=10000.0, eval_set="synthetic")
    return Measured(
        info=info, seed=seed, docs_key=("m", 4096, n_docs), max_nll=1.0, max_tokens=1.0,
        curve=Curve(x=X, nll=tokens * (log_ppl(knee) + shifts), tokens=tokens,
                    ref_nll=1000 * (math.log(20.0) + ref_shift), ref_tokens=np.full(n_docs, 1000.0),
                    ref_window=(2048, 4096)),
    )


KNEES = {1e5: X[8], 1e6: X[11], 1e7: X[14], 1e8: X[17]}  # true bounds 1.5 x knee: slope log10(2^(3/4)) per decade


def test_intervals_cover_the_truth_at_about_their_nominal_rate():
    rng = np.random.default_rng(1)
    truth = {base: knee * 1.5 for base, knee in KNEES.items()}
    true_slope = np.polyfit(np.log(list(truth)), np.log(list(truth.values())), 1)[0]
    hits, slope_hits = [], []
    for study in range(200):
        cells = [cell(base, knee, rng, n_docs=32, noise=0.08) for base, knee in KNEES.items()]
        table, reps = cell_table(cells, 1.5, 200, study)
        hits += [lo <= truth[b] <= hi for b, lo, hi in zip(table.base, table.bound_lo, table.bound_hi)]
        fit = fit_table(table, reps)[0].iloc[0]
        slope_hits.append(fit.fitted_slope_lo <= true_slope <= fit.fitted_slope_hi)
    assert 0.8 <= np.mean(hits) <= 0.97, np.mean(hits)
    assert 0.8 <= np.mean(slope_hits) <= 0.97, np.mean(slope_hits)


def test_the_point_estimate_without_noise_is_the_truth_and_its_interval_a_point():
    rng = np.random.default_rng(0)
    table, _ = cell_table([cell(1e6, X[11], rng, 8, 0.0)], 1.5, 100, 0)
    row = table.iloc[0]
    assert row.measured_bound == pytest.approx(1.5 * X[11]) and row.bound_lo == pytest.approx(row.bound_hi)


def test_seeds_are_resampled():
    """Noise-free documents, three seeds with different bounds: the interval spans the seeds, not a point."""
    rng = np.random.default_rng(0)
    seeds = [cell(1e6, knee, rng, 8, 0.0, seed=s) for s, knee in enumerate(X[[10, 11, 13]])]
    row = cell_table(seeds, 1.5, 400, 0)[0].iloc[0]
    assert row.seed_bound_min <= row.bound_lo < row.measured_bound < row.bound_hi <= row.seed_bound_max


def test_tables_are_reproducible_and_follow_the_seed():
    def run(seed):
        rng = np.random.default_rng(5)
        cells = [cell(base, knee, rng, 10, 0.1) for base, knee in KNEES.items()]
        return cell_table(cells, 1.5, 100, seed)[0]

    assert run(3).equals(run(3))
    assert not run(3).bound_lo.equals(run(4).bound_lo)


def test_fit_lines_is_least_squares():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=5), rng.normal(size=(3, 5))
    slope, intercept = bootstrap.fit_lines(x, y)
    for row, s, i in zip(y, slope, intercept):
        assert (s, i) == pytest.approx(tuple(np.polyfit(x, row, 1)))


def test_counts_draw_with_replacement():
    draws = bootstrap.counts(np.random.default_rng(0), 7, 50)
    assert draws.shape == (50, 7) and (draws.sum(1) == 7).all() and (draws == 0).any()
    assert (bootstrap.counts(np.random.default_rng(0), 1, 4) == 1).all()
    assert crossing(X, np.exp(log_ppl(X[5]))[None], np.array([20.0]), 1.5)[0][0] == pytest.approx(1.5 * X[5])
