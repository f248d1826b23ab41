"""DeepSpeed ZeRO-3 (2 ranks, gloo, CPU) trains exactly like the plain single-process path.

`ropelaw finetune` runs twice on a tiny random LLaMA (tied embeddings, activation
checkpointing on) for 3 optimizer steps, same seed, same global batch of 4:
once as one process without DeepSpeed (accumulation 4), once under torchrun with
2 ranks and config/deepspeed/zero3.json (accumulation 2, parameters, gradients
and optimizer state sharded). In fp32 the two must agree to rounding: per-step
losses and gradient norms to 1e-5 relative, the saved weights to 1e-5 absolute
(measured here: losses and norms to about 1e-7 relative, weights to 1.3e-6).

DeepSpeed has no GPU here, so the worker (this file run as a script) sets two
shims before it calls the CLI (.ci/slurm/cpu-deepspeed/sitecustomize.py, which the SLURM
test puts on its jobs' path); neither changes what is computed:
- accelerate chooses no distributed backend when it sees no GPU, and then counts
  one process while DeepSpeed counts two; the worker makes it choose gloo;
- DeepSpeed's CPU accelerator compiles a shared-memory all-reduce kernel (about
  2 minutes of C++) when it starts; the worker skips it, so collectives are gloo's.

The second test edits config/deepspeed/zero3.json in a copy of the tiny scenario and checks
that exactly the fine-tuned cells re-run. `pytest -q tests/test_deepspeed.py`: about 1 minute
for the first test, 20 s for the second beyond the session's scenario run (tests/conftest.py).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
ZERO3 = ROOT / "config" / "deepspeed" / "zero3.json"
VOCAB, SEQ, ROWS = 96, 32, 32
SPEC = {
    "steps": 3, "global_batch_size": 4, "micro_batch_size": 1, "lr": 1e-3, "lr_schedule": "constant",
    "warmup_steps": 0, "weight_decay": 0.0, "max_grad_norm": 1.0, "adam_beta1": 0.9, "adam_beta2": 0.999,
    "adam_epsilon": 1e-8, "seed": 7, "precision": "fp32", "gradient_checkpointing": True,
    "attn_implementation": "sdpa", "checkpoint_every": 100, "length_multiple": 8, "logging_steps": 1, "compile": False,
}


SHIMS = ROOT / ".ci" / "slurm" / "cpu-deepspeed" / "sitecustomize.py"


def _worker(argv: list[str]) -> int:
    import importlib.util

    spec = importlib.util.spec_from_file_location("cpu_deepspeed_shims", SHIMS)  # the SLURM test's shims
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
    from ropelaw.cli import main

    return main(argv)


def test_the_shims_reach_the_modules_deepspeed_and_accelerate_call():
    """Guards the shims themselves. `deepspeed.comm.torch` as an attribute is the torch package (deepspeed.comm
    imports torch), so a shim assigned through it patched nothing: each rank compiled the shared-memory kernel,
    and once a compile was killed its lock file made every later run wait until the test's timeout (CI)."""
    probe = (
        "import sys, runpy; runpy.run_path(sys.argv[1]);"
        "import deepspeed.comm.torch as _, accelerate.state as a;"
        "m = sys.modules['deepspeed.comm.torch'];"
        "print(m.build_shm_op.__name__, a.PartialState._prepare_backend(None)[0])"
    )
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "WORLD_SIZE": "2"}
    done = subprocess.run([sys.executable, "-c", probe, str(SHIMS)], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split()[-2:] == ["<lambda>", "gloo"], done.stdout


@pytest.fixture(scope="module")
def cell(tmp_path_factory):
    """A random tiny LLaMA with a tokenizer, and packed random training rows."""
    from tokenizers import Tokenizer, models

    root = tmp_path_factory.mktemp("ds")
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({f"t{i}": i for i in range(VOCAB)}, unk_token="t0")),
        eos_token="t1", unk_token="t0",
    )
    config = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=SEQ,
        tie_word_embeddings=True, rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    )
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    data = root / "data"
    data.mkdir()
    np.random.default_rng(0).integers(0, VOCAB, size=(ROWS, SEQ)).astype("<u2").tofile(data / "tokens.bin")
    (data / "manifest.json").write_text(json.dumps({"n_sequences": ROWS, "seq_len": SEQ, "dtype": "<u2"}))
    return root


