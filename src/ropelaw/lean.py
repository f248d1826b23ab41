"""Memory-lean long-context forward: each decoder layer's MLP runs over slices of the sequence.

    with chunked_mlp(model, 4096):
        hidden = model.get_decoder()(input_ids).last_hidden_state

Why: at long contexts the largest activations of a LLaMA forward are the MLP's
[L, intermediate] tensors. For a 7B at 100K tokens, gate, act(gate) and up are
100K x 11008 x 2 bytes = 2.2 GB each, three alive at once; at 1M tokens 66 GB.
The MLP is row-wise (token t's output depends on token t's input alone), so
running it on `chunk` positions at a time gives the same numbers while holding
only `chunk` rows of those tensors. Attention and the residual stream are
untouched: they stay whole-sequence, with the SDPA/flash kernel.

The patch sets an instance `forward` on each MLP and removes it on exit, so the
model's modules, parameters and state dict are unchanged. A model whose decoder
has no `layers[i].mlp` runs unchanged (only memory differs, never results). It is for inference
(no autograd through the slices is intended or tested).
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from ropelaw import UserError


def _mlps(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The `mlp` of every decoder layer; none when the model is not built that way."""
    layers = getattr(model.get_decoder(), "layers", None) or []
    return [layer.mlp for layer in layers if isinstance(getattr(layer, "mlp", None), torch.nn.Module)]


def _sliced(forward, chunk: int):
    def run(hidden_bld: torch.Tensor) -> torch.Tensor:
        length = hidden_bld.shape[1]
        if length <= chunk:
            return forward(hidden_bld)
        out_bld = None
        for start in range(0, length, chunk):
            piece = forward(hidden_bld[:, start : start + chunk])
            if out_bld is None:
                if not isinstance(piece, torch.Tensor) or piece.shape[-1] != hidden_bld.shape[-1]:
                    raise UserError("chunked MLP needs an MLP that maps [B, L, d] to [B, L, d]")
                out_bld = hidden_bld.new_empty(hidden_bld.shape[:-1] + piece.shape[-1:], dtype=piece.dtype)
            out_bld[:, start : start + chunk] = piece
            del piece
        return out_bld

    return run


@contextlib.contextmanager
def chunked_mlp(model: torch.nn.Module, chunk: int, compiled: bool = False) -> Iterator[None]:
    """Within the block, every decoder layer's MLP runs on `chunk` positions at a time.

    compiled=True (the layers were compiled, `ropelaw.models.compile_layers`): the loop over
    slices stays out of the layer's graph (torch.compile would unroll it, one copy per slice)
    and the MLP itself is compiled on one slice, so SiLU and the gate-up product are fused.
    """
    if chunk < 1:
        raise UserError(f"MLP chunk must be >= 1 positions, got {chunk}")
    mlps = _mlps(model)
    for mlp in mlps:
        if compiled:
            mlp.forward = torch.compiler.disable(_sliced(torch.compile(mlp.forward), chunk))
        else:
            mlp.forward = _sliced(mlp.forward, chunk)
    try:
        yield
    finally:
        for mlp in mlps:
            del mlp.forward
