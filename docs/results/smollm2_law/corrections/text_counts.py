"""The bytes and words this study's evaluation rows hold, counted again, and the metrics that use them.

    python docs/results/smollm2_law/corrections/text_counts.py --tokenizer DIR \
        --shard resources/embedded/val/00.jsonl.zst --out docs/results/smollm2_law/corrections

The study's tables (cells/*/*/eval.csv, eval_docs.csv) count the bytes and words of the scored tokens
wrongly: transformers 5.17, on the GPU, gave SmolLM2's tokenizer the decoder [ByteFallback, Fuse, Replace,
ByteLevel], and `ropelaw.tokentext` of that time read it as SentencePiece. Every byte-level stand-in
character above U+007F (`Ġ` for a space, `Ċ` for a newline, ...) then counted as its two UTF-8 bytes and
no byte was whitespace, so `bytes` is too large, `words` is one per row, and `bits_per_byte`, `byte_ppl`
and `word_ppl` are wrong. The token counts, `nll_sum`, `ppl` and everything the law uses are not affected.
Fixed in `ropelaw.tokentext` (95de67e).

DIR is SmolLM2's tokenizer as `ropelaw convert-gguf` writes it (under transformers 5.17, DIR/tokenizer.json is
the study's file, whose sha256 every eval.json records; a newer transformers writes another file with the same
vocabulary). The script rebuilds the four rows as `prepare_eval` did, counts every segment of eval_docs.csv
both ways, and stops unless the old reading gives the recorded `tokens`, `bytes` and `words` of every segment
of every cell (so the rows are the study's) and the recorded `nll_sum` the recorded `ppl`. It writes `segments.csv` (per document and segment: tokens, recorded and counted bytes and
words) and `metrics.csv` (per cell and prefix length: ppl as recorded, and bits per byte, byte and word
perplexity from the recorded nll_sum over the counted bytes and words).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from ropelaw.evaldata import load_eval_docs, prepare_eval
from ropelaw.provenance import sha256_file
from ropelaw.scoring import Scoring, _targets, doc_segments
from ropelaw.tokentext import TokenText, raw_bytes

STUDY = Path(__file__).resolve().parents[1]
LENGTH = 245_760  # the rows of config/smollm2_law.yaml: 4 windows of the KJV, no tokens skipped
COUNTS = ["tokens", "bytes", "words"]


def as_read_then(tokenizer, vocab_size: int) -> list[bytes]:
    """Per-id bytes as the SentencePiece branch read byte-level tokens: each character's UTF-8."""
    special = set(tokenizer.all_special_ids)
    added = set(tokenizer.added_tokens_decoder)
    tokens = tokenizer.convert_ids_to_tokens(list(range(vocab_size)))
    return [b"" if i in special else token.encode() if i in added else token.replace("▁", " ").encode()
            for i, token in enumerate(tokens)]


def segments(rows: np.ndarray, text: TokenText, edges: list[int]) -> pd.DataFrame:
    scoring = Scoring("ropelaw", None)
    parts = []
    for doc in range(rows.shape[0]):
        ids = rows[doc : doc + 1, 1:LENGTH].astype(np.int64)
        n_bytes, words = _targets(text, scoring, ids)
        stats = {"nll": np.zeros(ids.shape), "tokens": np.ones(ids.shape, np.int64), "bytes": n_bytes, "words": words}
        parts.append(doc_segments(stats, edges, LENGTH, doc))
    return pd.concat(parts, ignore_index=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", type=Path, required=True, help="folder with the study's tokenizer.json")
    parser.add_argument("--shard", type=Path, required=True, help="the evaluation shard (fetch-embedded's val/00)")
    parser.add_argument("--out", type=Path, required=True, help="folder for segments.csv and metrics.csv")
    args = parser.parse_args(argv)
    from transformers import AutoTokenizer

    record = json.loads(next(STUDY.glob("cells/untuned/*/eval.json")).read_text())
    want, got = record["tokenizer"]["tokenizer_json_sha256"], sha256_file(args.tokenizer / "tokenizer.json")
    if got != want:  # another transformers writes another file; the segment checks below decide
        print(f"{args.tokenizer}/tokenizer.json: sha256 {got[:12]}, not the study's {want[:12]} (transformers 5.17's); "
              "its ids must still give every recorded segment", flush=True)
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    vocab = record["tokenizer"]["vocab_size"]
    with tempfile.TemporaryDirectory() as tmp:
        prepare_eval([args.shard], args.tokenizer, LENGTH, Path(tmp) / "eval", subsets=["KJV"], short_docs="skip",
                     max_docs=4, skip_tokens=0, windows_per_doc=4)
        rows = np.array(load_eval_docs(Path(tmp) / "eval"))
    edges = record["segment_edges"]
    old = segments(rows, TokenText.from_bytes(as_read_then(tokenizer, vocab)), edges)
    new = segments(rows, TokenText.from_tokenizer(tokenizer, vocab), edges)
    key = ["doc", "start", "end"]
    table = old[key + COUNTS].rename(columns={"bytes": "bytes_recorded", "words": "words_recorded"})
    table = table.merge(new[key + ["bytes", "words"]], on=key)
    metrics = []
    for docs_csv in sorted(STUDY.glob("cells/*/*/eval_docs.csv")):
        cell = docs_csv.parent
        docs = pd.read_csv(docs_csv).merge(table, on=key, suffixes=("", "_counted"))
        if len(docs) != len(table) or not (docs.tokens == docs.tokens_counted).all():
            sys.exit(f"{docs_csv}: its segments are not those of the rows rebuilt here")
        if not ((docs.bytes == docs.bytes_recorded).all() and (docs.words == docs.words_recorded).all()):
            sys.exit(f"{docs_csv}: the old reading does not give its recorded bytes and words; the rows differ")
        recorded = pd.read_csv(cell / "eval.csv").query("scope == 'prefix'").set_index("end")
        for length in record["lengths"]:
            part = docs[docs.end <= length]
            nll = math.fsum(part.nll.tolist())
            tokens, n_bytes, words = (int(part[c].sum()) for c in ("tokens", "bytes_counted", "words_counted"))
            ppl = math.exp(nll / tokens)
            assert math.isclose(ppl, recorded.loc[length, "ppl"], rel_tol=1e-12), (cell, length)
            metrics.append({"cell": f"{cell.parent.name}/{cell.name}", "length": length, "tokens": tokens,
                            "ppl": ppl, "bytes": n_bytes, "words": words,
                            "bits_per_byte": nll / math.log(2) / n_bytes, "byte_ppl": math.exp(nll / n_bytes),
                            "word_ppl": math.exp(nll / words)})
    args.out.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out / "segments.csv", index=False)
    pd.DataFrame(metrics).to_csv(args.out / "metrics.csv", index=False, float_format="%.10g")
    counted = table[["bytes_recorded", "bytes", "words_recorded", "words"]].sum()
    print(f"{len(table)} segments of {rows.shape[0]} rows: bytes {counted.bytes_recorded:,} recorded, "
          f"{counted.bytes:,} counted; words {counted.words_recorded:,} recorded, {counted.words:,} counted; "
          f"the old reading gives the recorded bytes and words of all {len(metrics) // len(record['lengths'])} cells")
    return 0


if __name__ == "__main__":
    sys.exit(main())
