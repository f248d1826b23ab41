"""The fast fine-tuning path (`finetune.fused_loss`) computes what the plain path computes (fp32, CPU).

The chunked lm_head + cross-entropy of `ropelaw.fastloss` against transformers' own loss: the same
loss and gradients for every parameter, with chunks that do not divide the positions; never a
chunk of logits wider than the chunk; and through `ropelaw finetune`, the same per-step losses
and final weights over 5 optimizer steps (both with torch's fused AdamW, the Trainer's default). `pytest -q tests/test_finetune_fast.py`: ~10 s.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import transformers
from finetune_cell import SPEC, finetune, make_cell, manifest
from safetensors.torch import load_file

from ropelaw import fastloss


@pytest.fixture(scope="module")
def model():
    config = transformers.LlamaConfig(
        vocab_size=211, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=16, tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config).float()


def _loss_and_grads(model, ids, labels, **kwargs):
    model.zero_grad()
    loss = model(input_ids=ids, labels=labels, **kwargs).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("chunk", [7, 24, 64, 4096])
@pytest.mark.parametrize("num_items", [None, 50])
def test_chunked_loss_and_gradients_equal_the_plain_ones(model, chunk, num_items):
    ids = torch.randint(0, 211, (3, 21), generator=torch.Generator().manual_seed(1))
    labels = ids.clone()
    labels[1, :5] = -100  # ignored targets count neither in the sum nor in the mean
    kwargs = {} if num_items is None else {"num_items_in_batch": torch.tensor(num_items)}
    plain_loss, plain_grads = _loss_and_grads(model, ids, labels, **kwargs)
    fast = copy.deepcopy(model)
    fastloss.install_chunked_loss(fast, chunk)
    widths = []
    fast.lm_head.register_forward_hook(lambda m, i, out: widths.append(out.shape[0]))
    fast_loss, fast_grads = _loss_and_grads(fast, ids, labels, **kwargs)
    assert max(widths) <= chunk and sum(widths) >= 2 * 3 * 21  # chunks, recomputed in the backward pass
    torch.testing.assert_close(fast_loss, plain_loss, rtol=1e-6, atol=0)
    for name, grad in plain_grads.items():
        torch.testing.assert_close(fast_grads[name], grad, rtol=1e-5, atol=1e-7, msg=name)
    assert fast(input_ids=ids).logits.shape == (3, 21, 211)  # without labels: the plain forward


def test_finetune_with_the_fused_loss_trains_like_the_plain_path(tmp_path, monkeypatch):
    cell = make_cell(tmp_path, hidden=32, vocab=96)
    from ropelaw import trainer

    monkeypatch.setattr(fastloss, "CHUNK_TOKENS", 24)  # 64 positions per micro-batch: 3 uneven chunks
    widths = {"plain": [], "fast": []}
    build = trainer.build_trainer

    def watched(model, *args):  # the rows of logits each path computes at once
        model.lm_head.register_forward_hook(lambda m, i, out: widths[run].append(out.shape[:-1].numel()))
        return build(model, *args)

    monkeypatch.setattr(trainer, "build_trainer", watched)
    spec = {"logging_steps": 1, "steps": 5}
    run = "plain"
    assert finetune(cell, "plain", {**spec, "fused_loss": False}) == 0
    run = "fast"
    assert finetune(cell, "fast", {**spec, "fused_loss": True}) == 0
    assert set(widths["plain"]) == {64} and max(widths["fast"]) == 24
    plain, fast = manifest(cell, "plain"), manifest(cell, "fast")
    assert fast["spec"]["fused_loss"] is True and plain["spec"]["fused_loss"] is False
    steps = [[(row["step"], row["loss"]) for row in m["log_history"] if "loss" in row] for m in (plain, fast)]
    assert [s for s, _ in steps[0]] == [s for s, _ in steps[1]] == [1, 2, 3, 4, 5]
    np.testing.assert_allclose([x for _, x in steps[1]], [x for _, x in steps[0]], rtol=1e-5)
    assert steps[0][0][1] != steps[0][-1][1]  # the weights moved
    plain_w, fast_w = load_file(cell / "plain/model.safetensors"), load_file(cell / "fast/model.safetensors")
    for name, tensor in plain_w.items():
        torch.testing.assert_close(fast_w[name], tensor, rtol=1e-5, atol=1e-6, msg=name)
    assert SPEC["precision"] == "fp32"
