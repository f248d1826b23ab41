"""The resumable state of a training run: whose it is, where to resume, and its removal at the end.

A run keeps Trainer checkpoints (`checkpoint-N/`) in a folder outside the rule's outputs, with
`ropelaw_run.json`, the identity of the run that wrote them (base, spec, world size, source model
and data). The life of that folder:

- `claim`: checkpoints of another run (another identity) are deleted before training starts;
- `resume_point`: the newest *complete* checkpoint of an unfinished run. Each file is checked
  (a safetensors header against the file's size, a torch zip's central directory, the trainer
  state's JSON); a broken newer checkpoint is named, removed, and the previous one is used.
  A checkpoint at or past the last step is never resumed (the run never writes one: the finished
  model is saved instead, and an older version's one would train step N+1 of N);
- `finish`: once the model is written, the folder is removed, so a forced re-run (Snakemake
  `--forcerun`, or a deleted model) trains from the start and yields the same model bitwise.
  If the process dies between writing the model and removing the folder, what is left is a
  checkpoint before the last step, and resuming from it ends in the same model, bitwise.

The folder also keeps the run's attempts (`ropelaw_attempts.jsonl`, one JSON line per event,
appended by the main rank): each attempt's start (time, host, SLURM job, checkpoint resumed),
each checkpoint it saved, and how it ended (stopped by SIGUSR1, or failed with its error). An
attempt that was killed (SIGKILL, out of memory, a node lost) leaves no end, and its last
checkpoint says how far it got. Snakemake deletes a rule's log before it retries the job, so a
new attempt prints its predecessors (`history`), and the finished model's manifest lists them
all (`attempts`).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import struct
import zipfile
from datetime import datetime, timezone
from pathlib import Path

from ropelaw import provenance

MARKER = "ropelaw_run.json"
ATTEMPTS = "ropelaw_attempts.jsonl"
KILLED = "ended without a record: killed (SIGKILL, out of memory, time limit or a lost node)"
DIVERGED = "diverged"  # the outcome of an attempt whose logged loss was not finite (ropelaw.trainer.FiniteLoss)


def claim(ckpt_dir: Path, identity: dict, main: bool) -> None:
    """Resume only from checkpoints of this very run: same base, spec, world size, model and data."""
    marker = ckpt_dir / MARKER
    if not main:
        return
    ours = _owner(ckpt_dir) == identity if marker.is_file() else not any(ckpt_dir.glob("checkpoint-*"))
    if not ours:
        print(f"{ckpt_dir} holds checkpoints of another run ({marker.name} differs): starting afresh", flush=True)
        shutil.rmtree(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    provenance.write_json(marker, identity)


def _owner(ckpt_dir: Path) -> dict | None:
    """The identity of the run the folder's checkpoints belong to (its marker), None without one."""
    marker = ckpt_dir / MARKER
    return json.loads(marker.read_text()) if marker.is_file() else None


def diverged(ckpt_dir: Path, identity: dict) -> dict | None:
    """The attempt of this very run (same identity) that ended diverged, if one did: a retry would repeat it."""
    if _owner(ckpt_dir) != identity:
        return None
    return next((run for run in attempts(ckpt_dir) if run["outcome"] == DIVERGED), None)


def _step(path: Path) -> int | None:
    step = path.name.split("-")[-1]
    return int(step) if path.name.startswith("checkpoint-") and step.isdigit() else None


def newest_checkpoint(directory: Path) -> Path | None:
    """The Trainer checkpoint with the highest step in `directory` that has a trainer state (unchecked)."""
    found = [(_step(p), p) for p in directory.glob("checkpoint-*") if _step(p) is not None]
    found = [(step, p) for step, p in found if (p / "trainer_state.json").is_file()]
    return max(found)[1] if found else None


def problem(checkpoint: Path) -> str | None:
    """What is wrong with a checkpoint folder (its first broken file), or None if every file is whole."""
    state = checkpoint / "trainer_state.json"
    if not state.is_file():
        return "trainer_state.json is missing"
    try:
        json.loads(state.read_text())["global_step"]
    except (ValueError, KeyError, TypeError):
        return "trainer_state.json is not a complete trainer state"
    for path in sorted(checkpoint.rglob("*")):
        name = path.relative_to(checkpoint)
        if path.suffix == ".safetensors" and (why := _safetensors_problem(path)):
            return f"{name}: {why}"
        if path.suffix in (".pt", ".pth", ".bin") and not zipfile.is_zipfile(path):
            return f"{name}: truncated or not a torch file (no zip directory at its end)"
    return None


