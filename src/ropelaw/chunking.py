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
still chosen to fit. The MLP (LLaMA's, eager) then takes every position at once where that
raises no peak (`_mlp_slices`, `whole_row_mlp_bytes`): over 8,192-row chunks its products ran in
a slower GEMM tile than over whole rows, 1% of a 7B's forward at 100K (bench eval9, eval10).

The estimate, per forward of `length` positions and `batch` rows, activation element size e, is
the largest of its phases, each (bytes held whole) + chunk x (bytes per chunk position). All of
B L e x what follows is whole-sequence; held through every layer are the embeddings (the model's
forward keeps them), the layer's input (its caller keeps it) and the rotation's cos and sin,
2 d + 2 d_head (a 1-layer model holds one d less: the estimate stays an upper bound):
- attention, one group (the model's own): held + the norm's output d + Q, K, V (h + 2 h_kv) d_head +
  the rotation's peak, max(3 h, h + 3 h_kv) d_head (while Q is rotated, three Q-sized temporaries;
  then Q's rotated copy and three K-sized ones), and the eager RMSNorm whole: held + 2 d, plus its
  float32 copy and square, B L 8 d bytes;
- attention, G > 1 groups: held + d + the output buffer h d_head + one group's share of Q, K, V and of
  the rotation, /G; per position, a chunk of the output projection, B d e. The eager RMSNorms then
  run over chunks too (`ropelaw.lean.chunked_norms`): held + 2 d, and per position B 12 d bytes
  (float32 copy, square, product);
- the MLP: held + 2 d (the residual and the norm's output, which the MLP overwrites slice by
  slice); per position, gate, activation and up projections and the output, B (3 I + d) e;
- the layer's end: with one group, held + 3 d (the residual, the MLP's output and their sum); with
  G > 1 the layer adds in place (`ropelaw.lean._lean_layer`), held + 2 d;
- the lm_head and its loss, after the decoder: the final hidden state d; per position the logits
  in the model's dtype, the float32 logits and their log-softmax, B V (e + 8).
Checked against the allocator's traces of a 13B at 1,048,576 tokens on an H200 (bench/results/
2026-12-01-session6: one layer run, 90.5, 48.0 and 41.1 GiB above the weights for 1, 4 and 8
groups, as modelled to 0.1 GiB; two layers, the layer's end, which the model then lacked) and, on
CPU, against the live tensors of small models (tests/test_memory_model.py).
The budget is the free GPU memory (`torch.cuda.mem_get_info` plus what torch's cache holds
unused, within the process's `set_per_process_memory_fraction`), capped by
`evaluation.memory_budget_gib` when set, times 0.9 for the allocator's slack; on CPU it is
`evaluation.memory_budget_gib` (default 8 GiB). The chunk is the largest that fits up to
CHUNK_CAP, rounded down to a multiple of 256, and never below 256. `eval.json` records the
chunk, the groups, the MLP's slices (0: over chunks of rows) and this reckoning.
"""

from __future__ import annotations

from ropelaw import UserError

CPU_BUDGET_GIB = 8.0
SLACK = 0.9
GRAIN = 256
CHUNK_CAP = 8192
# The whole-row MLP's slices `auto` may take: one, the module's products row for row. More slices hold less
# (1/k of the [L, intermediate] activations) but sum the down projection in the model's dtype, one rounding
# per slice (bench eval12 measures both).
MLP_SLICES = (1,)
GIB = 2**30


def model_shape(model) -> dict[str, int]:
    """The sizes the memory reckonings read: d, vocab, inter (the MLP's), heads, kv_heads, head_dim."""
    config = model.config
    d = config.hidden_size
    heads = config.num_attention_heads
    return {
        "d": d, "vocab": config.vocab_size, "inter": getattr(config, "intermediate_size", None) or 4 * d,
        "heads": heads, "kv_heads": getattr(config, "num_key_value_heads", None) or heads,
        "head_dim": getattr(config, "head_dim", None) or d // heads,
    }


def _held(s: dict[str, int]) -> int:
    """Elements per position held through every layer: the embeddings, the layer's input, the rotation's cos
    and sin."""
    return 2 * s["d"] + 2 * s["head_dim"]


def memory_costs(model, length: int, batch: int, head_groups: int = 1) -> dict[str, tuple[int, int]]:
    """{phase: (bytes of its whole-sequence tensors, bytes per chunk position)} of one evaluation forward."""
    s = model_shape(model)
    e = next(model.parameters()).element_size()
    d, heads, kv_heads, head_dim = s["d"], s["heads"], s["kv_heads"], s["head_dim"]
    qkv = (heads + 2 * kv_heads) * head_dim
    rotation = max(3 * heads, heads + 3 * kv_heads) * head_dim
    held = _held(s)
    whole = batch * length * e  # bytes per element of a whole-sequence row
    if head_groups == 1:
        attention = ((held + d + qkv + rotation) * whole, 0)
        norm = ((held + 2 * d) * whole + batch * length * 8 * d, 0)
        layer_end = ((held + 3 * d) * whole, 0)  # the residual, the MLP's output and their sum
    else:
        attention = ((held + d + heads * head_dim + (qkv + rotation) // head_groups) * whole, batch * d * e)
        norm = ((held + 2 * d) * whole, batch * 12 * d)
        layer_end = ((held + 2 * d) * whole, 0)  # the sum made in place (`ropelaw.lean._lean_layer`)
    return {
        "attention": attention,
        "norm": norm,
        "mlp": ((held + 2 * d) * whole, batch * (3 * s["inter"] + d) * e),
        "layer_end": layer_end,
        "logits": (d * whole, batch * s["vocab"] * (e + 8)),
    }


def whole_row_mlp_bytes(model, length: int, batch: int, slices: int) -> int:
    """Bytes of the MLP phase when ropelaw's LLaMA MLP takes every position at once in `slices` slices of the
    intermediate dimension (`ropelaw.lean._llama_rows`): held + the residual and the norm's output, the output
    buffer where the down projection is summed over slices (> 1; with one it overwrites its input), and two
    [B, L, I/slices] tensors alive at once (the gate's product and its activation, then the activation and the
    up projection's product)."""
    s = model_shape(model)
    e = next(model.parameters()).element_size()
    d = s["d"]
    out = d if slices > 1 else 0
    return ((_held(s) + 2 * d + out) + 2 * -(-s["inter"] // slices)) * batch * length * e


def _mlp_slices(model, phases, chunk: int, length: int, batch: int, room: int) -> tuple[int, str]:
    """(slices, why) of the MLP for `evaluation.chunk_size: auto`: the fewest of MLP_SLICES with which the
    whole-row MLP's phase is no larger than the forward's peak with the MLP over chunks of rows, within the
    room; 0 (rows) where none is, or where the MLPs are not LLaMA's. Row-chunked MLPs ran their products in a
    slower GEMM tile than whole rows (bench eval9, eval10: the default's 1% behind plain at 100K)."""
    from ropelaw.lean import llama_mlps

    if not llama_mlps(model):
        return 0, "not LLaMA's MLP: the module's own forward over chunks of rows"
    peak = max(fixed + chunk * per_position for fixed, per_position in phases.values())
    for slices in MLP_SLICES:
        if whole_row_mlp_bytes(model, length, batch, slices) <= min(peak, room):
            return slices, f"whole rows in {slices} slice(s) of the intermediate dimension: no higher peak"
    return 0, "every whole-row MLP would raise the peak: the MLP over chunks of rows"


def _fits(phases: dict[str, tuple[int, int]], room: int, wanted: int) -> tuple[int, str | None]:
    """(the most chunk positions, up to `wanted`, that every phase has room for; the phase that binds, if one)."""
    fits, binding = wanted, None
    for name, (fixed, per_position) in phases.items():
        room_for = (wanted if fixed <= room else 0) if per_position == 0 else max(room - fixed, 0) // per_position
        if room_for < fits:
            fits, binding = room_for, name
    return fits, binding


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
                 budget_gib: float | None = None, head_groups: int | None = None,
                 compiled: bool = False) -> tuple[int, dict]:
    """(chunk size, the reckoning for eval.json) for forwards of up to `length` positions.

    The reckoning's `head_groups` is the number of head groups to run the attention in: the fewest
    that fit (`head_groups` fixes it); its `mlp_slices` how the eager MLP runs (`_mlp_slices`; 0 with a
    fixed chunk or compiled layers: the MLP over chunks of rows)."""
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
        phases = memory_costs(model, length, batch, groups)
        fits, binding = _fits(phases, int(budget * SLACK), wanted)
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
    if fixed_chunk or compiled:
        slices, mlp_reason = 0, "the MLP over chunks of rows (" + ("compiled layers" if compiled else
                                                                   "a fixed evaluation.chunk_size") + ")"
    else:
        slices, mlp_reason = _mlp_slices(model, phases, chunk, length, batch, int(budget * SLACK))
    return chunk, {"requested": requested, "chunk_size": chunk, "reason": reason, "head_groups": groups,
                   "mlp_slices": slices, "mlp_reason": mlp_reason,
                   "head_groups_possible": counts, "budget_bytes": budget, "budget_source": source,
                   "phases": {name: {"fixed_bytes": f, "per_position_bytes": p} for name, (f, p) in phases.items()},
                   "binding_phase": binding, "length": length, "batch": batch}
