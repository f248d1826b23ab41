"""A study's inputs in pieces that each fit one call of a machine that reaches no network.

    ropelaw carry split --out .carry --piece-mib 48 wheels=.wheels gguf=SmolLM2.gguf \
        corpus=resources/corpus embedded=resources/embedded
    ropelaw carry check --dir .carry --piece 2          # on arrival: one piece against index.json
    ropelaw carry join --dir /root/carry --out /root/payload \
        --expect corpus/corpus.jsonl.zst=SHA256         # every piece, then every file, checked
    ropelaw carry manifests --cells docs/results/.../cells   # on the way back: each cell's model manifest

`split` concatenates the files of each NAME=PATH (a file, or a folder's files in name order,
recursively), in the order given, into one byte stream and cuts it into pieces of at most
`--piece-mib` MiB: OUT/piece-00, piece-01, ... and OUT/index.json, which records every piece's
size and sha256 and every file's name (NAME/relative path), offset, size and sha256. A file may
span pieces. `check` compares one piece with the index, so a transfer that broke is seen in the
call that made it; `join` checks every piece, then cuts the files out of the stream into OUT/NAME/...
and checks each one's sha256 (and, with `--expect`, against a sha256 recorded elsewhere, e.g. the
corpus's in docs/corpus/manifest.json). Any mismatch is one `UserError` naming the piece or file;
a file that fails its check is removed. `manifests` checks what comes back: each fine-tuned model's
manifest, carried beside its cell as model_manifest.json (`gpu_study.sh pack`), must be the file the
cell's eval.json names by sha256. Standard library only: it runs before anything is installed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

from ropelaw import UserError, provenance

INDEX = "index.json"
CHUNK = 1 << 20
MIB = 1 << 20


def piece_name(i: int) -> str:
    return f"piece-{i:02d}"


@dataclass(frozen=True)
class Entry:
    """One file of the stream."""

    name: str
    offset: int
    size: int
    sha256: str


@dataclass(frozen=True)
class Piece:
    name: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Index:
    """index.json: the pieces in order and the files in the stream they make."""

    piece_bytes: int
    total_bytes: int
    pieces: list[Piece]
    files: list[Entry]

    def write(self, folder: Path) -> None:
        (folder / INDEX).write_text(json.dumps(asdict(self), indent=1) + "\n")

    @classmethod
    def read(cls, folder: Path) -> "Index":
        path = Path(folder) / INDEX
        try:
            data = json.loads(path.read_text())
            return cls(data["piece_bytes"], data["total_bytes"], [Piece(**p) for p in data["pieces"]],
                       [Entry(**f) for f in data["files"]])
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
            raise UserError(f"{path}: not a carry index ({type(err).__name__}: {err}); carry the index.json "
                            "that `ropelaw carry split` wrote beside the pieces") from None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _sources(items: list[tuple[str, Path]]) -> list[tuple[str, Path]]:
    """(stream name, local path) of every file, in order: each item's folder walked in name order."""
    out = []
    for name, path in items:
        if not name or "/" in name or name.startswith("."):
            raise UserError(f"carry split: {name!r} is not a plain name; give NAME=PATH with NAME like corpus")
        if path.is_file():
            out.append((f"{name}/{path.name}", path))
        elif path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file())
            if not files:
                raise UserError(f"carry split: {path} holds no file")
            out += [(f"{name}/{p.relative_to(path).as_posix()}", p) for p in files]
        else:
            raise UserError(f"carry split: {path} does not exist")
    names = [n for n, _ in out]
    if len(set(names)) != len(names):
        raise UserError("carry split: two files would have the same name; give each NAME=PATH its own NAME")
    return out


class _PieceWriter:
    """Writes a stream into pieces of at most `piece_bytes`, hashing each."""

    def __init__(self, folder: Path, piece_bytes: int):
        self.folder, self.piece_bytes = folder, piece_bytes
        self.pieces: list[Piece] = []
        self.fh: BinaryIO | None = None
        self.size = 0
        self.digest = hashlib.sha256()

    def write(self, data: bytes) -> None:
        while data:
            if self.fh is None:
                self.fh = open(self.folder / piece_name(len(self.pieces)), "wb")
            room = self.piece_bytes - self.size
            part, data = data[:room], data[room:]
            self.fh.write(part)
            self.digest.update(part)
            self.size += len(part)
            if self.size == self.piece_bytes:
                self.close()

    def close(self) -> None:
        if self.fh is not None:
            self.fh.close()
            self.pieces.append(Piece(piece_name(len(self.pieces)), self.size, self.digest.hexdigest()))
            self.fh, self.size, self.digest = None, 0, hashlib.sha256()


