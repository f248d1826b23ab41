"""An evaluation's finished batches, kept so that a job stopped by its time limit resumes where it was.

A 13B's 1M-token cell is 16 forwards of about an hour each on an A100: more than one job's time limit.
`ropelaw evaluate --out DIR/eval.csv` keeps `DIR/eval_partial/` beside its outputs (`ropelaw passkey`
`DIR/passkey_partial/`), not one of them, so Snakemake leaves it when a job fails:

- `identity.json`: everything that decides the numbers (the cell, the model's and the rows' manifests,
  the lengths, the scoring or the passkey spec, the chunking, precision and kernels, the code and
  library versions);
- one JSON file per finished batch (`batch-<first doc>.json`: its per-document segment sums and bucket
  sums; `L<length>-batch-<first prompt>.json`: its answers), with its seconds, each written atomically
  (a killed job leaves whole files or none).

A new attempt with the same identity takes those batches as computed (JSON keeps every float exactly,
so the table is the uninterrupted run's, bit for bit) and runs the rest; a folder of another identity
is removed first, and the log says so. Once the table is written the folder is removed, so a forced
re-run evaluates afresh.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ropelaw import provenance

IDENTITY = "identity.json"


def journal_dir(out) -> Path:
    """eval.csv -> eval_partial/: where the finished batches of an unfinished evaluation wait."""
    out = Path(out)
    return out.with_name(f"{out.stem}_partial")


class Journal:
    """The finished batches of one evaluation in `folder`; `identity`: what decides its numbers, to which the
    code's commit and the libraries' versions are added here."""

    def __init__(self, folder, identity: dict):
        identity = {**identity, "git_commit": provenance.git_commit(), "versions": provenance.library_versions()}
        self.folder, self.identity = Path(folder), json.loads(json.dumps(identity, default=str))
        self.resumed_seconds = 0.0

    def claim(self, unit: str) -> None:
        """Keep the folder's batches if they are this evaluation's, else remove them; say what is kept
        (`unit`: what one batch holds)."""
        marker = self.folder / IDENTITY
        if self.folder.exists():
            owner = _read(marker)
            if owner != self.identity:
                differs = sorted(k for k in {*self.identity, *(owner or {})}
                                 if (owner or {}).get(k) != self.identity.get(k))
                why = f"no readable {IDENTITY}" if owner is None else ", ".join(differs) + " differs"
                print(f"{self.folder} holds batches of another evaluation ({why}): starting afresh", flush=True)
                shutil.rmtree(self.folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        provenance.write_json(marker, self.identity)
        if kept := len(list(self.folder.glob("*batch-*.json"))):
            print(f"resuming: {kept} finished batch(es) of {unit} from {self.folder} (an earlier attempt of this "
                  "evaluation)", flush=True)

    def load(self, name: str) -> dict | None:
        """The record of the batch `name`, if an earlier attempt finished it."""
        record = _read(self.folder / f"{name}.json")
        if record is None:
            return None
        self.resumed_seconds += record["seconds"]
        return record

    def save(self, name: str, record: dict, seconds: float) -> None:
        provenance.write_json(self.folder / f"{name}.json", {**record, "seconds": seconds})


def remove(folder) -> None:
    """The evaluation's outputs are written: its batches are no longer needed."""
    shutil.rmtree(folder, ignore_errors=True)


def _read(path: Path) -> dict | None:
    """A JSON file's content; None for a missing or unreadable one (then the batch is run again)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
