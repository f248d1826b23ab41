"""How an evaluation forward is cut to fit memory, decided at run time: the chunk and the head groups.

    chunk, why = choose_chunk(model, length=100_000, batch=1, requested="auto")
    why["head_groups"]   # how many groups of heads the attention runs in, one at a time

Two exact ways to save memory (`ropelaw.lean`): the decoder MLPs, the output projection of the
attention and the lm_head with its loss run over `chunk` positions at a time; the attention
runs over groups of heads, so that Q, K and V never exist for all heads at once. Matrix
products over at least CHUNK_CAP positions run at the GPU's full rate (for a 7B, 8,192 x
4,096 x 11,008 is 0.74 TFLOP), so `evaluation.chunk_size: auto` (the default) never takes
a chunk larger than that: the [L, intermediate] activations and the float32 logits never
exist whole. Head groups are added only as the memory free for this forward requires (the
fewest that fit); a number in `evaluation.chunk_size` fixes the chunk, and the groups are
still chosen to fit.

The estimate, per forward of `length` positions and `batch` rows, activation element size e:
- whole-sequence tensors no chunk can avoid: with one group (the model's own attention) the
  residual stream, its norm, the attention output, its projection and Q, K, V, about
  B L (5 d + (h + 2 h_kv) d_head) e bytes; with G > 1 groups the residual stream, its norm and
  the attention buffer, and one group's Q, K and V with its rotated copies and the rotation's
  temporaries (while Q is rotated, three Q-sized ones; then Q's rotated copy and three K-sized):
  B L (3 d + ((h + 2 h_kv) + max(3 h, h + 3 h_kv)) d_head / G) e. With G > 1 the eager RMSNorms
  run over chunks too (`ropelaw.lean.chunked_norms`): whole, their float32 copy and square beside
  the residual stream, B L d (e + 8), would exceed that for G >= 4. With one group they stay whole:
  B L d (e + 8) <= B L (5 d + (h + 2 h_kv) d_head) e for e >= 2, so they never set the peak;
- per position of a chunk, the largest of the MLP's gate, activation and up projections and its
  output, B (3 I + d) e, the logits in the model's dtype plus the float32 logits and
  log-softmax of the loss, B V (e + 8), and an eager RMSNorm's float32 copy, square and
  product, B 12 d.
The budget is the free GPU memory (`torch.cuda.mem_get_info` plus what torch's cache holds
unused, within the process's `set_per_process_memory_fraction`), capped by
`evaluation.memory_budget_gib` when set, times 0.9 for the allocator's slack; on CPU it is
`evaluation.memory_budget_gib` (default 8 GiB). The chunk is the largest that fits up to
CHUNK_CAP, rounded down to a multiple of 256, and never below 256. `eval.json` records the
chunk, the groups and this reckoning.
"""

from __future__ import annotations

from ropelaw import UserError

CPU_BUDGET_GIB = 8.0
SLACK = 0.9
GRAIN = 256
CHUNK_CAP = 8192
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


def memory_costs(model, length: int, batch: int, head_groups: int = 1) -> tuple[int, int]:
    """(bytes of the whole-sequence tensors, bytes per chunk position) of one evaluation forward."""
    s = _shape(model)
    e = next(model.parameters()).element_size()
    heads, kv_heads = s["heads"], s["kv_heads"]
    qkv = (heads + 2 * kv_heads) * s["head_dim"]
    if head_groups == 1:
        fixed = batch * length * (5 * s["d"] + qkv) * e
    else:
        rotation = max(3 * heads, heads + 3 * kv_heads) * s["head_dim"]
        fixed = batch * length * (3 * s["d"] + (qkv + rotation) // head_groups) * e
    per_position = batch * max((3 * s["inter"] + s["d"]) * e, s["vocab"] * (e + 8), 12 * s["d"])
    return fixed, per_position


def memory_budget(device: str, budget_gib: float | None) -> tuple[int, str]:
    """(bytes this forward may use, where that number comes from)."""
    if budget_gib is not None and budget_gib <= 0:
        raise UserError(f"evaluation.memory_budget_gib: {budget_gib} must be > 0 (or null)")
    if device != "cuda":
        gib = CPU_BUDGET_GIB if budget_gib is None else budget_gib
        return int(gib * GIB), "evaluation.memory_budget_gib" if budget_gib is not None else f"CPU default {CPU_BUDGET_GIB} GiB"
    import torch

    free, total = torch.cuda.mem_get_info()
    free += torch.cuda.memory_reserved() - torch.cuda.memory_allocated()
    fraction = getattr(torch.cuda, "get_per_process_memory_fraction", lambda: 1.0)()
    free = min(free, int(total * fraction) - torch.cuda.memory_allocated())  # an A100-80GB's share of an H200
    if budget_gib is not None and budget_gib * GIB < free:
        return int(budget_gib * GIB), "evaluation.memory_budget_gib"
    return int(free), "torch.cuda.mem_get_info"


def choose_chunk(model, length: int, batch: int, requested: int | str = "auto",
                 budget_gib: float | None = None, head_groups: int | None = None) -> tuple[int, dict]:
    """(chunk size, the reckoning for eval.json) for forwards of up to `length` positions.

    The reckoning's `head_groups` is the number of head groups to run the attention in: the fewest
    that fit (`head_groups` fixes it)."""
    from ropelaw.lean import group_counts

    fixed_chunk = requested != "auto"
    if fixed_chunk and (not isinstance(requested, int) or isinstance(requested, bool) or requested < 1):
        raise UserError(f"evaluation.chunk_size: {requested!r}; use auto or a number of positions >= 1")
    counts = group_counts(model)
    if head_groups is not None and head_groups not in counts:
        raise UserError(f"head groups: {head_groups} does not divide the model's KV heads (possible: {counts})")
    device = next(model.parameters()).device.type
    budget, source = memory_budget(device, budget_gib)
    wanted = requested if fixed_chunk else min(length, CHUNK_CAP)
    for groups in [head_groups] if head_groups else counts:
        fixed, per_position = memory_costs(model, length, batch, groups)
        fits = max(int(budget * SLACK) - fixed, 0) // per_position
        if fits >= wanted:
            break
    if fixed_chunk:
        chunk, reason = requested, "fixed by evaluation.chunk_size"
    elif fits >= wanted:
        chunk = wanted
        reason = "the whole length fits: no chunking" if wanted == length else f"the cap of {CHUNK_CAP} positions"
    elif fits >= GRAIN:
        chunk, reason = fits // GRAIN * GRAIN, "the largest multiple of 256 positions that fits"
    else:
        chunk, reason = GRAIN, "even 256 positions exceed the budget: the smallest chunk, memory may run out"
    return chunk, {"requested": requested, "chunk_size": chunk, "reason": reason, "head_groups": groups,
                   "head_groups_possible": counts, "budget_bytes": budget, "budget_source": source,
                   "fixed_bytes": fixed, "per_position_bytes": per_position, "length": length, "batch": batch}
