"""The causal-LM loss without the logits of the whole vocabulary (`finetune.fused_loss`).

    install_chunked_loss(model)                  # model(input_ids, labels=...) now returns the same loss
    install_chunked_loss(model, "checkpointed")  # the same, recomputing each chunk's lm_head in the backward

A causal LM's forward computes logits [batch, tokens, vocab], casts them to fp32 for the
cross-entropy, and autograd keeps them for the backward: for SmolLM2 (a 49,152-token
vocabulary) at 8K tokens and micro-batch 4, 6.4 GB of fp32 logits and as much again for their
gradient. Here the decoder's last hidden states are cut into chunks of `CHUNK_TOKENS` positions,
and one chunk's logits exist at a time, in one of three ways:

- `grad_in_forward` (what `fused_loss: true` runs): `LinearCrossEntropy`, an autograd Function
  that computes, chunk by chunk in the forward, the summed NLL, the gradient of the loss with
  respect to the chunk's hidden states and the lm_head weight's gradient summed over the chunks
  (logits in the model's dtype, softmax in fp32, as transformers does), and keeps them; its
  backward only scales them by the incoming gradient. Three matmuls per chunk, as the plain loss
  (the Liger kernel / cut cross-entropy idea, in plain PyTorch). Besides one chunk's temporaries
  (SmolLM2: 0.4 GB of bf16 logits, 0.8 GB of fp32 probabilities, 0.4 GB of their bf16 gradient)
  it keeps the hidden states' gradient and an fp32 weight gradient: 38 MB + 113 MB at 8K x
  micro-batch 4. On an H200 (BENCHMARKS.md, fourth session) it ran as fast as the plain loss at
  micro-batch 8 (123,579 vs 123,108 tokens/s) with 61.1 instead of 93.8 GiB. It reads `lm_head.weight`
  outside the module's forward, where DeepSpeed ZeRO-3 does not promise a gathered weight (it
  gathers a partitioned parameter in its module's hooks), so under ZeRO-3 `fused_loss: true`
  takes the next path and `grad_in_forward` is refused. (Forced on in tests/test_deepspeed.py's
  2-rank CPU run, it found the weight gathered and matched the plain path; why, and whether that
  holds on GPUs, is not established.)
- `grad_in_forward_compiled`: `grad_in_forward` with each chunk's log-softmax, NLL, softmax − one-hot
  and cast fused by `torch.compile` (`_nll_and_grad`): the eager path passes over the chunk's fp32
  probabilities five times (log-softmax, exp, scale, the target's subtraction, the cast); train7's profile
  of the fast step (BENCHMARKS.md, ninth session) puts the kernels that are neither attention nor matmul
  at 0.055 s of its 0.357 s. The matmuls stay cuBLAS's. Not yet measured on a GPU.
- `checkpointed`: each chunk's logits and summed cross-entropy under activation
  checkpointing, recomputed one chunk at a time in the backward (four matmuls per chunk). The
  lm_head is called as a module, so ZeRO-3's parameter hooks gather its weight as usual.
  Measured on an H200 (BENCHMARKS.md): 15-34 GiB less than the plain loss for SmolLM2-135M,
  4-7% slower.

All three give the sum over the same (shifted) targets divided by the same count as transformers'
`ForCausalLMLoss`: the same loss and gradients up to rounding (tests/test_finetune_fast.py: within
1e-6 relative in fp32; checkpointed on a batch of at most CHUNK_TOKENS positions: the same bits).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint
from transformers.modeling_outputs import CausalLMOutputWithPast

from ropelaw import UserError
from ropelaw.specs import GRAD_IN_FORWARD, LOSS_PATHS as PATHS

CHUNK_TOKENS = 4096  # positions per chunk: 4096 x 49,152 fp32 logits = 0.8 GB at a time for SmolLM2
IGNORE = -100  # transformers' ignore_index


def _nll_and_grad(logits_cv: torch.Tensor, safe_c: torch.Tensor, valid_c: torch.Tensor, divisor: torch.Tensor,
                  dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The chunk's summed NLL over its valid rows, and (softmax - onehot(target)) * valid / divisor in `dtype`:
    what LinearCrossEntropy's eager loop computes, written to be fused (`grad_in_forward_compiled`)."""
    logprobs_cv = torch.log_softmax(logits_cv.float(), dim=-1)
    nll = -torch.where(valid_c, logprobs_cv.gather(1, safe_c[:, None])[:, 0], 0.0).sum()
    onehot_cv = torch.arange(logits_cv.shape[-1], device=logits_cv.device)[None, :] == safe_c[:, None]
    g_cv = (logprobs_cv.exp() - onehot_cv.float()) * (valid_c / divisor)[:, None]
    return nll, g_cv.to(dtype)


@functools.cache
def _compiled_nll_and_grad():
    return torch.compile(_nll_and_grad)


