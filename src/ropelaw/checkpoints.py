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
"""

from __future__ import annotations

import json
import shutil
import struct
import zipfile
from pathlib import Path

from ropelaw import provenance

MARKER = "ropelaw_run.json"


def claim(ckpt_dir: Path, identity: dict, main: bool) -> None:
    """Resume only from checkpoints of this very run: same base, spec, world size, model and data."""
    marker = ckpt_dir / MARKER
    if not main:
        return
    ours = json.loads(marker.read_text()) == identity if marker.is_file() else not any(ckpt_dir.glob("checkpoint-*"))
    if not ours:
        print(f"{ckpt_dir} holds checkpoints of another run ({marker.name} differs): starting afresh", flush=True)
        shutil.rmtree(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    provenance.write_json(marker, identity)


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
