"""The bound-detection rule and the log-log fit, on tables whose answer is known."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from ropelaw import theory
from ropelaw.law import cell_table, fit_table, measured_bound

LENGTHS = np.array([2048, 4096, 8192, 16384, 32768, 65536, 131072])


def test_bound_is_last_length_before_the_first_break():
    ppl = np.array([7.0, 6.0, 6.5, 8.9, 9.1, 50.0, 8.0])  # 9.1 > 1.5 * 6.0 breaks at 32768
    assert measured_bound(LENGTHS, ppl, 4096, 1.5) == (16384, 6.0, False)


def test_a_later_recovery_does_not_extend_the_bound():
    ppl = np.array([7.0, 6.0, 100.0, 6.0, 6.0, 6.0, 6.0])
    assert measured_bound(LENGTHS, ppl, 4096, 1.5)[0] == 4096


def test_censored_when_nothing_breaks():
    ppl = np.full(len(LENGTHS), 6.0)
    assert measured_bound(LENGTHS, ppl, 4096, 1.5) == (131072, 6.0, True)


def test_reference_is_largest_length_not_above_tune_len():
    ppl = np.array([7.0, 6.0, 6.1, 6.2, 20.0, 20.0, 20.0])
    # T_tune = 6000 is not evaluated: the reference is 4096.
    assert measured_bound(LENGTHS, ppl, 6000, 1.5) == (16384, 6.0, False)


def test_nan_breaks_the_rule():
    ppl = np.array([7.0, 6.0, math.nan, 6.0, 6.0, 6.0, 6.0])
    assert measured_bound(LENGTHS, ppl, 4096, 1.5)[0] == 4096


def _synthetic_evals(bases, head_dim=128, train_len=4096, orig_base=10000.0, tune_len=4096):
    """Cells whose perplexity explodes exactly after the theory's T_extra."""
    rows = []
    lengths = 2 ** np.arange(11, 21)  # 2K .. 1M
    for base in bases:
        bound = theory.t_extra(base, head_dim, train_len, orig_base)
        for length in lengths:
            ppl = 6.0 if length <= bound else 60.0
            rows.append(dict(model="m", method="base", base=base, tune_len=tune_len, head_dim=head_dim,
                             train_len=train_len, orig_base=orig_base, eval_set="x", scope="prefix",
                             start=0, end=length, ppl=ppl))
    return pd.DataFrame(rows)


def test_cells_and_fit_on_law_following_data():
    bases = [20000, 80000, 400000, 1000000, 5000000, 30000000]
    cells = cell_table(_synthetic_evals(bases), 1.5)
    row = cells.set_index("base").loc[1000000]
    assert row.regime == "larger" and round(row.predicted_bound) == 129027
    assert row.measured_bound == 65536  # largest power of two below 129K
    assert 0.5 < row.ratio_measured_to_predicted <= 1
    fit = fit_table(cells).iloc[0]
    assert fit.theory_slope == pytest.approx(92 / 128)
    # Powers of two quantise the bound, so the fitted slope is near, not at, 92/128.
    assert fit.fitted_slope == pytest.approx(92 / 128, abs=0.08)
    # 2e4 (bound 7754) never gets past the reference length 4096; 3e7 (bound ~1.5M) is censored at 1M.
    assert fit.n_cells_fitted == 4
    assert cells.set_index("base").loc[30000000].censored
