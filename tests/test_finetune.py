"""The trainer in pieces: the pure plan, the data manifest, the Trainer's global batch, and runs of
`ropelaw finetune` (in this process, through `ropelaw.cli.main`: the code the finetune rule's shell
line runs; Snakemake's --forcerun only deletes the model folder first, which `rerun` does here).

`pytest -q tests/test_finetune.py`: about 20 s on one core.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
from finetune_cell import SPEC, finetune, make_cell, manifest, weights, write_rows
from transformers import TrainerCallback

from ropelaw import UserError, provenance
from ropelaw.manifests import PackManifest
from ropelaw.train_plan import TrainSpec, make_plan


def _spec(**change) -> TrainSpec:
    return TrainSpec(**{**SPEC, **change})


# --- the plan -------------------------------------------------------------------------------

def test_plan_keeps_whole_global_batches_across_epochs():
    spec = _spec(steps=5, global_batch_size=4, micro_batch_size=2)
    plan = make_plan(spec, world_size=1, rows=10, seq_len=32)
    assert (plan.accumulation, plan.steps_per_epoch, plan.rows_per_epoch, plan.rows_unused, plan.epochs) == (2, 2, 8, 2, 3)
    # Within one epoch nothing is trimmed: the Trainer samples from every row, as before.
    plan = make_plan(_spec(steps=2, global_batch_size=4), world_size=1, rows=10, seq_len=32)
    assert (plan.rows_per_epoch, plan.epochs) == (10, 1)
    # Rows that divide into global batches are all read, every epoch.
    plan = make_plan(_spec(steps=9, global_batch_size=4, micro_batch_size=1), world_size=2, rows=12, seq_len=32)
    assert (plan.accumulation, plan.rows_per_epoch, plan.epochs) == (2, 12, 3)


@pytest.mark.parametrize("change, rows, world, match", [
    ({"global_batch_size": 4}, 3, 1, r"3 rows, fewer than one global batch of 4: raise data\.train\.max_sequences"),
    ({"global_batch_size": 4, "micro_batch_size": 2}, 16, 3, r"not a multiple of micro_batch_size x world size"),
    ({"length_multiple": 64}, 16, 1, r"tuning length 32 is not a multiple of finetune\.length_multiple = 64"),
])
def test_plan_refuses_what_cannot_be_trained(change, rows, world, match):
    with pytest.raises(UserError, match=match):
        make_plan(_spec(**change), world_size=world, rows=rows, seq_len=32)


@pytest.mark.parametrize("key, value, match", [
    ("lr", float("nan"), r"lr = nan must be a finite number > 0; fix finetune\.lr"),
    ("lr_schedule", "exponential", r"lr_schedule = 'exponential' must be one of constant, cosine, linear"),
    ("steps", 0, r"steps = 0 must be an integer >= 1"),
    ("steps", 2.5, r"steps = 2\.5 must be an integer >= 1"),
    ("compile", "yes", r"compile = 'yes' must be true, false or one of max-autotune-no-cudagraphs"),
    ("compile", "max-autotune", r"compile = 'max-autotune' must be true, false or one of max-autotune-no-cudagraphs"),
    ("adam_beta2", 1.0, r"adam_beta2 = 1\.0 must be a number in \[0, 1\)"),
])
def test_spec_refuses_bad_values_naming_the_key(key, value, match):
    with pytest.raises(UserError, match=match):
        _spec(**{key: value})
    with pytest.raises(UserError, match=match):
        TrainSpec.from_json(json.dumps({**SPEC, key: value}))


# --- the data manifest ----------------------------------------------------------------------

def test_pack_manifest_round_trips_with_named_keys(tmp_path):
    written = PackManifest(n_sequences=3, seq_len=8, dtype="<u2", tokens_bin_sha256="ab" * 32, n_documents=2,
                           shards={"s.jsonl": "cd" * 32}, per_subset={"A": {"documents": 2, "tokens": 30}}).write(tmp_path)
    on_disk = json.loads((tmp_path / "manifest.json").read_text())
    assert on_disk["tokens_bin_sha256"] == "ab" * 32 and on_disk["command"][0] and on_disk["git_commit"]
    read = PackManifest.read(tmp_path)
    assert read == written and read.provenance == written.provenance and read.to_dict() == on_disk
    on_disk["tokens_sha256"] = on_disk.pop("tokens_bin_sha256")  # the old reader's spelling
    (tmp_path / "manifest.json").write_text(json.dumps(on_disk))
    with pytest.raises(UserError, match=r"manifest\.json: unknown keys \['tokens_sha256'\]"):
        PackManifest.read(tmp_path)


def test_command_is_recorded_without_absolute_paths(tmp_path):
    argv = ["/home/someone/.venv/bin/ropelaw", "finetune", "--out", str(tmp_path / "results/m"), "--base", "10"]
    assert provenance.command_line(argv, cwd=tmp_path) == ["ropelaw", "finetune", "--out", "results/m", "--base", "10"]


# --- the Trainer ----------------------------------------------------------------------------

@pytest.fixture
def cell(tmp_path) -> Path:
    return make_cell(tmp_path)


class _RowsPerStep(TrainerCallback):
    """Rows each optimizer step trained on, counted by a forward hook on the model."""

    def __init__(self):
        self.rows, self.steps = 0, []

    def hook(self, module, args, kwargs):
        self.rows += len(kwargs["input_ids"])

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        model.register_forward_pre_hook(self.hook, with_kwargs=True)

    def on_step_end(self, args, state, control, **kwargs):
        self.steps.append(self.rows)
        self.rows = 0


def test_every_optimizer_step_sees_the_whole_global_batch(cell):
    """10 rows, global batch 4 of micro-batches of 2, 5 steps: 3 epochs, each step 4 rows (the Trainer
    alone would run every epoch's third step on the 10th row's micro-batch only)."""
    from ropelaw.finetune import TrainSpec, train

    write_rows(cell / "data", np.random.default_rng(1).integers(0, 96, size=(10, 32)))
    counter = _RowsPerStep()
    record = train(str(cell / "model"), str(cell / "data"), 50000.0, _spec(steps=5), str(cell / "ckpt"),
                   str(cell / "out"), callbacks=[counter])
    assert counter.steps == [4, 4, 4, 4, 4]
    assert (record["rows_per_epoch"], record["rows_unused"], record["epochs"]) == (8, 2, 3)


def test_a_finished_run_forced_to_rerun_trains_again_bitwise(cell):
    assert finetune(cell, "tuned") == 0
    first = manifest(cell, "tuned")
    assert not (cell / "tuned_ckpt").exists()  # a finished run leaves nothing to resume
    assert [row["step"] for row in first["log_history"] if "loss" in row][-1] == SPEC["steps"]
    assert first["resumed_from"] is None and first["data_tokens_sha256"] == PackManifest.read(cell / "data").tokens_bin_sha256
    assert first["command"][0] == "ropelaw" and not any(a.startswith("/") and "bin/" in a for a in first["command"])
    clean = weights(cell, "tuned")
    shutil.rmtree(cell / "tuned")  # what --forcerun does before it runs the same command
    assert finetune(cell, "tuned") == 0
    again = manifest(cell, "tuned")
    assert weights(cell, "tuned") == clean
    assert again["resumed_from"] is None and again["log_history"][-1]["step"] == SPEC["steps"]
    assert again["train_loss"] == first["train_loss"]


def test_a_finished_runs_last_checkpoint_is_never_resumed(cell):
    """A checkpoint at the last step (an older version wrote them) would train step N+1 of N."""
    assert finetune(cell, "clean") == 0
    _Signal.at = SPEC["steps"] - 1
    assert finetune(cell, "stopped") == 75
    _Signal.at = None
    stale = cell / "stopped_ckpt" / f"checkpoint-{SPEC['steps']}"
    shutil.copytree(cell / "stopped_ckpt" / f"checkpoint-{SPEC['steps'] - 1}", stale)
    state = json.loads((stale / "trainer_state.json").read_text())
    (stale / "trainer_state.json").write_text(json.dumps({**state, "global_step": SPEC["steps"]}))
    assert finetune(cell, "stopped") == 0
    assert manifest(cell, "stopped")["resumed_from"].endswith(f"checkpoint-{SPEC['steps'] - 1}")
    assert weights(cell, "stopped") == weights(cell, "clean")


class _Signal(TrainerCallback):
    """Raises SIGUSR1 in this process as step `at` begins: `ropelaw finetune` stops after it (status 75).
    As step `fail_at` begins, raises an error instead (a crash)."""

    at: int | None = None
    fail_at: int | None = None

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step + 1 == self.at:
            os.kill(os.getpid(), signal.SIGUSR1)
        if state.global_step + 1 == self.fail_at:
            raise RuntimeError(f"the disk is full\n(as step {self.fail_at} began)")


@pytest.fixture(autouse=True)
def _signal_callback(monkeypatch):
    """Every run of these tests gets _Signal, which raises SIGUSR1 once at _Signal.at (if set)."""
    from ropelaw import trainer

    build = trainer.build_trainer

    def with_signal(model, spec, args, dataset, callbacks=(), **kwargs):
        return build(model, spec, args, dataset, [*callbacks, _Signal()], **kwargs)

    monkeypatch.setattr(trainer, "build_trainer", with_signal)
    previous = signal.getsignal(signal.SIGUSR1)
    yield
    _Signal.at = _Signal.fail_at = None
    signal.signal(signal.SIGUSR1, previous)


def test_an_interrupted_run_resumes_bitwise_and_averages_every_step(cell):
    assert finetune(cell, "clean") == 0
    _Signal.at = 3
    assert finetune(cell, "stopped") == 75
    _Signal.at = None
    assert (cell / "stopped_ckpt/checkpoint-3").is_dir() and not (cell / "stopped").exists()
    assert finetune(cell, "stopped") == 0
    clean, resumed = manifest(cell, "clean"), manifest(cell, "stopped")
    assert resumed["resumed_from"].endswith("checkpoint-3")
    assert weights(cell, "stopped") == weights(cell, "clean")
    losses = [row["loss"] for row in clean["log_history"] if "loss" in row]
    assert len(losses) == 3  # steps 2 and 4 (checkpoints) and 5 (the last)
    assert resumed["train_loss"] == pytest.approx(clean["train_loss"], rel=1e-6)
    assert clean["train_loss"] == pytest.approx((2 * losses[0] + 2 * losses[1] + losses[2]) / 5, rel=1e-12)
    assert clean["train_loss"] != pytest.approx(losses[-1], rel=1e-4)  # not only the steps after a resume


_KILLED_AT_STEP_5 = """
import os, signal, sys
from transformers import TrainerCallback
from ropelaw import trainer
from ropelaw.cli import main

