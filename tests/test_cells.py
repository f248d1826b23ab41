"""The cell contract: JSON round trip, paths, the seeds axis, method variants, and quoting at the shell."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ropelaw import UserError
from ropelaw.cells import Cell, cell_of_path, figure_names
from ropelaw.config import load_yaml, resolve

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def raw():
    return load_yaml(ROOT / "tests" / "scenario" / "config.yaml")


def _by_path(cells):
    return {cell.path: cell for cell in cells}


def test_json_round_trip_of_every_cell(raw):
    raw["grid"].append({"model": "mini", "tune_lengths": [64], "bases": [500], "seeds": [3]})
    _, cells = resolve(raw)
    for cell in cells:
        back = Cell.from_json(cell.to_json())
        assert back == cell and back.to_dict() == cell.to_dict()


@pytest.mark.parametrize("edit, word", [
    (lambda d: d.pop("kind"), "kind"),
    (lambda d: d.update(base="10"), "'base'"),
    (lambda d: d.update(seed=True), "'seed'"),
    (lambda d: d.update(eval_lengths=[32, "64"]), "'eval_lengths'"),
    (lambda d: d.update(extra=1), "extra"),
])
def test_from_json_refuses_missing_and_mistyped_fields(raw, edit, word):
    _, cells = resolve(raw)
    data = cells[1].to_dict()
    edit(data)
    with pytest.raises(UserError) as err:
        Cell.from_json(json.dumps(data))
    assert word in str(err.value) and "\n" not in str(err.value)


def test_default_cells_keep_their_paths_and_the_configured_seed(raw):
    cfg, cells = resolve(raw)
    assert [c.path for c in cells] == [
        "results/mini/untuned/base10000_len64", "results/mini/base/base10_len64",
        "results/mini/base/base10000_len64", "results/mini/base/base1000000_len64",
    ]
    tuned = cells[1]
    assert tuned.seed is None and tuned.training["seed"] == cfg["finetune"]["seed"] == 1234
    assert tuned.model_dir == "results/mini/base/base10_len64/model" and cells[0].model_dir == "results/mini/pretrained"
    assert tuned.eval_rows_dir == "results/mini/data/eval_len256" and "seed" not in tuned.columns()


def test_seeds_give_one_cell_per_seed_trained_with_it(raw):
    raw["grid"].append({"model": "mini", "tune_lengths": [64], "bases": [500], "seeds": [7, 8]})
    raw["grid"].append({"model": "mini", "method": "base_logn", "tune_lengths": [64], "bases": [500], "seeds": [7]})
    raw["grid"].append({"model": "mini", "method": "linear", "seeds": [7]})  # training-free: ignored
    _, cells = resolve(raw)
    paths = _by_path(cells)
    seeded = [paths[f"results/mini/base/base500_len64_seed{s}"] for s in (7, 8)]
    assert [c.training["seed"] for c in seeded] == [7, 8] and [c.seed for c in seeded] == [7, 8]
    assert seeded[0].columns()["seed"] == 7
    logn = paths["results/mini/base_logn/base500_len64_seed7"]
    assert logn.model_dir == "results/mini/base/base500_len64_seed7/model" and logn.training is None
    assert paths["results/mini/linear/base10000_len64"].seed is None
    assert "results/mini/base/base500_len64" not in paths


def test_seeds_and_finetune_seed_together_are_refused(raw):
    raw["grid"][0]["seeds"] = [1]
    raw["grid"][0]["finetune"] = {"seed": 2}
    with pytest.raises(UserError, match=r"grid\[0\].finetune.seed"):
        resolve(raw)


def test_base_logn_seed_needs_its_base_cell(raw):
    raw["grid"].append({"model": "mini", "method": "base_logn", "tune_lengths": [64], "bases": [10], "seeds": [5]})
    with pytest.raises(UserError, match="with seed 5"):
        resolve(raw)


def test_a_variant_is_its_own_method_resolved_through_its_kind(raw):
    raw["methods"] = {"ntk8": {"kind": "ntk", "factor": 8}, "again": {"kind": "base"}}
    raw["grid"] += [{"model": "mini", "method": "ntk8"}, {"model": "mini", "method": "again", "tune_lengths": [64], "bases": [500]}]
    _, cells = resolve(raw)
    paths = _by_path(cells)
    ntk8 = paths["results/mini/ntk8/base10000_len64"]
    assert ntk8.kind == "ntk" and ntk8.model_dir == "results/mini/pretrained" and not ntk8.trains
    theta = ntk8.method_spec().rope_parameters["rope_theta"]
    assert math.isclose(theta, 10000 * 8 ** (32 / 30), rel_tol=1e-12)
    again = paths["results/mini/again/base500_len64"]
    assert again.trains and again.model_dir == "results/mini/again/base500_len64/model" and again.training["lr"] == 1e-3


def test_a_base_logn_variant_evaluates_the_model_its_tuned_option_names(raw):
    """`tuned` points log-scaled attention at another trained method's models (part d2: steps600's), at the same
    base, tuning length and seed; without it a base_logn variant evaluates the `base` cells' models."""
    raw["methods"] = {"again": {"kind": "base"}, "again_logn": {"kind": "base_logn", "tuned": "again"},
                      "plain_logn": {"kind": "base_logn"}}
    raw["grid"] += [{"model": "mini", "method": "again", "tune_lengths": [64], "bases": [500]},
                    {"model": "mini", "method": "again_logn", "tune_lengths": [64], "bases": [500]},
                    {"model": "mini", "method": "plain_logn", "tune_lengths": [64], "bases": [10]}]
    _, cells = resolve(raw)
    paths = _by_path(cells)
    logn = paths["results/mini/again_logn/base500_len64"]
    assert logn.model_dir == "results/mini/again/base500_len64/model" and not logn.trains and logn.training is None
    assert logn.tuned_method == "again" and logn.method_spec().logn_t_ref == 64
    assert paths["results/mini/plain_logn/base10_len64"].model_dir == "results/mini/base/base10_len64/model"
    assert paths["results/mini/again/base500_len64"].tuned_method is None


