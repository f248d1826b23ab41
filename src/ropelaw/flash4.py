"""FlashAttention-4's kernels (PyPI `flash-attn-4`: `flash_attn.cute`) as a transformers attention function.

    evaluation.attn_implementation: auto     # flash4 on a Hopper GPU where flash-attn-4 imports (and passes
                                             # `probe` against SDPA), else sdpa
    evaluation.attn_implementation: flash4   # always (one line naming the key if it cannot run here)

    from ropelaw import flash4
    model.set_attn_implementation(flash4.register())   # "ropelaw_fa4"

Why: on an H200 its forward ran the 7B's causal attention at 659 TFLOP/s against cuDNN's 601 (SDPA's choice
there) at 100K, and SmolLM2's at 542 against 456 at 128K; the compiled 7B evaluation at 100K took 1.18x its FLOP
floor against SDPA's 1.26x, and at 1M 1.17x against 1.58x (BENCHMARKS.md, "Twentieth session").

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

import sys

from ropelaw import UserError

CHOICES = ("auto", "sdpa", "flash4", "flash_attention_2", "eager")  # evaluation.attn_implementation
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


def probe(head_dim: int = 128) -> str | None:
    """Why the kernel fails here (one line), or None: a causal attention of 256 positions x 4 heads of `head_dim`
    (compiling the kernel of that head dim, some seconds the first time) against SDPA's, on the GPU if any."""
    import torch
    import torch.nn.functional as F

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 4, 256, head_dim, generator=generator).to(device, dtype) for _ in range(3))
    try:
        got = attention(None, q, k, v, None)[0].transpose(1, 2).float()
    except Exception as err:  # noqa: BLE001 - whatever the kernel raises, the answer is the same: not here
        return f"its kernel failed here ({type(err).__name__}: {str(err).splitlines()[0][:120] if str(err) else ''})"
    diff = (got - F.scaled_dot_product_attention(q, k, v, is_causal=True).float()).abs().max().item()
    if not diff <= 0.02:  # bf16 outputs of unit-scale inputs: the two kernels differ by 0.004 at most (H200)
        return f"its kernel's output differs from SDPA's by {diff:.3g} here"
    return None


def resolve(requested: str, key: str = "evaluation.attn_implementation", decoding: bool = False,
            head_dim: int | None = None) -> str:
    """The `attn_implementation` to load a model with for `requested` (one of CHOICES): `flash4` is NAME or one
    `UserError` naming `key`; `auto` is NAME on a GPU of compute capability 9.x (Hopper, where it was measured)
    where the package imports, else `sdpa`. With `decoding` (passkey's greedy answer through a KV cache, whose
    one-query steps through these kernels were not measured) `auto` is `sdpa`. With `head_dim` (the model's),
    the kernel must first pass `probe`: `auto` falls back to SDPA with a line on stderr, `flash4` stops.
    Called before the model loads."""
    if requested not in CHOICES:
        raise UserError(f"{key}: {requested!r} is not one of {', '.join(CHOICES)}")
    if requested == "flash4":
        why = missing() or (probe(head_dim) if head_dim else None)
        if why:
            raise UserError(f"{key} is flash4, but {why}; install {PACKAGE} (bench/flash4_site.sh carries it to a "
                            "machine without network) or set it to auto or sdpa")
        return register()
    if requested != "auto":
        return requested
    if decoding or missing():
        return "sdpa"
    import torch

    if torch.cuda.get_device_capability()[0] != 9:
        return "sdpa"
    why = probe(head_dim) if head_dim else None
    if why:
        print(f"{key}: auto runs SDPA: FlashAttention-4 is installed, but {why}", file=sys.stderr, flush=True)
        return "sdpa"
    return register()


def kernel():
    """The package's function: flash_attn_func(q, k, v, softmax_scale, causal) on [B, L, H, d] tensors."""
    from flash_attn.cute import flash_attn_func

    return flash_attn_func


def attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling: float | None = None,
              **kwargs):
    """transformers' attention interface: q [B, H, L, d], k and v [B, H_kv, S, d] -> ([B, L, H, d], None)."""
    if attention_mask is not None:
        raise ValueError(f"{NAME} takes no attention mask (unpadded causal rows only); load the model with sdpa")
    if dropout:
        raise ValueError(f"{NAME} has no dropout")
    out, _ = kernel()(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2),
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
