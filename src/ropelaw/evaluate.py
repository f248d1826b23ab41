"""Evaluate one cell: perplexity, accuracy, bits per byte and word perplexity at every context length.

    ropelaw evaluate --model DIR --cell-json '{"base": 500000, ...}' --eval-data DIR --tokenizer DIR \
        --lengths 4096 8192 ... [--convention ropelaw|yarn|lm_eval] [--bos auto|true|false] \
        [--chunk-size auto|N] --out results/.../eval.csv

The cell's method (`ropelaw.methods`: a fine-tuned base, or a training-free
way of extending RoPE applied to the untuned model) is applied as the model
loads. One forward per document at the longest length gives every shorter
length from its prefix (valid for position-only RoPE; see `ropelaw.perplexity`);
a length-dependent method (dynamic NTK) gets one forward per length instead.
How positions are scored, the conventions and the BOS policy are `ropelaw.scoring`'s; the
chunk of the long forward is chosen by `ropelaw.chunking`. Outputs, all beside `--out`:
eval.csv (rows: scope 'prefix' per length, scope 'bucket' per position bucket, with the cell's
identity and the convention on every row), eval_docs.csv (per-document segment sums, whose
sums are eval.csv's prefix rows) and eval.json (provenance: inv_freq in effect, checksums,
convention, BOS, chunking; `resumed_batches_seconds`: the time of the batches an earlier, stopped attempt
finished). Until eval.csv is written, each finished batch of rows waits in eval_partial/ beside it, so a
job stopped by its time limit resumes when re-submitted (`ropelaw.evaljournal`). Every argument and input
file is checked before the model loads.
"""

from __future__ import annotations

import time
from pathlib import Path

from ropelaw import UserError, evaljournal, flash4, methods, provenance, rope
from ropelaw.cells import TABLE_COLUMNS, Cell
from ropelaw.evaljournal import Journal, journal_dir

CELL_KEYS = TABLE_COLUMNS


def cell_method(cell: Cell) -> methods.MethodSpec:
    """The cell's RoPE method, resolved through its kind with its options from the config."""
    return cell.method_spec()


def load_cell_model(model_dir, cell: dict, *, precision: str, attn_implementation: str, decoding: bool = False):
    """(model in eval mode on the GPU if any, inv_freq): every evaluation of a cell loads its model here, with the
    attention function `attn_implementation` resolves to (`ropelaw.flash4.resolve`; `decoding`: passkey's)."""
    import torch

    from ropelaw import flash4
    from ropelaw.models import head_dim_of, load_causal_lm

    device = "cuda" if torch.cuda.is_available() else "cpu"
    attention = flash4.resolve(attn_implementation, decoding=decoding, head_dim=cell.head_dim or 128)
    model, inv_freq = load_causal_lm(
        model_dir, cell_method(cell), precision=precision, attn_implementation=attention, device=device
    )
    if head_dim_of(model.config) != cell.head_dim:
        raise UserError(
            f"config key 'models.{cell.model}.head_dim' is {cell.head_dim}, but {model_dir} has "
            f"head_dim {head_dim_of(model.config)}; fix it (or set it to null to read it from the model)"
        )
    model.eval()
    return model, inv_freq


def docs_path(out) -> Path:
    """eval.csv -> eval_docs.csv: the per-document segment sums beside the table."""
    out = Path(out)
    return out.with_name(f"{out.stem}_docs.csv")


def evaluate_cell(model_dir, cell: dict, eval_dir, lengths, **kwargs):
    """(table, sidecar) of one cell; `evaluate_cell_docs` also gives the per-document sums."""
    table, _, sidecar = evaluate_cell_docs(model_dir, cell, eval_dir, lengths, **kwargs)
    return table, sidecar


def _scoring(tokenizer_dir, convention: str, bos: str):
    """(Scoring, TokenText or None, tokenizer identity or None) of the evaluation's tokenizer."""
    from ropelaw.scoring import Scoring
    from ropelaw.tokentext import TokenText

    if tokenizer_dir is None:
        if convention != "ropelaw" or bos == "true":
            raise UserError(f"--tokenizer is needed for convention {convention} and bos {bos}")
        return Scoring(convention), None, None
    from ropelaw.data import load_tokenizer

    tokenizer, identity = load_tokenizer(tokenizer_dir)
    return Scoring.for_tokenizer(convention, bos, tokenizer), TokenText.from_tokenizer(tokenizer, len(tokenizer)), identity


