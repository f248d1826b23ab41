"""How many positions the chunked parts of an evaluation forward take at once, decided at run time.

    chunk, why = choose_chunk(model, length=100_000, batch=1, requested="auto")

Chunking (the decoder MLPs in `ropelaw.lean`, the lm_head and loss in `ropelaw.perplexity`)
saves memory but costs time: many small matrix products run slower than one large one. So
`evaluation.chunk_size: auto` (the default) chunks only as much as the memory free for this
forward requires; a number fixes the chunk.

The estimate, per forward of `length` positions and `batch` rows, activation element size e:
- whole-sequence tensors no chunk can avoid: the residual stream, its norm, the attention
  input and output and Q, K, V, about B L (5 d + (h + 2 h_kv) d_head) e bytes;
- per position of a chunk, the larger of the MLP's gate, activation and up projections and its
  output, B (3 I + d) e, and the logits in the model's dtype plus the float32 logits and
  log-softmax of the loss, B V (e + 8).
The budget is the free GPU memory (`torch.cuda.mem_get_info` plus what torch's cache holds
unused), capped by `evaluation.memory_budget_gib` when set, times 0.9 for the allocator's slack;
on CPU it is `evaluation.memory_budget_gib` (default 8 GiB). The chunk is the largest that fits,
rounded down to a multiple of 256 (no chunking when the whole length fits), and never below 256.
`eval.json` records the chunk and this reckoning.
"""

from __future__ import annotations

from ropelaw import UserError

CPU_BUDGET_GIB = 8.0
SLACK = 0.9
GRAIN = 256
GIB = 2**30


def _shape(model) -> dict[str, int]:
    config = model.config
    d = config.hidden_size
    heads = config.num_attention_heads
    return {
        "d": d, "vocab": config.vocab_size, "inter": getattr(config, "intermediate_size", None) or 4 * d,
        "heads": heads, "kv_heads": getattr(config, "num_key_value_heads", None) or heads,
        "head_dim": getattr(config, "head_dim", None) or d // heads,
    }


def memory_costs(model, length: int, batch: int) -> tuple[int, int]:
    """(bytes of the whole-sequence tensors, bytes per chunk position) of one evaluation forward."""
    s = _shape(model)
    e = next(model.parameters()).element_size()
    fixed = batch * length * (5 * s["d"] + (s["heads"] + 2 * s["kv_heads"]) * s["head_dim"]) * e
    per_position = batch * max((3 * s["inter"] + s["d"]) * e, s["vocab"] * (e + 8))
    return fixed, per_position


def memory_budget(device: str, budget_gib: float | None) -> tuple[int, str]:
    """(bytes this forward may use, where that number comes from)."""
    if budget_gib is not None and budget_gib <= 0:
        raise UserError(f"evaluation.memory_budget_gib: {budget_gib} must be > 0 (or null)")
    if device != "cuda":
        gib = CPU_BUDGET_GIB if budget_gib is None else budget_gib
        return int(gib * GIB), "evaluation.memory_budget_gib" if budget_gib is not None else f"CPU default {CPU_BUDGET_GIB} GiB"
    import torch

    free, _ = torch.cuda.mem_get_info()
    free += torch.cuda.memory_reserved() - torch.cuda.memory_allocated()
    if budget_gib is not None and budget_gib * GIB < free:
        return int(budget_gib * GIB), "evaluation.memory_budget_gib"
    return int(free), "torch.cuda.mem_get_info"


def choose_chunk(model, length: int, batch: int, requested: int | str = "auto",
                 budget_gib: float | None = None) -> tuple[int, dict]:
    """(chunk size, the reckoning for eval.json) for forwards of up to `length` positions."""
    if requested != "auto":
        if not isinstance(requested, int) or requested < 1:
            raise UserError(f"evaluation.chunk_size: {requested!r}; use auto or a number of positions >= 1")
        return requested, {"requested": requested, "chunk_size": requested, "reason": "fixed by evaluation.chunk_size"}
    device = next(model.parameters()).device.type
    budget, source = memory_budget(device, budget_gib)
    fixed, per_position = memory_costs(model, length, batch)
    room = int(budget * SLACK) - fixed
    fits = max(room, 0) // per_position
    if fits >= length:
        chunk, reason = length, "the whole length fits: no chunking"
    elif fits >= GRAIN:
        chunk, reason = fits // GRAIN * GRAIN, "the largest multiple of 256 positions that fits"
    else:
        chunk, reason = GRAIN, "even 256 positions exceed the budget: the smallest chunk, memory may run out"
    return chunk, {"requested": "auto", "chunk_size": chunk, "reason": reason, "budget_bytes": budget,
                   "budget_source": source, "fixed_bytes": fixed, "per_position_bytes": per_position,
                   "length": length, "batch": batch}
