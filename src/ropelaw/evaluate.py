"""Evaluate one cell: perplexity and next-token accuracy at every context length.

    ropelaw evaluate --model DIR --base 500000 --cell-json '{...}' \
        --eval-data DIR --lengths 4096 8192 ... --out results/.../eval.csv

One forward per document at the longest length gives every shorter length
from its prefix (valid for position-only RoPE; see `ropelaw.perplexity`).
The output is one tidy CSV per cell (rows: scope 'prefix' per length, scope
'bucket' per position bucket) with the cell's identity and geometry on every
row, plus a JSON sidecar with provenance (inv_freq in effect, checksums).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from ropelaw import UserError, provenance, rope

CELL_KEYS = ("model", "method", "base", "tune_len", "head_dim", "train_len", "orig_base", "eval_set")


def evaluate_cell(model_dir, cell: dict, eval_dir, lengths, *, chunk_size, batch_size, precision, attn_implementation, bucket_edges=None):
    import torch

    from ropelaw.evaldata import load_eval_docs
    from ropelaw.models import load_causal_lm
    from ropelaw.perplexity import evaluate_docs, length_dependent_rope

    docs = load_eval_docs(eval_dir)
    if docs.shape[1] < max(lengths):
        raise UserError(
            f"{eval_dir} holds documents of {docs.shape[1]} tokens, fewer than the longest "
            f"evaluation length {max(lengths)}; rebuild it (rule prepare_eval)"
        )
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, inv_freq = load_causal_lm(
        model_dir, cell["base"], precision=precision, attn_implementation=attn_implementation, device=device
    )
    model.eval()
    started = time.perf_counter()
    # Methods whose rotation depends on the total length need one forward per length.
    one_pass = not length_dependent_rope(model)
    table = evaluate_docs(
        model, docs, lengths, one_pass=one_pass, chunk_size=chunk_size, buckets=bucket_edges, batch_size=batch_size
    )
    seconds = time.perf_counter() - started
    for key in reversed(CELL_KEYS):
        table.insert(0, key, cell[key])
    sidecar = provenance.manifest(
        kind="evaluate",
        cell=cell,
        model_dir=str(model_dir),
        model_manifest_sha256=_sha_if_exists(Path(model_dir) / "ropelaw_manifest.json"),
        eval_manifest_sha256=provenance.sha256_file(Path(eval_dir) / "manifest.json"),
        lengths=list(lengths),
        one_pass=one_pass,
        chunk_size=chunk_size,
        dtype=str(next(model.parameters()).dtype),
        attn_implementation=attn_implementation,
        device=torch.cuda.get_device_name() if device == "cuda" else "cpu",
        seconds=seconds,
        inv_freq=inv_freq.tolist(),
        inv_freq_sha256=rope.inv_freq_digest(inv_freq),
    )
    return table, sidecar


def _sha_if_exists(path: Path) -> str | None:
    return provenance.sha256_file(path) if path.is_file() else None


def add_arguments(parser) -> None:
    parser.add_argument("--model", required=True, help="model directory")
    parser.add_argument("--cell-json", required=True, help=f"the cell as JSON: {', '.join(CELL_KEYS)}")
    parser.add_argument("--eval-data", required=True, help="evaluation directory (ropelaw prepare-eval)")
    parser.add_argument("--lengths", required=True, type=int, nargs="+", help="context lengths")
    parser.add_argument("--chunk-size", type=int, default=4096, help="positions per lm_head chunk")
    parser.add_argument("--batch-size", type=int, default=1, help="documents per forward")
    parser.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    parser.add_argument("--attn-implementation", default="sdpa", choices=["sdpa", "flash_attention_2", "eager"])
    parser.add_argument("--bucket-edges", type=int, nargs="*", default=None, help="position-bucket edges")
    parser.add_argument("--out", required=True, help="output CSV (a .json sidecar is written beside it)")


def run(args) -> None:
    cell = json.loads(args.cell_json)
    missing = [k for k in CELL_KEYS if k not in cell]
    if missing:
        raise UserError(f"--cell-json lacks {missing}")
    table, sidecar = evaluate_cell(
        args.model, cell, args.eval_data, args.lengths,
        chunk_size=args.chunk_size, batch_size=args.batch_size, precision=args.precision,
        attn_implementation=args.attn_implementation, bucket_edges=args.bucket_edges or None,
    )
    out = Path(args.out)
    with provenance.atomic_path(out) as tmp:
        table.to_csv(tmp, index=False)
    provenance.write_json(out.with_suffix(".json"), sidecar)
    prefix = table[table.scope == "prefix"]
    print(prefix[["end", "ppl", "accuracy"]].to_string(index=False))