@pytest.mark.parametrize("methods, key, words", [
    ({"v": {"kind": "base_logn", "tuned": "linear"}}, "methods.v.tuned", "a variant of kind base: base, again"),
    ({"v": {"kind": "base_logn", "tuned": "nope"}}, "methods.v.tuned", "a variant of kind base: base, again"),
    # a split model's frequencies live in its spec, not its config: base_logn would evaluate it at plain beta
    ({"s": {"kind": "split", "k": 4}, "v": {"kind": "base_logn", "tuned": "s"}}, "methods.v.tuned",
     "a variant of kind base: base, again"),
    ({"v": {"kind": "ntk", "tuned": "again"}}, "methods.v.tuned", "is not an option of kind ntk"),
    ({"v": {"kind": "base_logn", "tuned": "again"}}, "grid", "to a `method: again` block of 'grid'"),
])
def test_a_bad_tuned_option_is_refused_in_one_line(raw, methods, key, words):
    raw["methods"] = {"again": {"kind": "base"}, **methods}
    raw["grid"].append({"model": "mini", "method": "v", "tune_lengths": [64], "bases": [500]})
    with pytest.raises(UserError) as err:
        resolve(raw)
    assert key in str(err.value) and words in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("methods, grid_method, key", [
    ({"base": {"kind": "ntk"}}, "base", "methods.base"),
    ({"v": {"kind": "nope"}}, "v", "methods.v.kind"),
    ({"v": {"kind": "untuned"}}, "v", "methods.v.kind"),
    ({"v": {"kind": "ntk", "factr": 2}}, "v", "methods.v.factr"),
    ({"v": {"kind": "ntk"}}, "w", "grid[1].method"),
])
def test_bad_variants_are_refused_by_key(raw, methods, grid_method, key):
    raw["methods"] = methods
    raw["grid"].append({"model": "mini", "method": grid_method})
    with pytest.raises(UserError) as err:
        resolve(raw)
    assert f"'{key}" in str(err.value)


def test_two_blocks_with_different_overrides_for_one_cell(raw):
    raw["grid"].append({"model": "mini", "tune_lengths": [64], "bases": [1000000], "finetune": {"lr": 0.5}})
    with pytest.raises(UserError) as err:
        resolve(raw)
    assert "grid[0].finetune" in str(err.value) and "grid[1].finetune" in str(err.value)
    raw["grid"][0]["finetune"] = {"lr": 0.5}  # the same overrides: one cell
    _, cells = resolve(raw)
    assert _by_path(cells)["results/mini/base/base1000000_len64"].training["lr"] == 0.5


