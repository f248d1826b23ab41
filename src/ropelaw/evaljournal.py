"""An evaluation's finished batches, kept so that a job stopped by its time limit resumes where it was.

A 13B's 1M-token cell is 16 forwards of about an hour each on an A100: more than one job's time limit.
`ropelaw evaluate --out DIR/eval.csv` keeps `DIR/eval_partial/` beside its outputs (not one of them, so
Snakemake leaves it when a job fails):

- `identity.json`: everything that decides the numbers (the cell, the model's and the rows' manifests,
  the lengths, the scoring, the chunking, precision and kernels, the code and library versions);
- `batch-<first doc>.json`, one per finished batch of documents: its per-document segment sums, its
  bucket sums and its seconds, each file written atomically (a killed job leaves whole files or none).

A new attempt with the same identity takes those batches as computed (JSON keeps every float exactly,
so the table is the uninterrupted run's, bit for bit) and runs the rest; a folder of another identity
is removed first, and the log says so. Once eval.csv is written the folder is removed, so a forced
re-run evaluates afresh.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd

from ropelaw import provenance

IDENTITY = "identity.json"


def journal_dir(out) -> Path:
    """eval.csv -> eval_partial/: where the finished batches of an unfinished evaluation wait."""
    out = Path(out)
    return out.with_name(f"{out.stem}_partial")


class Journal:
    """The finished batches of one evaluation (one identity) in `folder`."""

    def __init__(self, folder, identity: dict):
        self.folder, self.identity = Path(folder), json.loads(json.dumps(identity, default=str))
        self.resumed_seconds = 0.0

    def claim(self) -> int:
        """Keep the folder's batches if they are this evaluation's, else remove them; the number kept."""
        marker = self.folder / IDENTITY
        if self.folder.exists():
            owner = _read(marker)
            if owner != self.identity:
                differs = sorted(k for k in {*self.identity, *(owner or {})}
                                 if (owner or {}).get(k) != self.identity.get(k))
                print(f"{self.folder} holds batches of another evaluation ({', '.join(differs) or IDENTITY} "
                      "differs): starting afresh", flush=True)
                shutil.rmtree(self.folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        provenance.write_json(marker, self.identity)
        return len(list(self.folder.glob("batch-*.json")))

    def load(self, first: int) -> tuple[pd.DataFrame, list[dict]] | None:
        """The batch starting at document `first`, if an earlier attempt finished it."""
        record = _read(self._path(first))
        if record is None:
            return None
        self.resumed_seconds += record["seconds"]
        return pd.DataFrame(record["segments"]), record["buckets"]

    def save(self, first: int, segments: pd.DataFrame, buckets: list[dict], seconds: float) -> None:
        provenance.write_json(self._path(first), {"first": first, "seconds": seconds,
                                                  "segments": {k: v.tolist() for k, v in segments.items()},
                                                  "buckets": buckets})

    def _path(self, first: int) -> Path:
        return self.folder / f"batch-{first}.json"


def remove(folder) -> None:
    """The evaluation's outputs are written: its batches are no longer needed."""
    shutil.rmtree(folder, ignore_errors=True)


def _read(path: Path) -> dict | None:
    """A JSON file's content; None for a missing or unreadable one (then the batch is run again)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
