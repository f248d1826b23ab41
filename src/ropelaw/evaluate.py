"""Evaluate one cell: perplexity and next-token accuracy at every context length.

    ropelaw evaluate --model DIR --cell-json '{"base": 500000, ...}' \
        --eval-data DIR --lengths 4096 8192 ... --out results/.../eval.csv

The cell's method (`ropelaw.methods`: a fine-tuned base, or a training-free
way of extending RoPE applied to the untuned model) is applied as the model
loads. One forward per document at the longest length gives every shorter
length from its prefix (valid for position-only RoPE; see `ropelaw.perplexity`);
a length-dependent method (dynamic NTK) gets one forward per length instead.
The output is one tidy CSV per cell (rows: scope 'prefix' per length, scope
'bucket' per position bucket) with the cell's identity and geometry on every
row, plus a JSON sidecar with provenance (inv_freq in effect, checksums).
"""

from __future__ import annotations

import time
from pathlib import Path

from ropelaw import UserError, methods, provenance, rope
from ropelaw.cells import TABLE_COLUMNS, Cell

CELL_KEYS = TABLE_COLUMNS


def cell_method(cell: Cell) -> methods.MethodSpec:
    """The cell's RoPE method, resolved through its kind with its options from the config."""
    return cell.method_spec()


def load_cell_model(model_dir, cell: dict, *, precision: str, attn_implementation: str):
    """(model in eval mode on the GPU if any, inv_freq): every evaluation of a cell loads its model here."""
    import torch

    from ropelaw.models import head_dim_of, load_causal_lm

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, inv_freq = load_causal_lm(
        model_dir, cell_method(cell), precision=precision, attn_implementation=attn_implementation, device=device
    )
    if head_dim_of(model.config) != cell.head_dim:
        raise UserError(
            f"config key 'models.{cell.model}.head_dim' is {cell.head_dim}, but {model_dir} has "
            f"head_dim {head_dim_of(model.config)}; fix it (or set it to null to read it from the model)"
        )
    model.eval()
    return model, inv_freq


def evaluate_cell(model_dir, cell: dict, eval_dir, lengths, *, chunk_size, batch_size, precision, attn_implementation,
                  bucket_edges=None, compile=False):
    import torch

    from ropelaw.evaldata import load_eval_docs
    from ropelaw.models import compile_layers
    from ropelaw.perplexity import evaluate_docs, length_dependent_rope

    docs = load_eval_docs(eval_dir)
    if docs.shape[1] < max(lengths):
        raise UserError(
            f"{eval_dir} holds documents of {docs.shape[1]} tokens, fewer than the longest "
            f"evaluation length {max(lengths)}; rebuild it (rule prepare_eval)"
        )
    model, inv_freq = load_cell_model(model_dir, cell, precision=precision, attn_implementation=attn_implementation)
    device = next(model.parameters()).device.type
    if compile:
        compile_layers(model, "evaluation.compile")
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    # Methods whose rotation depends on the total length (dynamic NTK) need one forward per length.
    one_pass = not length_dependent_rope(model)
    spec = cell_method(cell)
    assert one_pass != spec.length_dependent, "the model's rope type disagrees with its method"
    table = evaluate_docs(
        model, docs, lengths, one_pass=one_pass, chunk_size=chunk_size, buckets=bucket_edges, batch_size=batch_size,
        compiled=compile,
    )
    seconds = time.perf_counter() - started
    # The peak over the whole evaluation, weights included (GiB; null on CPU).
    peak = {"peak_allocated_gib": None, "peak_reserved_gib": None}
    if device == "cuda":
        peak = {"peak_allocated_gib": torch.cuda.max_memory_allocated() / 2**30,
                "peak_reserved_gib": torch.cuda.max_memory_reserved() / 2**30}
    for key, value in reversed(cell.columns().items()):
        table.insert(0, key, value)
    sidecar = provenance.manifest(
        kind="evaluate",
        cell=cell.to_dict(),
        model_dir=str(model_dir),
        model_manifest_sha256=provenance.sha256_if_exists(Path(model_dir) / "ropelaw_manifest.json"),
        eval_manifest_sha256=provenance.sha256_file(Path(eval_dir) / "manifest.json"),
        lengths=list(lengths),
        method=spec.to_json(),
        one_pass=one_pass,
        chunk_size=chunk_size,
        dtype=str(next(model.parameters()).dtype),
        attn_implementation=attn_implementation,
        compiled=compile,
        device=torch.cuda.get_device_name() if device == "cuda" else "cpu",
        seconds=seconds,
        **peak,
        inv_freq=inv_freq.tolist(),
        inv_freq_sha256=rope.inv_freq_digest(inv_freq),
    )
    return table, sidecar



def add_cell_arguments(parser) -> None:
    """The arguments every per-cell evaluation takes (perplexity here, passkey retrieval)."""
    parser.add_argument("--model", required=True, help="model directory")
    parser.add_argument("--cell-json", required=True, help="the cell as JSON (`ropelaw cell --configfile X PATH` prints it)")
    parser.add_argument("--batch-size", type=int, default=1, help="documents (or prompts) per forward")
    parser.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    parser.add_argument("--attn-implementation", default="sdpa", choices=["sdpa", "flash_attention_2", "eager"])
    parser.add_argument("--out", required=True, help="output CSV (a .json sidecar is written beside it)")


def parse_cell(text: str) -> Cell:
    """The cell of `--cell-json` (what `ropelaw cell` prints); bad JSON or fields are one `UserError`."""
    return Cell.from_json(text, "--cell-json")


def add_arguments(parser) -> None:
    add_cell_arguments(parser)
    parser.add_argument("--eval-data", required=True, help="evaluation directory (ropelaw prepare-eval)")
    parser.add_argument("--lengths", required=True, type=int, nargs="+", help="context lengths")
    parser.add_argument("--chunk-size", type=int, default=4096, help="positions per lm_head chunk")
    parser.add_argument("--bucket-edges", type=int, nargs="*", default=None, help="position-bucket edges")
    parser.add_argument("--compile", action="store_true", help="torch.compile each decoder layer (evaluation.compile)")


def run(args) -> None:
    cell = parse_cell(args.cell_json)
    table, sidecar = evaluate_cell(
        args.model, cell, args.eval_data, args.lengths,
        chunk_size=args.chunk_size, batch_size=args.batch_size, precision=args.precision,
        attn_implementation=args.attn_implementation, bucket_edges=args.bucket_edges or None, compile=args.compile,
    )
    out = Path(args.out)
    with provenance.atomic_path(out) as tmp:
        table.to_csv(tmp, index=False)
    provenance.write_json(out.with_suffix(".json"), sidecar)
    prefix = table[table.scope == "prefix"]
    print(prefix[["end", "ppl", "accuracy"]].to_string(index=False))