def _rows(eval_dir, lengths, scoring):
    """The evaluation rows, refused when they are too short for the longest window."""
    from ropelaw.evaldata import load_eval_docs
    from ropelaw.scoring import row_tokens_needed

    docs = load_eval_docs(eval_dir)
    if docs.shape[1] < row_tokens_needed(max(lengths), scoring):
        raise UserError(f"{eval_dir} holds documents of {docs.shape[1]} tokens, fewer than the longest "
                        f"evaluation length {max(lengths)} needs; rebuild it (rule prepare_eval)")
    return docs


def _device_and_peak(device: str) -> dict:
    """The device's name and the peak memory over the whole evaluation, weights included (GiB; null on CPU)."""
    if device != "cuda":
        return {"device": device, "peak_allocated_gib": None, "peak_reserved_gib": None}
    import torch

    return {"device": torch.cuda.get_device_name(), "peak_allocated_gib": torch.cuda.max_memory_allocated() / 2**30,
            "peak_reserved_gib": torch.cuda.max_memory_reserved() / 2**30}


def evaluate_cell_docs(model_dir, cell: dict, eval_dir, lengths, *, chunk_size, batch_size, precision,
                       attn_implementation, bucket_edges=None, compile=False, tokenizer_dir=None,
                       convention="ropelaw", bos="auto", memory_budget_gib=None, journal_dir=None):
    """(table, per-document segment sums, sidecar) of one cell (`ropelaw.scoring`). With `journal_dir`
    the batches an earlier attempt of the same evaluation finished are taken from there, and each batch
    finished here is kept there (`ropelaw.evaljournal`)."""
    import torch

    from ropelaw.chunking import choose_chunk
    from ropelaw.models import compile_layers
    from ropelaw.perplexity import length_dependent_rope
    from ropelaw.scoring import evaluate_docs, segment_edges

    scoring, text, tokenizer_identity = _scoring(tokenizer_dir, convention, bos)
    docs = _rows(eval_dir, lengths, scoring)
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
    chunk, chunking = choose_chunk(model, max(lengths), min(batch_size, len(docs)), chunk_size, memory_budget_gib,
                                   compiled=compile)
    # Everything that decides the numbers: what a resumed attempt must share with the one it resumes.
    identity = dict(
        kind="evaluate",
        cell=cell.to_dict(),
        model_dir=str(model_dir),
        model_manifest_sha256=provenance.sha256_if_exists(Path(model_dir) / "ropelaw_manifest.json"),
        eval_manifest_sha256=provenance.sha256_file(Path(eval_dir) / "manifest.json"),
        lengths=list(lengths),
        convention=scoring.convention,
        bos=bos,
        prefix_token_id=scoring.prefix_id,
        tokenizer=tokenizer_identity,
        segment_edges=segment_edges(lengths, scoring, cell.train_len),
        bucket_edges=bucket_edges,
        method=spec.to_json(),
        one_pass=one_pass,
        batch_size=batch_size,
        chunk_size=chunk,
        head_groups=chunking["head_groups"],
        mlp_slices=chunking["mlp_slices"],
        dtype=str(next(model.parameters()).dtype),
        attn_implementation=attn_implementation,
        attention=model.config._attn_implementation,
        compiled=compile,
        inv_freq_sha256=rope.inv_freq_digest(inv_freq),
    )
    journal = None
    if journal_dir is not None:
        journal = Journal(journal_dir, identity)
        journal.claim(f"{batch_size} document(s)")
    table, doc_sums = evaluate_docs(
        model, docs, lengths, scoring=scoring, text=text, train_len=cell.train_len, one_pass=one_pass,
        chunk_size=chunk, buckets=bucket_edges, batch_size=batch_size, compiled=compile,
        head_groups=chunking["head_groups"], mlp_slices=chunking["mlp_slices"], journal=journal,
    )
    seconds = time.perf_counter() - started
    table.insert(0, "convention", scoring.convention)
    for key, value in reversed(cell.columns().items()):
        table.insert(0, key, value)
    sidecar = provenance.manifest(
        **identity,
        chunking=chunking,
        seconds=seconds,
        resumed_batches_seconds=journal.resumed_seconds if journal else 0.0,
        **_device_and_peak(device),
        inv_freq=inv_freq.tolist(),
    )
    return table, doc_sums, sidecar


