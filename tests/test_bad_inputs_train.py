"""Bad inputs of the training stage (train-tokenizer, init-model, pack, finetune), and broken checkpoints.

Each refused case runs the command through `ropelaw.cli.main` in this process (the CLI's code: a
`UserError` becomes one line on stderr and status 2; anything else would surface here as an
exception, the traceback a user would see) and asserts: a non-zero status, exactly one line on
stderr (besides progress bars) that names the key or file and the fix, and no finished-looking output. A corrupt newest
checkpoint is not refused: the run names it, resumes from the previous complete one and ends
with the uninterrupted run's model, bitwise. `pytest -q tests/test_bad_inputs_train.py`: ~15 s.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
from pathlib import Path

import pytest
from finetune_cell import SPEC, finetune_args, make_cell, weights
from transformers import TrainerCallback

from ropelaw.cli import main
from ropelaw.pile import write_shard


ZERO3 = Path(__file__).resolve().parents[1] / "config" / "deepspeed" / "zero3.json"
PROGRESS = re.compile(r"\[\d+:\d\d[<,]")  # a tqdm progress update ("pack 32: 1doc [00:00, 5184.55doc/s]")


@pytest.fixture(scope="module")
def cell(tmp_path_factory) -> Path:
    return make_cell(tmp_path_factory.mktemp("bad"))


def _spec(**change) -> str:
    return json.dumps({**SPEC, **change})


def _checkpoints(args: list[str], folder: Path) -> list[str]:
    """`args` with its own checkpoint folder: a run that trains leaves attempts the module's other cases must not see."""
    args[args.index("--checkpoints") + 1] = str(folder)
    return args


def _finetune(cell: Path, out: Path, *, spec: str | None = None, data: Path | None = None,
              base: str = "50000") -> list[str]:
    args = finetune_args(cell, "unused")
    args[args.index("--spec") + 1] = spec if spec is not None else _spec()
    args[args.index("--data") + 1] = str(data or cell / "data")
    args[args.index("--base") + 1] = base
    args[args.index("--out") + 1] = str(out)
    args[args.index("--checkpoints") + 1] = str(out.parent / f"{out.name}_ckpt")
    return args


def _data_with(cell: Path, tmp: Path, manifest: dict | None) -> Path:
    """A copy of the cell's packed folder whose manifest.json is `manifest` (None: no manifest)."""
    data = tmp / "data"
    shutil.copytree(cell / "data", data)
    if manifest is None:
        (data / "manifest.json").unlink()
    else:
        (data / "manifest.json").write_text(json.dumps(manifest))
    return data


def _old_manifest(cell: Path) -> dict:
    record = json.loads((cell / "data/manifest.json").read_text())
    record["tokens_sha256"] = record.pop("tokens_bin_sha256")
    return record


def _empty_shards(tmp: Path) -> list[str]:
    shard = tmp / "empty.jsonl.zst"
    write_shard(shard, [{"text": "  ", "meta": {"pile_set_name": "A"}}])
    return [str(shard)]


