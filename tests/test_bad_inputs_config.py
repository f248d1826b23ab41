"""Bad configs and cell JSON: each refused with a non-zero exit and ONE line naming the key or file and the fix.

Every case runs the real command (`ropelaw check-config`, `ropelaw evaluate|passkey`, or a
Snakemake dry run) in a temporary directory and checks its exit status and stderr.
"""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SCENARIO = yaml.safe_load((ROOT / "tests" / "scenario" / "config.yaml").read_text())


def _shard(path: Path, words: int = 400) -> str:
    from ropelaw.pile import write_shard

    text = " ".join(["word"] * words)
    write_shard(path, [{"text": text, "meta": {"pile_set_name": "Test"}} for _ in range(3)])
    return str(path)


def _set(config: dict, dotted: str, value) -> None:
    *parents, last = dotted.split(".")
    node = config
    for part in parents:
        node = node[int(part)] if part.isdigit() else node[part]
    node[int(last) if last.isdigit() else last] = value


def _with(*edits):
    """A config edit: set each (dotted key, value); a value "SHARD" is a real shard in tmp_path."""
    def edit(config, tmp_path):
        for key, value in edits:
            _set(config, key, value)
        return config
    return edit


def _real_eval_data(words=400, **eval_block):
    def edit(config, tmp_path):
        config["data"]["eval"] = {"shards": [_shard(tmp_path / "val.jsonl.zst", words)], **eval_block}
        return config
    return edit


def _deepspeed_dir(config, tmp_path):
    (tmp_path / "ds").mkdir()
    config["finetune"]["deepspeed"] = str(tmp_path / "ds")
    return config


def _deepspeed_file(text: str):
    def edit(config, tmp_path):
        (tmp_path / "ds.json").write_text(text)
        config["finetune"]["deepspeed"] = str(tmp_path / "ds.json")
        return config
    return edit


def _hf_dir_config(text: str):
    """An hf_dir model (geometry read from its files) whose config.json is `text`."""
    def edit(config, tmp_path):
        (tmp_path / "hf").mkdir()
        (tmp_path / "hf" / "config.json").write_text(text)
        config["models"]["hf"] = {"source": "hf_dir", "path": str(tmp_path / "hf")}
        config["grid"].append({"model": "hf", "method": "ntk"})
        return config
    return edit


def _two_blocks(config, tmp_path):
    config["grid"] = [
        {"model": "mini", "tune_lengths": [64], "bases": [500], "finetune": {"lr": 1e-4}},
        {"model": "mini", "tune_lengths": [64], "bases": [500, 1000], "finetune": {"lr": 2e-4}},
    ]
    return config


def _model_named_like_a_cell(config, tmp_path):
    config["models"]["mini_base"] = dict(config["models"]["mini"])  # mini_base + logn = mini + base_logn
    return config