def add_cell_arguments(parser) -> None:
    """The arguments every per-cell evaluation takes (perplexity here, passkey retrieval)."""
    parser.add_argument("--model", required=True, help="model directory")
    parser.add_argument("--cell-json", required=True, help="the cell as JSON (`ropelaw cell --configfile X PATH` prints it)")
    parser.add_argument("--batch-size", type=int, default=1, help="documents (or prompts) per forward")
    parser.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    parser.add_argument("--attn-implementation", default="auto", choices=list(flash4.CHOICES),
                        help="auto: flash4 (FlashAttention-4's kernels, package flash-attn-4) on a Hopper GPU where it "
                             "imports, else sdpa (`ropelaw.flash4`)")
    parser.add_argument("--out", required=True, help="output CSV (a .json sidecar is written beside it)")


def parse_cell(text: str) -> Cell:
    """The cell of `--cell-json` (what `ropelaw cell` prints); bad JSON or fields are one `UserError`."""
    return Cell.from_json(text, "--cell-json")


def positions_or_auto(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise UserError(f"--chunk-size {text}: use auto or a number of positions (evaluation.chunk_size)") from None


def add_arguments(parser) -> None:
    add_cell_arguments(parser)
    parser.add_argument("--eval-data", required=True, help="evaluation directory (ropelaw prepare-eval)")
    parser.add_argument("--tokenizer", required=True, help="the tokenizer of the rows: bytes, words and BOS")
    parser.add_argument("--lengths", required=True, type=int, nargs="+", help="context lengths, increasing")
    parser.add_argument("--chunk-size", type=positions_or_auto, default="auto",
                        help="positions per chunk of the MLPs and lm_head, or auto (ropelaw.chunking)")
    parser.add_argument("--memory-budget-gib", type=float, default=None,
                        help="memory the auto chunk may plan for (evaluation.memory_budget_gib)")
    parser.add_argument("--bucket-edges", type=int, nargs="*", default=None, help="position-bucket edges")
    parser.add_argument("--compile", action="store_true", help="torch.compile each decoder layer (evaluation.compile)")
    parser.add_argument("--convention", default="ropelaw", choices=["ropelaw", "yarn", "lm_eval"],
                        help="evaluation.convention (ropelaw.scoring)")
    parser.add_argument("--bos", default="auto", choices=["auto", "true", "false"], help="evaluation.bos")


def check_arguments(args) -> None:
    """Every argument that can be checked without loading anything (the CLI runs this first)."""
    if args.batch_size < 1:
        raise UserError(f"--batch-size {args.batch_size}: use 1 or more (evaluation.batch_size)")
    if getattr(args, "chunk_size", "auto") != "auto" and args.chunk_size < 1:
        raise UserError(f"--chunk-size {args.chunk_size}: use 1 or more positions (evaluation.chunk_size)")
    lengths = getattr(args, "lengths", [2])
    if lengths != sorted(set(lengths)) or lengths[0] < 2:
        raise UserError(f"--lengths {lengths}: use strictly increasing lengths of 2 or more (evaluation.lengths)")
    budget = getattr(args, "memory_budget_gib", None)
    if budget is not None and not budget > 0:
        raise UserError(f"--memory-budget-gib {budget}: use a number of GiB > 0, or leave it out "
                        "(evaluation.memory_budget_gib: null = the free memory)")
    edges = getattr(args, "bucket_edges", None) or []
    if edges and (edges != sorted(set(edges)) or edges[0] < 0):
        raise UserError(f"--bucket-edges {edges}: use strictly increasing edges from 0 (evaluation.bucket_edges)")
    flash4.resolve(args.attn_implementation, decoding=True)  # `flash4` where it cannot run: one line, nothing loaded
    provenance.check_out(args.out, "--out", "eval.csv")


def run(args) -> None:
    check_arguments(args)
    cell = parse_cell(args.cell_json)
    out = Path(args.out)
    table, doc_sums, sidecar = evaluate_cell_docs(
        args.model, cell, args.eval_data, args.lengths,
        chunk_size=args.chunk_size, batch_size=args.batch_size, precision=args.precision,
        attn_implementation=args.attn_implementation, bucket_edges=args.bucket_edges or None, compile=args.compile,
        tokenizer_dir=args.tokenizer, convention=args.convention, bos=args.bos,
        memory_budget_gib=args.memory_budget_gib, journal_dir=journal_dir(out),
    )
    with provenance.atomic_path(docs_path(out)) as tmp:
        doc_sums.to_csv(tmp, index=False)
    with provenance.atomic_path(out) as tmp:
        table.to_csv(tmp, index=False)
    provenance.write_json(out.with_suffix(".json"), sidecar)
    evaljournal.remove(journal_dir(out))
    prefix = table[table.scope == "prefix"]
    print(prefix[["end", "ppl", "accuracy", "bits_per_byte", "word_ppl"]].to_string(index=False))