class LinearCrossEntropy(torch.autograd.Function):
    """sum of NLL(softmax(h @ W^T), targets) / divisor, with both gradients computed in the forward.

    Per chunk: g = (softmax(logits) - onehot(target)) / divisor, zero on ignored rows;
    dL/dh = g @ W and dL/dW += g^T @ h, the matmuls in `dtype` (the autocast dtype, as the plain
    path's lm_head) and the softmax in fp32. The backward multiplies them by the incoming gradient.
    """

    @staticmethod
    def forward(ctx, hidden_nh, weight_vh, targets_n, divisor, dtype, chunk_tokens, grad_enabled, compiled=False):
        h_nh, w_vh = hidden_nh.to(dtype), weight_vh.to(dtype)
        want_h, want_w = (grad_enabled and need for need in ctx.needs_input_grad[:2])
        grad_h_nh = torch.empty_like(h_nh) if want_h else None
        grad_w_vh = torch.zeros(w_vh.shape, dtype=torch.float32, device=w_vh.device) if want_w else None
        total = h_nh.new_zeros((), dtype=torch.float32)
        for start in range(0, h_nh.shape[0], chunk_tokens):
            piece = slice(start, start + chunk_tokens)
            targets_c, h_ch = targets_n[piece], h_nh[piece]
            valid_c = targets_c != IGNORE
            safe_c = targets_c.clamp_min(0)
            if compiled and (want_h or want_w):
                nll_c, g_cv = _compiled_nll_and_grad()(h_ch @ w_vh.T, safe_c, valid_c, divisor, dtype)
                total += nll_c
            else:
                # logits in `dtype`, log-softmax in fp32: F.cross_entropy(logits.float()) and its backward, by hand
                logprobs_cv = torch.log_softmax(h_ch @ w_vh.T, dim=-1, dtype=torch.float32)
                rows_c = torch.arange(len(safe_c), device=logprobs_cv.device)
                total -= torch.where(valid_c, logprobs_cv[rows_c, safe_c], 0.0).sum()
                if not (want_h or want_w):
                    continue
                scale_c1 = (valid_c / divisor)[:, None]  # 1/divisor, 0 on ignored rows
                g_cv = logprobs_cv.exp_().mul_(scale_c1)  # softmax / divisor, in place
                g_cv[rows_c, safe_c] -= scale_c1[:, 0]
                g_cv = g_cv.to(dtype)
            if want_h:
                grad_h_nh[piece] = g_cv @ w_vh
            if want_w:
                grad_w_vh += (g_cv.T @ h_ch).float()
        ctx.save_for_backward(grad_h_nh, grad_w_vh)
        ctx.dtypes = hidden_nh.dtype, weight_vh.dtype
        return total / divisor

    @staticmethod
    def backward(ctx, grad_loss):
        grad_h_nh, grad_w_vh = ctx.saved_tensors
        h_dtype, w_dtype = ctx.dtypes
        grad_h = None if grad_h_nh is None else grad_h_nh.to(h_dtype) * grad_loss
        grad_w = None if grad_w_vh is None else grad_w_vh.to(w_dtype) * grad_loss
        return grad_h, grad_w, None, None, None, None, None, None


def _chunk_nll(hidden_nh: torch.Tensor, targets_n: torch.Tensor, lm_head: torch.nn.Module) -> torch.Tensor:
    logits_nv = lm_head(hidden_nh).float()
    return F.cross_entropy(logits_nv, targets_n, ignore_index=IGNORE, reduction="sum")


def chunked_causal_lm_loss(
    hidden_bth: torch.Tensor,
    lm_head: torch.nn.Module,
    labels_bt: torch.Tensor,
    num_items_in_batch: torch.Tensor | int | None = None,
    chunk_tokens: int | None = None,
    path: str = "grad_in_forward",
) -> torch.Tensor:
    """Mean next-token cross-entropy of `labels_bt` given the last hidden states, as transformers defines
    it: position p predicts labels[p + 1]; the sum over targets is divided by `num_items_in_batch` when
    given (the Trainer's count over the accumulated micro-batches), else by this batch's target count.
    `path` is one of PATHS (the module docstring)."""
    targets_n = F.pad(labels_bt, (0, 1), value=IGNORE)[..., 1:].reshape(-1).to(hidden_bth.device)
    hidden_nh = hidden_bth.reshape(-1, hidden_bth.shape[-1])
    chunk_tokens = chunk_tokens or CHUNK_TOKENS
    if num_items_in_batch is None:
        divisor = (targets_n != IGNORE).sum()
    else:
        divisor = torch.as_tensor(num_items_in_batch, device=hidden_nh.device)
    if path in GRAD_IN_FORWARD:
        device = hidden_nh.device.type
        weight = lm_head.weight
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else weight.dtype
        with torch.autocast(device, enabled=False):  # the Function casts to `dtype` itself
            return LinearCrossEntropy.apply(hidden_nh, weight, targets_n, divisor, dtype, chunk_tokens,
                                            torch.is_grad_enabled(), path == "grad_in_forward_compiled")
    assert path == "checkpointed", path
    total = hidden_nh.new_zeros((), dtype=torch.float32)
    for start in range(0, hidden_nh.shape[0], chunk_tokens):
        piece = slice(start, start + chunk_tokens)
        total = total + checkpoint(_chunk_nll, hidden_nh[piece], targets_n[piece], lm_head, use_reentrant=False)
    return total / divisor


def install_chunked_loss(model, path: str = "grad_in_forward", chunk_tokens: int | None = None) -> None:
    """Make `model(...)` with labels return the chunked loss of `path` (and no logits); without labels
    it is unchanged.

    Set on the instance before the Trainer wraps it, so DDP and DeepSpeed call it as the forward.
    `chunk_tokens` defaults to CHUNK_TOKENS (read at each call).
    """
    assert path in PATHS, path
    decoder, lm_head, plain = model.get_decoder(), model.get_output_embeddings(), model.forward
    if path in GRAD_IN_FORWARD and getattr(lm_head, "bias", None) is not None:
        raise UserError("finetune.fused_loss: the grad_in_forward loss (what true runs) does not handle an lm_head "
                        "with a bias, and this model's has one; set fused_loss: checkpointed or false")

    def forward(input_ids=None, labels=None, num_items_in_batch=None, **kwargs):
        if labels is None:
            return plain(input_ids=input_ids, **kwargs)
        hidden_bth = decoder(input_ids=input_ids, **kwargs).last_hidden_state
        loss = chunked_causal_lm_loss(hidden_bth, lm_head, labels, num_items_in_batch, chunk_tokens, path)
        return CausalLMOutputWithPast(loss=loss)

    model.forward = forward
