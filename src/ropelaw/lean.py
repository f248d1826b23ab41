"""Memory-lean long-context forward: MLPs and norms over slices of the sequence, attention over groups of heads.

    with chunked_mlp(model, 4096), chunked_norms(model, 4096), grouped_attention(model, groups=8, chunk=4096):
        hidden = model.get_decoder()(input_ids, use_cache=False).last_hidden_state

Why: at long contexts the largest activations of a LLaMA forward are the MLP's
[L, intermediate] tensors. For a 7B at 100K tokens, gate, act(gate) and up are
100K x 11008 x 2 bytes = 2.2 GB each, three alive at once; at 1M tokens 66 GB.
The MLP is row-wise (token t's output depends on token t's input alone), so
running it on `chunk` positions at a time gives the same numbers while holding
only `chunk` rows of those tensors. Where memory allows, LLaMA's MLP can instead take every row at
once (`chunked_mlp(model, L, slices=1)`, ropelaw's own products, the down projection written over the
MLP's input): over 8,192-row chunks its products ran in a slower GEMM tile, 1% of a 7B's forward
at 100K. The residual stream stays whole-sequence;
attention stays whole-sequence too, with the model's SDPA/flash kernel, but can run
over groups of heads (`grouped_attention`): then Q, K and V exist for one group at a
time, and the output projection writes in place (see its docstring). The RMSNorms are row-wise
too, and eager ones compute in float32: LLaMA's norm holds a float32 copy of its input and its
square at once, 8 bytes per element beside the bf16 input, which for a 13B at 1M tokens is 40 GiB
(`chunked_norms` runs them over slices).

Each patch sets an instance `forward` on each MLP (attention) and removes it on exit, so the
model's modules, parameters and state dict are unchanged. A model whose decoder
has no `layers[i].mlp` (no LLaMA attention) runs unchanged (only memory differs, never results).
It is for inference (no autograd through the slices is intended or tested).
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn.functional as F

from ropelaw import UserError


def _mlps(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The `mlp` of every decoder layer; none when the model is not built that way."""
    layers = getattr(model.get_decoder(), "layers", None) or []
    return [layer.mlp for layer in layers if isinstance(getattr(layer, "mlp", None), torch.nn.Module)]


def _sliced(forward, chunk: int, in_place: bool = False):
    """`forward`, a row-wise [B, L, d] -> [B, L, d] map, over `chunk` positions at a time.

    `in_place`: without autograd, each slice's output overwrites the slice it was computed from, so no
    second [B, L, d] tensor is made. Only for a module whose caller drops its input once it returns
    (a decoder layer's MLP, whose input is a norm's output); never for a norm (its input is the residual).
    """
    def run(hidden_bld: torch.Tensor) -> torch.Tensor:
        length = hidden_bld.shape[1]
        if length <= chunk:
            return forward(hidden_bld)
        out_bld = None
        for start in range(0, length, chunk):
            piece = forward(hidden_bld[:, start : start + chunk])
            if out_bld is None:
                if not isinstance(piece, torch.Tensor) or piece.shape[-1] != hidden_bld.shape[-1]:
                    raise UserError("a chunked module must map [B, L, d] to [B, L, d]")
                if in_place and not torch.is_grad_enabled() and piece.dtype == hidden_bld.dtype:
                    out_bld = hidden_bld
                else:
                    out_bld = hidden_bld.new_empty(hidden_bld.shape[:-1] + piece.shape[-1:], dtype=piece.dtype)
            out_bld[:, start : start + chunk] = piece
            del piece
        return out_bld

    return run


@contextlib.contextmanager
def _forwards(modules: list[torch.nn.Module], make) -> Iterator[None]:
    """Within the block each module's `forward` is `make(module)`, an instance attribute removed on exit."""
    for module in modules:
        module.forward = make(module)
    try:
        yield
    finally:
        for module in modules:
            del module.forward


def _is_llama_mlp(mlp: torch.nn.Module) -> bool:
    """LLaMA's MLP, `down(act(gate(x)) * up(x))` with bias-free projections (what `_llama_rows` computes)."""
    from transformers.models.llama.modeling_llama import LlamaMLP

    return type(mlp) is LlamaMLP and all(getattr(mlp, n).bias is None for n in ("gate_proj", "up_proj", "down_proj"))