def test_cell_of_path_finds_the_cell_behind_any_output(raw):
    _, cells = resolve(raw)
    for name in ("eval.csv", "passkey.json", "model", ""):
        assert cell_of_path(cells, f"results/mini/base/base10_len64/{name}").base == 10
    for path in ("results/mini/base/base11_len64/eval.csv", "results/law/cells.csv"):
        with pytest.raises(UserError):
            cell_of_path(cells, path)


def test_figure_names_have_one_heatmap_per_cell(raw):
    raw["grid"].append({"model": "mini", "tune_lengths": [64], "bases": [500], "seeds": [1, 2]})
    _, cells = resolve(raw)
    names = figure_names(cells, passkey=True)
    assert "passkey_heatmap_mini_base_base500_len64_seed2" in names and "ppl_vs_length_mini_len64" in names
    assert len([n for n in names if n.startswith("passkey_heatmap_")]) == len(cells) == len(set(cells))
    assert not any(n.startswith("passkey") for n in figure_names(cells, passkey=False))


def test_ropelaw_cell_prints_the_json_the_rules_pass(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "ropelaw.cli", "cell", "--configfile", "tests/scenario/config.yaml",
         "results/mini/base/base1000000_len64/eval.csv"], cwd=ROOT, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr
    cell = Cell.from_json(result.stdout)
    assert (cell.method, cell.base, cell.eval_lengths) == ("base", 1000000, (32, 64, 128, 256))


def _pile_shard(path: Path) -> None:
    from ropelaw.pile import write_shard

    words = "the quick brown fox jumps over a lazy dog while seven bold kings sing of war and peace".split()
    text = " ".join(words[(i * 7) % len(words)] for i in range(3000))
    write_shard(path, [{"text": text, "meta": {"pile_set_name": "Test"}} for _ in range(4)])


def test_shell_metacharacters_in_a_shard_name_execute_nothing(tmp_path):
    """A shard named `x$(touch PWNED).jsonl.zst` in a folder with a space runs through `pack`."""
    folder = tmp_path / "my shards"
    folder.mkdir()
    shard = folder / "x$(touch PWNED).jsonl.zst"
    _pile_shard(shard)
    config = load_yaml(ROOT / "tests" / "scenario" / "config.yaml")
    config["data"] = {"train": {"shards": [str(shard)], "max_sequences": 20}, "eval": {"shards": [str(shard)]}}
    config["models"]["mini"]["vocab_size"] = 300
    (tmp_path / "config").mkdir()
    (tmp_path / "config/config.yaml").write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(tmp_path), "--cores", "1",
         "results/mini/data/train_len64"], cwd=tmp_path, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads((tmp_path / "results/mini/data/train_len64/manifest.json").read_text())
    assert manifest["n_sequences"] == 20 and manifest["seq_len"] == 64
    assert not list(tmp_path.rglob("PWNED")) and not (ROOT / "PWNED").exists()


def test_a_split_variant_trains_and_carries_its_inv_freq(raw, tmp_path):
    raw["methods"] = {"split8": {"kind": "split", "k": 8, "low_base": 500, "high": "rotate"}}
    raw["grid"].append({"model": "mini", "method": "split8", "tune_lengths": [64], "bases": [1000000], "seeds": [3]})
    _, cells = resolve(raw)
    cell = _by_path(cells)["results/mini/split8/base1000000_len64_seed3"]
    assert cell.trains and cell.model_dir == f"{cell.path}/model" and cell.training["seed"] == 3
    spec = cell.method_spec()
    expected = [(500 if n < 8 else 1e6) ** (-2 * n / 32) for n in range(16)]
    assert spec.name == "split8" and spec.kind == "split" and spec.inv_freq == pytest.approx(expected, rel=1e-15)
    raw["methods"]["split8"]["k"] = 16  # d/2: no longer a pair index
    with pytest.raises(UserError, match=r"methods.split8.k"):
        resolve(raw)
    (tmp_path / "config").mkdir()
    raw["methods"]["split8"]["k"] = 8
    (tmp_path / "config/config.yaml").write_text(yaml.safe_dump(raw))
    result = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(tmp_path), "-n", "-p",
                             "--cores", "1", f"{cell.path}/eval.csv"], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    line = next(x for x in result.stdout.splitlines() if "--out results/mini/split8/base1000000_len64_seed3/model" in x)
    sent = json.loads(line.split("--method ")[1].split(" --checkpoints")[0].strip("'"))
    assert sent["inv_freq"] == pytest.approx(expected, rel=1e-15) and sent["name"] == "split8"