# (id, argv of `ropelaw` given (cell, tmp), the words stderr must hold, the output that must not exist)
CASES = [
    ("finetune-spec-not-json", lambda c, t: _finetune(c, t / "out", spec="{not json"),
     ["--spec: not valid JSON", "pass the JSON object"], "out"),
    ("finetune-spec-not-object", lambda c, t: _finetune(c, t / "out", spec="[1, 2]"),
     ["--spec: not a JSON object", "finetune spec"], "out"),
    ("finetune-spec-missing-key", lambda c, t: _finetune(c, t / "out", spec=json.dumps(
        {k: v for k, v in SPEC.items() if k != "lr"})),
     ["missing keys ['lr']", "finetune block"], "out"),
    ("finetune-unknown-schedule", lambda c, t: _finetune(c, t / "out", spec=_spec(lr_schedule="exponential")),
     ["lr_schedule = 'exponential'", "one of constant, cosine, linear", "fix finetune.lr_schedule"], "out"),
    ("finetune-lr-nan", lambda c, t: _finetune(c, t / "out", spec=_spec(lr=float("nan"))),
     ["lr = nan must be a finite number > 0", "fix finetune.lr"], "out"),
    ("finetune-fused-loss-unknown", lambda c, t: _finetune(c, t / "out", spec=_spec(fused_loss="fast")),
     ["fused_loss = 'fast' must be true, false or one of grad_in_forward, checkpointed", "fix finetune.fused_loss"],
     "out"),
    ("finetune-compile-mode-unknown", lambda c, t: _finetune(c, t / "out", spec=_spec(compile="max-autotune")),
     ["compile = 'max-autotune' must be true, false or one of max-autotune-no-cudagraphs", "fix finetune.compile"],
     "out"),
    ("finetune-grad-in-forward-under-zero3", lambda c, t: _finetune(c, t / "out", spec=_spec(
        fused_loss="grad_in_forward", deepspeed=str(ZERO3))),
     ["'finetune.fused_loss' is grad_in_forward", "not supported under DeepSpeed ZeRO-3", "set it to true or checkpointed"],
     "out"),
    ("finetune-loss-not-finite", lambda c, t: _checkpoints(_finetune(c, t / "out", spec=_spec(
        lr=1e38, logging_steps=1)), t / "ckpt"),  # Adam's first step moves every weight by about lr: overflow
     ["the training loss is", "in the log of step 2", "no model is written", "lower finetune.lr"], "out"),
    ("finetune-seed-beyond-numpy", lambda c, t: _finetune(c, t / "out", spec=_spec(seed=2**32)),
     ["seed = 4294967296 must be an integer in [0, 2**32)", "fix finetune.seed"], "out"),
    ("finetune-base-nan", lambda c, t: _finetune(c, t / "out", base="nan"),
     ["--base must be a number > 1", "fix the cell's base"], "out"),
    ("finetune-method-not-json", lambda c, t: [*_finetune(c, t / "out"), "--method", "{not json"],
     ["--method: not a method spec", "pass MethodSpec.to_json()"], "out"),
    ("finetune-method-not-trained", lambda c, t: [*_finetune(c, t / "out"), "--method", _untuned_method()],
     ["--method: untuned at base 10000 is not a trained method at --base 50000"], "out"),
    ("finetune-no-data-manifest", lambda c, t: _finetune(c, t / "out", data=_data_with(c, t, None)),
     ["manifest.json: missing", "re-run `ropelaw pack`"], "out"),
    ("finetune-old-data-manifest", lambda c, t: _finetune(c, t / "out", data=_data_with(c, t, _old_manifest(c))),
     ["manifest.json: unknown keys ['tokens_sha256']", "re-run `ropelaw pack`"], "out"),
    ("finetune-fewer-rows-than-a-batch", lambda c, t: _finetune(c, t / "out", spec=_spec(global_batch_size=32,
                                                                                            micro_batch_size=1)),
     ["16 rows, fewer than one global batch of 32", "data.train.max_sequences"], "out"),
    ("train-tokenizer-empty-corpus", lambda c, t: ["train-tokenizer", "--shards", *_empty_shards(t),
                                                   "--vocab-size", "300", "--out", str(t / "tok")],
     ["data.train.shards", "no text to train a tokenizer on", "add shards"], "tok"),
    ("init-model-untrained-tokenizer", lambda c, t: ["init-model", "--spec", '{"source": "scratch"}', "--tokenizer",
                                                     str(_empty_tokenizer(t)), "--out", str(t / "init")],
     ["trained on no documents", "re-run `ropelaw train-tokenizer`"], "init"),
    ("init-model-spec-not-json", lambda c, t: ["init-model", "--spec", "{not json", "--tokenizer", str(c / "model"),
                                               "--out", str(t / "init")],
     ["--spec: not valid JSON", "rule init_model"], "init"),
    ("pack-empty-corpus", lambda c, t: ["pack", "--shards", *_empty_shards(t), "--tokenizer", str(c / "model"),
                                        "--seq-len", "32", "--out", str(t / "packed")],
     ["data.train: the shards", "fewer than one sequence of 32", "add shards"], "packed"),
]