def llama_mlps(model: torch.nn.Module) -> bool:
    """Whether the model has decoder MLPs and every one is LLaMA's (`chunked_mlp` can take `slices`)."""
    mlps = _mlps(model)
    return bool(mlps) and all(_is_llama_mlp(mlp) for mlp in mlps)


def _llama_rows(mlp: torch.nn.Module, forward, chunk: int, slices: int):
    """LLaMA's MLP (inference) over `chunk` positions at a time, each block's down projection written by its
    matrix product straight into the block's rows: no [chunk, d] temporary and no copy.

    `slices` = 1: the rows written are the block's own input rows (the input, a norm's output, is not used
    again, as for `_sliced(in_place=True)`); the same products as the module's forward on each block.
    `slices` > 1: the intermediate dimension in that many slices, the down projection summed over them
    into a new [B, L, d] output (one more whole-sequence tensor; the sum rounds once per slice in the
    model's dtype, so results differ from the module's forward at that rounding). With `chunk` the whole
    row, every product runs over all L rows at once with 1/`slices` of the intermediate activations.
    """
    gate, up, down = mlp.gate_proj.weight, mlp.up_proj.weight, mlp.down_proj.weight
    inter = gate.shape[0]
    edges = [inter * i // slices for i in range(slices + 1)]

    def run(hidden_bld: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() or not hidden_bld.is_contiguous():
            return forward(hidden_bld)
        batch, length, width = hidden_bld.shape
        rows_2d = hidden_bld.view(batch * length, width)
        out_2d = rows_2d if slices == 1 else rows_2d.new_empty(batch * length, down.shape[0])
        step = chunk * batch
        for start in range(0, batch * length, step):
            block_2d, target_2d = rows_2d[start:start + step], out_2d[start:start + step]
            for i, (lo, hi) in enumerate(zip(edges, edges[1:])):
                act_2d = mlp.act_fn(torch.mm(block_2d, gate[lo:hi].t()))
                act_2d *= torch.mm(block_2d, up[lo:hi].t())
                if i == 0:
                    torch.mm(act_2d, down[:, lo:hi].t(), out=target_2d)
                else:
                    target_2d.addmm_(act_2d, down[:, lo:hi].t())
                del act_2d
        return out_2d.view(batch, length, -1)

    return run


@contextlib.contextmanager
def chunked_mlp(model: torch.nn.Module, chunk: int, compiled: bool = False, slices: int = 0) -> Iterator[None]:
    """Within the block, every decoder layer's MLP runs on `chunk` positions at a time.

    Without autograd (evaluation) each slice's output is written over its own input rows: the MLP's input,
    the post-attention norm's output, is not used again, and a second [B, L, d] buffer would be the
    largest whole-sequence tensor of the layer (10 GiB for a 13B at 1M tokens).
    compiled=True (the layers were compiled, `ropelaw.models.compile_layers`): the loop over
    slices stays out of the layer's graph (torch.compile would unroll it, one copy per slice)
    and the MLP itself is compiled on one slice, so SiLU and the gate-up product are fused.
    `slices` (eager LLaMA MLPs; 0: the module's own forward on each chunk): ropelaw computes the MLP, the
    down projection written straight into its rows, over `slices` slices of the intermediate dimension
    (`_llama_rows`).
    """
    if chunk < 1:
        raise UserError(f"MLP chunk must be >= 1 positions, got {chunk}")
    if slices < 0:
        raise UserError(f"MLP slices must be >= 0 (0: the module's own forward), got {slices}")
    if slices and not compiled:
        mlps = _mlps(model)
        other = next((mlp for mlp in mlps if not _is_llama_mlp(mlp)), None)
        if other is not None:
            raise UserError(f"MLP slices={slices} computes LLaMA's MLP; this model has a {type(other).__name__}")
        with _forwards(mlps, lambda mlp: _llama_rows(mlp, mlp.forward, chunk, slices)):
            yield
    elif compiled:
        with _forwards(_mlps(model),
                       lambda mlp: torch.compiler.disable(_sliced(torch.compile(mlp.forward), chunk, in_place=True))):
            yield
    else:
        with _forwards(_mlps(model), lambda mlp: _sliced(mlp.forward, chunk, in_place=True)):
            yield


def _norms(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The RMSNorms of every decoder layer (`input_layernorm`, `post_attention_layernorm`) and the final
    `norm`, where the decoder is built that way (LLaMA and its kin); else none."""
    decoder = model.get_decoder()
    layers = getattr(decoder, "layers", None) or []
    found = [getattr(layer, name, None) for layer in layers for name in ("input_layernorm", "post_attention_layernorm")]
    found.append(getattr(decoder, "norm", None))
    return found if all(type(n).__name__.endswith("RMSNorm") for n in found) else []


@contextlib.contextmanager
def chunked_norms(model: torch.nn.Module, chunk: int, compiled: bool = False) -> Iterator[None]:
    """Within the block, the decoder's RMSNorms run on `chunk` positions at a time (eager layers only).

    Exact: a row's norm depends on that row alone, and each slice runs the norm's own forward. With
    compiled layers (`compiled=True`) the norm is fused into one kernel that holds no float32 copy,
    and a loop inside the graph would be unrolled, so the norms are left as they are.
    """
    if chunk < 1:
        raise UserError(f"norm chunk must be >= 1 positions, got {chunk}")
    with _forwards([] if compiled else _norms(model), lambda norm: _sliced(norm.forward, chunk)):
        yield


def _llama_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """Every decoder layer if each is LLaMA's, with LLaMA's attention (whose forwards `_lean_layer` and
    `_grouped` reproduce); else none."""
    from transformers.models.llama.modeling_llama import LlamaAttention, LlamaDecoderLayer

    layers = list(getattr(model.get_decoder(), "layers", None) or [])
    lean = all(isinstance(layer, LlamaDecoderLayer) and isinstance(layer.self_attn, LlamaAttention) for layer in layers)
    return layers if layers and lean else []


def _attentions(model: torch.nn.Module) -> list[torch.nn.Module]:
    return [layer.self_attn for layer in _llama_layers(model)]


def _lean_layer(layer: torch.nn.Module, forward):
    """LLaMA's decoder layer with its two residual additions in place (inference, called by keyword).

    The layer's own forward makes each sum a new [B, L, d] tensor while its input (held by the
    caller), the embeddings (held by the model's forward) and both terms are alive: five whole-
    sequence tensors at its end. Added into the attention's and the MLP's outputs (buffers that
    nothing else holds, under `grouped_attention` and `chunked_mlp`) the peak is four. The same
    additions in the same order: the numbers are bitwise those of the layer's own forward."""
    def run(hidden_states, *args, **kwargs):
        if args or torch.is_grad_enabled() or any(kwargs.get(k) is not None for k in ("cache", "past_key_values")):
            return forward(hidden_states, *args, **kwargs)
        hidden_bld = hidden_states
        attended_bld, _ = layer.self_attn(hidden_states=layer.input_layernorm(hidden_bld), **kwargs)
        attended_bld += hidden_bld  # residual + attention, as the layer adds them
        out_bld = layer.mlp(layer.post_attention_layernorm(attended_bld))
        out_bld += attended_bld
        return out_bld

    return run


def group_counts(model: torch.nn.Module) -> list[int]:
    """The numbers of head groups this model's attention can run in: the divisors of its KV heads."""
    kv_heads = getattr(model.config, "num_key_value_heads", None) or model.config.num_attention_heads
    return [g for g in range(1, kv_heads + 1) if kv_heads % g == 0] if _attentions(model) else [1]


def _group_attention(attn, kernel, hidden_bld, weights, cos, sin, attention_mask, kwargs):
    """One group's attention output [B, L, q_heads_of_group x head_dim]: its projections, rotation and kernel."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    batch, length, _ = hidden_bld.shape
    q, k, v = (F.linear(hidden_bld, w, b).view(batch, length, -1, attn.head_dim).transpose(1, 2) for w, b in weights)
    q, k = apply_rotary_pos_emb(q, k, cos, sin)
    piece, _ = kernel(attn, q, k, v, attention_mask, dropout=0.0, scaling=attn.scaling, **kwargs)
    return piece.reshape(batch, length, -1)


def _grouped(attn: torch.nn.Module, forward, groups: int, chunk: int, compiled: bool):
    """`attn.forward` over `groups` groups of KV heads (with their query heads), one group at a time."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    from transformers.models.llama.modeling_llama import eager_attention_forward

    head_dim = attn.head_dim
    q_rows = attn.q_proj.out_features // groups
    kv_rows = attn.k_proj.out_features // groups
    # Compiled layers: the loops stay out of the layer's graph (torch.compile would unroll them) and one
    # group's work is compiled on its own (the group's weights are arguments: one graph serves every group).
    one_group = torch.compile(_group_attention) if compiled else _group_attention

    def rows(proj, group, n):
        part = slice(group * n, (group + 1) * n)
        return proj.weight[part], None if proj.bias is None else proj.bias[part]

    def run(hidden_states, position_embeddings=None, attention_mask=None, **kwargs):
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        if cache is not None or position_embeddings is None or attn.training:
            return forward(hidden_states, position_embeddings, attention_mask, **kwargs)
        kwargs = {k: v for k, v in kwargs.items() if k not in ("cache", "past_key_values")}
        implementation = attn.config._attn_implementation
        kernel = eager_attention_forward if implementation == "eager" else ALL_ATTENTION_FUNCTIONS[implementation]
        cos, sin = position_embeddings
        out_blh = hidden_states.new_empty(*hidden_states.shape[:-1], attn.q_proj.out_features)
        for group in range(groups):
            weights = (rows(attn.q_proj, group, q_rows), rows(attn.k_proj, group, kv_rows),
                       rows(attn.v_proj, group, kv_rows))
            out_blh[..., group * q_rows:(group + 1) * q_rows] = one_group(
                attn, kernel, hidden_states, weights, cos, sin, attention_mask, kwargs)
        o_proj = attn.o_proj
        if o_proj.out_features != out_blh.shape[-1]:
            return o_proj(out_blh), None
        # The output projection in place, `chunk` positions at a time: row t of its output depends on row t
        # of its input alone, so no second [B, L, d] tensor is needed.
        for start in range(0, out_blh.shape[1], chunk):
            rows_blh = out_blh[:, start:start + chunk]
            rows_blh.copy_(o_proj(rows_blh))
        return out_blh, None

    return torch.compiler.disable(run) if compiled else run


@contextlib.contextmanager
def grouped_attention(model: torch.nn.Module, groups: int, chunk: int, compiled: bool = False) -> Iterator[None]:
    """Within the block, every decoder layer's attention runs over `groups` groups of heads, one at a time.

    Exact, not an approximation: heads are independent until the output projection, so the
    queries, keys and values of one group (its KV heads and the query heads that share them)
    are projected, rotated and attended, and written into one [B, L, heads x head_dim] buffer;
    the output projection then runs over `chunk` positions at a time into that same buffer.
    Q, K and V never exist for all heads at once: for a 13B (40 heads of 128) at 1M tokens each
    is 10.5 GB in bf16, and with the rotated copies they were what did not fit an 80 GB GPU.
    The attention function is the model's own (`config._attn_implementation`: SDPA, flash,
    log-scaled), so the kernel and its numbers per head are unchanged. `groups` must divide the
    KV heads (`group_counts`); 1 leaves the model as it is. The decoder layers add their residuals in
    place (`_lean_layer`). Inference only: a layer in training mode, or called with a KV cache, runs
    its own forward. `compiled` as for `chunked_mlp`.
    """
    if groups == 1:
        yield
        return
    if groups not in group_counts(model):
        raise UserError(f"attention head groups: {groups} does not divide the model's KV heads "
                        f"(possible: {group_counts(model)})")
    if chunk < 1:
        raise UserError(f"output-projection chunk must be >= 1 positions, got {chunk}")
    with _forwards(_attentions(model), lambda attn: _grouped(attn, attn.forward, groups, chunk, compiled)), \
            _forwards(_llama_layers(model), lambda layer: _lean_layer(layer, layer.forward)):
        yield