def split(items: list[tuple[str, str | Path]], out: str | Path, piece_bytes: int) -> Index:
    """Write the files of `items` (NAME, PATH) as pieces of at most `piece_bytes` and index.json into `out`."""
    if piece_bytes < 1:
        raise UserError(f"carry split: piece size {piece_bytes} bytes; give a positive size")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stale = sorted(p.name for p in out.glob("piece-*")) + ([INDEX] if (out / INDEX).exists() else [])
    if stale:
        raise UserError(f"carry split: {out} already holds {', '.join(stale)}; remove them first")
    writer, entries, offset = _PieceWriter(out, piece_bytes), [], 0
    for name, path in _sources([(n, Path(p)) for n, p in items]):
        digest, size = hashlib.sha256(), 0
        with open(path, "rb") as fh:
            while block := fh.read(CHUNK):
                digest.update(block)
                writer.write(block)
                size += len(block)
        entries.append(Entry(name, offset, size, digest.hexdigest()))
        offset += size
    writer.close()
    index = Index(piece_bytes, offset, writer.pieces, entries)
    index.write(out)
    return index


def check_piece(folder: str | Path, i: int, index: Index | None = None) -> Piece:
    """Piece `i` of `folder` against the index (size, then sha256); a `UserError` names what is wrong."""
    folder = Path(folder)
    index = index or Index.read(folder)
    if not 0 <= i < len(index.pieces):
        raise UserError(f"carry: there is no piece {i}; the index lists pieces 0-{len(index.pieces) - 1}")
    piece = index.pieces[i]
    path = folder / piece.name
    if not path.is_file():
        raise UserError(f"carry: {path} is missing; carry {piece.name} again")
    if path.stat().st_size != piece.size:
        raise UserError(f"carry: {path} has {path.stat().st_size} bytes, the index says {piece.size}; "
                        f"carry {piece.name} again")
    if _sha256(path) != piece.sha256:
        raise UserError(f"carry: {path} has another sha256 than the index records; carry {piece.name} again")
    return piece


def _stream(folder: Path, index: Index) -> Iterator[bytes]:
    for piece in index.pieces:
        with open(folder / piece.name, "rb") as fh:
            while block := fh.read(CHUNK):
                yield block


class _Reader:
    """Reads exact byte counts from a stream of blocks."""

    def __init__(self, blocks: Iterator[bytes]):
        self.blocks, self.buffer = blocks, b""

    def read(self, n: int) -> Iterator[bytes]:
        while n > 0:
            if not self.buffer:
                self.buffer = next(self.blocks, b"")
                if not self.buffer:
                    raise UserError("carry join: the pieces end before the last file; carry them again")
            part, self.buffer = self.buffer[:n], self.buffer[n:]
            n -= len(part)
            yield part


def join(folder: str | Path, out: str | Path, expect: dict[str, str] | None = None) -> Index:
    """Check every piece in `folder`, write every file under `out`, check each file's sha256 (and `expect`)."""
    folder, out = Path(folder), Path(out)
    index = Index.read(folder)
    for i in range(len(index.pieces)):
        check_piece(folder, i, index)
    names = {e.name for e in index.files}
    unknown = sorted(set(expect or {}) - names)
    if unknown:
        raise UserError(f"carry join --expect: {unknown} are not files of the index (it has {sorted(names)})")
    reader = _Reader(_stream(folder, index))
    for entry in index.files:
        target = out / entry.name
        target.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        with open(target, "wb") as fh:
            for part in reader.read(entry.size):
                fh.write(part)
                digest.update(part)
        got = digest.hexdigest()
        for where, sha in (("the index", entry.sha256), ("--expect", (expect or {}).get(entry.name, got))):
            if got != sha:
                os.remove(target)
                raise UserError(f"carry join: {entry.name} has sha256 {got}, not the {sha} that {where} "
                                "records; make the pieces again (`ropelaw carry split`) and carry them all")
    return index


