"""RoPE after a base change: the inv_freq in effect, the one verifier (exact to one unit of base),
and attention logits against a hand computation."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from ropelaw import methods, rope
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


def base_spec(value: float) -> methods.MethodSpec:
    return methods.resolve("base", value)


def test_expected_inv_freq_is_the_paper_formula():
    inv = rope.expected_inv_freq(base_spec(10000.0), 128)
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
    with pytest.raises(RuntimeError, match="does not match method base at base 10000"):
        rope.verify_inv_freq(model, base_spec(10000.0), 16)


@pytest.mark.parametrize("head_dim, b", [(16, 1e5), (16, 1e6), (64, 1e6), (64, 1e7), (128, 1e7)])
def test_verifier_tells_b_from_b_plus_one(tmp_path, head_dim, b):
    """Issue 11: an rtol of 1e-5 passed base b for b+1 above 1e5; the verifier must not."""
    tiny_llama(head_dim=head_dim).save_pretrained(tmp_path / "m")
    for loaded, asked in ((b, b + 1), (b + 1, b), (b, b - 1)):
        model, _ = load_causal_lm(tmp_path / "m", loaded, precision="fp32")
        with pytest.raises(RuntimeError, match="refusing to go on"):
            rope.verify_inv_freq(model, base_spec(asked), head_dim)
        rope.verify_inv_freq(model, base_spec(loaded), head_dim)  # and the right base passes


def test_verifier_refuses_one_float32_ulp(saved_model):
    """Bit-exact: one pair one float32 step away from transformers' arithmetic is refused."""
    model, _ = load_causal_lm(saved_model, 1e6, precision="fp32")
    rotary = model.model.rotary_emb
    with torch.no_grad():
        for buffer in (rotary.inv_freq, rotary.original_inv_freq):
            buffer[5] = torch.nextafter(buffer[5], torch.tensor(1.0))
    with pytest.raises(RuntimeError, match="not bit-identical"):
        rope.verify_inv_freq(model, base_spec(1e6), 16)


def test_verifier_float64_layer_tells_yarn_theta_from_theta_plus_one(tmp_path):
    """YaRN has no bit-exact form here, and 8e5 vs 8e5 + 1 is within RTOL: the float64
    nearest-base test alone refuses it (head dim 128, where float32 rounding cannot blur it)."""
    def yarn(theta):
        return methods.resolve("yarn", theta, head_dim=128, train_len=32, options={"factor": 4.0})

    tiny_llama(head_dim=128).save_pretrained(tmp_path / "m")
    model, _ = load_causal_lm(tmp_path / "m", yarn(8e5 + 1), precision="fp32")
    with pytest.raises(RuntimeError, match=r"nearer to rope_theta 800000 \+- 1"):
        rope.verify_inv_freq(model, yarn(8e5), 128)
    rope.verify_inv_freq(model, yarn(8e5 + 1), 128)


def test_verifier_refuses_a_stale_original_inv_freq(saved_model):
    """A dynamic-rope reset copies original_inv_freq back: it must hold the method's frequencies too."""
    model, _ = load_causal_lm(saved_model, 1e6, precision="fp32")
    with torch.no_grad():
        model.model.rotary_emb.original_inv_freq.mul_(1.5)
    with pytest.raises(RuntimeError, match="original_inv_freq differs"):
        rope.verify_inv_freq(model, base_spec(1e6), 16)


def test_saved_model_reloads_with_the_new_base(saved_model, tmp_path):
    model, _ = load_causal_lm(saved_model, 1e6, precision="fp32")
    model.save_pretrained(tmp_path / "tuned")
    reloaded = LlamaForCausalLM.from_pretrained(tmp_path / "tuned")
    expected = rope.expected_inv_freq(base_spec(1e6), 16)
    torch.testing.assert_close(rope.inv_freq_in_effect(reloaded), expected, rtol=1e-6, atol=0)


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
