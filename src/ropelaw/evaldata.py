"""Tokenize the long-document evaluation set.

    ropelaw prepare-eval --shards S.jsonl.zst ... [--subsets Books3] --tokenizer TOK \
        --length 32768 --short-docs skip|concatenate [--max-docs 8] --out DIR

Each document is tokenized (no special tokens, EOS appended). A row of
`DIR/docs.bin` (raw little-endian [n_docs, length], uint16 or uint32 as in
`ropelaw pack`) holds the first `length` tokens of one document; perplexity at
every evaluated context length L <= length is then measured on the first L
tokens of the same rows. Documents shorter than `length` are skipped
(`skip`, the paper's choice); or (`concatenate`) consecutive documents are
joined, EOS between, until the row is full, and the rest of the last one is
dropped (the next row starts with the next document). `DIR/manifest.json` names the source
documents of every row. Read the rows with `load_eval_docs(DIR)`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ropelaw import UserError
from ropelaw.data import load_tokenizer, read_manifest, read_token_matrix, token_dtype, tokenize_documents
from ropelaw.pile import check_shards, iter_documents
from ropelaw.provenance import atomic_path, manifest, sha256_file, write_json

POLICIES = ("skip", "concatenate")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shards", nargs="+", required=True, help="Pile-format shards (.jsonl, .jsonl.zst)")
    parser.add_argument("--subsets", nargs="+", default=None, help="pile_set_name values to keep (default: all)")
    parser.add_argument("--tokenizer", type=Path, required=True, help="tokenizer folder (AutoTokenizer)")
    parser.add_argument("--length", type=int, required=True, help="tokens per row: the longest evaluation length")
    parser.add_argument("--short-docs", choices=POLICIES, default="skip",
                        help="documents shorter than --length: skip them, or join consecutive ones")
    parser.add_argument("--max-docs", type=int, default=None, help="keep at most this many rows")
    parser.add_argument("--windows-per-doc", type=int, default=1,
                        help="cut up to N consecutive non-overlapping rows from each (long) document")
    parser.add_argument("--skip-tokens", type=int, default=0,
                        help="drop the first N tokens of every document (front matter) before use")
    parser.add_argument("--out", type=Path, required=True, help="output folder (docs.bin, manifest.json)")


def run(args: argparse.Namespace) -> None:
    info = prepare_eval(args.shards, args.tokenizer, args.length, args.out, args.subsets,
                        args.short_docs, args.max_docs, skip_tokens=args.skip_tokens,
                        windows_per_doc=args.windows_per_doc)
    print(f"{info['n_docs']} rows of {info['length']} tokens ({info['short_docs']}) "
          f"from {info['documents_read']} documents", flush=True)


def _check_options(length: int, short_docs: str, key: str, skip_tokens: int, windows_per_doc: int) -> None:
    if windows_per_doc < 1:
        raise UserError(f"{key}.windows_per_doc must be >= 1 (got {windows_per_doc})")
    if skip_tokens < 0:
        raise UserError(f"{key}.skip_tokens must be >= 0 (got {skip_tokens})")
    if short_docs not in POLICIES:
        raise UserError(f"{key}.short_docs: {short_docs!r} is not one of {list(POLICIES)}")
    if length < 2:
        raise UserError(f"evaluation.lengths: {length} is too short; use 2 or more tokens")


def _windows(tokenized, length: int, short_docs: str, skip_tokens: int, windows_per_doc: int, counts: dict):
    """(row tokens, row sources) in order; `counts` gathers documents read, longest and total tokens."""
    pending: list[np.ndarray] = []  # concatenate: the documents of the row being filled
    parts: list[dict[str, Any]] = []
    n_pending = 0
    for doc, ids in tokenized:
        counts["documents_read"] += 1
        ids = ids[skip_tokens:]
        counts["longest"] = max(counts["longest"], len(ids))
        counts["total"] += len(ids)
        part = {**doc.source(), "n_tokens": len(ids), "tokens_in_row": min(len(ids), length - n_pending)}
        if short_docs == "skip":
            if len(ids) < length:
                continue
            stream, sources = ids, [part]
        else:
            pending.append(ids)
            parts.append(part)
            n_pending += len(ids)
            if n_pending < length:
                continue
            stream, sources = np.concatenate(pending), parts
            pending, parts, n_pending = [], [], 0
        for window in range(min(windows_per_doc, len(stream) // length)):
            yield stream[window * length:(window + 1) * length], {"sources": sources, "offset": skip_tokens + window * length}


def _no_rows(length: int, paths, short_docs: str, key: str, counts: dict) -> None:
    names = [str(p) for p in paths]
    if short_docs == "skip":
        raise UserError(
            f"evaluation.lengths: the longest length {length} exceeds every document in {names} "
            f"(longest has {counts['longest']} tokens); lower it, add longer documents, "
            f"or set {key}.short_docs: concatenate"
        )
    raise UserError(
        f"evaluation.lengths: the longest length {length} exceeds all the documents in {names} "
        f"together ({counts['total']} tokens); lower it or add documents"
    )


def prepare_eval(
    shards: list[str | Path],
    tokenizer_dir: str | Path,
    length: int,
    out: str | Path,
    subsets: list[str] | None = None,
    short_docs: str = "skip",
    max_docs: int | None = None,
    key: str = "data.eval",
    skip_tokens: int = 0,
    windows_per_doc: int = 1,
) -> dict[str, Any]:
    """Write `out`/docs.bin and `out`/manifest.json; return the manifest.

    `skip_tokens` drops the start of every document (title pages, lists of
    characters) so that each row is running text; a document's length counts
    what is left. `windows_per_doc` > 1 cuts several consecutive rows from a
    long document (or a long concatenation), so that averages over positions
    are not dominated by the content of a handful of windows.
    """
    _check_options(length, short_docs, key, skip_tokens, windows_per_doc)
    paths = check_shards(shards, key)
    tokenizer, identity = load_tokenizer(tokenizer_dir)
    dtype = token_dtype(identity["vocab_size"])
    counts = {"documents_read": 0, "longest": 0, "total": 0}
    rows: list[dict[str, Any]] = []
    out = Path(out)
    with atomic_path(out) as tmp:
        tmp.mkdir()
        with open(tmp / "docs.bin", "wb") as sink:
            docs = tqdm(iter_documents(paths, subsets, key=key), desc=f"eval docs {length}", unit="doc")
            tokenized = tokenize_documents(tokenizer, docs, dtype)
            for window, row in _windows(tokenized, length, short_docs, skip_tokens, windows_per_doc, counts):
                sink.write(window.tobytes())
                rows.append(row)
                if max_docs is not None and len(rows) >= max_docs:
                    break
            docs.close()
        if not rows:
            _no_rows(length, paths, short_docs, key, counts)
        info = manifest(
            n_docs=len(rows),
            length=length,
            dtype=dtype.str,
            short_docs=short_docs,
            max_docs=max_docs,
            skip_tokens=skip_tokens,
            windows_per_doc=windows_per_doc,
            subsets=subsets,
            documents_read=counts["documents_read"],
            rows=rows,
            shards={str(p): sha256_file(p) for p in paths},
            tokenizer=identity,
            docs_bin_sha256=sha256_file(tmp / "docs.bin"),
        )
        write_json(tmp / "manifest.json", info)
    return info


def read_eval_manifest(directory: str | Path) -> dict[str, Any]:
    """The manifest of a `ropelaw prepare-eval` folder, checked: a missing or damaged one is a UserError."""
    directory = Path(directory)
    if not directory.is_dir():
        raise UserError(f"--eval-data {directory}: no such folder; run `ropelaw prepare-eval` (rule prepare_eval) first")
    try:
        info = read_manifest(directory)
    except (ValueError, UnicodeDecodeError) as err:
        if isinstance(err, UserError):
            raise
        raise UserError(f"{directory}/manifest.json: not valid JSON ({err}); delete {directory} and re-run prepare-eval") from None
    kinds = {"n_docs": int, "length": int, "dtype": str}
    bad = [k for k, kind in kinds.items() if not isinstance(info, dict) or not isinstance(info.get(k), kind)]
    if bad:
        raise UserError(f"{directory}/manifest.json: {bad} missing or mistyped; delete {directory} and re-run prepare-eval")
    return info


def load_eval_docs(directory: str | Path) -> np.memmap:
    """The rows of a `ropelaw prepare-eval` folder, as a read-only memmap [n_docs, length]."""
    info = read_eval_manifest(directory)
    try:
        np.dtype(info["dtype"])
    except TypeError:
        raise UserError(f"{directory}/manifest.json: dtype {info['dtype']!r} is not a numpy dtype; "
                        f"delete {directory} and re-run prepare-eval") from None
    return read_token_matrix(Path(directory) / "docs.bin", info["n_docs"], info["length"], info["dtype"])
