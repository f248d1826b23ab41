"""The causal-LM loss without the logits of the whole vocabulary (`finetune.fused_loss`).

    install_chunked_loss(model)     # model(input_ids, labels=...) now returns the same loss, chunked

A causal LM's forward computes logits [batch, tokens, vocab], casts them to fp32 for the
cross-entropy, and autograd keeps them for the backward: for SmolLM2 (a 49,152-token
vocabulary) at 8K tokens and micro-batch 4, 6.4 GB of fp32 logits and as much again for their
gradient. Here the decoder's last hidden states are cut into chunks of `CHUNK_TOKENS`
positions; each chunk's logits and summed cross-entropy are computed under activation
checkpointing, so the chunk's logits are freed at once and recomputed, one chunk at a time, in
the backward pass. The loss is the same sum over the same (shifted) targets divided by the same
count as transformers' `ForCausalLMLoss`, so only the order of the summation differs (a batch of
at most CHUNK_TOKENS positions is one chunk: the same numbers in the same order). The lm_head
is called as a module, so DeepSpeed ZeRO-3's parameter hooks gather its weight as usual.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint
from transformers.modeling_outputs import CausalLMOutputWithPast

CHUNK_TOKENS = 4096  # positions per chunk: 4096 x 49,152 fp32 logits = 0.8 GB at a time for SmolLM2
IGNORE = -100  # transformers' ignore_index


def _chunk_nll(hidden_nh: torch.Tensor, targets_n: torch.Tensor, lm_head: torch.nn.Module) -> torch.Tensor:
    logits_nv = lm_head(hidden_nh).float()
    return F.cross_entropy(logits_nv, targets_n, ignore_index=IGNORE, reduction="sum")


def chunked_causal_lm_loss(
    hidden_bth: torch.Tensor,
    lm_head: torch.nn.Module,
    labels_bt: torch.Tensor,
    num_items_in_batch: torch.Tensor | int | None = None,
    chunk_tokens: int | None = None,
) -> torch.Tensor:
    """Mean next-token cross-entropy of `labels_bt` given the last hidden states, as transformers defines
    it: position p predicts labels[p + 1]; the sum over targets is divided by `num_items_in_batch` when
    given (the Trainer's count over the accumulated micro-batches), else by this batch's target count."""
    targets_n = F.pad(labels_bt, (0, 1), value=IGNORE)[..., 1:].reshape(-1).to(hidden_bth.device)
    hidden_nh = hidden_bth.reshape(-1, hidden_bth.shape[-1])
    chunk_tokens = chunk_tokens or CHUNK_TOKENS
    total = hidden_nh.new_zeros((), dtype=torch.float32)
    for start in range(0, hidden_nh.shape[0], chunk_tokens):
        piece = slice(start, start + chunk_tokens)
        total = total + checkpoint(_chunk_nll, hidden_nh[piece], targets_n[piece], lm_head, use_reentrant=False)
    if num_items_in_batch is None:
        return total / (targets_n != IGNORE).sum()
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(total.device)
    return total / num_items_in_batch


def install_chunked_loss(model, chunk_tokens: int | None = None) -> None:
    """Make `model(...)` with labels return the chunked loss (and no logits); without labels it is unchanged.

    Set on the instance before the Trainer wraps it, so DDP and DeepSpeed call it as the forward.
    `chunk_tokens` defaults to CHUNK_TOKENS (read at each call).
    """
    decoder, lm_head, plain = model.get_decoder(), model.get_output_embeddings(), model.forward

    def forward(input_ids=None, labels=None, num_items_in_batch=None, **kwargs):
        if labels is None:
            return plain(input_ids=input_ids, **kwargs)
        hidden_bth = decoder(input_ids=input_ids, **kwargs).last_hidden_state
        loss = chunked_causal_lm_loss(hidden_bth, lm_head, labels, num_items_in_batch, chunk_tokens)
        return CausalLMOutputWithPast(loss=loss)

    model.forward = forward
