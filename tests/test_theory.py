"""The theory pinned to the paper's numbers (shared/paper/NOTES.md §2.2-2.6; tests/data/README.md); run with pytest."""

import csv
import json
import math
from pathlib import Path

import pytest

from ropelaw import UserError, theory
from ropelaw.cli import main

LLAMA2 = dict(head_dim=128, train_len=4096, orig_base=10000)
PREDICTIONS_CSV = Path(__file__).parent / "data" / "theory_predictions.csv"  # source: tests/data/README.md


def test_critical_dim_llama2():
    assert theory.critical_dim(**LLAMA2) == 92


@pytest.mark.parametrize("tune_len, beta0", [(4096, 10000), (8192, 26784), (16384, 71738), (32768, 192144)])
def test_critical_base(tune_len, beta0):
    assert round(theory.critical_base(4096, tune_len, 10000)) == beta0


def test_thresholds_at_4k():
    assert [round(b) for b in theory.thresholds(4096)] == [2608, 1304, 652]


def test_t_extra_base_1e6():
    assert theory.t_extra(1e6, **LLAMA2) == pytest.approx(129027, abs=1)


def _csv_rows():
    with PREDICTIONS_CSV.open() as f:
        return list(csv.DictReader(f))


def test_predictions_csv():
    rows = _csv_rows()
    assert len(rows) > 30
    for row in rows:
        base, tune_len = float(row["base"]), int(row["T_tune"])
        assert theory.critical_base(4096, tune_len, 10000) == pytest.approx(float(row["beta0"]), abs=0.05)
        result = theory.predict(**LLAMA2, tune_len=tune_len, bases=[base])["bases"][0]
        assert result["d_extra_prime"] == int(row["critical_dim"]), row
        if row["regime"].startswith("beta>beta0"):
            assert result["regime"] == "larger"
            assert round(result["t_extra"]) == int(row["T_extra_pred"]), row
            assert round(theory.t_extra(base, **LLAMA2)) == int(row["T_extra_pred"])
        else:
            assert result["regime"] == "smaller" and result["t_extra"] is None
            assert theory.critical_dim_prime(base, 128, tune_len) == int(row["critical_dim"])
        below = [base < beta for beta in theory.thresholds(tune_len)]
        assert below == [row[f"below_beta{i}"] == "True" for i in (1, 2, 3)], row


def test_smollm2_t_extra():
    assert theory.critical_dim(64, 8192, 1e5) == 40
    assert 8000 < theory.t_extra(1e5, 64, 8192, 1e5) < 9000  # 8378.8


def test_periods_around_critical_pair():
    periods = theory.periods(128, 10000)
    assert len(periods) == 64
    assert periods[45] == pytest.approx(4080, abs=1) and periods[45] <= 4096
    assert periods[46] == pytest.approx(4712, abs=1) and periods[46] > 4096


@pytest.mark.parametrize("target", [4096, 1e5, 131072, 1e6])
def test_min_base_round_trip(target):
    base = theory.min_base_for_length(target, **LLAMA2)
    assert theory.t_extra(base, **LLAMA2) == pytest.approx(target, rel=1e-6)


@pytest.mark.parametrize("target, paper_base", [(1e5, 9.4e5), (131072, 1.38e6), (1e6, 2.5e7)])
def test_min_base_paper_form(target, paper_base):
    # The paper's numbers come from the ceiling-free inverse; the exact inverse is ~25% lower.
    assert theory.min_base_for_length_paper(target, 4096, 10000) == pytest.approx(paper_base, rel=0.02)
    assert theory.min_base_for_length(target, **LLAMA2) < 0.8 * paper_base


def test_regime_is_decided_by_the_exact_beta0():
    """SmolLM2 tuned at 16K: beta0 = 304,201.695..., never rounded before the comparison (issue 11)."""
    smollm2 = dict(train_len=8192, tune_len=16384, orig_base=1e5)
    beta0 = theory.critical_base(**smollm2)
    assert beta0 == pytest.approx(304201.6954, abs=1e-3)
    assert theory.regime(304202, **smollm2) == "larger"  # above the exact beta0, although round(beta0) = 304202
    assert theory.regime(304201, **smollm2) == "smaller"
    assert theory.regime(beta0, **smollm2) == "smaller"  # a cell at beta0 is the 16c branch (beta <= beta0)
    assert theory.regime(math.nextafter(beta0, math.inf), **smollm2) == "larger"
    # `beta0` in a config is the integer path base floor(beta0): its cell is on the 16c side.
    path_base = theory.resolve_base("beta0", head_dim=64, **smollm2)
    assert path_base == 304201 and theory.regime(path_base, **smollm2) == "smaller"
    rows = theory.predict(64, 8192, 1e5, 16384, bases=[path_base, 304202])["bases"]
    assert [row["regime"] for row in rows] == ["smaller", "larger"] and rows[0]["t_extra"] is None


