"""Perplexity and next-token accuracy of a causal LM at long contexts.

Pure computation; the CLI glue lives elsewhere. Works with any Hugging Face causal
LM built as a backbone (`model.get_decoder()`, returning `last_hidden_state`) plus
an output projection (`model.get_output_embeddings()`), e.g. LlamaForCausalLM.

Why chunks: at 1M tokens with a 49K vocabulary the full logits would take
1M x 49K x 4 bytes = 196 GB, while the hidden state [1, 1M, 576] is about 1 GB.
So the backbone runs once over the whole sequence and the lm_head, log-softmax and
argmax run over `chunk_size` positions at a time; the [B, L, V] logits never exist.
The decoder's MLPs (and, eager, its RMSNorms) also run over `chunk_size` positions at a time
(`ropelaw.lean`), so their [L, intermediate] activations (float32 copies) never exist whole
either, and the attention can run over groups of heads (`head_groups`), so that Q, K and V
never exist for all heads at once.

Why one pass serves every length: in a causal model whose positions enter only
through a position-only RoPE, the prediction at position t depends on tokens
0..t alone, so the first L-1 predictions of a long pass equal those of a pass on
the first L tokens. Methods whose rotation depends on the total length (dynamic
NTK, longrope) break this and need one forward per length (`one_pass=False`).

Which positions are scored, under which convention, and how they are summed per document
and per length is `ropelaw.scoring`'s job. Bad input raises `ropelaw.UserError` (a ValueError).
"""

import contextlib

import torch
import torch.nn.functional as F

from ropelaw import UserError
from ropelaw.lean import chunked_mlp, chunked_norms, grouped_attention

# Config attributes that change logits after the lm_head; we do not reproduce them.
_SOFTCAPS = ("final_logit_softcapping", "output_logit_soft_cap", "logits_soft_cap")
_SCALES = ("logit_scale", "logits_scaling", "logits_mup_width_multiplier")


def _check_plain_logits(model):
    config = model.config
    for name in _SOFTCAPS + _SCALES:
        value = getattr(config, name, None)
        if value is not None and not (name in _SCALES and value == 1.0):
            raise UserError(
                f"{type(model).__name__} has config.{name}={value}: the chunked lm_head "
                "would skip this logit transform. Only models whose logits are exactly "
                "lm_head(last_hidden_state) are supported."
            )


def _rope_types(config) -> set[str]:
    params = getattr(config, "rope_parameters", None) or {}
    if "rope_type" in params:
        return {params["rope_type"]}
    return {p["rope_type"] for p in params.values()}  # one dict per layer type


def length_dependent_rope(model) -> bool:
    """True when the rotation depends on the total sequence length."""
    return any("dynamic" in t or t == "longrope" for t in _rope_types(model.config))


def reset_dynamic_rope(model) -> None:
    """Put dynamic-NTK rotary modules back to their pre-trained frequencies.

    transformers' `dynamic_rope_update` is stateful: it rescales only when
    max(position_ids)+1 exceeds the largest length seen so far and resets only
    below max_position_embeddings. Without this reset, a pass at 100 tokens after
    one at 200 would silently reuse the base computed for 200.
    """
    for module in model.modules():
        rope_type = getattr(module, "rope_type", None)
        if not hasattr(module, "original_inv_freq") or rope_type is None:
            continue
        if not isinstance(rope_type, str):
            if any("dynamic" in t for t in rope_type.values()):
                raise UserError("per-layer-type dynamic RoPE is not supported")
            continue
        if "dynamic" in rope_type:
            module.register_buffer("inv_freq", module.original_inv_freq.clone(), persistent=False)
            module.max_seq_len_cached = module.original_max_seq_len