def _safetensors_problem(path: Path) -> str | None:
    """A safetensors file is 8 bytes of header length, the JSON header, then the data it indexes."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            return f"truncated ({size} bytes)"
        (length,) = struct.unpack("<Q", head)
        if 8 + length > size:
            return f"truncated ({size} bytes, header alone says {8 + length})"
        try:
            header = json.loads(fh.read(length))
        except ValueError:
            return "unreadable header"
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + length + end != size:
        return f"truncated ({size} bytes, its header says {8 + length + end})"
    return None


def resume_point(ckpt_dir: Path, steps: int) -> Path | None:
    """The newest complete checkpoint before step `steps`; broken or finished ones are removed (main rank)."""
    candidates = sorted(((_step(p), p) for p in ckpt_dir.glob("checkpoint-*") if _step(p) is not None), reverse=True)
    for step, path in candidates:
        if step >= steps:
            print(f"{path}: at step {step} of {steps}, a finished run's checkpoint: removed, not resumed", flush=True)
        elif (why := problem(path)) is None:
            return path
        else:
            print(f"{path} is broken ({why}): removed; resuming from the previous complete checkpoint, if any",
                  flush=True)
        shutil.rmtree(path)
    return None


def finish(ckpt_dir: Path) -> None:
    """Remove a finished run's resumable state: a re-run must train from the start."""
    if ckpt_dir.exists():
        shutil.rmtree(ckpt_dir)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def record(ckpt_dir: Path, event: str, **fields) -> None:
    """Append one event of this attempt to the run's attempts (main rank only; one line, flushed)."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    path = ckpt_dir / ATTEMPTS
    cut = path.is_file() and path.read_bytes()[-1:] not in (b"", b"\n")  # a line cut short by a kill
    with open(path, "a") as fh:
        fh.write("\n" * cut + json.dumps({"event": event, "time": _now(), **fields}) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def begin_attempt(ckpt_dir: Path, resume: Path | None) -> int:
    """Record the start of an attempt (main rank); returns its number, 1 for the first."""
    number = len(attempts(ckpt_dir)) + 1
    record(ckpt_dir, "start", attempt=number, host=platform.node(), slurm_job_id=os.environ.get("SLURM_JOB_ID"),
           resumed_from=resume.name if resume else None, resumed_at_step=_step(resume) if resume else 0)
    return number


def attempts(ckpt_dir: Path) -> list[dict]:
    """The run's attempts so far, oldest first: start, host, SLURM job, checkpoint resumed, the last
    checkpoint saved, and the outcome (`stopped by SIGUSR1`, `failed` with its error, or KILLED where no end was
    written). The one running now reads as KILLED until it ends. A line cut short by a kill is skipped."""
    path, runs = ckpt_dir / ATTEMPTS, []
    lines = path.read_text().splitlines() if path.is_file() else []
    for line in lines:
        try:
            event = json.loads(line)
        except ValueError:
            continue
        kind = event.pop("event", None)
        if kind == "start":
            runs.append({**event, "started": event.pop("time"), "last_checkpoint_step": None, "outcome": KILLED})
        elif runs and kind == "checkpoint":
            runs[-1]["last_checkpoint_step"] = event["step"]
        elif runs and kind == "end":
            runs[-1].update(ended=event.pop("time"), **event)
    return runs


def completed(ckpt_dir: Path, steps: int) -> list[dict]:
    """Every attempt of the run, the last one (running now) completed now at step `steps`: the manifest's."""
    runs = attempts(ckpt_dir)
    if runs:
        runs[-1].update(outcome="completed", ended=_now(), step=steps)
    return runs


def history(runs: list[dict]) -> str:
    """One line per earlier attempt, for the log of the next one."""
    return "\n".join(
        f"  attempt {run['attempt']} (started {run['started']} on {run['host']}"
        + (f", SLURM job {run['slurm_job_id']}" if run.get("slurm_job_id") else "")
        + f"): {run['outcome']}" + (f" after step {run['step']}" if run.get("step") is not None else "")
        + (f"; error: {run['error']}" if run.get("error") else "")
        + (f"; training loss {run['loss']}" if run.get("loss") else "")
        + (f"; last checkpoint at step {run['last_checkpoint_step']}" if run["last_checkpoint_step"] else "")
        for run in runs
    )
