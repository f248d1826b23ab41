"""FlashAttention-4's kernels (PyPI `flash-attn-4`: `flash_attn.cute`) as a transformers attention function.

    from ropelaw import flash4
    model.set_attn_implementation(flash4.register())   # "ropelaw_fa4"

The kernels are CuTe-DSL programs compiled at first use for the GPU at hand (Hopper: FlashAttention-3's
design; Blackwell: FlashAttention-4's), so the package is pure Python plus NVIDIA's CuTe-DSL wheels, no
build step. The function computes exactly what SDPA's causal attention does, softmax(QK^T * scaling) V
over the lower triangle (aligned to the bottom right when a query block is shorter than the keys, as
with a KV cache), in the inputs' dtype; grouped KV heads are the kernel's own. It takes no mask: a
padding mask is refused (`ropelaw evaluate` and `ropelaw passkey` score unpadded rows), and so is a
dropout. It runs outside `torch.compile`'s graphs (a graph break at each attention call; the layer's
projections, norms and MLP stay compiled).
"""

from __future__ import annotations

NAME = "ropelaw_fa4"  # no "flash" in it: transformers takes such names for its own flash integrations
PACKAGE = "flash-attn-4"


def missing() -> str | None:
    """Why the kernel cannot run here (one line), or None."""
    try:
        import flash_attn.cute  # noqa: F401
    except Exception as err:  # ImportError, or a CuTe-DSL library that fails to load
        return f"the {PACKAGE} package cannot be imported ({type(err).__name__}: {str(err).splitlines()[0][:120]})"
    import torch

    if not torch.cuda.is_available():
        return "it runs on NVIDIA GPUs only and this process has none"
    major, _ = torch.cuda.get_device_capability()
    if major < 8:
        return f"it needs compute capability 8.0 or newer, this GPU has {major}.x"
    return None


def attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling: float | None = None,
              **kwargs):
    """transformers' attention interface: q [B, H, L, d], k and v [B, H_kv, S, d] -> ([B, L, H, d], None)."""
    from flash_attn.cute import flash_attn_func

    if attention_mask is not None:
        raise ValueError(f"{NAME} takes no attention mask (unpadded causal rows only); load the model with sdpa")
    if dropout:
        raise ValueError(f"{NAME} has no dropout")
    out, _ = flash_attn_func(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2),
                             softmax_scale=scaling, causal=True)
    return out, None


def register() -> str:
    """Register `attention` with transformers under NAME (idempotent) and return NAME."""
    import torch
    from transformers import AttentionInterface
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    if NAME not in ALL_ATTENTION_FUNCTIONS:
        # No entry in transformers' mask functions: the model builds no mask for it (a causal row needs none).
        AttentionInterface.register(NAME, torch.compiler.disable(attention, recursive=True))
    return NAME