# (case id, edit of the scenario config, words the one line must hold)
CASES = [
    ("lr-nan", _with(("finetune.lr", float("nan"))), ["finetune.lr", "finite"]),
    ("lr-inf", _with(("finetune.lr", float("inf"))), ["finetune.lr", "finite"]),
    ("rope-base-nan", _with(("models.mini.rope_base", float("nan"))), ["models.mini.rope_base", "finite"]),
    ("ppl-factor-inf", _with(("law", {"ppl_factor": float("inf")})), ["law.ppl_factor", "finite"]),
    ("grid-finetune-nan", _with(("grid.0.finetune", {"max_grad_norm": float("nan")})), ["grid[0].finetune.max_grad_norm"]),
    ("method-factor-nan", _with(("methods", {"linear": {"factor": float("nan")}})), ["methods.linear.factor"]),
    ("bucket-edges-unsorted", _with(("evaluation.bucket_edges", [8, 4, 16])), ["evaluation.bucket_edges", "increasing"]),
    ("eval-lengths-unsorted", _with(("evaluation.lengths", [64, 32, 128])), ["evaluation.lengths", "increasing"]),
    ("passkey-lengths-unsorted", _with(("passkey.lengths", [256, 128])), ["passkey.lengths", "increasing"]),
    ("deepspeed-directory", _deepspeed_dir, ["finetune.deepspeed", "directory"]),
    ("deepspeed-missing", _with(("finetune.deepspeed", "no/such.json")), ["finetune.deepspeed", "does not exist"]),
    ("deepspeed-not-json", _deepspeed_file("{not json"), ["finetune.deepspeed", "not a readable DeepSpeed JSON object"]),
    ("fused-loss-unknown", _with(("finetune.fused_loss", "fast")), ["finetune.fused_loss", "grad_in_forward"]),
    ("grad-in-forward-under-zero3", _with(("finetune.fused_loss", "grad_in_forward"),
                                          ("finetune.deepspeed", str(ROOT / "config/deepspeed/zero3.json"))),
     ["finetune.fused_loss", "not supported under DeepSpeed ZeRO-3", "true or checkpointed"]),
    ("two-blocks-one-cell", _two_blocks, ["grid[0].finetune", "grid[1].finetune", "base500_len64"]),
    ("empty-eval-subset", _real_eval_data(subsets=["Books3"]), ["data.eval.subsets", "Test"]),
    ("eval-length-beyond-docs", _real_eval_data(words=20), ["data.eval", "256", "short_docs"]),
    ("eval-length-beyond-all-docs", _real_eval_data(words=10, short_docs="concatenate"), ["data.eval", "256", "together"]),
    ("eval-shard-missing", _with(("data.eval.shards", ["no/such.jsonl.zst"])), ["data.eval.shards[0]", "does not exist"]),
    ("unknown-key", _with(("finetune.lr_schedul", "cosine")), ["lr_schedul", "did you mean 'lr_schedule'"]),
    ("unknown-grid-method", _with(("grid.0.method", "bace")), ["grid[0].method", "did you mean 'base'"]),
    ("variant-unknown-kind", _with(("methods", {"v": {"kind": "rope"}}), ("grid.0.method", "v")), ["methods.v.kind"]),
    ("variant-stray-option", _with(("methods", {"v": {"kind": "ntk", "base": 3}})), ["methods.v.base", "factor"]),
    ("variant-named-builtin", _with(("methods", {"base": {"kind": "ntk"}})), ["methods.base", "built-in"]),
    ("variant-without-kind", _with(("methods", {"v": {"factor": 2}})), ["methods.v", "kind"]),
    ("variant-tuned-not-base", _with(("methods", {"v": {"kind": "base_logn", "tuned": "linear"}})),
     ["methods.v.tuned", "a variant of kind base"]),
    ("seeds-repeated", _with(("grid.0.seeds", [1, 1])), ["grid[0].seeds"]),
    ("seed-beyond-numpy", _with(("finetune.seed", 2**32)), ["finetune.seed", "4294967295"]),
    ("seeds-beyond-numpy", _with(("grid.0.seeds", [2**32])), ["grid[0].seeds[0]", "4294967295"]),
    ("seeds-and-seed", _with(("grid.0.seeds", [1]), ("grid.0.finetune", {"seed": 2})), ["grid[0].finetune.seed", "seeds"]),
    ("tune-len-multiple", _with(("grid.0.tune_lengths", [100])), ["length_multiple", "100"]),
    ("pretrain-len-multiple", _with(("models.mini.train_len", 100)),
     ["models.mini.train_len", "100", "models.mini.pretrain.length_multiple = 64"]),
    ("base-below-one", _with(("grid.0.bases", [1])), ["grid[0].bases[0]"]),
    ("base-not-whole", _with(("grid.0.bases", [500.4])), ["grid[0].bases[0]", "500.4", "not a whole number", "give 500"]),
    ("bases-one-cell", _with(("grid.0.bases", ["original", 1.0e6, 1000000])),
     ["grid[0].bases[2]", "1000000", "bases[1] (1000000.0)", "one cell"]),
    ("base-name-too-long", _with(("grid.0.bases", [10, 1e300])),
     ["grid[0].bases[1]", "base 1e+300", "over the 255-byte limit of a file name", "give a smaller base"]),
    ("base-name-too-long-seed", _with(("grid.0.bases", [10**204]), ("grid.0.seeds", [1, 2**32 - 1])),
     ["grid[0].bases[0]", "base 1e+204", "260 bytes", "_seed4294967295.log", "give a smaller base"]),
    ("rope-base-name-too-long", _with(("models.mini.rope_base", 1e300)),
     ["models.mini.rope_base", "base 1e+300", "255-byte limit"]),
    ("method-name-too-long", _with(("methods", {"m" * 220: {"kind": "base"}}), ("grid.0.method", "m" * 220)),
     ["grid[0].bases[0]", "model 'mini' and method 'mmmmmmmmmmmmmmmmmmmmmmmm...'", "255-byte limit",
      "whatever the base", "shorter name"]),
    ("grid-unknown-model", _with(("grid.0.model", "mnii")), ["grid[0].model", "did you mean 'mini'"]),
    ("model-names-ambiguous", _model_named_like_a_cell, ["'mini'", "'mini_base'", "read two ways", "rename"]),
    ("adam-beta1-one", _with(("finetune.adam_beta1", 1.0)), ["finetune.adam_beta1", "1.0"]),
    ("adam-beta2-one", _with(("models.mini.pretrain.adam_beta2", 1)), ["models.mini.pretrain.adam_beta2"]),
    ("figure-formats-empty", _with(("figures", {"formats": []})), ["figures.formats", "non-empty"]),
    ("figure-formats-repeated", _with(("figures", {"formats": ["png", "png"]})), ["figures.formats", "non-unique"]),
    ("passkey-prefix-with-key", _with(("passkey.prefix", "The {key} is here.")), ["passkey.prefix", "{key}", "needle"]),
    ("passkey-question-with-key", _with(("passkey.question", "Is it {key}?")), ["passkey.question", "{key}"]),
    ("passkey-depths-repeated", _with(("passkey.depths", [0.5, 0.5])), ["passkey.depths", "non-unique"]),
    ("passkey-length-below-its-templates", _with(("passkey.lengths", [8, 128])),
     ["'passkey.lengths': 8 tokens cannot hold a passkey prompt", "drop the length or shorten the templates"]),
    ("hf-config-list", _hf_dir_config("[1, 2]"), ["hf/config.json", "JSON list", "config.json"]),
    ("hf-config-theta-text", _hf_dir_config('{"head_dim": 16, "max_position_embeddings": 64, "rope_theta": "1e4"}'),
     ["hf/config.json", "'rope_theta' is '1e4'", "not a positive number"]),
    ("hf-config-length-not-whole", _hf_dir_config('{"head_dim": 16, "max_position_embeddings": 4096.5, "rope_theta": 1e4}'),
     ["hf/config.json", "'max_position_embeddings' is 4096.5", "not a whole number", "models.hf.train_len"]),
    ("hf-config-head-dim-not-whole", _hf_dir_config('{"head_dim": 16.5, "max_position_embeddings": 64, "rope_theta": 1e4}'),
     ["hf/config.json", "'head_dim' is 16.5", "not a whole number", "models.hf.head_dim"]),
    ("hf-config-hidden-not-whole", _hf_dir_config('{"hidden_size": 64.5, "num_attention_heads": 4, '
                                                  '"max_position_embeddings": 64, "rope_theta": 1e4}'),
     ["hf/config.json", "'hidden_size' is 64.5", "not a whole number"]),
    ("hf-config-no-heads", _hf_dir_config('{"hidden_size": 64, "num_attention_heads": 0, "max_position_embeddings": 64, '
                                          '"rope_theta": 10000}'), ["hf/config.json", "'num_attention_heads' is 0"]),
    ("batch-not-divisible", _with(("finetune.micro_batch_size", 3)), ["global_batch_size", "micro_batch_size"]),
    # YAML 1.1 (PyYAML, Snakemake's reader) takes these for text: the error gives the spelling that reads as a number
    ("lr-exponent-as-text", _with(("finetune.lr", "1e-4")), ["finetune.lr", "YAML reads 1e-4 as text: write 1.0e-4"]),
    ("lr-unsigned-exponent", _with(("finetune.lr", "2.5E4")), ["finetune.lr", "write 2.5e+4"]),
    ("steps-exponent-as-text", _with(("finetune.steps", "6e1")), ["finetune.steps", "write 60"]),
]