def token_stats(model, input_ids_bl, chunk_size: int = 4096, compiled: bool = False, targets_bl=None,
                head_groups: int = 1, mlp_slices: int = 0):
    """Per-position NLL (float64) and argmax correctness (bool) of the next token.

    Returns `(nll_bt, correct_bt)`, both [B, T] on CPU. By default T = L-1 and column j scores
    the prediction of input token j+1. With `targets_bl` ([B, L]: the token after every input
    position, for a window whose last prediction lies beyond it) T = L and column j scores
    `targets_bl[:, j]`. Logits are taken in the model's dtype, as the model's own forward gives
    them, then upcast to float32 for the log-softmax.
    `compiled`: the decoder layers were compiled (`ropelaw.models.compile_layers`).
    `head_groups`: the attention runs over this many groups of heads, one at a time, and (more than one)
    the eager RMSNorms over `chunk_size` positions at a time (`ropelaw.lean`).
    `mlp_slices`: 0, each MLP's own forward on `chunk_size` positions at a time; k >= 1 (eager LLaMA),
    ropelaw's own MLP on every position at once, over k slices of the intermediate dimension instead
    (`ropelaw.lean.chunked_mlp`): every matrix product over the whole row, 1/k of its activations.
    """
    _check_plain_logits(model)
    device = next(model.parameters()).device
    input_ids_bl = torch.as_tensor(input_ids_bl, dtype=torch.long).to(device)
    batch, length = input_ids_bl.shape
    if targets_bl is None:
        if length < 2:
            raise UserError(f"need at least 2 tokens to score a prediction, got {length}")
        targets_bt = input_ids_bl[:, 1:]
    else:
        targets_bt = torch.as_tensor(targets_bl, dtype=torch.long).to(device)
        assert targets_bt.shape == input_ids_bl.shape, "one target per input position"
    n_targets = targets_bt.shape[1]
    lm_head = model.get_output_embeddings()
    # Kept on the model's device and copied to the CPU once: a copy per chunk made the host wait for each
    # chunk's loss before it could queue the next chunk's lm_head.
    nll_bt = torch.empty(batch, n_targets, dtype=torch.float64, device=device)
    correct_bt = torch.empty(batch, n_targets, dtype=torch.bool, device=device)
    hidden_bld = last_hidden_states(model, input_ids_bl, chunk_size, compiled, head_groups, mlp_slices)
    with torch.inference_mode():
        for start in range(0, n_targets, chunk_size):
            end = min(start + chunk_size, n_targets)
            logits_bcv = lm_head(hidden_bld[:, start:end])
            targets_bc = targets_bt[:, start:end]
            # The argmax of the model's own logits is that of their exact float32 copy, ties included (no faster
            # on an H200 for reading half the bytes: BENCHMARKS.md, eval13c).
            correct_bt[:, start:end] = logits_bcv.argmax(-1) == targets_bc
            logits_bcv = logits_bcv.float()
            nll_bc = F.cross_entropy(logits_bcv.flatten(0, 1), targets_bc.flatten(), reduction="none")
            nll_bt[:, start:end] = nll_bc.view(batch, -1)
            del logits_bcv, nll_bc
    return nll_bt.cpu(), correct_bt.cpu()


def last_hidden_states(model, input_ids_bl, chunk_size: int, compiled: bool = False, head_groups: int = 1,
                       mlp_slices: int = 0) -> torch.Tensor:
    """[B, L, d] hidden states after the decoder's final norm, by the chunked forward (`token_stats`' arguments;
    no KV cache, no logits): what the lm_head reads."""
    reset_dynamic_rope(model)
    length = input_ids_bl.shape[1]
    # The MLPs run in chunks of the same size: their [L, intermediate] activations dominate memory at 100K+.
    # The eager norms too, where memory is tight enough to group the heads: with one group their float32
    # temporaries are smaller than the attention's own whole-sequence tensors (`ropelaw.chunking`).
    norms = chunked_norms(model, chunk_size, compiled) if head_groups > 1 else contextlib.nullcontext()
    mlp = chunked_mlp(model, length if mlp_slices else chunk_size, compiled, mlp_slices)
    with torch.inference_mode(), mlp, norms, grouped_attention(model, head_groups, chunk_size, compiled):
        return model.get_decoder()(input_ids=input_ids_bl, use_cache=False).last_hidden_state


def naive_perplexity(model, input_ids_bl, length: int) -> tuple[float, float]:
    """Reference: full logits of `model(input_ids[:, :length])`, mean cross-entropy.

    Returns (ppl, accuracy) over the length-1 predicted tokens of every row.
    """
    device = next(model.parameters()).device
    input_ids_bl = torch.as_tensor(input_ids_bl, dtype=torch.long)[:, :length].to(device)
    reset_dynamic_rope(model)
    with torch.inference_mode():
        logits_blv = model(input_ids=input_ids_bl, use_cache=False).logits[:, :-1].float()
    targets_bl = input_ids_bl[:, 1:]
    nll = F.cross_entropy(logits_blv.transpose(1, 2), targets_bl)
    accuracy = (logits_blv.argmax(-1) == targets_bl).double().mean()
    return float(torch.exp(nll)), float(accuracy)
