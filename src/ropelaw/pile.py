"""Read and write Pile-format shards, streaming.

A shard is a `.jsonl` or `.jsonl.zst` file with one JSON object per line:
`{"text": "...", "meta": {"pile_set_name": "Books3", ...}}`. Shards are read
line by line (never whole), so real Pile shards of tens of GB work as they are.
Used by `ropelaw.embedded`, `ropelaw.tokenizer`, `ropelaw.data` and
`ropelaw.evaldata`; there is no command of its own.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import zstandard

from ropelaw import UserError
from ropelaw.provenance import atomic_path

ZSTD_LEVEL = 10  # fixed, so that the same records give byte-identical shards


@dataclass(frozen=True)
class Document:
    """One Pile record and where it came from."""

    text: str
    subset: str
    """`meta.pile_set_name`."""
    path: str
    line: int
    """1-based line number in `path`."""
    meta: dict[str, Any]

    @property
    def title(self) -> str | None:
        return self.meta.get("title")

    def source(self) -> dict[str, Any]:
        """Where the document came from, for manifests."""
        return {"path": self.path, "line": self.line, "subset": self.subset, "title": self.title}


def check_shards(paths: Sequence[str | Path], key: str = "data") -> list[Path]:
    """The shard paths, after checking that each exists and has a Pile suffix."""
    if not paths:
        raise UserError(f"{key}.shards: no shard given; list at least one .jsonl or .jsonl.zst file")
    checked = []
    for path in map(Path, paths):
        if not path.is_file():
            raise UserError(f"{key}.shards: {path} does not exist; fix the path or fetch the shard")
        if not path.name.endswith((".jsonl", ".jsonl.zst")):
            raise UserError(f"{key}.shards: {path} is not a .jsonl or .jsonl.zst file")
        checked.append(path)
    return checked


def _lines(path: Path) -> Iterator[str]:
    with open(path, "rb") as raw:
        if path.name.endswith(".zst"):
            decompressor = zstandard.ZstdDecompressor(max_window_size=2**31)
            raw = decompressor.stream_reader(raw, read_across_frames=True)
        # newline="\n": split on line feeds only, as JSON Lines does
        yield from io.TextIOWrapper(raw, encoding="utf-8", newline="\n")


def _parse(line: str, path: Path, lineno: int) -> Document:
    where = f"{path}:{lineno}: not a Pile record"
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise UserError(f"{where} ({err})") from None
    if not isinstance(record, dict) or not isinstance(record.get("text"), str):
        raise UserError(f"{where} (no string field 'text')")
    meta = record.get("meta")
    if not isinstance(meta, dict) or not isinstance(meta.get("pile_set_name"), str):
        raise UserError(f"{where} (no string field meta.pile_set_name)")
    return Document(record["text"], meta["pile_set_name"], str(path), lineno, meta)


def iter_documents(
    paths: Sequence[str | Path],
    subsets: Sequence[str] | None = None,
    max_docs: int | None = None,
    key: str = "data",
) -> Iterator[Document]:
    """Stream the documents of `paths` in order, keeping those whose subset is in `subsets`.

    `subsets=None` keeps all. `key` is the config block the shards come from
    (e.g. "data.train"); error messages name `{key}.shards` or `{key}.subsets`.
    """
    paths = check_shards(paths, key)
    wanted = None if subsets is None else set(subsets)
    present: set[str] = set()
    n_yielded = 0
    for path in paths:
        if max_docs is not None and n_yielded >= max_docs:
            return
        lineno = 0
        try:
            for lineno, line in enumerate(_lines(path), start=1):
                if not line.strip():
                    continue
                doc = _parse(line, path, lineno)
                present.add(doc.subset)
                if wanted is not None and doc.subset not in wanted:
                    continue
                yield doc
                n_yielded += 1
                if max_docs is not None and n_yielded >= max_docs:
                    return
        except (UnicodeDecodeError, zstandard.ZstdError, OSError) as err:
            raise UserError(f"{path}:{lineno + 1}: cannot read the shard ({err})") from None
    if n_yielded == 0 and wanted is not None:
        raise UserError(
            f"{key}.subsets: no document in {[str(p) for p in paths]} has pile_set_name in "
            f"{sorted(wanted)}; subsets present: {sorted(present)}"
        )


def write_shard(path: str | Path, records: Iterable[dict[str, Any]]) -> int:
    """Write Pile records to `path` (`.jsonl.zst` or `.jsonl`) atomically; return the count.

    Same records in, byte-identical file out (fixed zstd level, no timestamps).
    """
    path = Path(path)
    if not path.name.endswith((".jsonl", ".jsonl.zst")):
        raise ValueError(f"{path}: a shard must end in .jsonl or .jsonl.zst")
    n = 0
    with atomic_path(path) as tmp, open(tmp, "wb") as raw:
        sink = raw
        if path.name.endswith(".zst"):
            sink = zstandard.ZstdCompressor(level=ZSTD_LEVEL).stream_writer(raw, closefd=False)
        for record in records:
            line = json.dumps(record, ensure_ascii=False) + "\n"
            sink.write(line.encode("utf-8"))
            n += 1
        if sink is not raw:
            sink.close()
    return n
