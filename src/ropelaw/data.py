"""Tokenize Pile shards and pack them into fixed-length training sequences.

    ropelaw pack --shards S.jsonl.zst ... [--subsets Books3] --tokenizer TOK \
        --seq-len 4096 [--max-sequences N] --out DIR

Each document is tokenized without special tokens and followed by one EOS;
the documents are concatenated in shard order and cut into rows of `seq_len`
tokens (the last, shorter piece is dropped). DIR holds `tokens.bin`, a raw
little-endian [n_sequences, seq_len] array (uint16 when the vocabulary fits,
else uint32), written block by block, and `manifest.json`. Training reads it
with `PackedDataset(DIR)`; `load_packed(DIR)` gives the array as a memmap.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from tqdm import tqdm

from ropelaw import UserError
from ropelaw.manifests import PackManifest
from ropelaw.pile import Document, check_shards, iter_documents
from ropelaw.provenance import atomic_path, sha256_file
from ropelaw.tokenizer import check_trained

BATCH_DOCS = 64  # documents per tokenizer call
BATCH_CHARS = 1 << 23  # ... or fewer, when they are long (bounds memory on Books3)
BLOCK_ROWS = 1024  # rows per write of tokens.bin


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shards", nargs="+", required=True, help="Pile-format shards (.jsonl, .jsonl.zst)")
    parser.add_argument("--subsets", nargs="+", default=None, help="pile_set_name values to keep (default: all)")
    parser.add_argument("--tokenizer", type=Path, required=True, help="tokenizer folder (AutoTokenizer)")
    parser.add_argument("--seq-len", type=int, required=True, help="tokens per packed sequence")
    parser.add_argument("--max-sequences", type=int, default=None, help="stop after this many sequences")
    parser.add_argument("--out", type=Path, required=True, help="output folder (tokens.bin, manifest.json)")


def run(args: argparse.Namespace) -> None:
    info = pack(args.shards, args.tokenizer, args.seq_len, args.out, args.subsets, args.max_sequences)
    print(f"{info['n_sequences']} sequences of {info['seq_len']} tokens from {info['n_documents']} documents",
          flush=True)


# --- tokenizer helpers, shared with ropelaw.evaldata ---------------------------------------

def load_tokenizer(path: str | Path):
    """(tokenizer, identity dict) of a tokenizer folder, which must define an EOS token."""
    from transformers import AutoTokenizer

    path = Path(path)
    if not (path / "tokenizer.json").is_file():
        raise UserError(f"{path}: not a tokenizer folder with tokenizer.json; run `ropelaw train-tokenizer` "
                        "or point to a model's folder")
    check_trained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.eos_token_id is None:
        raise UserError(f"{path}: the tokenizer has no eos_token; set it in tokenizer_config.json")
    identity = {
        "path": str(path),
        "tokenizer_json_sha256": sha256_file(path / "tokenizer.json"),
        "vocab_size": len(tokenizer),
        "eos_token_id": tokenizer.eos_token_id,
    }
    return tokenizer, identity


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype("<u2") if vocab_size < 2**16 else np.dtype("<u4")


def tokenize_documents(
    tokenizer, docs: Iterator[Document], dtype: np.dtype
) -> Iterator[tuple[Document, np.ndarray]]:
    """(document, its token ids followed by EOS), in order; documents are tokenized in batches."""
    backend = tokenizer.backend_tokenizer
    backend.encode_special_tokens = True  # a literal "<|endoftext|>" in a text is text, not EOS
    eos = np.array([tokenizer.eos_token_id], dtype=dtype)
    batch: list[Document] = []
    n_chars = 0

    def flush():
        encodings = backend.encode_batch_fast([d.text for d in batch], add_special_tokens=False)
        for doc, enc in zip(batch, encodings):
            yield doc, np.concatenate([np.asarray(enc.ids, dtype=dtype), eos])

    for doc in docs:
        batch.append(doc)
        n_chars += len(doc.text)
        if len(batch) >= BATCH_DOCS or n_chars >= BATCH_CHARS:
            yield from flush()
            batch, n_chars = [], 0
    if batch:
        yield from flush()


def read_token_matrix(path: Path, n_rows: int, row_len: int, dtype: str) -> np.memmap:
    """A read-only memmap [n_rows, row_len] of `path`, after checking its size."""
    expected = n_rows * row_len * np.dtype(dtype).itemsize
    if not path.is_file():
        raise UserError(f"{path}: missing; re-run the step that writes it")
    if path.stat().st_size != expected:
        raise UserError(f"{path}: {path.stat().st_size} bytes, but manifest.json says {n_rows} x {row_len} "
                        f"{dtype} ({expected} bytes); the folder is damaged, re-run the step that writes it")
    return np.memmap(path, dtype=dtype, mode="r", shape=(n_rows, row_len))


def read_manifest(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / "manifest.json"
    if not path.is_file():
        raise UserError(f"{path}: missing; re-run the step that writes {directory}")
    return json.loads(path.read_text())


# --- packing --------------------------------------------------------------------------------

class _Rows:
    """Whole rows of `seq_len` tokens written to `sink` a block at a time, up to `max_sequences` rows."""

    def __init__(self, sink, seq_len: int, max_sequences: int | None):
        self.sink, self.seq_len, self.max_sequences = sink, seq_len, max_sequences
        self.n_rows = 0
        self.pending: list[np.ndarray] = []
        self.n_pending = 0

    def add(self, ids: np.ndarray) -> bool:
        """Queue one document's tokens; True once max_sequences rows are written or queued."""
        self.pending.append(ids)
        self.n_pending += len(ids)
        if self.n_pending >= self.seq_len * BLOCK_ROWS:
            self.flush()
        return self.max_sequences is not None and self.n_rows + self.n_pending // self.seq_len >= self.max_sequences

    def flush(self) -> None:
        """Write the whole rows of what is queued (up to max_sequences); keep the rest queued."""
        if not self.pending:
            return
        tokens = np.concatenate(self.pending)
        rows = len(tokens) // self.seq_len
        if self.max_sequences is not None:
            rows = min(rows, self.max_sequences - self.n_rows)
        self.sink.write(tokens[: rows * self.seq_len].tobytes())
        self.n_rows += rows
        rest = tokens[rows * self.seq_len:]
        self.pending, self.n_pending = [rest], len(rest)


