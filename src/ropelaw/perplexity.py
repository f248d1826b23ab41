"""Perplexity and next-token accuracy of a causal LM at long contexts.

Pure computation; the CLI glue lives elsewhere. Works with any Hugging Face causal
LM built as a backbone (`model.get_decoder()`, returning `last_hidden_state`) plus
an output projection (`model.get_output_embeddings()`), e.g. LlamaForCausalLM.

Why chunks: at 1M tokens with a 49K vocabulary the full logits would take
1M x 49K x 4 bytes = 196 GB, while the hidden state [1, 1M, 576] is about 1 GB.
So the backbone runs once over the whole sequence and the lm_head, log-softmax and
argmax run over `chunk_size` positions at a time; the [B, L, V] logits never exist.
The decoder's MLPs also run over `chunk_size` positions at a time (`ropelaw.lean`), so
their [L, intermediate] activations never exist whole either.

Why one pass serves every length: in a causal model whose positions enter only
through a position-only RoPE, the prediction at position t depends on tokens
0..t alone, so the first L-1 predictions of a long pass equal those of a pass on
the first L tokens. Methods whose rotation depends on the total length (dynamic
NTK, longrope) break this and need one forward per length (`one_pass=False`).

Metrics are sums, then a division: NLL and correct counts are summed over tokens
and documents, and ppl = exp(nll_sum / tokens), accuracy = correct / tokens. Bad input raises `ropelaw.UserError` (a ValueError).
"""

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ropelaw import UserError
from ropelaw.lean import chunked_mlp

# Config attributes that change logits after the lm_head; we do not reproduce them.
_SOFTCAPS = ("final_logit_softcapping", "output_logit_soft_cap", "logits_soft_cap")
_SCALES = ("logit_scale", "logits_scaling", "logits_mup_width_multiplier")
_SUM_COLUMNS = ["tokens", "nll_sum", "correct"]


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


def token_stats(model, input_ids_bl, chunk_size: int = 4096, compiled: bool = False):
    """Per-position NLL (float64) and argmax correctness (bool) of the next token.

    Returns `(nll_bt, correct_bt)`, both [B, L-1] on CPU; column j scores the
    prediction of token j+1. Logits are taken in the model's dtype, as the model's
    own forward gives them, then upcast to float32 for the log-softmax.
    `compiled`: the decoder layers were compiled (`ropelaw.models.compile_layers`).
    """
    _check_plain_logits(model)
    device = next(model.parameters()).device
    input_ids_bl = torch.as_tensor(input_ids_bl, dtype=torch.long).to(device)
    batch, length = input_ids_bl.shape
    if length < 2:
        raise UserError(f"need at least 2 tokens to score a prediction, got {length}")
    reset_dynamic_rope(model)
    backbone, lm_head = model.get_decoder(), model.get_output_embeddings()
    nll_bt = torch.empty(batch, length - 1, dtype=torch.float64)
    correct_bt = torch.empty(batch, length - 1, dtype=torch.bool)
    # The MLPs run in chunks of the same size: their [L, intermediate] activations dominate memory at 100K+.
    with torch.inference_mode(), chunked_mlp(model, chunk_size, compiled):
        hidden_bld = backbone(input_ids=input_ids_bl, use_cache=False).last_hidden_state
    with torch.inference_mode():
        for start in range(0, length - 1, chunk_size):
            end = min(start + chunk_size, length - 1)
            logits_bcv = lm_head(hidden_bld[:, start:end]).float()
            targets_bc = input_ids_bl[:, start + 1 : end + 1]
            nll_bc = F.cross_entropy(logits_bcv.flatten(0, 1), targets_bc.flatten(), reduction="none")
            nll_bt[:, start:end] = nll_bc.view(batch, -1).cpu()
            correct_bt[:, start:end] = (logits_bcv.argmax(-1) == targets_bc).cpu()
            del logits_bcv, nll_bc
    return nll_bt, correct_bt


def default_bucket_edges(length: int) -> list[int]:
    """Power-of-two edges of target-position buckets: [0, 2, 4, ..., 2^k, length].

    The buckets [0,2), [2,4), ..., [2^k, length) cover [0, length) and so add up
    to the prefix of `length`; position 0 is never a target, so [0,2) holds target 1.
    """
    return [0] + [2**k for k in range(1, (length - 1).bit_length())] + [length]


