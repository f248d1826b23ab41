"""RoPE after a base change: the inv_freq in effect, and attention logits against a hand computation."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from ropelaw import rope
from ropelaw.models import load_causal_lm


def tiny_llama(base: float = 10000.0, head_dim: int = 16) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=2, head_dim=head_dim,
        max_position_embeddings=32, rope_parameters=rope.rope_parameters(base),
    )
    return LlamaForCausalLM(config).eval()


@pytest.fixture
def saved_model(tmp_path):
    tiny_llama().save_pretrained(tmp_path / "m")
    return tmp_path / "m"


def test_expected_inv_freq_is_the_paper_formula():
    inv = rope.expected_inv_freq(128, 10000.0)
    assert inv.dtype == torch.float64 and inv.shape == (64,)
    # theta_n = 10000^(-2n/128); pair 46 has period 2*pi/theta_46 ~ 4712 (NOTES.md 2.2).
    assert inv[0] == 1.0
    assert math.isclose(2 * math.pi / inv[46].item(), 4711.72, rel_tol=1e-5)


@pytest.mark.parametrize("base", [20.0, 500.0, 1e6, 1e8])
def test_base_change_sets_inv_freq(saved_model, base):
    model, inv_freq = load_causal_lm(saved_model, base, precision="fp32")
    independent = torch.tensor([base ** (-2 * n / 16) for n in range(8)], dtype=torch.float64)
    torch.testing.assert_close(inv_freq, independent, rtol=1e-6, atol=0)
    assert model.config.rope_parameters["rope_theta"] == base
    torch.testing.assert_close(rope.inv_freq_in_effect(model), independent, rtol=1e-6, atol=0)


def test_check_refuses_the_wrong_base(saved_model):
    model, _ = load_causal_lm(saved_model, 500.0, precision="fp32")
    with pytest.raises(RuntimeError, match="does not match base"):
        rope.check_inv_freq(model, 16, 10000.0)


def test_saved_model_reloads_with_the_new_base(saved_model, tmp_path):
    model, _ = load_causal_lm(saved_model, 1e6, precision="fp32")
    model.save_pretrained(tmp_path / "tuned")
    reloaded = LlamaForCausalLM.from_pretrained(tmp_path / "tuned")
    torch.testing.assert_close(rope.inv_freq_in_effect(reloaded), rope.expected_inv_freq(16, 1e6), rtol=1e-6, atol=0)


def test_attention_logits_match_a_hand_rotation():
    """q_t . k_s after the model's RoPE equals Re[sum_n q~ conj(k~) e^{i(t-s)theta_n}] (NOTES.md 2.1)."""
    base, head_dim, length = 500.0, 16, 12
    model = tiny_llama(base, head_dim)
    attn = model.model.layers[0].self_attn
    hidden = torch.randn(1, length, 32)
    positions = torch.arange(length)[None]
    cos, sin = model.model.rotary_emb(hidden, positions)
    q = attn.q_proj(hidden).view(1, length, 2, head_dim).transpose(1, 2)
    k = attn.k_proj(hidden).view(1, length, 2, head_dim).transpose(1, 2)
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    q_rot, k_rot = apply_rotary_pos_emb(q, k, cos, sin)
    logits_model = q_rot @ k_rot.transpose(-1, -2)

    # Hand computation: LLaMA pairs dim n with dim n + d/2 (rotate_half layout).
    theta = torch.tensor([base ** (-2 * n / head_dim) for n in range(head_dim // 2)], dtype=torch.float64)
    half = head_dim // 2
    qc = torch.complex(q[..., :half].double(), q[..., half:].double())
    kc = torch.complex(k[..., :half].double(), k[..., half:].double())
    t = torch.arange(length, dtype=torch.float64)
    phase = torch.exp(1j * (t[:, None, None] - t[None, :, None]) * theta)  # [t, s, n]
    logits_hand = torch.einsum("bhtn,bhsn,tsn->bhts", qc, kc.conj(), phase).real
    torch.testing.assert_close(logits_model.double(), logits_hand, rtol=1e-4, atol=1e-5)