class Kill(TrainerCallback):
    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step + 1 == 5:
            os.kill(os.getpid(), signal.SIGKILL)

build = trainer.build_trainer
trainer.build_trainer = lambda model, spec, args, dataset, callbacks=(), **kw: build(model, spec, args, dataset, [*callbacks, Kill()], **kw)
main(sys.argv[1:])
"""


def test_every_attempt_is_listed_with_how_it_ended_and_told_to_the_next(cell, capfd):
    """Stopped by SIGUSR1 after step 3, crashed as step 5 began, killed (SIGKILL, a real process) as
    step 5 began, then completed: the log of each new attempt names the earlier ones (Snakemake has
    deleted theirs), the manifest lists all four, and the model is still the uninterrupted one, bitwise."""
    import subprocess
    import sys

    from ropelaw.checkpoints import KILLED
    from finetune_cell import finetune_args

    assert finetune(cell, "clean") == 0
    (only,) = manifest(cell, "clean")["attempts"]
    assert (only["attempt"], only["outcome"], only["step"], only["resumed_from"]) == (1, "completed", 5, None)
    _Signal.at = 3
    assert finetune(cell, "run") == 75
    _Signal.at, _Signal.fail_at = None, 5
    with pytest.raises(RuntimeError, match="the disk is full"):
        finetune(cell, "run")
    _Signal.fail_at = None
    killed = subprocess.run([sys.executable, "-c", _KILLED_AT_STEP_5, *finetune_args(cell, "run")],
                            capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert "attempt 3 of this run" in killed.stdout
    capfd.readouterr()
    assert finetune(cell, "run") == 0
    log = capfd.readouterr().out
    attempts = manifest(cell, "run")["attempts"]
    assert [(a["attempt"], a["outcome"], a.get("step"), a["resumed_from"], a["last_checkpoint_step"]) for a in attempts] == [
        (1, "stopped by SIGUSR1", 3, None, 3),
        (2, "failed", 4, "checkpoint-3", 4),
        (3, KILLED, None, "checkpoint-4", None),
        (4, "completed", 5, "checkpoint-4", None),
    ]
    assert attempts[1]["error"] == "RuntimeError: the disk is full"
    assert all(a["host"] and a["started"] <= a.get("ended", a["started"]) for a in attempts)
    assert "attempt 4 of this run" in log
    assert "attempt 1 (started" in log and "stopped by SIGUSR1 after step 3; last checkpoint at step 3" in log
    assert "failed after step 4; error: RuntimeError: the disk is full; last checkpoint at step 4" in log
    assert f"attempt 3 (started {attempts[2]['started']}" in log and KILLED in log
    assert weights(cell, "run") == weights(cell, "clean")
    assert not (cell / "run_ckpt").exists()  # the attempts went with the finished run's checkpoints


def test_attempts_skip_a_line_cut_short_and_go_with_another_runs_checkpoints(tmp_path):
    from ropelaw import checkpoints

    checkpoints.claim(tmp_path, {"base": 1.0}, main=True)
    assert checkpoints.begin_attempt(tmp_path, None) == 1
    checkpoints.record(tmp_path, "checkpoint", step=2)
    with open(tmp_path / checkpoints.ATTEMPTS, "a") as fh:
        fh.write('{"event": "end", "outcome": "stopp')  # the process died inside the write
    (run,) = checkpoints.attempts(tmp_path)
    assert (run["outcome"], run["last_checkpoint_step"]) == (checkpoints.KILLED, 2)
    assert checkpoints.begin_attempt(tmp_path, tmp_path / "checkpoint-2") == 2
    assert checkpoints.attempts(tmp_path)[1]["resumed_at_step"] == 2
    checkpoints.claim(tmp_path, {"base": 2.0}, main=True)  # another run's folder: removed, attempts too
    assert checkpoints.attempts(tmp_path) == []
