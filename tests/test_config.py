"""Config validation: every shipped config resolves, and bad input stops with one clear line."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest

from ropelaw import UserError
from ropelaw.config import eval_lengths, load_yaml, passkey_args, resolve, training_args

ROOT = Path(__file__).resolve().parents[1]
# config/paper.yaml needs the Pile on disk: tests/test_cluster.py resolves and dry-runs it with stand-in shards.
SHIPPED = sorted(p for p in (ROOT / "config").glob("*.yaml") if p.name != "paper.yaml") + [ROOT / "tests" / "scenario" / "config.yaml"]


@pytest.fixture
def raw():
    return load_yaml(ROOT / "tests" / "scenario" / "config.yaml")


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_configs_resolve(path):
    cfg, cells = resolve(load_yaml(path))
    assert cells, "a shipped config must have cells"
    assert all(cell.base > 1 for cell in cells)


def test_defaults_and_overrides(raw):
    raw["models"]["mini"]["finetune"] = {"lr": 5e-4}
    raw["grid"][0]["finetune"] = {"max_grad_norm": 2.5}
    cfg, cells = resolve(raw)
    args = training_args(cfg, cells[-1])
    assert args["lr"] == 5e-4 and args["max_grad_norm"] == 2.5
    assert args["steps"] == 4 and args["weight_decay"] == 0.0 and args["warmup_steps"] == 0
    assert cfg["law"]["factor"] == 1.5 and cfg["law"]["estimator"] == "segment"


def test_cells_resolve_symbolic_bases(raw):
    _, cells = resolve(raw)
    # T_tune = 64: beta3 = 64 / (2 pi) = 10.19 -> 10; the untuned cell comes first.
    assert [(c.method, c.base) for c in cells] == [("untuned", 10000), ("base", 10), ("base", 10000), ("base", 1000000)]
    assert cells[1].path == "results/mini/base/base10_len64"


def test_whole_floats_of_integer_keys_are_integers(raw):
    """YAML's 64.0 where the schema wants an integer names the same cell as 64 (it gave len64.0 paths)."""
    raw["models"]["mini"]["train_len"] = 64.0
    raw["grid"][0].update(tune_lengths=[64.0], seeds=[7.0], finetune={"steps": 3.0})
    raw["finetune"]["global_batch_size"] = 8.0
    _, cells = resolve(raw)
    assert [c.path for c in cells] == ["results/mini/untuned/base10000_len64", "results/mini/base/base10_len64_seed7",
                                       "results/mini/base/base10000_len64_seed7", "results/mini/base/base1000000_len64_seed7"]
    assert [type(cells[1].training[k]) for k in ("steps", "global_batch_size", "seed")] == [int, int, int]


def _error(raw) -> str:
    with pytest.raises(UserError) as info:
        resolve(raw)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_unknown_key_suggests_the_right_one(raw):
    raw["finetune"]["stepz"] = 3
    message = _error(raw)
    assert "'stepz'" in message and "did you mean 'steps'" in message and "finetune" in message


def test_unknown_top_level_key(raw):
    raw["evaluaton"] = {}
    assert "evaluaton" in _error(raw)


def test_wrong_type_names_the_key(raw):
    raw["evaluation"]["chunk_size"] = "big"
    assert "evaluation.chunk_size" in _error(raw)


def test_missing_data_path(raw):
    raw["data"]["train"]["shards"] = ["/nonexistent/train.jsonl.zst"]
    message = _error(raw)
    assert "data.train.shards[0]" in message and "/nonexistent/train.jsonl.zst" in message


def test_base_not_above_one(raw):
    raw["grid"][0]["bases"] = [1]
    assert "grid[0].bases[0]" in _error(raw)


def test_unknown_symbolic_base(raw):
    raw["grid"][0]["bases"] = ["beta9"]
    assert "beta9" in _error(raw)


def test_tune_len_not_a_multiple(raw):
    raw["grid"][0]["tune_lengths"] = [100]
    message = _error(raw)
    assert "length_multiple" in message and "100" in message


def test_grid_names_unknown_model(raw):
    raw["grid"][0]["model"] = "mnii"
    message = _error(raw)
    assert "grid[0].model" in message and "did you mean 'mini'" in message


def test_eval_lengths_need_one_at_most_tune_len(raw):
    raw["evaluation"]["lengths"] = [128, 256]
    assert "evaluation.lengths" in _error(raw)


def test_global_batch_not_divisible(raw):
    raw["finetune"]["global_batch_size"] = 10
    raw["finetune"]["micro_batch_size"] = 4
    assert "global_batch_size" in _error(raw)


def test_hf_dir_without_config(raw, tmp_path):
    raw["models"]["mini"] = {"source": "hf_dir", "path": str(tmp_path)}
    assert "models.mini.path" in _error(raw)


def test_snakemake_reports_config_error_in_one_line(tmp_path):
    bad = copy.deepcopy(load_yaml(ROOT / "tests" / "scenario" / "config.yaml"))
    bad["finetune"]["lr_schedul"] = "cosine"
    path = tmp_path / "bad.yaml"
    path.write_text(__import__("yaml").safe_dump(bad))
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--cores", "1", "--configfile", str(path)],
        cwd=ROOT, capture_output=True, text=True,
    )
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if "lr_schedul" in line]
    assert len(lines) == 1 and "did you mean 'lr_schedule'" in lines[0], result.stderr


def test_config_readme_is_generated_from_the_schema():
    from ropelaw.config_doc import render

    assert (ROOT / "config" / "README.md").read_text() == render(), "run: ropelaw config-doc > config/README.md"