def test_resolve_base():
    args = dict(head_dim=128, train_len=4096, tune_len=16384, orig_base=10000)
    assert theory.resolve_base("beta0", **args) == 71738
    assert theory.resolve_base("beta0", 128, 4096, 4096, 10000) == 10000  # T_tune = T_train: exactly b0
    assert [theory.resolve_base(f"beta{i}", **args) for i in (1, 2, 3)] == [10430, 5215, 2608]
    assert theory.resolve_base("original", **args) == 10000
    assert theory.resolve_base(1e6, **args) == 1000000
    assert theory.resolve_base("5e5", **args) == 500000
    with pytest.raises(UserError, match="beta0, beta1, beta2, beta3, original"):
        theory.resolve_base("beta4", **args)


@pytest.mark.parametrize("base", [1, 0.5, -3])
def test_base_must_exceed_one(base):
    with pytest.raises(UserError, match="base must be > 1"):
        theory.t_extra(base, **LLAMA2)
    with pytest.raises(UserError, match="base must be > 1"):
        theory.resolve_base(base, 128, 4096, 4096, 10000)


def test_bad_geometry():
    with pytest.raises(UserError, match="head_dim"):
        theory.critical_dim(127, 4096, 10000)
    with pytest.raises(UserError, match="train_len"):
        theory.critical_dim(128, 6, 10000)


def _write_config(tmp_path, **extra):
    config = {"hidden_size": 576, "num_attention_heads": 9, "max_position_embeddings": 8192, **extra}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    return path


def test_model_geometry(tmp_path):
    nested = _write_config(tmp_path, rope_parameters={"rope_theta": 100000.0, "rope_type": "default"})
    assert theory.model_geometry(nested) == (64, 8192, 100000.0)
    flat = _write_config(tmp_path, rope_theta=500000.0, head_dim=128, rope_scaling={"factor": 8.0})
    assert theory.model_geometry(flat) == (128, 8192, 500000.0)
    missing = _write_config(tmp_path)
    with pytest.raises(UserError, match="rope_theta"):
        theory.model_geometry(missing)


def _predict_json(capsys, *args):
    assert main(["predict", *args, "--format", "json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_cli_json(capsys):
    result = _predict_json(capsys, "--head-dim", "128", "--train-len", "4096", "--rope-base", "1e4",
                           "--tune-len", "16384", "--base", "1e6", "--base", "beta0", "--target-len", "100000")
    assert result["d_extra"] == 92 and round(result["beta0"]) == 71738
    big, beta0 = result["bases"]
    assert big["base"] == 1000000 and round(big["t_extra"]) == 129027 and big["regime"] == "larger"
    assert beta0 == {"base": 71738, "t_extra": None, "d_extra_prime": 92, "regime": "smaller"}
    assert result["targets"][0]["min_base_paper"] == pytest.approx(9.4e5, rel=0.02)


def test_cli_model_config(tmp_path, capsys):
    path = _write_config(tmp_path, rope_parameters={"rope_theta": 100000.0})
    result = _predict_json(capsys, "--model-config", str(path), "--base", "1e6")
    assert (result["head_dim"], result["train_len"], result["orig_base"]) == (64, 8192, 100000.0)
    result = _predict_json(capsys, "--model-config", str(path), "--train-len", "4096")
    assert result["train_len"] == 4096


def test_cli_table(capsys):
    assert main(["predict", "--head-dim", "128", "--train-len", "4096", "--rope-base", "10000",
                 "--base", "500", "--base", "1e6", "--target-len", "1e5"]) == 0
    out = capsys.readouterr().out
    assert "none (smaller base)" in out and "129026.8" in out and "min_base_paper" in out


def test_cli_error(capsys):
    assert main(["predict", "--head-dim", "128", "--train-len", "4096"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--rope-base" in err