def _finetune(cell: Path, name: str, launcher: list[str], deepspeed: str | None, spec: dict = SPEC) -> dict:
    spec = json.dumps({**spec, "deepspeed": deepspeed})
    out = cell / name
    args = ["finetune", "--model", str(cell / "model"), "--data", str(cell / "data"), "--base", "50000",
            "--spec", spec, "--checkpoints", str(cell / f"{name}_ckpt"), "--out", str(out)]
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run([*launcher, *args], env=env, cwd=cell, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{name} failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    manifest = json.loads((out / "ropelaw_manifest.json").read_text())
    return {"manifest": manifest, "weights": load_file(out / "model.safetensors")}


def _steps(manifest: dict) -> list[tuple[int, float, float]]:
    return [(row["step"], row["loss"], row["grad_norm"]) for row in manifest["log_history"] if "loss" in row]


def test_zero3_on_two_ranks_matches_the_plain_path(cell):
    plain = _finetune(cell, "plain", [sys.executable, "-m", "ropelaw.cli"], None)
    zero3 = _finetune(
        cell, "zero3", [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", __file__],
        str(ZERO3),
    )
    assert plain["manifest"]["gradient_accumulation_steps"] == 4 and plain["manifest"]["world_size"] == 1
    assert zero3["manifest"]["gradient_accumulation_steps"] == 2 and zero3["manifest"]["world_size"] == 2
    # fused_loss: true (the default) runs grad_in_forward, and the checkpointed chunked loss under ZeRO-3
    assert plain["manifest"]["loss_path"] == "grad_in_forward" and zero3["manifest"]["loss_path"] == "checkpointed"

    plain_steps, zero3_steps = _steps(plain["manifest"]), _steps(zero3["manifest"])
    assert [s for s, _, _ in plain_steps] == [s for s, _, _ in zero3_steps] == [1, 2, 3]
    np.testing.assert_allclose([x[1:] for x in zero3_steps], [x[1:] for x in plain_steps], rtol=1e-5)
    assert plain_steps[0][1] != plain_steps[-1][1]  # the weights did move

    assert plain["weights"].keys() == zero3["weights"].keys()
    for name, tensor in plain["weights"].items():
        torch.testing.assert_close(zero3["weights"][name], tensor, rtol=0, atol=1e-5, msg=name)
    assert plain["manifest"]["inv_freq_sha256"] == zero3["manifest"]["inv_freq_sha256"]


def test_compiled_layers_train_like_eager_layers(cell):
    """finetune.compile: the same steps, losses and weights as the eager run (fp32 on CPU)."""
    eager = _finetune(cell, "eager", [sys.executable, "-m", "ropelaw.cli"], None)
    spec = {**SPEC, "compile": True}
    compiled = _finetune(cell, "compiled", [sys.executable, "-m", "ropelaw.cli"], None, spec)
    assert compiled["manifest"]["spec"]["compile"] is True
    eager_steps, compiled_steps = _steps(eager["manifest"]), _steps(compiled["manifest"])
    assert [s for s, _, _ in compiled_steps] == [s for s, _, _ in eager_steps] == [1, 2, 3]
    np.testing.assert_allclose([x[1:] for x in compiled_steps], [x[1:] for x in eager_steps], rtol=1e-5)
    assert compiled["weights"].keys() == eager["weights"].keys()  # no `_orig_mod.` prefixes
    for name, tensor in eager["weights"].items():
        torch.testing.assert_close(compiled["weights"][name], tensor, rtol=0, atol=1e-5, msg=name)


def test_editing_the_deepspeed_json_reruns_exactly_the_fine_tuned_cells(scenario, tmp_path):
    """The JSON is an input of the finetune rule: a change to its content re-runs the cells that
    train with it and what reads them, never pretraining or the untuned cell."""
    import shutil

    import yaml

    work = tmp_path / "work"
    shutil.copytree(scenario, work, symlinks=True)
    shutil.copy(ZERO3, work / "config" / "zero3.json")
    config = yaml.safe_load((work / "config/config.yaml").read_text())
    config["models"]["mini"]["finetune"] = {"deepspeed": "config/zero3.json"}
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(config))
    smk = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(work), "--cores", "1",
           "--configfile", str(changed)]

    def snakemake(*args) -> str:
        done = subprocess.run([*smk, *args], cwd=ROOT, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout

    # Record the changed config as run (its new spec in the metadata), so only the file can trigger.
    snakemake("--touch")
    assert "Nothing to be done" in snakemake("-n")
    ds_json = work / "config" / "zero3.json"
    # Snakemake compares content checksums, not only times: an edit re-runs, a bare touch does not.
    ds_json.write_text(ds_json.read_text().replace('"stage3_max_live_parameters": 1000000000',
                                                   '"stage3_max_live_parameters": 500000000'))
    stats = snakemake("-n").split("Job stats:")[-1]
    counts = {row[0]: int(row[1]) for row in map(str.split, stats.splitlines()) if len(row) == 2 and row[1].isdigit()}
    assert counts.get("finetune") == 3 and counts.get("evaluate") == 3, stats  # 3 tuned cells, not the untuned one
    assert "pretrain" not in counts, stats

if __name__ == "__main__":
    sys.exit(_worker(sys.argv[1:]))