@pytest.mark.parametrize("edit, words", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_check_config_refuses_in_one_line(tmp_path, edit, words):
    config = edit(copy.deepcopy(SCENARIO), tmp_path)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    _assert_one_line_error(["check-config", "--configfile", str(path)], tmp_path, words)


@pytest.mark.parametrize("text, words", [
    ("data: [unclosed\nmodels: {}\n", ["config.yaml", "YAML syntax error", "line"]),
    ("- data\n- models\n", ["config.yaml", "list", "mapping"]),
    ("data:\n\tshards: x\n", ["config.yaml", "YAML syntax error"]),
    (b"study: caf\xe9\n", ["config.yaml", "not YAML text", "#x00e9", "position 10", "save it as UTF-8"]),
], ids=["yaml-syntax", "yaml-list", "yaml-tab", "yaml-latin1"])
def test_unreadable_config_files(tmp_path, text, words):
    path = tmp_path / "config.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    _assert_one_line_error(["check-config", "--configfile", str(path)], tmp_path, words)


@pytest.mark.parametrize("args, words", [
    (["--train-len", "inf"], ["train_len", "finite"]),
    (["--tune-len", "inf"], ["tune_len", "finite"]),
    (["--target-len", "1e300"], ["target_len 1e+300", "shorter length"]),
], ids=["train-len-inf", "tune-len-inf", "target-len-overflow"])
def test_predict_refuses_lengths_it_cannot_compute(tmp_path, args, words):
    geometry = {"--head-dim": "128", "--train-len": "4096", "--rope-base": "10000"}
    geometry.update(dict(zip(args[::2], args[1::2])))
    _assert_one_line_error(["predict", *[x for pair in geometry.items() for x in pair]], tmp_path, words)


@pytest.mark.parametrize("text, words", [
    ("- a\n", ["its top level is a list"]),
    ("set-resources: 3\n", ["set-resources is a int"]),
    ("set-resources:\n  finetune: [gpu=1]\n", ["set-resources.finetune is a list", "name: value"]),
    ("{bad\n", ["YAML syntax error at line 2, column 1", "fix the YAML"]),
    (b"# caf\xe9\n", ["not YAML text", "#x00e9", "save it as UTF-8"]),
    ("[]\n", ["its top level is a list"]),
], ids=["top-level-list", "set-resources-number", "rule-list", "yaml-syntax", "yaml-latin1", "top-level-empty-list"])
def test_plan_refuses_a_malformed_profile(tmp_path, text, words):
    (tmp_path / "profile").mkdir()
    (tmp_path / "profile" / "config.yaml").write_bytes(text if isinstance(text, bytes) else text.encode())
    _assert_one_line_error(["plan", "--configfile", str(ROOT / "tests/scenario/config.yaml"), "--profile",
                            str(tmp_path / "profile")], tmp_path, ["--profile", "profile/config.yaml", *words])


def test_missing_config_file(tmp_path):
    _assert_one_line_error(["check-config", "--configfile", str(tmp_path / "nope.yaml")], tmp_path, ["nope.yaml", "does not exist"])


CELL_JSON_CASES = [
    ("{not json", ["--cell-json", "not valid JSON"]),
    ("[1, 2]", ["--cell-json", "JSON object"]),
    ('{"model": "mini"}', ["--cell-json", "missing fields", "method"]),
]


@pytest.mark.parametrize("command", ["evaluate", "passkey"])
@pytest.mark.parametrize("text, words", CELL_JSON_CASES, ids=["not-json", "not-object", "missing-fields"])
def test_bad_cell_json(tmp_path, command, text, words):
    args = [command, "--model", str(tmp_path), "--cell-json", text, "--eval-data", str(tmp_path), "--out", str(tmp_path / "x.csv")]
    args += ["--tokenizer", str(tmp_path)] + (["--lengths", "32"] if command == "evaluate" else ["--spec", "{}"])
    _assert_one_line_error(args, tmp_path, words)


def test_snakemake_dry_run_refuses_nan_in_one_line(tmp_path):
    config = copy.deepcopy(SCENARIO)
    config["finetune"]["lr"] = float("nan")
    (tmp_path / "config").mkdir()
    (tmp_path / "config/config.yaml").write_text(yaml.safe_dump(config))
    result = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(tmp_path), "-n", "--cores", "1"],
                            cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if "finetune.lr" in line]
    assert len(lines) == 1 and "finite" in lines[0], result.stderr


def _assert_one_line_error(args: list[str], cwd: Path, words: list[str]) -> None:
    result = subprocess.run([sys.executable, "-m", "ropelaw.cli", *args], cwd=cwd, capture_output=True, text=True)
    assert result.returncode != 0, result.stdout[-2000:]
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for word in words:
        assert word in lines[0], lines[0]