def _read_into(rows: _Rows, tokenizer, paths: list[Path], subsets, key: str, dtype: np.dtype) -> dict[str, Any]:
    """Tokenize the documents into `rows` until it is full; return what was read, per subset."""
    per_subset: dict[str, dict[str, int]] = defaultdict(lambda: {"documents": 0, "tokens": 0})
    n_documents = n_tokens_read = 0
    docs = tqdm(iter_documents(paths, subsets, key=key), desc=f"pack {rows.seq_len}", unit="doc")
    for doc, ids in tokenize_documents(tokenizer, docs, dtype):
        n_documents += 1
        n_tokens_read += len(ids)
        per_subset[doc.subset]["documents"] += 1
        per_subset[doc.subset]["tokens"] += len(ids)
        if rows.add(ids):
            break
    docs.close()
    rows.flush()
    return {"n_documents": n_documents, "n_tokens_read": n_tokens_read, "per_subset": dict(per_subset)}


def pack(
    shards: list[str | Path],
    tokenizer_dir: str | Path,
    seq_len: int,
    out: str | Path,
    subsets: list[str] | None = None,
    max_sequences: int | None = None,
    key: str = "data.train",
) -> dict[str, Any]:
    """Pack the documents of `shards` into `out`/tokens.bin; return the manifest written beside it."""
    if seq_len < 2:
        raise UserError(f"seq_len: {seq_len} is too short; use 2 or more tokens")
    paths = check_shards(shards, key)
    tokenizer, identity = load_tokenizer(tokenizer_dir)
    dtype = token_dtype(identity["vocab_size"])
    with atomic_path(Path(out)) as tmp:
        tmp.mkdir()
        with open(tmp / "tokens.bin", "wb") as sink:
            rows = _Rows(sink, seq_len, max_sequences)
            read = _read_into(rows, tokenizer, paths, subsets, key, dtype)
        if rows.n_rows == 0:
            raise UserError(
                f"{key}: the shards {[str(p) for p in paths]} give only {read['n_tokens_read']} tokens, fewer "
                f"than one sequence of {seq_len} (seq_len); add shards or subsets, or lower the tuning length"
            )
        info = PackManifest(
            n_sequences=rows.n_rows,
            seq_len=seq_len,
            dtype=dtype.str,
            **read,
            n_tokens_used=rows.n_rows * seq_len,
            subsets=subsets,
            max_sequences=max_sequences,
            shards={str(p): sha256_file(p) for p in paths},
            tokenizer=identity,
            tokens_bin_sha256=sha256_file(tmp / "tokens.bin"),
        ).write(tmp)
    return info.to_dict()


def load_packed(directory: str | Path) -> np.memmap:
    """The packed sequences of a `ropelaw pack` folder, as a read-only memmap [n, seq_len]."""
    info = PackManifest.read(directory)
    return read_token_matrix(Path(directory) / "tokens.bin", info.n_sequences, info.seq_len, info.dtype)


class PackedDataset(torch.utils.data.Dataset):
    """Rows of a `ropelaw pack` folder as {"input_ids", "labels"} (labels = inputs; the model shifts).

    `n_rows` keeps only the first rows (the training plan trims an epoch to whole global batches).
    """

    def __init__(self, directory: str | Path, n_rows: int | None = None):
        self.rows = load_packed(directory)
        if n_rows is not None:
            assert 0 < n_rows <= len(self.rows), (n_rows, len(self.rows))
            self.rows = self.rows[:n_rows]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        input_ids = torch.from_numpy(self.rows[index].astype(np.int64))
        return {"input_ids": input_ids, "labels": input_ids.clone()}