def test_overrides_stay_with_their_own_block(raw):
    raw["grid"] = [
        {"model": "mini", "tune_lengths": [64], "bases": [500], "finetune": {"lr": 1.0e-5}},
        {"model": "mini", "tune_lengths": [64], "bases": [1000000]},
    ]
    cfg, cells = resolve(raw)
    lrs = {cell.base: training_args(cfg, cell)["lr"] for cell in cells if cell.method == "base"}
    assert lrs == {500: 1.0e-5, 1000000: 1.0e-3}


def test_eval_lengths_are_the_union_of_the_cells_blocks(raw):
    raw["grid"] += [
        {"model": "mini", "tune_lengths": [64], "bases": [1000000], "eval_lengths": [64, 512, 1024]},
        {"model": "mini", "tune_lengths": [128], "bases": [500], "eval_lengths": [128, 2048]},
        {"model": "mini", "method": "dynamic_ntk", "eval_lengths": [32, 4096]},
    ]
    raw["passkey"]["lengths"] = None
    cfg, cells = resolve(raw)
    lengths = {(c.method, c.base, c.tune_len): eval_lengths(cfg, c) for c in cells}
    assert lengths == {
        ("untuned", 10000, 64): [32, 64, 128, 256],  # no block: evaluation.lengths
        ("base", 10, 64): [32, 64, 128, 256],
        ("base", 10000, 64): [32, 64, 128, 256],
        ("base", 1000000, 64): [32, 64, 128, 256, 512, 1024],  # grid[0] and grid[1]
        ("base", 500, 128): [128, 2048],  # its block's list alone
        ("dynamic_ntk", 10000, 64): [32, 4096],
    }
    assert {tuple(passkey_args(cfg, c)["lengths"]) for c in cells} == {tuple(v) for v in lengths.values()}


def test_eval_lengths_of_a_block_must_increase(raw):
    raw["grid"].append({"model": "mini", "tune_lengths": [64], "bases": [500], "eval_lengths": [64, 1024, 512]})
    message = _error(raw)
    assert "grid[1].eval_lengths" in message and "strictly increasing" in message


def test_eval_lengths_of_a_block_need_one_at_most_tune_len(raw):
    raw["grid"].append({"model": "mini", "tune_lengths": [64], "bases": [500], "eval_lengths": [128, 1024]})
    message = _error(raw)
    assert "'grid[1].eval_lengths'" in message and "base500_len64" in message and "<= 64" in message
    # The same lengths for a cell that grid[0] also produces: evaluation.lengths brings 32 and 64.
    raw["grid"][1]["bases"] = [1000000]
    cfg, cells = resolve(raw)
    assert eval_lengths(cfg, cells[-1]) == [32, 64, 128, 256, 1024]


def test_eval_lengths_below_two_are_a_schema_error(raw):
    raw["grid"][0]["eval_lengths"] = [1, 64]
    assert "grid[0].eval_lengths[0]" in _error(raw)


def test_passkey_lengths_beyond_a_cells_eval_lengths(raw):
    # passkey.lengths [128, 256]: a cell evaluated only up to 64 has no rows for them.
    raw["grid"].append({"model": "mini", "tune_lengths": [64], "bases": [500], "eval_lengths": [32, 64]})
    message = _error(raw)
    assert "passkey.lengths" in message and "grid[1].eval_lengths" in message and "base500_len64" in message
    raw["passkey"]["lengths"] = None  # each cell's own lengths
    cfg, cells = resolve(raw)
    assert passkey_args(cfg, cells[-1])["lengths"] == [32, 64]


@pytest.mark.parametrize("cls, node", [
    ("TrainingSpec", ("$defs", "training")),
    ("FactorOptions", ("properties", "methods", "properties", "linear")),
    ("FactorOptions", ("properties", "methods", "properties", "ntk")),
    ("DynamicNtkOptions", ("properties", "methods", "properties", "dynamic_ntk")),
    ("YarnOptions", ("properties", "methods", "properties", "yarn")),
    ("LognOptions", ("properties", "methods", "properties", "logn")),
    ("TrainData", ("properties", "data", "properties", "train")),
    ("EvalData", ("properties", "data", "properties", "eval")),
], ids=lambda v: v if isinstance(v, str) else v[-1])
def test_typed_specs_match_the_schema(cls, node):
    """Each typed block has exactly its schema block's keys, defaults and required keys."""
    from dataclasses import MISSING, fields

    from ropelaw import specs
    from ropelaw.config import load_schema

    block = load_schema()
    for part in node:
        block = block[part]
    spec = {f.name: f for f in fields(getattr(specs, cls))}
    assert set(spec) == set(block["properties"])
    for name, prop in block["properties"].items():
        default = spec[name].default
        if "default" in prop:
            assert default == (tuple(prop["default"]) if isinstance(prop["default"], list) else prop["default"]), name
        else:
            assert default is MISSING and name in block.get("required", []), name


@pytest.mark.parametrize("block, value, key", [
    ("finetune", {"lr": 0.0}, "finetune"),
    ("finetune", {"warmup_steps": 5000}, "finetune.warmup_steps"),
    ("methods", {"yarn": {"beta_fast": 1.0, "beta_slow": 2.0}}, "methods.yarn.beta_fast"),
    ("methods", {"v": {"kind": "linear", "factor": 0.5}}, "methods.v.factor"),
    ("methods", {"logn": {"t_ref": "tune"}}, "methods.logn.t_ref"),
])
def test_typed_specs_refuse_by_key(raw, block, value, key):
    raw[block] = {**raw.get(block, {}), **value}
    assert key in _error(raw)
