"""Read and write Pile-format shards, streaming.

A shard is a `.jsonl` or `.jsonl.zst` file with one JSON object per line:
`{"text": "...", "meta": {"pile_set_name": "Books3", ...}}`. Shards are read
line by line (never whole), so real Pile shards of tens of GB work as they are.

A shard must be whole. Every zstd frame must be complete (a file cut inside a frame is an
error), and a file whose last line is not a complete record (a cut between two frames, or
inside a line of a `.jsonl`) is an error naming the file: truncation would otherwise read as
a smaller corpus. The Pile's shards and ours are one frame each, ending with a newline; a
shard of several frames cut exactly between two frames at the end of a record cannot be told
from a shorter shard, only by its checksum (the embedded manifest records each shard's sha256).
A line that is not UTF-8 is reported with its own 1-based line number.
Used by `ropelaw.embedded`, `ropelaw.tokenizer`, `ropelaw.data` and
`ropelaw.evaldata`; there is no command of its own.
"""

from __future__ import annotations

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


READ_BYTES = 1 << 20


def _zstd_chunks(path: Path, raw) -> Iterator[bytes]:
    """The decompressed bytes of every zstd frame of `raw`, frame by frame; an incomplete frame is an error."""
    dctx = zstandard.ZstdDecompressor(max_window_size=2**31)
    frame, frames, in_frame = dctx.decompressobj(), 0, False
    while data := raw.read(READ_BYTES):
        while data:
            in_frame = True
            out = frame.decompress(data)
            if out:
                yield out
            if not frame.eof:
                break
            data, frames = frame.unused_data, frames + 1
            frame, in_frame = dctx.decompressobj(), False
    if in_frame:
        raise UserError(f"{path}: truncated: its last zstd frame is cut short (after {frames} complete "
                        f"frame(s)); fetch or rebuild the shard")
    if frames == 0:
        raise UserError(f"{path}: empty, not a zstd stream; fetch or rebuild the shard")


def _lines(path: Path) -> Iterator[tuple[bytes, bool]]:
    """(line without its line feed, whether a line feed ended it) for each line of the shard."""
    with open(path, "rb") as raw:
        chunks = _zstd_chunks(path, raw) if path.name.endswith(".zst") else iter(lambda: raw.read(READ_BYTES), b"")
        pieces: list[bytes] = []  # the line being read, when it spans chunks
        for chunk in chunks:
            *ended, rest = chunk.split(b"\n")
            if ended:
                ended[0] = b"".join([*pieces, ended[0]])
                for line in ended:
                    yield line, True
                pieces = []
            pieces.append(rest)
        last = b"".join(pieces)
        if last:
            yield last, False


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


def _documents(path: Path) -> Iterator[Document]:
    """Every record of one shard, in order."""
    lineno = 0
    try:
        for lineno, (line, ended) in enumerate(_lines(path), start=1):
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as err:
                raise UserError(f"{path}:{lineno}: not UTF-8 (byte {err.start} of the line); "
                                f"re-encode the shard as UTF-8") from None
            if not text.strip():
                continue
            if not ended:
                _check_last_line(text, path, lineno)
            yield _parse(text, path, lineno)
    except (zstandard.ZstdError, OSError) as err:
        raise UserError(f"{path}: cannot read the shard after line {lineno} ({err}); fetch or rebuild it") from None


def _check_last_line(text: str, path: Path, lineno: int) -> None:
    """A last line without a line feed must be a whole JSON value, or the file was cut inside it."""
    try:
        json.loads(text)
    except json.JSONDecodeError:
        raise UserError(f"{path}:{lineno}: truncated: the file ends inside a record (cut short, or a zstd "
                        f"frame missing); fetch or rebuild the shard") from None


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
        for doc in _documents(path):
            present.add(doc.subset)
            if wanted is not None and doc.subset not in wanted:
                continue
            yield doc
            n_yielded += 1
            if max_docs is not None and n_yielded >= max_docs:
                return
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
