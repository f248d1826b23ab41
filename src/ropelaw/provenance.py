"""Provenance and safe writing of artifacts.

Every artifact of the workflow carries a manifest (see `manifest`) and is
written atomically (see `atomic_dir`, `write_json`), so a crash never leaves
a file or directory that looks finished.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator

from ropelaw import UserError

_LIBRARIES = (
    "ropelaw", "torch", "transformers", "accelerate", "tokenizers", "deepspeed",
    "flash-attn", "flash-attn-4", "nvidia-cutlass-dsl", "numpy", "pandas", "snakemake", "gguf",
)


def sha256_file(path: str | Path, chunk_bytes: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()


def sha256_if_exists(path: str | Path) -> str | None:
    """sha256 of a file, or None where there is none (e.g. a model without our manifest)."""
    return sha256_file(path) if Path(path).is_file() else None


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


COMMIT_ENV = "ROPELAW_GIT_COMMIT"  # the commit of a copy without .git, as `commit_of_copy` names it


def git_commit(cwd: str | Path | None = None) -> str:
    """The commit of the ropelaw checkout (with '+dirty' if it has local edits); where there is no git
    checkout (a copied tree, as on the device machine), $ROPELAW_GIT_COMMIT if set, else 'unknown'."""
    cwd = Path(cwd) if cwd else Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd, capture_output=True, text=True, check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return os.environ.get(COMMIT_ENV) or "unknown"
    return commit + ("+dirty" if dirty else "")


def tree_record(root: str | Path) -> dict[str, Any]:
    """The commit of the git checkout at `root` and the sha256 of every file it tracks: what a copy of the
    tree without .git needs to name its commit (`commit_of_copy`)."""
    root = Path(root)
    try:
        listed = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        raise UserError(f"{root} is not a git checkout: its files cannot be tied to a commit") from None
    names = sorted(n for n in listed.decode().split("\0") if n and (root / n).is_file() and not (root / n).is_symlink())
    return {"commit": git_commit(root), "files": {n: sha256_file(root / n) for n in names}}


def commit_of_copy(root: str | Path, record: dict[str, Any]) -> str:
    """`record`'s commit if every file it lists is in `root` unchanged, else that commit with '+dirty'."""
    root = Path(root)
    changed = [n for n, sha in record["files"].items() if not (root / n).is_file() or sha256_file(root / n) != sha]
    commit = record["commit"]
    return commit if not changed or commit.endswith("+dirty") else commit + "+dirty"


def library_versions() -> dict[str, str]:
    """Installed versions of the libraries that shape a result."""
    versions = {"python": platform.python_version()}
    for name in _LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def command_line(argv: list[str] | None = None, cwd: str | Path | None = None) -> list[str]:
    """The command as `ropelaw SUBCOMMAND ARGS`: no path of the executable, and every argument that is
    an absolute path inside the working directory made relative to it (results/..., not /home/...)."""
    argv = sys.argv if argv is None else argv
    cwd = Path(cwd or os.getcwd()).resolve()
    program = Path(argv[0]).name if argv else "ropelaw"
    if program in ("cli.py", "__main__.py", "-m", "-c", ""):
        program = "ropelaw"
    args = []
    for arg in argv[1:]:
        path = Path(arg)
        if path.is_absolute() and path.resolve().is_relative_to(cwd):
            arg = str(path.resolve().relative_to(cwd)) or "."
        args.append(arg)
    return [program, *args]


def manifest(**fields: Any) -> dict[str, Any]:
    """A manifest: the caller's fields plus commit, versions, host and command line (`command_line`)."""
    return {
        **fields,
        "git_commit": git_commit(),
        "versions": library_versions(),
        "host": platform.node(),
        "command": command_line(),
    }


def write_json(path: str | Path, obj: Any) -> None:
    """Write JSON atomically (temporary file in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(obj, fh, indent=2, sort_keys=False, default=str)
            fh.write("\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def check_out(out, flag: str, example: str) -> Path:
    """Refuse an output file path that cannot be written, before any work: an existing folder (which
    `atomic_path` would replace) or a place where no file can be made. A scratch file is written and
    removed in the nearest folder that exists; the missing ones are left to the final write to make,
    so a refusal leaves nothing behind."""
    out = Path(out)
    if out.is_dir():
        raise UserError(f"{flag} {out}: is a folder; give a file path such as {out}/{example}")
    existing = out.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        if not existing.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as err:
        raise UserError(f"{flag} {out}: cannot write in {out.parent} ({err.strerror}); choose a writable path") from None
    return out


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling path; rename it onto `path` only if the block succeeds.

    Works for files and directories. An existing `path` is replaced.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    _remove(tmp)
    try:
        yield tmp
        _remove(path)
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
