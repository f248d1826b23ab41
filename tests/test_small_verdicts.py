"""docs/results/smollm2_small/verdicts.py: PLAN.md section 3's rules on synthetic result folders.

Each folder has the real column layout (the headers of docs/results/smollm2_law's eval.csv and
law/cells.csv, of docs/results/smollm2's passkey.csv, the Trainer's loss lines). For every part:
one agreeing case, one disagreeing case, the precondition failing, a missing cell.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "docs" / "results" / "smollm2_small" / "verdicts.py"
LAW = ROOT / "docs" / "results" / "smollm2_law"
spec = importlib.util.spec_from_file_location("small_verdicts", SCRIPT)
V = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = V  # dataclasses look their module up there
spec.loader.exec_module(V)

EVAL_HEADER = (LAW / "cells/base/base100000_len8192/eval.csv").read_text().splitlines()[0].split(",")
LAW_HEADER = (LAW / "law/cells.csv").read_text().splitlines()[0].split(",")
PASSKEY_HEADER = (ROOT / "docs/results/smollm2/cells/untuned/base100000_len8192/passkey.csv").read_text() \
    .splitlines()[0].split(",")
LENGTHS_1M = [2048, 4096, 8192, 16384, 32768, 65536, 131072, 262144, 524288, 1000000]
LENGTHS_4W = [2048, 4096, 8192, 16384, 32768, 65536, 131072, 245760]


def write_csv(path: Path, header: list[str], rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=header)
        writer.writeheader()
        writer.writerows({k: row.get(k, "") for k in header} for row in rows)


def cell(root: Path, method: str, base: int, tune_len: int, ppl: dict[int, float], passkey: dict | None = None) -> None:
    """A cell's eval.csv (prefix rows at `ppl`'s lengths, a bucket row each) and passkey.csv (correct of 10)."""
    folder = root / "cells" / method / f"base{base}_len{tune_len}"
    ident = {"model": "smollm2", "method": method, "base": base, "tune_len": tune_len}
    rows = []
    for length, value in ppl.items():
        rows.append({**ident, "scope": "prefix", "start": 0, "end": length, "nll_sum": 1.5 * length,
                     "tokens": length, "ppl": repr(value)})
        rows.append({**ident, "scope": "bucket", "start": length // 2, "end": length, "nll_sum": length,
                     "tokens": length // 2, "ppl": repr(value * 1.01)})
    write_csv(folder / "eval.csv", EVAL_HEADER, rows)
    if passkey is not None:
        prompts = [{**ident, "length": length, "depth": 0.1 * (i % 5), "trial": i // 5, "correct": str(i < hits)}
                   for length, hits in passkey.items() for i in range(10)]
        write_csv(folder / "passkey.csv", PASSKEY_HEADER, prompts)


def curve(at8k: float, rise128: float, rise1m: float = 2.0, lengths=LENGTHS_1M) -> dict[int, float]:
    """ppl at each length: at8k up to 8K, rising to at8k * rise128 at 128K and then rise1m more at 1M."""
    out = {}
    for length in lengths:
        if length <= 8192:
            out[length] = at8k
        elif length <= 131072:
            out[length] = at8k * rise128 ** ((length.bit_length() - 14) / 4)
        else:
            out[length] = at8k * rise128 * rise1m ** ((length - 131072) / (1000000 - 131072))
    return out


def verdict(rows, claim: str) -> str:
    (row,) = [r for r in rows if r.claim == claim]
    return row.verdict


def row_of(rows, claim: str):
    (row,) = [r for r in rows if r.claim == claim]
    return row


# ---------------------------------------------------------------- part a


def part_a(root: Path, ppl: dict[str, float], last_loss: dict[str, str] | None = None, untuned: float = 12.55):
    last_loss = last_loss or {}
    cell(root, "untuned", 100000, 8192, {8192: untuned})
    for method, value in ppl.items():
        cell(root, method, 1304, 8192, {8192: value})
        log = root / "logs/finetune/smollm2" / method / "base1304_len8192.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(" 5%|  | 10/200 [00:13<00:38] {'loss': '6.2', 'grad_norm': '0.53', 'learning_rate': '0.0001'}\n"
                       f" 100%| 200/200 {{'loss': '{last_loss.get(method, '3.1')}', 'grad_norm': '0.4'}}\n"
                       "{'train_runtime': '42.57', 'train_loss': '3.464', 'epoch': '0.95'}\n")


def test_a_lr_star_and_expectations(tmp_path):
    part_a(tmp_path, {"lr1e4": 40.0, "lr3e4": 20.0, "lr1e3": 19.5})
    rows = V.verdicts("a", tmp_path)
    assert verdict(rows, "lr*") == "lr* = 0.0003 (as shipped)"  # 1e-3 within 5%: the smaller wins
    assert verdict(rows, "expectation: lr 1e-4 still > 2x untuned") == "agrees"
    assert verdict(rows, "expectation: 3e-4 or 1e-3 lowest") == "agrees"
    assert verdict(rows, "expectation: 1e-3 may diverge") == "reported (no rule): did not diverge"
    assert verdict(rows, "b's prospects: lr* > 3x untuned") == "within"


def test_a_disagrees_and_lr_changes(tmp_path):
    part_a(tmp_path, {"lr1e4": 15.0, "lr3e4": 20.0, "lr1e3": 40.0})
    rows = V.verdicts("a", tmp_path)
    assert verdict(rows, "lr*") == "lr* = 0.0001 (change finetune.lr before b1)"
    assert verdict(rows, "expectation: lr 1e-4 still > 2x untuned") == "disagrees"
    assert verdict(rows, "expectation: 3e-4 or 1e-3 lowest") == "disagrees"


def test_a_diverged_run_is_excluded(tmp_path):
    part_a(tmp_path, {"lr1e4": 60.0, "lr3e4": 45.0, "lr1e3": 10.0}, last_loss={"lr1e3": "nan", "lr3e4": "6.3"})
    rows = V.verdicts("a", tmp_path)
    assert verdict(rows, "run lr1e3 diverged?") == "excluded (diverged)"
    assert verdict(rows, "run lr3e4 diverged?") == "excluded (diverged)"  # last loss above the first
    assert verdict(rows, "lr*") == "lr* = 0.0001 (change finetune.lr before b1)"
    assert verdict(rows, "b's prospects: lr* > 3x untuned").startswith("above")


def test_a_missing_cell(tmp_path):
    part_a(tmp_path, {"lr1e4": 40.0, "lr3e4": 20.0})
    rows = V.verdicts("a", tmp_path)
    assert verdict(rows, "lr*").startswith("not tested (missing: ")
    assert "lr1e3/base1304_len8192.log" in verdict(rows, "lr*")
    assert "lr1e3/base1304_len8192/eval.csv" in verdict(rows, "lr*")
    assert verdict(rows, "expectation: lr 1e-4 still > 2x untuned") == "agrees"  # reads no lr1e3


# ---------------------------------------------------------------- parts b1, b2

GOOD_KEYS = {2048: 8, 4096: 7, 8192: 6, 16384: 1, 32768: 0}


def part_b(root: Path, small: int, small_curve, control_curve, small_keys=None, control_keys=None, method="base"):
    cell(root, method, small, 8192, small_curve, small_keys or {2048: 2, 4096: 2, 8192: 1, 16384: 0, 32768: 0})
    cell(root, method, 100000, 8192, control_curve, control_keys or GOOD_KEYS)


@pytest.mark.parametrize("pair, method", [(("b1", "b2"), "base"), (("b1x", "b2x"), "steps1000")])
def test_b_agrees(tmp_path, pair, method):
    """b1x and b2x (PLAN.md's amendment 1) are b1 and b2 on the `steps1000` cells, paired with each other; b1's and
    b2's cells (method `base`) beside them are not read: there they would give "not adapted" everywhere."""
    for part, small, small_curve, control_curve in ((pair[0], 1304, curve(7.0, 2.0), curve(6.0, 500.0)),
                                                    (pair[1], 500, curve(7.5, 1.5), curve(6.05, 480.0))):
        part_b(tmp_path / f"part_{part}", small, small_curve, control_curve, method=method)
        if method != "base":
            part_b(tmp_path / f"part_{part}", small, curve(20.0, 1.2), curve(6.0, 500.0))  # an unadapted 'base'
    for part, base in zip(pair, (1304, 500)):
        rows = V.verdicts(part, tmp_path / f"part_{part}")
        assert verdict(rows, f"adapted ({base})") == "adapted"
        for claim in ("B1", "B2", "B3", "B4"):
            assert verdict(rows, f"{claim} ({base})") == "agrees", claim
        assert verdict(rows, "B1, order") == "agrees"
        assert verdict(rows, f"controls of {pair[0]} and {pair[1]}") == "reported: spread <= 2%"
        assert row_of(rows, f"B2 ({base})").note == ""
        assert verdict(rows, f"B4 past T_tune ({base})") == "reported (no rule)"
    (tmp_path / f"part_{pair[1]}/cells/{method}/base500_len8192/eval.csv").unlink()
    rows = V.verdicts(pair[0], tmp_path / f"part_{pair[0]}")
    assert verdict(rows, "B1, order") == \
        f"not tested (missing: {tmp_path}/part_{pair[1]}/cells/{method}/base500_len8192/eval.csv)"
    assert verdict(rows, "B1 (1304)") == "agrees"


def test_b_disagrees(tmp_path):
    # steep rises, a cliff after 128K, above the control at 32K, retrieval as good as the control's
    part_b(tmp_path / "part_b1", 1304, curve(7.0, 2.0, rise1m=8.0), curve(6.0, 500.0), small_keys=GOOD_KEYS)
    part_b(tmp_path / "part_b2", 500, curve(7.5, 3.0, rise1m=8.0), curve(6.5, 1.2), small_keys=GOOD_KEYS)
    rows = V.verdicts("b2", tmp_path / "part_b2")
    for claim in ("B1", "B2", "B3", "B4"):
        assert verdict(rows, f"{claim} (500)") == "disagrees", claim
    assert verdict(rows, "B1, order") == "disagrees"
    assert verdict(rows, "controls of b1 and b2") == "reported: spread > 2%"
    assert "spread b1/b2 8.3% > 2%" in row_of(rows, "B2 (500)").note
    assert row_of(rows, "B1 (500)").note == ""
    assert verdict(V.verdicts("b1", tmp_path / "part_b1"), "B3 (1304)") == "disagrees"


def test_b4_unsettled_and_untested(tmp_path):
    part_b(tmp_path / "part_b1", 1304, curve(7.0, 2.0), curve(6.0, 500.0),
           small_keys={2048: 5, 4096: 7, 8192: 6, 16384: 0, 32768: 0})
    assert verdict(V.verdicts("b1", tmp_path / "part_b1"), "B4 (1304)") == "unsettled at 10 prompts"
    part_b(tmp_path / "part_b1", 1304, curve(7.0, 2.0), curve(6.0, 500.0),
           control_keys={2048: 5, 4096: 5, 8192: 3, 16384: 0, 32768: 0})
    assert verdict(V.verdicts("b1", tmp_path / "part_b1"), "B4 (1304)").startswith("not tested (the control")


def test_b_not_adapted(tmp_path):
    part_b(tmp_path / "part_b1", 1304, curve(9.1, 1.2), curve(6.0, 500.0))
    part_b(tmp_path / "part_b2", 500, curve(8.9, 1.2), curve(6.0, 500.0))
    rows = V.verdicts("b1", tmp_path / "part_b1")
    assert verdict(rows, "adapted (1304)") == "not adapted"  # 9.1 > 1.5 x 6.0
    for claim in ("B1 (1304)", "B2 (1304)", "B3 (1304)", "B4 (1304)", "B1, order"):
        assert verdict(rows, claim) == "not tested (flat but not adapted)", claim
    rows = V.verdicts("b2", tmp_path / "part_b2")
    assert verdict(rows, "B1 (500)") == "agrees"
    assert verdict(rows, "B1, order") == "not tested (flat but not adapted)"  # b1's base is not adapted


def test_b_missing_cell_and_length(tmp_path):
    part_b(tmp_path / "part_b1", 1304, curve(7.0, 2.0), curve(6.0, 500.0))
    lengths = [x for x in LENGTHS_1M if x != 1000000]
    cell(tmp_path / "part_b1", "base", 1304, 8192, curve(7.0, 2.0, lengths=lengths))  # no 1M row
    rows = V.verdicts("b1", tmp_path / "part_b1")
    assert verdict(rows, "B1 (1304)") == "agrees"
    assert verdict(rows, "B3 (1304)") == (
        f"not tested (missing: {tmp_path}/part_b1/cells/base/base1304_len8192/eval.csv (no prefix row at 1000000))")
    assert verdict(rows, "B1, order") == (f"not tested (missing: {tmp_path}/part_b2/cells/base/base500_len8192/eval.csv, "
                                          f"{tmp_path}/part_b2/cells/base/base100000_len8192/eval.csv)")
    (tmp_path / "part_b1/cells/base/base100000_len8192/eval.csv").unlink()
    rows = V.verdicts("b1", tmp_path / "part_b1")
    assert verdict(rows, "adapted (1304)").startswith("not tested (missing: ")
    assert verdict(rows, "B2 (1304)").startswith("not tested (missing: ")


# ---------------------------------------------------------------- part c

def part_c(root: Path, bounds: dict[int, float], ppl32: dict[int, float], censored: dict[int, str] | None = None):
    predicted = {100000: 16384, 200000: 16384, 304201: 16384, 500000: 22911.0, 1000000: 35333.0}
    rows = [{"model": "smollm2", "method": "base", "base": base, "tune_len": 16384, "predicted_bound": predicted[base],
             "measured_bound": bound, "censored": (censored or {}).get(base, "no"),
             "ratio_measured_to_predicted": bound / predicted[base]} for base, bound in bounds.items()]
    write_csv(root / "law/cells.csv", LAW_HEADER, rows)
    for base, value in ppl32.items():
        cell(root, "base", base, 16384, {8192: 12.0, 32768: value, 65536: 2 * value}, passkey=None)


C_BOUNDS = {100000: 21000.0, 200000: 22000.0, 304201: 23000.0, 500000: 30000.0, 1000000: 48000.0}


def test_c_agrees(tmp_path):
    part_c(tmp_path, C_BOUNDS, {100000: 100.0, 200000: 115.0, 304201: 120.0, 500000: 60.0, 1000000: 30.0})
    rows = V.verdicts("c", tmp_path)
    assert [verdict(rows, c) for c in ("C1: beta > beta0 follow T_extra", "C2: beta <= beta0 bounded near T_tune",
                                       "C3: larger bases first get worse")] == ["agrees"] * 3


def test_c_disagrees(tmp_path):
    bounds = {**C_BOUNDS, 304201: 25900.0, 1000000: 29000.0}  # 304,201 > 1.19 x 1e5's; 1e6 below 5e5 and C < 1.2
    part_c(tmp_path, bounds, {100000: 100.0, 200000: 90.0, 304201: 80.0, 500000: 60.0, 1000000: 30.0})
    rows = V.verdicts("c", tmp_path)
    assert [verdict(rows, c) for c in ("C1: beta > beta0 follow T_extra", "C2: beta <= beta0 bounded near T_tune",
                                       "C3: larger bases first get worse")] == ["disagrees"] * 3


def test_c_unsettled_and_censored(tmp_path):
    # C1: 1e6 right-censored at 40K (inside its range): unsettled; C2: 2e5 > 1.19 x 1e5 but 304,201 is not: unsettled
    bounds = {**C_BOUNDS, 200000: 25500.0, 1000000: 40000.0}
    part_c(tmp_path, bounds, {100000: 100.0, 200000: 105.0, 304201: 120.0, 500000: 60.0, 1000000: 30.0},
           censored={1000000: "right"})
    rows = V.verdicts("c", tmp_path)
    assert verdict(rows, "C1: beta > beta0 follow T_extra") == "unsettled"
    assert verdict(rows, "C2: beta <= beta0 bounded near T_tune") == "unsettled"  # 25,500 > 1.19 x 21,000, in range
    part_c(tmp_path, {**C_BOUNDS, 100000: 20000.0, 200000: 24000.0, 304201: 23500.0},
           {100000: 100.0, 200000: 100.0, 304201: 105.0, 500000: 110.0, 1000000: 30.0})
    rows = V.verdicts("c", tmp_path)
    assert verdict(rows, "C1: beta > beta0 follow T_extra") == "agrees"
    assert verdict(rows, "C3: larger bases first get worse") == "unsettled"


def test_c_missing_cell(tmp_path):
    bounds = {k: v for k, v in C_BOUNDS.items() if k != 500000}
    part_c(tmp_path, bounds, {100000: 100.0, 200000: 115.0, 304201: 120.0, 1000000: 30.0})
    rows = V.verdicts("c", tmp_path)
    assert verdict(rows, "C1: beta > beta0 follow T_extra") == (
        f"not tested (missing: {tmp_path}/law/cells.csv (no row for base 500000 at 16384))")
    assert verdict(rows, "C2: beta <= beta0 bounded near T_tune") == "agrees"
    assert verdict(rows, "C3: larger bases first get worse") == (
        f"not tested (missing: {tmp_path}/cells/base/base500000_len16384/eval.csv)")


# ---------------------------------------------------------------- part d

def part_d(root: Path, base_curve, logn_curve, b1: bool = True):
    keys = {2048: 8, 4096: 7, 8192: 6, 16384: 4, 32768: 2}
    cell(root / "part_d", "base", 500, 16384, base_curve, keys)
    cell(root / "part_d", "base_logn", 500, 16384, logn_curve, keys)
    if b1:
        cell(root / "part_b1", "base", 100000, 8192, curve(6.0, 500.0), GOOD_KEYS)


def logn_of(base_curve: dict, rise: float) -> dict:
    """base_logn: base's values up to 16K (the same computation), a rise of `rise` from 128K to 1M."""
    return {L: v if L <= 16384 else (v if L <= 131072 else base_curve[131072] * rise ** ((L - 131072) / 868928))
            for L, v in base_curve.items()}


def test_d_agrees(tmp_path):
    base = curve(7.0, 1.5, rise1m=5.6)
    part_d(tmp_path, base, logn_of(base, 2.1))
    rows = V.verdicts("d", tmp_path / "part_d")
    assert verdict(rows, "precondition: 500 at 16K adapted") == "adapted"
    assert verdict(rows, "base = base_logn up to 16K") == "agrees"
    assert verdict(rows, "D1: log-scaled attention flattens the curve") == "agrees"
    assert verdict(rows, "D2: the recipe reaches 1M") == "agrees"
    assert verdict(rows, "D3: retrieval (base_logn)") == "reported (no rule)"
    assert "control 8K = 6/10" in row_of(rows, "D3: retrieval (base)").inputs
    assert "b1_control_ppl_8K = 6" in row_of(rows, "precondition: 500 at 16K adapted").inputs


def test_d_disagrees(tmp_path):
    base = curve(7.0, 1.5, rise1m=3.0)
    part_d(tmp_path, base, logn_of(base, 4.0))
    rows = V.verdicts("d", tmp_path / "part_d")
    assert verdict(rows, "D1: log-scaled attention flattens the curve") == "disagrees"
    assert verdict(rows, "D2: the recipe reaches 1M") == "disagrees"


def test_d_not_adapted_and_bug_check(tmp_path):
    base = curve(10.2, 1.5, rise1m=5.6)  # above 10.1
    part_d(tmp_path, base, logn_of(base, 2.1), b1=False)
    rows = V.verdicts("d", tmp_path / "part_d")
    assert verdict(rows, "precondition: 500 at 16K adapted") == "not adapted"
    assert verdict(rows, "D1: log-scaled attention flattens the curve") == "not tested (not adapted)"
    assert verdict(rows, "D2: the recipe reaches 1M") == "not tested (not adapted)"
    assert "part_b1/cells/base/base100000_len8192/passkey.csv" in verdict(rows, "D3: retrieval (base)")
    base = curve(7.0, 1.5, rise1m=5.6)
    logn = logn_of(base, 2.1)
    logn[16384] = base[16384] * (1 + 1e-15)  # the last digit
    part_d(tmp_path, base, logn)
    rows = V.verdicts("d", tmp_path / "part_d")
    assert verdict(rows, "base = base_logn up to 16K") == "disagrees (a bug, not a result)"
    assert "prefix 16384" in row_of(rows, "base = base_logn up to 16K").inputs
    assert verdict(rows, "D2: the recipe reaches 1M").startswith("not tested (bug")


def test_d_missing_cell(tmp_path):
    base = curve(7.0, 1.5, rise1m=5.6)
    part_d(tmp_path, base, logn_of(base, 2.1))
    (tmp_path / "part_d/cells/base_logn/base500_len16384/eval.csv").unlink()
    rows = V.verdicts("d", tmp_path / "part_d")
    assert verdict(rows, "precondition: 500 at 16K adapted") == "adapted"
    missing = f"not tested (missing: {tmp_path}/part_d/cells/base_logn/base500_len16384/eval.csv)"
    assert verdict(rows, "base = base_logn up to 16K") == missing
    assert verdict(rows, "D1: log-scaled attention flattens the curve") == missing


# ---------------------------------------------------------------- the command

def test_command_writes_markdown_and_csv(tmp_path):
    part_c(tmp_path, C_BOUNDS, {100000: 100.0, 200000: 115.0, 304201: 120.0, 500000: 60.0, 1000000: 30.0})
    out = subprocess.run([sys.executable, str(SCRIPT), "c", str(tmp_path), "--csv", str(tmp_path / "v.csv")],
                         capture_output=True, text=True, check=True).stdout
    assert out.splitlines()[0] == "| part | claim | inputs | threshold | verdict | note |"
    with (tmp_path / "v.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["verdict"] for r in rows] == ["agrees"] * 3
    assert "bound 500,000 = 30,000 (C = 1.31)" in rows[0]["inputs"]


@pytest.mark.parametrize("part", ["a", "b1", "b2", "b1x", "b2x", "c", "d", "d2"])
def test_empty_folder_is_not_tested_not_a_traceback(tmp_path, part):
    rows = V.verdicts(part, tmp_path)
    assert rows and all(r.verdict.startswith("not tested") for r in rows), [r.verdict for r in rows]


def test_c_censored_outside_the_range_disagrees(tmp_path):
    # 304,201 right-censored at 245,760: at least that, far above 26.2K
    part_c(tmp_path, {**C_BOUNDS, 304201: 245760.0}, {100000: 100.0, 200000: 115.0, 304201: 120.0, 500000: 60.0,
                                                       1000000: 30.0}, censored={304201: "right"})
    rows = V.verdicts("c", tmp_path)
    assert verdict(rows, "C2: beta <= beta0 bounded near T_tune") == "disagrees"
    assert ">= 245,760" in row_of(rows, "C2: beta <= beta0 bounded near T_tune").inputs


@pytest.mark.parametrize("bounds, claim", [
    ({500000: 25000.0}, "C1: beta > beta0 follow T_extra"),       # C = 1.09 < 1.2
    ({1000000: 60000.0}, "C1: beta > beta0 follow T_extra"),      # C = 1.70 > 1.6
    ({200000: 19000.0}, "C2: beta <= beta0 bounded near T_tune"),  # below 19,661
    ({304201: 27000.0}, "C2: beta <= beta0 bounded near T_tune"),  # above 26,214
])
def test_c_bound_outside_its_range_disagrees(tmp_path, bounds, claim):
    part_c(tmp_path, {**C_BOUNDS, **bounds}, {100000: 100.0, 200000: 115.0, 304201: 120.0, 500000: 60.0,
                                              1000000: 30.0})
    assert verdict(V.verdicts("c", tmp_path), claim) == "disagrees"


def test_c3_worse_but_not_falling_is_unsettled(tmp_path):
    part_c(tmp_path, C_BOUNDS, {100000: 100.0, 200000: 115.0, 304201: 120.0, 500000: 125.0, 1000000: 30.0})
    assert verdict(V.verdicts("c", tmp_path), "C3: larger bases first get worse") == "unsettled"


def test_b4_reads_the_lengths_where_the_control_retrieves(tmp_path):
    # the control retrieves 6/10 only at 8K, where the small base drops to 1/10
    part_b(tmp_path / "part_b1", 1304, curve(7.0, 2.0), curve(6.0, 500.0),
           small_keys={2048: 5, 4096: 5, 8192: 1, 16384: 0, 32768: 0},
           control_keys={2048: 5, 4096: 5, 8192: 6, 16384: 0, 32768: 0})
    assert verdict(V.verdicts("b1", tmp_path / "part_b1"), "B4 (1304)") == "agrees"


def test_b2_control_below_at_one_length_disagrees(tmp_path):
    small = curve(7.0, 2.0)
    control = {**curve(6.0, 500.0), 32768: small[32768] * 0.9}  # above at 128K, below at 32K
    part_b(tmp_path / "part_b1", 1304, small, control)
    assert verdict(V.verdicts("b1", tmp_path / "part_b1"), "B2 (1304)") == "disagrees"


@pytest.mark.parametrize("logn_128k, logn_1m, expected", [
    (9.0, 48.0, "unsettled"),   # lower at 1M, but a steeper rise (5.33 > 5)
    (10.0, 50.0, "unsettled"),  # equal at 1M
    (10.0, 45.0, "agrees"),
    (10.0, 52.0, "disagrees"),
])
def test_d1_needs_both_lower_1m_and_flatter_rise(tmp_path, logn_128k, logn_1m, expected):
    base = {**curve(6.0, 1.5, lengths=[L for L in LENGTHS_1M if L <= 65536]), 131072: 10.0, 262144: 20.0,
            524288: 30.0, 1000000: 50.0}
    logn = {**base, 131072: logn_128k, 1000000: logn_1m}
    part_d(tmp_path, base, logn)
    assert verdict(V.verdicts("d", tmp_path / "part_d"), "D1: log-scaled attention flattens the curve") == expected


def test_c1_right_censored_above_its_range_disagrees(tmp_path):
    part_c(tmp_path, {**C_BOUNDS, 1000000: 245760.0}, {100000: 100.0, 200000: 115.0, 304201: 120.0, 500000: 60.0,
                                                        1000000: 30.0}, censored={1000000: "right"})
    assert verdict(V.verdicts("c", tmp_path), "C1: beta > beta0 follow T_extra") == "disagrees"


@pytest.mark.parametrize("part", ["a", "b1", "b2", "c", "d"])
@pytest.mark.parametrize("study", ["smollm2", "smollm2_law"])
def test_real_tables_of_earlier_studies(tmp_path, part, study):
    """The earlier studies' tables (older columns, other cells): verdicts or "not tested", no traceback."""
    rows = V.verdicts(part, ROOT / "docs/results" / study, other=tmp_path)
    assert all(r.verdict for r in rows)
    if study == "smollm2" and part == "b1":
        # docs/results/smollm2 tuned beta3 = 1304 at 8K for 40 steps of Shakespeare: ppl_8K 207 against the
        # control's 9.7, PLAN.md's "flat but not adapted"
        assert verdict(rows, "adapted (1304)") == "not adapted"
        assert verdict(rows, "B1 (1304)") == "not tested (flat but not adapted)"
    if part == "a":
        assert "ppl_8K untuned = " + {"smollm2": "10.83", "smollm2_law": "12.55"}[study] in \
            row_of(rows, "expectation: lr 1e-4 still > 2x untuned").inputs  # PLAN.md 3.1's 12.55


def test_b_against_the_untuned_model_reads_only_the_same_tokens(tmp_path):
    """The reported row of b1x (PLAN.md): ppl_8K over the untuned model's on the same 8,191 tokens, read from
    part a only while both parts' first evaluation row is the same text; another offset is 'not comparable', and
    without part a the row is missing, not a traceback."""
    import shutil

    for part in ("part_a", "part_b1x"):
        shutil.copytree(ROOT / "docs/results/smollm2_small" / part, tmp_path / part)
    row = row_of(V.verdicts("b1x", tmp_path / "part_b1x"), "against the untuned model (8K)")
    assert row.verdict == "reported (no rule)"
    assert row.inputs == ("untuned_ppl_8K = 6.757; tokens = 8191; small_over_untuned = 2.384; "
                          "control_over_untuned = 1.773")
    manifest = tmp_path / "part_a/data/eval_len245760/manifest.json"
    record = json.loads(manifest.read_text())
    record["rows"][0]["offset"] = 4096
    manifest.write_text(json.dumps(record))
    row = row_of(V.verdicts("b1x", tmp_path / "part_b1x"), "against the untuned model (8K)")
    assert row.verdict == "not comparable (other tokens)"
    shutil.rmtree(tmp_path / "part_a")
    row = row_of(V.verdicts("b1x", tmp_path / "part_b1x"), "against the untuned model (8K)")
    assert row.verdict.startswith(f"not tested (missing: {tmp_path}/part_a/data/eval_len245760/manifest.json")


@pytest.mark.parametrize("part", ["a", "b1", "b1x", "b2x", "c", "d2", "e"])
def test_published_parts_give_their_committed_verdicts(part, monkeypatch):
    """docs/results/smollm2_small/part_a, part_b1, part_b1x, part_b2x, part_c (ran 2026-12-02), part_d2 and part_e (2026-12-03): the
    rules, run again on the
    published tables, give the verdicts.csv committed beside them. Rows that read a partner part (b2) say "missing"
    until it is published; then this fails until the verdicts.csv is written again with both (PLAN.md section 9)."""
    monkeypatch.chdir(ROOT)  # as PLAN.md's command runs it: the "missing" notes name paths from the root
    published = Path(f"docs/results/smollm2_small/part_{part}")
    rows = V.verdicts(part, published)
    with (published / "verdicts.csv").open() as f:
        committed = [(r["claim"], r["inputs"], r["verdict"]) for r in csv.DictReader(f)]
    assert [(r.claim, r.inputs, r.verdict) for r in rows] == committed
    if part == "a":  # the lr* that set config/smollm2_small.yaml's finetune.lr
        assert verdict(rows, "lr*") == "lr* = 0.001 (change finetune.lr before b1)"
        from ropelaw.config import load_yaml
        assert load_yaml(ROOT / "config/smollm2_small.yaml")["finetune"]["lr"] == 1e-3
    elif part == "b1":  # PLAN.md's results: beta3 at 1.61x its control, so B1 to B4 are not tested
        assert verdict(rows, "adapted (1304)") == "not adapted"
        assert row_of(rows, "adapted (1304)").inputs == "ppl_8K = 15.86; control_ppl_8K = 9.836"
        assert verdict(rows, "B4 (1304)") == "not tested (flat but not adapted)"
    elif part == "b1x":  # 1,000 steps: beta3 at 1.34x a control that rose to 11.98, so B1 to B4 are read, and agree
        assert row_of(rows, "adapted (1304)").inputs == "ppl_8K = 16.11; control_ppl_8K = 11.98"
        assert [verdict(rows, f"{claim} (1304)") for claim in ("adapted", "B1", "B2", "B3", "B4")] == \
            ["adapted", "agrees", "agrees", "agrees", "agrees"]
    if part in ("b1x", "b2x"):  # paired: 500 rises faster than beta3 from 8K to 128K (1.652 against 1.572)
        assert verdict(rows, "B1, order") == "disagrees"
        assert row_of(rows, "controls of b1x and b2x").verdict == "reported: spread <= 2%"
    if part == "b2x":  # 500 at 1.48x the control (12.02): adapted, just; B1 to B4 read and agree
        assert row_of(rows, "adapted (500)").inputs == "ppl_8K = 17.83; control_ppl_8K = 12.02"
        assert [verdict(rows, f"{claim} (500)") for claim in ("adapted", "B1", "B2", "B3", "B4")] == \
            ["adapted", "agrees", "agrees", "agrees", "agrees"]
    if part == "c":  # the bounds above beta0 follow T_extra; those below grow with beta; 1e5 is the worst at 32K
        assert [r.verdict for r in rows] == ["agrees", "disagrees", "disagrees"]
        assert row_of(rows, "C1: beta > beta0 follow T_extra").inputs == \
            "bound 500,000 = 32,100 (C = 1.4); bound 1,000,000 = 53,801 (C = 1.52)"
        assert "ppl_32K 100,000 = 95.9" in row_of(rows, "C3: larger bases first get worse").inputs
    if part == "d2":  # 500 at 16K not adapted (2.70x the control); the 1M recipe's D1, D2 read anyway and agree; the
        # control below 500 at 32K (B2 at 16K disagrees), far above it at 128K; no retrieval by 500 at all
        assert row_of(rows, "adapted (500 at 16K)").inputs == "ppl_8K = 28.66; control_ppl_8K = 10.61"
        assert [r.verdict for r in rows][:8] == ["not adapted", "reported: not met", "agrees", "agrees", "agrees",
                                                 "disagrees", "agrees", "agrees"]
        assert "steps600_logn 1M/128K = 1.537" in row_of(rows, "D2: the recipe reaches 1M").inputs


# ---------------------------------------------------------------- part d2 (PLAN.md amendment 2)

def recipe_cells(root: Path, part: str, method: str, small_curve, logn_curve, control_curve, small_keys, control_keys):
    """500 at 16K tuned by `method`, its log-scaled twin (`method`_logn), and the control: part d2's steps600 cell."""
    small_keys = small_keys or {2048: 1, 4096: 0, 8192: 0, 16384: 0, 32768: 0}
    cell(root / f"part_{part}", method, 500, 16384, small_curve, small_keys)
    cell(root / f"part_{part}", f"{method}_logn", 500, 16384, logn_curve, small_keys)
    cell(root / "part_d2", "steps600", 100000, 16384, control_curve, control_keys)


def part_d2(root: Path, small_curve, logn_curve, control_curve, small_keys=None, control_keys=None):
    recipe_cells(root, "d2", "steps600", small_curve, logn_curve, control_curve, small_keys,
                 control_keys or {2048: 9, 4096: 7, 8192: 6, 16384: 6, 32768: 1})


def test_d2_agrees_against_its_own_control(tmp_path):
    small = curve(14.0, 1.5, rise1m=3.0)
    part_d2(tmp_path, small, logn_of(small, 2.1), curve(10.0, 300.0))
    rows = V.verdicts("d2", tmp_path / "part_d2")
    assert verdict(rows, "adapted (500 at 16K)") == "adapted"
    assert verdict(rows, "d's first precondition (ppl_8K <= 10.1)") == "reported: not met"
    assert verdict(rows, "steps600 = steps600_logn up to 16K") == "agrees"
    assert [verdict(rows, c) for c in ("D1: log-scaled attention flattens the curve", "D2: the recipe reaches 1M",
                                       "B2 at 16K (500)", "D3: retrieval (steps600)", "D3: retrieval (steps600_logn)")] \
        == ["agrees", "agrees", "agrees", "agrees", "agrees"]
    assert "control 16K = 6/10" in row_of(rows, "D3: retrieval (steps600)").inputs
    assert all(r.note == "" for r in rows)


def test_d2_reads_d1_and_d2_when_500_is_not_adapted(tmp_path):
    """Amendment 2: D1 and D2 compare two evaluations of one model, so they are judged either way; the note says
    the precondition failed. Retrieval counts lengths up to T_tune = 16K, where the control may be the only one."""
    small = curve(16.0, 1.5, rise1m=3.0)  # 1.6 x the control
    logn = logn_of(small, 4.0)
    part_d2(tmp_path, small, logn, curve(10.0, 300.0), small_keys={2048: 5, 4096: 5, 8192: 5, 16384: 0, 32768: 0},
            control_keys={2048: 5, 4096: 5, 8192: 5, 16384: 6, 32768: 0})
    rows = V.verdicts("d2", tmp_path / "part_d2")
    assert verdict(rows, "adapted (500 at 16K)") == "not adapted"
    assert verdict(rows, "D1: log-scaled attention flattens the curve") == "disagrees"
    assert verdict(rows, "D2: the recipe reaches 1M") == "disagrees"
    assert row_of(rows, "D2: the recipe reaches 1M").note == "500 not adapted (1.60 x the control at 8K)"
    assert verdict(rows, "D3: retrieval (steps600)") == "agrees"  # at 16K only: 0/10 against 6/10


def test_d2_bug_check_and_missing_control(tmp_path):
    small = curve(14.0, 1.5, rise1m=3.0)
    logn = logn_of(small, 2.1)
    logn[8192] = small[8192] * (1 + 1e-15)
    part_d2(tmp_path, small, logn, curve(10.0, 300.0))
    rows = V.verdicts("d2", tmp_path / "part_d2")
    assert verdict(rows, "steps600 = steps600_logn up to 16K") == "disagrees (a bug, not a result)"
    assert verdict(rows, "D1: log-scaled attention flattens the curve").startswith("not tested (bug")
    (tmp_path / "part_d2/cells/steps600/base100000_len16384/eval.csv").unlink()
    rows = V.verdicts("d2", tmp_path / "part_d2")
    missing = f"not tested (missing: {tmp_path}/part_d2/cells/steps600/base100000_len16384/eval.csv)"
    assert verdict(rows, "adapted (500 at 16K)") == missing and verdict(rows, "B2 at 16K (500)") == missing


# ---------------------------------------------------------------- part e (PLAN.md amendment 3)

def part_e(root: Path, small_curve, logn_curve, control_curve, small_keys=None, control_keys=None):
    """Part e's two cells (500 tuned 900 steps, and with log-scaled attention) and part d2's control."""
    recipe_cells(root, "e", "steps900", small_curve, logn_curve, control_curve, small_keys,
                 control_keys or {2048: 7, 4096: 5, 8192: 5, 16384: 3, 32768: 0})


def test_e_reads_d2s_control(tmp_path):
    """500 at 1.4x d2's control: adapted; B2 and D3 read d2's control, not a control of part e."""
    small = curve(14.0, 1.5, rise1m=3.0)
    part_e(tmp_path, small, logn_of(small, 2.1), curve(10.0, 300.0))
    rows = V.verdicts("e", tmp_path / "part_e")
    assert verdict(rows, "adapted (500 at 16K, 900 steps)") == "adapted"
    assert row_of(rows, "adapted (500 at 16K, 900 steps)").inputs == "ppl_8K = 14; control_ppl_8K = 10"
    assert row_of(rows, "adapted (500 at 16K, 900 steps)").threshold == "ppl_8K <= 1.5 x d2's control's"
    assert [verdict(rows, c) for c in ("steps900 = steps900_logn up to 16K",
                                       "D1: log-scaled attention flattens the curve", "D2: the recipe reaches 1M",
                                       "B2 at 16K (500)", "D3: retrieval (steps900)",
                                       "D3: retrieval (steps900_logn)")] == ["agrees"] * 6
    assert "control 2K = 7/10" in row_of(rows, "D3: retrieval (steps900)").inputs
    assert "control_ppl_128K = 3000" in row_of(rows, "B2 at 16K (500)").inputs
    assert all(r.note == "" for r in rows)


def test_e_not_adapted_and_missing_control(tmp_path):
    small = curve(16.5, 1.5, rise1m=3.0)  # 1.65 x d2's control
    part_e(tmp_path, small, logn_of(small, 2.1), curve(10.0, 300.0))
    rows = V.verdicts("e", tmp_path / "part_e")
    assert verdict(rows, "adapted (500 at 16K, 900 steps)") == "not adapted"
    assert row_of(rows, "D2: the recipe reaches 1M").note == "500 not adapted (1.65 x d2's control at 8K)"
    (tmp_path / "part_d2/cells/steps600/base100000_len16384/eval.csv").unlink()
    rows = V.verdicts("e", tmp_path / "part_e")
    missing = f"not tested (missing: {tmp_path}/part_d2/cells/steps600/base100000_len16384/eval.csv)"
    assert verdict(rows, "adapted (500 at 16K, 900 steps)") == missing
    assert verdict(rows, "B2 at 16K (500)") == missing


def test_a_part_published_unfinished_says_so_in_every_row(tmp_path):
    """gpu_study.sh publish with PUBLISH_UNFINISHED=1 leaves DEST/UNFINISHED; the verdicts of that part, and of a part
    that reads it, carry it in every row's note."""
    small = curve(16.5, 1.5, rise1m=3.0)
    part_e(tmp_path, small, logn_of(small, 2.1), curve(10.0, 300.0))
    (tmp_path / "part_d2/UNFINISHED").write_text("7 of 20 steps (35%) done\n")
    rows = V.verdicts("e", tmp_path / "part_e")
    flag = f"part_d2 unfinished ({tmp_path / 'part_d2/UNFINISHED'})"
    assert all(r.note.endswith(flag) for r in rows)
    assert row_of(rows, "D2: the recipe reaches 1M").note == f"500 not adapted (1.65 x d2's control at 8K); {flag}"
    (tmp_path / "part_d2/UNFINISHED").unlink()
    assert not any("unfinished" in r.note for r in V.verdicts("e", tmp_path / "part_e"))


def test_e_in_distribution_is_unpaired_against_d2s_control(tmp_path):
    small = curve(14.0, 1.5, rise1m=3.0)
    part_e(tmp_path, small, logn_of(small, 2.1), curve(10.0, 300.0))
    epochs = [0.2, 0.4, 0.6, 0.8, 0.9, 1.0]
    _training_log(tmp_path / "part_e/logs/finetune/smollm2/steps900/base500_len16384.log",
                  list(zip([3.0, 2.0, 1.6, 1.6, 1.6, 1.6], epochs)))
    _training_log(tmp_path / "part_d2/logs/finetune/smollm2/steps600/base100000_len16384.log",
                  list(zip([2.0, 1.5, 1.4, 1.4, 1.4, 1.4], epochs)))
    row = row_of(V.verdicts("e", tmp_path / "part_e"), "in-distribution (500, first-pass training loss, unpaired)")
    assert row.verdict == "reported (no rule)" and "other rows, other steps" in row.threshold
    assert row.inputs.startswith("small_loss = 1.68; control_loss = 1.42; gap = 0.26")


def _training_log(path: Path, losses_by_epoch: list[tuple[float, float]]) -> None:
    """A fine-tune log as transformers writes it: a progress bar, then one dict per logging step."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f" 50%|#### | {i}/900 [00:10<00:10] {{'loss': '{loss}', 'grad_norm': '0.5', "
                            f"'learning_rate': '0.001', 'epoch': '{epoch}'}}\n"
                            for i, (loss, epoch) in enumerate(losses_by_epoch))
                    + "{'train_runtime': '42.57', 'train_loss': '3.464', 'epoch': '2.0'}\n")


def test_in_distribution_reads_the_first_epoch_only(tmp_path):
    """The reported in-distribution row (written after b2x): the mean logged loss of the last 5 logs of epoch 1 (rows
    read for the first time), small base minus control, and exp of the gap. Later epochs (rows read again) and
    the final summary line are not read."""
    root = tmp_path / "part_b1x"
    part_b(root, 1304, curve(7.0, 2.0), curve(6.0, 500.0), method="steps1000")
    logs = root / "logs/finetune/smollm2/steps1000"
    epochs = [0.2, 0.4, 0.6, 0.8, 0.9, 1.0, 1.2, 1.4]
    _training_log(logs / "base1304_len8192.log", list(zip([3.0, 2.0, 1.5, 1.4, 1.4, 1.4, 0.1, 0.1], epochs)))
    _training_log(logs / "base100000_len8192.log", list(zip([2.0, 1.5, 1.2, 1.2, 1.2, 1.2, 0.1, 0.1], epochs)))
    row = row_of(V.verdicts("b1x", root), "in-distribution (1304, first-pass training loss)")
    assert row.verdict == "reported (no rule)"
    assert row.inputs == ("small_loss = 1.54; control_loss = 1.26; gap = 0.28; ppl_ratio = 1.323; "
                          "ppl_ratio_per_log = 1.221-1.649")
    _training_log(logs / "base100000_len8192.log", list(zip([1.2] * 4, [0.2, 0.4, 1.2, 1.4])))
    row = row_of(V.verdicts("b1x", root), "in-distribution (1304, first-pass training loss)")
    assert row.verdict.startswith("not tested (missing:") and "fewer than 5 logged losses" in row.verdict


# --- the claims (issue 15, item 3) ----------------------------------------------------------------
def test_every_claim_reads_rows_its_part_writes(tmp_path):
    """A rule name in CLAIMS that no part writes would read "missing from verdicts.csv" forever: each must be a row of
    its part (and each part's precondition row), as the part's rules name them on an empty folder."""
    for part in {part for by_part in V.CLAIMS.values() for part in by_part}:
        names = {r.claim for r in V.verdicts(part, tmp_path / f"part_{part}")}
        wanted = {rule for by_part in V.CLAIMS.values() for rule in by_part.get(part, [])}
        assert wanted <= names, (part, wanted - names)
        assert part not in V.PRECONDITION or V.PRECONDITION[part] in names, part


def _published_verdicts(study: Path, part: str, rows: list[tuple[str, str, str]]) -> None:
    write_csv(study / f"part_{part}/verdicts.csv", V.COLUMNS,
              [{"part": part, "claim": c, "inputs": i, "threshold": "t", "verdict": v} for c, i, v in rows])


def test_claims_read_the_published_verdicts_and_name_what_has_not_run(tmp_path):
    _published_verdicts(tmp_path, "b1x", [("adapted (1304)", "ppl_8K = 16", "adapted"),
                                          ("B1 (1304)", "ratio = 1.5", "agrees"), ("B3 (1304)", "ratio = 9", "disagrees"),
                                          ("B4 (1304)", "2K = 1/10", "unsettled at 10 prompts")])
    _published_verdicts(tmp_path, "b2x", [("B1 (500)", "ratio = 1.6", "agrees")])
    rows = V.claims(tmp_path)
    got = {(r["part"], r["rule"]): r for r in rows}
    assert got["b1x", "B1 (1304)"]["verdict"] == "agrees" and got["b1x", "B1 (1304)"]["inputs"] == "ratio = 1.5"
    assert got["b1x", "B1 (1304)"]["precondition"] == "adapted (ppl_8K = 16)"
    assert got["b2x", "B1 (500)"]["precondition"] == ""  # b2x published no precondition row
    assert got["b2x", "B3 (500)"]["verdict"] == f"missing from {tmp_path.name}/part_b2x/verdicts.csv"
    assert {r["verdict"] for r in rows if r["part"] in ("c", "d2", "e")} == {"not run"}
    counts = V.claims_markdown(rows).split("\n\n")[1].splitlines()
    assert counts[0] == "- small bases rise slowly, with no bound (Thm 1): agrees 2, disagrees 1, missing 1"
    assert "- small bases lose retrieval (Men et al. 2024): unsettled 1, missing 1, not run 4" in counts
    assert "- critical base beta0 at 16K (C3: 10000 no longer the worst base): not run 3" in counts


def test_tokens_trained_are_read_from_the_model_manifests(tmp_path, capsys):
    manifest = {"spec": {"steps": 600, "global_batch_size": 4}, "tune_len": 16384, "rows_per_epoch": 3600,
                "epochs": 1, "final_loss": 1.25, "attempts": [{"outcome": "completed"}]}
    cell = tmp_path / "part_d2/cells/steps600/base500_len16384"
    cell.mkdir(parents=True)
    (cell / "model_manifest.json").write_text(json.dumps(manifest))
    manifest["spec"]["steps"] = 1000  # 4,000 rows: more than an epoch of 3,600
    (tmp_path / "part_c/cells/base/base200000_len16384").mkdir(parents=True)
    (tmp_path / "part_c/cells/base/base200000_len16384/model_manifest.json").write_text(json.dumps(manifest))
    tokens = {t["part"]: t for t in V.tokens_trained(tmp_path)}
    assert tokens["d2"]["cell"] == "steps600/base500_len16384"
    assert (tokens["d2"]["tokens"], tokens["d2"]["distinct_tokens"]) == (2400 * 16384, 2400 * 16384)
    assert (tokens["c"]["tokens"], tokens["c"]["distinct_tokens"]) == (4000 * 16384, 3600 * 16384)
    assert V.main(["claims", str(tmp_path)]) == 0
    assert "- d2 steps600/base500_len16384: 600 steps x 4 x 16384 = 39,321,600 tokens" in capsys.readouterr().out


def test_the_committed_claims_table_is_the_published_verdicts():
    """docs/results/smollm2_small/claims.csv is `verdicts.py claims --csv` of the committed parts: a part published
    (or a verdicts.csv written again) without it fails here until it is regenerated (PLAN.md section 9)."""
    with (ROOT / "docs/results/smollm2_small/claims.csv").open(newline="") as f:
        committed = list(csv.DictReader(f))
    assert committed == V.claims(ROOT / "docs/results/smollm2_small")