def _untuned_method() -> str:
    from ropelaw import methods

    return json.dumps(methods.resolve("untuned", 10000.0).to_json())


def _empty_tokenizer(tmp: Path) -> Path:
    """A tokenizer folder as an older version left it after an empty corpus: no documents in its record."""
    from ropelaw.tokenizer import MANIFEST

    folder = tmp / "tok"
    folder.mkdir()
    (folder / "tokenizer.json").write_text("{}")
    (folder / MANIFEST).write_text(json.dumps({"documents": {}}))
    return folder


@pytest.mark.parametrize("argv, words, output", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_naming_the_fix(cell, tmp_path, capsys, argv, words, output):
    args = argv(cell, tmp_path)
    capsys.readouterr()
    status = main(args)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and not PROGRESS.search(line)]
    assert status != 0 and len(lines) == 1, err
    assert lines[0].startswith(f"ropelaw {args[0]}: error: ") and "Traceback" not in err
    for word in words:
        assert word in lines[0], lines[0]
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith((output, f".{output}"))]
    assert leftovers == [], leftovers


def test_a_diverged_run_is_not_retried(cell, tmp_path, capsys):
    """A run whose loss turned non-finite records its attempt as diverged; run again as it was (what Snakemake's
    retries do), it is refused at once, before the model loads: the same seed, spec and data diverge again."""
    from ropelaw import checkpoints

    args = _checkpoints(_finetune(cell, tmp_path / "out", spec=_spec(lr=1e38, logging_steps=1)), tmp_path / "ckpt")
    assert main(args) == 2
    runs = checkpoints.attempts(tmp_path / "ckpt")
    assert [run["outcome"] for run in runs] == ["diverged"] and runs[0]["step"] == 2 and runs[0]["loss"] == "nan"
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.strip() == ("ropelaw finetune: error: attempt 1 of this run diverged (training loss nan at step 2) and "
                           "the same seed, spec and data would again: lower finetune.lr (or finetune.max_grad_norm) and "
                           "train the cell again")
    assert len(checkpoints.attempts(tmp_path / "ckpt")) == 1  # refused before an attempt began
    assert not (tmp_path / "out").exists()
    changed = _checkpoints(_finetune(cell, tmp_path / "out", spec=_spec(lr=1e-3, logging_steps=1)), tmp_path / "ckpt")
    assert main(changed) == 0 and (tmp_path / "out").is_dir()  # another lr: another run, trained afresh


class _StopAt(TrainerCallback):
    """SIGUSR1 to this process as step 4 begins: the run checkpoints steps 2 and 4, then stops."""

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step + 1 == 4:
            os.kill(os.getpid(), signal.SIGUSR1)


@pytest.mark.parametrize("broken", ["model.safetensors", "optimizer.pt"])
def test_a_corrupt_newest_checkpoint_is_named_and_the_previous_one_resumed(cell, tmp_path, capsys, monkeypatch,
                                                                            broken):
    from ropelaw import trainer

    assert main(_finetune(cell, tmp_path / "clean")) == 0
    build = trainer.build_trainer
    monkeypatch.setattr(trainer, "build_trainer", lambda *a, **k: build(*a[:4], [*a[4], _StopAt()], **k))
    previous = signal.getsignal(signal.SIGUSR1)
    with pytest.raises(SystemExit, match="75"):
        main(_finetune(cell, tmp_path / "run"))
    signal.signal(signal.SIGUSR1, previous)
    monkeypatch.undo()
    newest = tmp_path / "run_ckpt/checkpoint-4"
    with open(newest / broken, "r+b") as fh:
        fh.truncate(fh.seek(0, 2) // 2)
    capsys.readouterr()
    assert main(_finetune(cell, tmp_path / "run")) == 0
    out = capsys.readouterr().out
    assert f"{newest} is broken ({broken}: truncated" in out and "resuming from" in out
    assert json.loads((tmp_path / "run/ropelaw_manifest.json").read_text())["resumed_from"].endswith("checkpoint-2")
    assert weights(tmp_path, "run") == weights(tmp_path, "clean")