def check_model_manifests(cells: Path) -> str:
    """Each CELLS/<variant>/<cell>/model_manifest.json against the sha256 its eval.json records as
    `model_manifest_sha256`: one UserError naming every one that differs; else a line saying how many were
    checked and which cells hold a manifest but no evaluation."""
    checked, unevaluated, wrong = 0, [], []
    for path in sorted(Path(cells).glob("*/*/model_manifest.json")):
        evaluation = path.parent / "eval.json"
        if not evaluation.is_file():
            unevaluated.append(path.parent.name)
            continue
        checked += 1
        try:
            named = json.loads(evaluation.read_text()).get("model_manifest_sha256")
        except ValueError as err:
            raise UserError(f"carry manifests: {evaluation} is not JSON ({err}); pack the part again") from None
        if _sha256(path) != named:
            wrong.append(f"{path} is not the model manifest {evaluation} names ({named})")
    if wrong:
        raise UserError("carry manifests: " + "; ".join(wrong) + "; pack the part again from the machine that "
                        "evaluated it (the manifest beside a cell must be its model's)")
    return (f"{checked} model manifests, each the one its cell's eval.json names"
            + (f"; not evaluated: {', '.join(unevaluated)}" if unevaluated else ""))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)
    s = sub.add_parser("split", help="write pieces and index.json")
    s.add_argument("--out", type=Path, required=True, help="folder for piece-NN and index.json")
    s.add_argument("--piece-mib", type=float, required=True, help="largest piece, in MiB")
    s.add_argument("items", nargs="+", metavar="NAME=PATH", help="a file or folder, named NAME in the stream")
    c = sub.add_parser("check", help="check one piece against index.json")
    c.add_argument("--dir", type=Path, required=True, help="folder with index.json and the piece")
    c.add_argument("--piece", type=int, required=True, help="its number")
    j = sub.add_parser("join", help="check every piece and write every file")
    j.add_argument("--dir", type=Path, required=True, help="folder with index.json and every piece")
    j.add_argument("--out", type=Path, required=True, help="where the files go (OUT/NAME/...)")
    j.add_argument("--expect", action="append", default=[], metavar="NAME=SHA256",
                   help="a file's sha256 as recorded elsewhere (repeat the flag for several)")
    r = sub.add_parser("record", help="write the checkout's commit and every tracked file's sha256 (JSON)")
    r.add_argument("--root", type=Path, default=Path("."), help="the git checkout (default: here)")
    r.add_argument("--out", type=Path, required=True, help="the JSON file to write")
    m = sub.add_parser("commit", help="print the commit of a copy without .git, from a `record` (+dirty if changed)")
    m.add_argument("--record", type=Path, required=True, help="the JSON file `record` wrote")
    m.add_argument("--root", type=Path, default=Path("."), help="the copy (default: here)")
    v = sub.add_parser("manifests", help="check each cell's model_manifest.json against the sha256 its eval.json names")
    v.add_argument("--cells", type=Path, required=True, help="the folder of <variant>/<cell>/ folders")


def _pairs(values: list[str], flag: str) -> list[tuple[str, str]]:
    pairs = [v.split("=", 1) for v in values]
    bad = [v for v, p in zip(values, pairs) if len(p) != 2 or not all(p)]
    if bad:
        raise UserError(f"carry {flag}: {bad[0]!r} is not NAME=VALUE")
    return [(a, b) for a, b in pairs]


def run(args: argparse.Namespace) -> None:
    if args.action == "split":
        index = split(_pairs(args.items, "split"), args.out, int(args.piece_mib * MIB))
        for piece in index.pieces:
            print(f"{args.out / piece.name}: {piece.size / MIB:.2f} MiB")
        print(f"{len(index.files)} files, {index.total_bytes / MIB:.2f} MiB in {len(index.pieces)} pieces")
    elif args.action == "check":
        piece = check_piece(args.dir, args.piece)
        print(f"{piece.name}: {piece.size} bytes, sha256 as in the index")
    elif args.action == "record":
        provenance.write_json(args.out, provenance.tree_record(args.root))
    elif args.action == "commit":
        try:
            record = json.loads(args.record.read_text())
        except (OSError, ValueError) as err:
            raise UserError(f"carry commit: cannot read {args.record} ({err}); give the file `carry record` wrote") from None
        print(provenance.commit_of_copy(args.root, record))
    elif args.action == "manifests":
        print(f"carry manifests: {check_model_manifests(args.cells)}")
    else:
        index = join(args.dir, args.out, dict(_pairs(args.expect, "join --expect")))
        print(f"{len(index.files)} files written under {args.out}, every sha256 as recorded")
