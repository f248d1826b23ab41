"""The manifest of a packed training folder (`ropelaw pack`), read and written with named keys.

    info = PackManifest.read(DIR)          # DIR/manifest.json, checked
    info.write(DIR)                        # with commit, versions, host and command added

`pack` writes it and `finetune` reads it through this one dataclass, so a key
spelled differently on the two sides is an AttributeError in the tests, not a
silent null in every model manifest (the old `tokens_sha256` against
`tokens_bin_sha256`). The provenance keys that `provenance.manifest` adds are
kept in `provenance` on reading and rewritten as they were.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ropelaw import UserError
from ropelaw.provenance import manifest, write_json

FILE = "manifest.json"
PROVENANCE_KEYS = ("git_commit", "versions", "host", "command")


@dataclass(frozen=True)
class PackManifest:
    """What a packed folder holds: `tokens.bin` as [n_sequences, seq_len] of `dtype`."""

    n_sequences: int
    """Rows of tokens.bin."""
    seq_len: int
    """Tokens per row (the tuning length)."""
    dtype: str
    """numpy dtype string of tokens.bin ('<u2' or '<u4')."""
    tokens_bin_sha256: str | None = None
    """sha256 of tokens.bin (None only in folders not written by `ropelaw pack`, e.g. test fixtures)."""
    n_documents: int | None = None
    """Documents read (the last one possibly in part)."""
    n_tokens_read: int | None = None
    """Tokens of those documents, EOS included."""
    n_tokens_used: int | None = None
    """n_sequences x seq_len."""
    subsets: list[str] | None = None
    """pile_set_name values kept (None: all)."""
    per_subset: dict[str, dict[str, int]] = field(default_factory=dict)
    """Documents and tokens read per subset."""
    max_sequences: int | None = None
    """The cap on rows that packing was given."""
    shards: dict[str, str] = field(default_factory=dict)
    """sha256 of each shard read, by path."""
    tokenizer: dict[str, Any] = field(default_factory=dict)
    """The tokenizer's identity (`data.load_tokenizer`)."""
    provenance: dict[str, Any] = field(default_factory=dict, compare=False)
    """Commit, versions, host and command of the run that wrote it."""

    def __post_init__(self) -> None:
        for name in ("n_sequences", "seq_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise UserError(f"{FILE}: {name} = {value!r} is not a positive integer; re-run `ropelaw pack`")
        if self.dtype not in ("<u2", "<u4"):
            raise UserError(f"{FILE}: dtype = {self.dtype!r} is not '<u2' or '<u4'; re-run `ropelaw pack`")

    @classmethod
    def read(cls, directory: str | Path) -> "PackManifest":
        """The manifest of a packed folder; a missing, unreadable or mistyped one is a UserError."""
        path = Path(directory) / FILE
        if not path.is_file():
            raise UserError(f"{path}: missing; re-run `ropelaw pack` (rule pack) for {directory}")
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise UserError(f"{path}: unreadable ({err}); delete {directory} and re-run `ropelaw pack`") from None
        if not isinstance(data, dict):
            raise UserError(f"{path}: not a JSON object; delete {directory} and re-run `ropelaw pack`")
        names = {f.name for f in fields(cls)} - {"provenance"}
        unknown = sorted(set(data) - names - set(PROVENANCE_KEYS))
        missing = sorted({"n_sequences", "seq_len", "dtype"} - set(data))
        if unknown or missing:
            raise UserError(f"{path}: unknown keys {unknown}, missing keys {missing}; re-run `ropelaw pack`")
        known = {k: v for k, v in data.items() if k in names}
        return cls(**known, provenance={k: data[k] for k in PROVENANCE_KEYS if k in data})

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of the file: the named keys, then the provenance keys."""
        data = asdict(self)
        return {**{k: v for k, v in data.items() if k != "provenance"}, **self.provenance}

    def write(self, directory: str | Path) -> "PackManifest":
        """Write DIR/manifest.json atomically, with this run's provenance; returns what was written."""
        record = manifest(**{k: v for k, v in asdict(self).items() if k != "provenance"})
        written = PackManifest(**{k: record[k] for k in record if k not in PROVENANCE_KEYS},
                               provenance={k: record[k] for k in PROVENANCE_KEYS})
        write_json(Path(directory) / FILE, written.to_dict())
        return written
