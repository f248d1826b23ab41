"""RoPE as pure functions, and the check that a model runs with the base we asked for.

`expected_inv_freq(head_dim, base)` is the paper's theta_n = base^(-2n/d),
computed independently of transformers in float64. `check_inv_freq` compares
it with the `inv_freq` buffer of a loaded model and refuses to go on if they
differ: a fine-tune with the wrong base would silently test the wrong thing.
"""

from __future__ import annotations

import hashlib
import math

import torch


def expected_inv_freq(head_dim: int, base: float) -> torch.Tensor:
    """theta_n = base^(-2n/d) for n = 0 .. d/2 - 1, float64."""
    return torch.tensor([base ** (-2.0 * n / head_dim) for n in range(head_dim // 2)], dtype=torch.float64)


def rotary_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """Every rotary-embedding module of a model (those holding an `inv_freq` buffer)."""
    return [m for m in model.modules() if isinstance(getattr(m, "inv_freq", None), torch.Tensor)]


def inv_freq_in_effect(model: torch.nn.Module) -> torch.Tensor:
    """The `inv_freq` the model's attention actually uses (float64, CPU)."""
    modules = rotary_modules(model)
    if not modules:
        raise RuntimeError(f"{type(model).__name__} has no rotary embedding with an inv_freq buffer")
    first = modules[0].inv_freq.detach().double().cpu()
    for other in modules[1:]:
        if not torch.equal(other.inv_freq.detach().double().cpu(), first):
            raise RuntimeError("the model's rotary modules disagree on inv_freq")
    return first


def inv_freq_digest(inv_freq: torch.Tensor) -> str:
    """sha256 of the float32 bytes of inv_freq: a short fingerprint for manifests."""
    return hashlib.sha256(inv_freq.to(torch.float32).contiguous().numpy().tobytes()).hexdigest()


def check_inv_freq(model: torch.nn.Module, head_dim: int, base: float, rtol: float = 1e-5) -> torch.Tensor:
    """Raise unless the model's inv_freq equals base^(-2n/d); return the inv_freq in effect.

    transformers computes inv_freq in float32, so agreement is to float32
    precision (a few 1e-7 relative), far tighter than any two distinct bases.
    """
    actual = inv_freq_in_effect(model)
    expected = expected_inv_freq(head_dim, base)
    if actual.shape != expected.shape or not torch.allclose(actual, expected, rtol=rtol, atol=0.0):
        worst = (actual - expected).abs().div(expected).max().item() if actual.shape == expected.shape else math.inf
        raise RuntimeError(
            f"inv_freq in effect does not match base {base:g} (head_dim {head_dim}): "
            f"max relative error {worst:.3g}; refusing to go on"
        )
    return actual


def rope_parameters(base: float, rope_type: str = "default", **extra) -> dict:
    """A transformers v5 `rope_parameters` dict."""
    return {"rope_type": rope_type, "rope_theta": float(base), **extra}
