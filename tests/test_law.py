"""The bound estimators and the law's tables, on evaluation tables whose answer is known (tests/synthetic.py)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from synthetic import dense_edges, eval_tables, write_cell

from ropelaw import UserError, theory
from ropelaw.law import measure
from ropelaw.law.estimators import LEFT, NO, RIGHT, crossing, segments

LENGTHS = (32, 64, 128, 256, 512, 1024)
EDGES = dense_edges(64, list(LENGTHS))
MIDPOINTS = [math.sqrt(s * e) for s, e in zip(EDGES[:-1], EDGES[1:])]


def kinked(knee: float, slope: float, level: float = 20.0):
    """log-ppl flat at `level` up to `knee`, then rising with `slope` in log-log: crosses 1.5x at knee * 1.5^(1/slope)."""
    return lambda x, pass_len=None: math.log(level) + slope * max(0.0, math.log(x / knee))


def _one(tmp_path, curve, estimator="segment", factor=1.5, **kwargs):
    path = write_cell(tmp_path, *eval_tables(curve, lengths=LENGTHS, **kwargs))
    cells, *_ = measure([path], estimator, factor, 50, 0)
    return cells.iloc[0]


def test_crossing_interpolates_in_log_log_and_censors_both_ways():
    x = np.array([100.0, 200.0, 400.0, 800.0])
    ppl = np.array([[10, 10, 20, 40], [10, 10, 10, 10], [20, 30, 40, 50], [10, np.nan, 10, 10], [10, 10, np.inf, 10]])
    bound, censor = crossing(x, ppl, np.full(5, 10.0), 1.5)
    # 10 -> 20 over one octave: 15 is reached at 200 * 2^(log 1.5 / log 2) = 300.
    assert bound[0] == pytest.approx(300.0) and censor[0] == NO
    assert (bound[1], censor[1]) == (800.0, RIGHT)
    assert (bound[2], censor[2]) == (100.0, LEFT)
    assert (bound[3], censor[3]) == (100.0, NO)  # NaN is a failure, and a later recovery does not count
    assert (bound[4], censor[4]) == (200.0, NO)


@pytest.mark.parametrize("slope", [0.5, 2.0])
def test_segment_estimator_is_exact_on_a_piecewise_log_linear_curve(tmp_path, slope):
    knee = MIDPOINTS[EDGES.index(152)]  # a window's midpoint, so the curve is log-linear between points
    row = _one(tmp_path, kinked(knee, slope))
    assert row.measured_bound == pytest.approx(knee * 1.5 ** (1 / slope), rel=1e-9)
    assert row.censored == "no" and row.ref_ppl == pytest.approx(20.0) and row.ref_len == 64


def test_prefix_estimator_is_exact_on_a_piecewise_log_linear_prefix_curve(tmp_path):
    row = _one(tmp_path, kinked(128, 1.0), estimator="prefix", prefix=True, tune_len=64)
    assert row.measured_bound == pytest.approx(128 * 1.5, rel=1e-9)
    assert row.ref_ppl == pytest.approx(20.0) and row.ref_len == 64


def test_prefix_of_a_length_dependent_method_comes_from_the_shortest_pass(tmp_path):
    # Every pass but the shortest holding a length is garbage there (as a pass rotated for another length would be).
    curve = lambda x, p: kinked(128, 1.0)(x) + (math.log(p / x) if x <= p / 2 else 0.0)  # noqa: E731
    row = _one(tmp_path, curve, estimator="prefix", prefix=True, one_pass=False)
    assert row.measured_bound == pytest.approx(192, rel=1e-9)


def test_segments_come_from_the_shortest_pass_and_must_tile(tmp_path):
    _, docs = eval_tables(kinked(200, 1.0), lengths=LENGTHS, one_pass=False)
    chosen = segments(docs, "x")
    assert (chosen.pass_len == [min(p for p in LENGTHS if p >= e) for e in chosen.end]).all()
    with pytest.raises(UserError, match="do not tile"):
        segments(docs[docs.end != 128], "cell/eval_docs.csv")


def test_censored_both_ways(tmp_path):
    flat = _one(tmp_path / "a", kinked(1e9, 1.0))
    assert flat.censored == "right" and flat.measured_bound == pytest.approx(MIDPOINTS[-1])
    jump = _one(tmp_path / "b", lambda x, p=None: math.log(20.0) + (2.0 if x > 64 else 0.0))
    assert jump.censored == "left" and jump.measured_bound == pytest.approx(MIDPOINTS[EDGES.index(64)])


def test_segment_reference_does_not_move_with_the_tuning_length(tmp_path):
    """The same curve tuned at T_train and at 4 T_train: one bound by segments, two by prefixes."""
    curve = kinked(100, 1.0)  # a prefix reference taken at T_tune = 256 already holds the rise
    rows = {(est, t): _one(tmp_path / f"{est}{t}", curve, estimator=est, tune_len=t)
            for est in ("segment", "prefix") for t in (64, 256)}
    assert rows["segment", 64].measured_bound == pytest.approx(rows["segment", 256].measured_bound)
    assert rows["prefix", 256].measured_bound > 1.3 * rows["prefix", 64].measured_bound


def test_factor_moves_the_bound_as_the_curve_says(tmp_path):
    knee = MIDPOINTS[EDGES.index(152)]
    assert _one(tmp_path, kinked(knee, 1.0), factor=2.0).measured_bound == pytest.approx(2 * knee)


def test_missing_or_broken_docs_table_is_one_line(tmp_path):
    path = write_cell(tmp_path, *eval_tables(kinked(200, 1.0), lengths=LENGTHS))
    docs = pd.read_csv(path.replace("eval.csv", "eval_docs.csv"))
    docs.drop(columns="bytes").to_csv(path.replace("eval.csv", "eval_docs.csv"), index=False)
    with pytest.raises(UserError, match=r"eval_docs.csv: columns \['bytes'\] missing"):
        measure([path], "segment", 1.5, 10, 0)
    (tmp_path / "results/m/base/base1000000_len64/eval_docs.csv").unlink()
    with pytest.raises(UserError, match="eval_docs.csv is missing; run the evaluate rule"):
        measure([path], "segment", 1.5, 10, 0)
    good = write_cell(tmp_path / "ok", *eval_tables(kinked(200, 1.0), lengths=LENGTHS))
    with pytest.raises(UserError, match="law.factor must be > 1"):
        measure([good], "segment", 0.9, 10, 0)


def law_study(tmp_path, ratio=1.3, bases=(20000, 80000, 400000, 1000000, 5000000, 30000000)):
    """Cells (head dim 128, T_train 4096, beta0 = 1e4) whose segment perplexity crosses 1.5x at ratio x T_extra."""
    paths = []
    for base in bases:
        bound = ratio * theory.t_extra(base, 128, 4096, 10000.0)
        paths.append(write_cell(tmp_path, *eval_tables(
            kinked(bound / 1.5, 1.0), base=base, tune_len=4096, head_dim=128, train_len=4096,
            lengths=[2 ** k for k in range(11, 21)], noise=0.01, n_docs=6)))
    return paths


def test_cells_and_fit_on_law_following_data(tmp_path):
    cells, fit, boot, _ = measure(law_study(tmp_path), "segment", 1.5, 200, 0)
    row = cells.set_index("base").loc[1000000]
    assert row.regime == "larger" and round(row.predicted_bound) == 129027
    assert row.ratio_measured_to_predicted == pytest.approx(1.3, rel=0.03)
    assert row.bound_lo <= row.measured_bound <= row.bound_hi
    fit = fit.iloc[0]
    # beta0 = 1e4 at T_tune = T_train: every base is larger; 3e7 (bound ~2M) is censored at 1M.
    assert cells.set_index("base").loc[30000000].censored == "right" and fit.n_cells_fitted == 5
    assert fit.fitted_slope == pytest.approx(92 / 128, abs=0.01) and fit.theory_slope == pytest.approx(92 / 128)
    assert fit.fitted_slope_lo <= fit.fitted_slope <= fit.fitted_slope_hi
    assert fit.c_geomean == pytest.approx(1.3, rel=0.03) and fit.c_geomean_lo <= fit.c_geomean <= fit.c_geomean_hi
    assert len(boot) == 200 and set(cells.estimator) == {"segment"} and fit.factor == 1.5


def test_seeds_are_one_row_with_their_spread(tmp_path):
    paths = [write_cell(tmp_path, *eval_tables(kinked(knee, 1.0), lengths=LENGTHS, seed=seed))
             for seed, knee in ((0, 150), (1, 200), (2, 260))]
    row = measure(paths, "segment", 1.5, 100, 0)[0].iloc[0]
    assert row.n_seeds == 3 and row.seeds == "0 1 2"
    alone = [measure([p], "segment", 1.5, 10, 0)[0].iloc[0].measured_bound for p in paths]
    assert row.seed_bound_min == pytest.approx(min(alone)) and row.seed_bound_max == pytest.approx(max(alone))
    assert row.seed_bound_sd == pytest.approx(np.std(alone, ddof=1))
    assert min(alone) < row.measured_bound < max(alone)


def test_seed_table_gives_the_seeds_spread_at_every_length(tmp_path):
    """law/seeds.csv: per cell with seeds and per evaluated length, the prefix perplexities' range over the seeds,
    against an independent reading of the eval.csv prefix rows; a cell with one seed has no rows."""
    paths = [write_cell(tmp_path / f"s{seed}", *eval_tables(kinked(knee, 1.0), lengths=LENGTHS, seed=seed))
             for seed, knee in ((0, 150), (1, 200), (2, 260))]
    single = write_cell(tmp_path / "single", *eval_tables(kinked(150, 1.0), lengths=LENGTHS, base=20000))
    cells, _, _, seeds = measure([*paths, single], "segment", 1.5, 10, 0)
    assert set(seeds.base) == {cells[cells.n_seeds == 3].base.iloc[0]} and list(seeds.length) == sorted(LENGTHS)
    prefix = [pd.read_csv(p).query("scope == 'prefix'").set_index("end") for p in paths]
    bound = cells[cells.n_seeds == 3].measured_bound.iloc[0]
    for row in seeds.itertuples():
        ppl = [math.exp(t.nll_sum[row.length] / t.tokens[row.length]) for t in prefix]
        assert (row.ppl_min, row.ppl_max) == (pytest.approx(min(ppl)), pytest.approx(max(ppl)))
        assert row.spread == pytest.approx(max(ppl) / min(ppl) - 1) and row.n_seeds == 3 and row.seeds == "0 1 2"
        assert row.sd_log_ppl == pytest.approx(np.std(np.log(ppl), ddof=1))
        assert row.length_over_bound == pytest.approx(row.length / bound)
    assert seeds.spread.iloc[-1] > seeds.spread.iloc[0]  # the knees differ: the seeds part past the first one


def test_old_key_and_unknown_estimator_are_one_line_config_errors():
    from pathlib import Path

    from ropelaw.config import load_yaml, resolve

    raw = load_yaml(Path(__file__).parent / "scenario" / "config.yaml")
    raw["law"] = {"ppl_factor": 1.5}
    with pytest.raises(UserError, match=r"unknown config key 'ppl_factor' \(did you mean 'factor'\?\) under 'law'"):
        resolve(raw)
    raw["law"] = {"estimator": "median"}
    with pytest.raises(UserError, match="law.estimator"):
        resolve(raw)
    with pytest.raises(UserError, match="law.estimator must be one of segment, prefix"):
        measure([], "median", 1.5, 10, 0)


def test_a_variant_takes_the_regime_of_its_kind(tmp_path):
    """A variant of a training-free kind (eval.json's method.kind) gets no prediction and no fit."""
    path = write_cell(tmp_path, *eval_tables(kinked(200, 1.0), method="yarn8", base=10000, lengths=LENGTHS))
    (tmp_path / "results/m/yarn8/base10000_len64/eval.json").write_text('{"method": {"name": "yarn8", "kind": "yarn"}}')
    cells, fit, *_ = measure([path], "segment", 1.5, 10, 0)
    assert cells.iloc[0].regime == "training-free" and cells.iloc[0].kind == "yarn" and fit.empty


def assert_same_table(recomputed, published) -> None:
    """The same columns, rows and text; numbers equal to 1e-12 relative (NaN where NaN)."""
    new, old = pd.read_csv(recomputed), pd.read_csv(published)
    assert list(new.columns) == list(old.columns) and len(new) == len(old), published
    numbers = old.select_dtypes("number").columns
    assert new.drop(columns=numbers).equals(old.drop(columns=numbers)), published
    np.testing.assert_allclose(new[numbers].to_numpy(float), old[numbers].to_numpy(float), rtol=1e-12, atol=0,
                               equal_nan=True, err_msg=str(published))


@pytest.mark.parametrize("page, cells, outcome", [
    ("tiny_seeds", 46, ["missed", "missed", "hit", "missed", "hit", "missed"]),  # 9 bases x 5 seeds, untuned
    ("tiny_critical", 22, ["missed", "missed", "hit", "missed", "hit"]),  # 7 bases x 3 seeds, untuned
])
def test_published_seed_studies_recompute(tmp_path, page, cells, outcome):
    """docs/results/tiny_seeds and tiny_critical: their law tables are what `ropelaw law` computes from their
    published cells (a change of the law that moves them fails here until the pages are regenerated), and their
    predictions read as the pages say. Text columns equal, numbers to 1e-12 relative: bitwise with the libraries
    the pages were made with; with those PyPI installed on 2026-12-03 (numpy 2.4.6, pandas 3.1.1) a few values
    moved in the 16th digit (the operation was not isolated)."""
    import re
    import subprocess
    import sys
    from pathlib import Path

    page = Path(__file__).resolve().parents[1] / "docs/results" / page
    evals = sorted(str(p.relative_to(page)) for p in page.glob("cells/*/*/eval.csv"))
    assert len(evals) == cells
    done = subprocess.run([sys.executable, "-m", "ropelaw.cli", "law", "--evals", *evals, "--factor", "1.25",
                           "--out-cells", str(tmp_path / "cells.csv"), "--out-fit", str(tmp_path / "fit.csv"),
                           "--out-seeds", str(tmp_path / "seeds.csv")], cwd=page, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    for name in ("cells.csv", "fit.csv", "seeds.csv"):
        assert_same_table(tmp_path / name, page / "law" / name)
    out = subprocess.run([sys.executable, str(page / "predictions.py")], capture_output=True, text=True, check=True).stdout
    assert re.findall(r"(hit|missed)$", out, flags=re.M) == outcome, out


SMALL_PARTS = ["part_a", "part_b1", "part_b1x", "part_b2x", "part_c", "part_d2", "part_e"]


@pytest.mark.parametrize("part", SMALL_PARTS)
def test_published_small_study_parts_recompute(tmp_path, part):
    """docs/results/smollm2_small/<part>/law: every law table (cells, fit, bootstrap, seeds, passkey) is what
    `ropelaw law` computes from the part's published cells with config/smollm2_small.yaml's law block (the
    segment rule, factor 1.5, 1000 replicates, seed 0), as the rule runs it; numbers to 1e-12 relative
    (`assert_same_table`: the libraries' 16th-digit drift)."""
    import subprocess
    import sys
    from pathlib import Path

    from ropelaw.config import load_configs

    law = load_configs([str(Path(__file__).resolve().parents[1] / "config/smollm2_small.yaml")])["law"]
    page = Path(__file__).resolve().parents[1] / "docs/results/smollm2_small" / part
    evals = sorted(str(p.relative_to(page)) for p in page.glob("cells/*/*/eval.csv"))
    passkey = sorted(str(p.relative_to(page)) for p in page.glob("cells/*/*/passkey.csv"))
    assert evals and passkey
    names = ("cells", "fit", "bootstrap", "seeds", "passkey")
    done = subprocess.run([sys.executable, "-m", "ropelaw.cli", "law", "--evals", *evals, "--passkey", *passkey,
                           "--estimator", law["estimator"], "--factor", str(law["factor"]),
                           "--bootstrap", str(law["bootstrap"]), "--bootstrap-seed", str(law["bootstrap_seed"]),
                           *[arg for name in names for arg in (f"--out-{name}", str(tmp_path / f"{name}.csv"))]],
                          cwd=page, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    published = [name for name in names if (page / "law" / f"{name}.csv").exists()]
    # parts a and b published before `ropelaw law` wrote seeds.csv; every later part has all five
    assert published == [name for name in names if name != "seeds" or part in ("part_c", "part_d2", "part_e")]
    for name in published:
        assert_same_table(tmp_path / f"{name}.csv", page / "law" / f"{name}.csv")