def _with_ratios(sums: pd.DataFrame) -> pd.DataFrame:
    sums["ppl"] = np.exp(sums["nll_sum"] / sums["tokens"])
    sums["accuracy"] = sums["correct"] / sums["tokens"]
    return sums


def prefix_and_bucket_sums(nll_bt, correct_bt, lengths, buckets) -> pd.DataFrame:
    """Sums for each prefix length (targets 1..L-1) and each target-position bucket.

    `buckets` are increasing edges; consecutive edges give buckets [start, end) of
    target positions (column j of `nll_bt` is target j+1). Columns: scope ("prefix"/"bucket"), start, end, tokens, nll_sum, correct, ppl,
    accuracy. A prefix row has start=0, end=L. Sums run over the whole batch.
    """
    batch, n_targets = nll_bt.shape
    # cum[k] = sum over targets 1..k; targets [a, b) sum to cum[b-1] - cum[a-1]
    cum_nll = np.concatenate([[0.0], np.cumsum(nll_bt.double().sum(0).numpy())])
    cum_correct = np.concatenate([[0], np.cumsum(correct_bt.sum(0).numpy())])
    pairs = [("prefix", 0, int(n)) for n in lengths]
    pairs += [("bucket", int(s), int(e)) for s, e in zip(buckets[:-1], buckets[1:])]
    rows = []
    for scope, start, end in pairs:
        first, stop = max(start, 1), end
        if not 0 <= start < end <= n_targets + 1 or first >= stop:
            raise UserError(
                f"{scope} [{start}, {end}) scores no tokens or exceeds the "
                f"{n_targets + 1} tokens scored; use 0 <= start < end <= L and end >= 2"
            )
        rows.append(dict(
            scope=scope, start=start, end=end, tokens=batch * (stop - first),
            nll_sum=float(cum_nll[stop - 1] - cum_nll[first - 1]),
            correct=int(cum_correct[stop - 1] - cum_correct[first - 1]),
        ))
    return _with_ratios(pd.DataFrame(rows))


def evaluate_docs(model, docs_nl, lengths, *, one_pass=True, chunk_size=4096,
                  buckets=None, batch_size=1, progress=True, compiled=False) -> pd.DataFrame:
    """Perplexity of `docs_nl` ([n_docs, L_max] token ids) at each of `lengths`.

    one_pass=True: one forward per batch at max(lengths), shorter lengths read from
    its prefix (position-only RoPE only; a length-dependent RoPE raises).
    one_pass=False: one forward per length on the first L tokens of each doc; the
    bucket rows come from the max(lengths) pass. `buckets` are bucket edges, by
    default `default_bucket_edges(max(lengths))`. Sums are accumulated over documents before
    dividing. `compiled`: as in `token_stats`. Columns: those of `prefix_and_bucket_sums` plus `n_docs`.
    """
    docs_nl = torch.from_numpy(np.asarray(docs_nl).astype(np.int64))  # a copy: eval rows are read-only memmaps
    lengths = sorted(int(n) for n in lengths)
    longest = lengths[-1]
    if docs_nl.ndim != 2 or docs_nl.shape[1] < longest:
        raise UserError(
            f"docs must be [n_docs, >= {longest}] token ids, got {tuple(docs_nl.shape)}")
    if one_pass and length_dependent_rope(model):
        raise UserError(
            f"RoPE type {_rope_types(model.config)} depends on the total length, so "
            "prefixes of one pass are wrong; pass one_pass=False"
        )
    buckets = default_bucket_edges(longest) if buckets is None else buckets
    starts = range(0, docs_nl.shape[0], batch_size)
    parts = []
    for first in tqdm(starts, desc="docs", disable=not progress):
        batch_nl = docs_nl[first : first + batch_size]
        if one_pass:
            nll_bt, correct_bt = token_stats(model, batch_nl[:, :longest], chunk_size, compiled)
            parts.append(prefix_and_bucket_sums(nll_bt, correct_bt, lengths, buckets))
            continue
        for n in tqdm(lengths, desc="lengths", leave=False, disable=not progress):
            nll_bt, correct_bt = token_stats(model, batch_nl[:, :n], chunk_size, compiled)
            parts.append(prefix_and_bucket_sums(
                nll_bt, correct_bt, [n], buckets if n == longest else []))
    sums = pd.concat(parts).groupby(["scope", "start", "end"], sort=False)[_SUM_COLUMNS].sum()
    result = _with_ratios(sums.reset_index())
    result["n_docs"] = docs_nl.shape[0]
    return result


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
