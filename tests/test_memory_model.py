"""The memory model that sizes evaluation chunks (`ropelaw.chunking.memory_costs`) against what a forward holds.

On CPU there is no allocator to ask for a peak, so a dispatch mode counts it: every tensor an
operator returns is charged to its storage until Python frees that storage (`LiveBytes`). The
forward is `ropelaw.perplexity.token_stats` on a small bf16 LLaMA (4 layers, so the embeddings
are held beside each layer's input, as in every real model), over one or more head groups and a
chunk at which the attention sets the peak, or (a wide MLP) the MLP's slices do. The model's
largest phase must be an upper bound of the counted peak, and a tight one (within 10 %): loose,
it would refuse lengths that fit (a 13B at 1M tokens fits an 80 GB GPU by 2 GiB).
The same model matched the GPU allocator's own trace for a 13B at 1M tokens to 0.1 GiB
(bench/results/2026-12-01-session6).
"""

import weakref

import pytest
import torch
import transformers
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from ropelaw.chunking import memory_costs, whole_row_mlp_bytes
from ropelaw.perplexity import token_stats


class LiveBytes(TorchDispatchMode):
    """Bytes of the storages created inside the block and still alive; `peak`, their most at once."""

    def __init__(self):
        super().__init__()
        self.live, self.peak, self._seen = 0, 0, set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        # A view or an in-place write returns its input's storage (a slice of a weight, say): not new. Operators
        # that may alias (`to`, `reshape`) but copied are counted.
        inputs = {t.untyped_storage()._cdata for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
        for tensor in tree_flatten(out)[0]:
            if not isinstance(tensor, torch.Tensor) or tensor.device.type != "cpu":
                continue
            storage = tensor.untyped_storage()
            key = storage._cdata
            if key in self._seen or key in inputs:
                continue
            self._seen.add(key)
            self.live += storage.nbytes()
            self.peak = max(self.peak, self.live)
            weakref.finalize(storage, self._free, key, storage.nbytes())
        return out

    def _free(self, key, nbytes):
        self.live -= nbytes
        self._seen.discard(key)


def test_live_bytes_counts_storages_not_views():
    before = torch.zeros(500, dtype=torch.float64)
    with LiveBytes() as counted:
        a = torch.empty(1000, dtype=torch.float64)
        view, older = a[:10], before[:100]
        b = a + 1
        b.add_(1)
        del a, view
        assert counted.live == 8000
        del b
    assert counted.peak == 16000 and counted.live == 0


def small_llama(intermediate: int, heads: int = 4):
    config = transformers.LlamaConfig(
        vocab_size=1000, hidden_size=256, intermediate_size=intermediate, num_hidden_layers=4, num_attention_heads=heads,
        num_key_value_heads=heads, head_dim=256 // heads, max_position_embeddings=8192,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, attn_implementation="sdpa")
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config).to(torch.bfloat16).eval()


@pytest.mark.parametrize("groups, intermediate, heads, largest", [
    (1, 1024, 4, "attention"), (2, 1024, 4, "attention"), (4, 1024, 4, "attention"), (4, 4096, 4, "mlp"),
    (16, 128, 16, "norm"),  # 16 groups: a layer adding its residuals as new tensors would peak at its end
])
def test_the_largest_phase_bounds_the_peak_tightly(groups, intermediate, heads, largest):
    model, length, chunk = small_llama(intermediate, heads), 4096, 512
    ids_bl = torch.randint(0, 1000, (1, length), generator=torch.Generator().manual_seed(1))
    phases = memory_costs(model, length, 1, groups)
    predicted = {name: fixed + chunk * per_position for name, (fixed, per_position) in phases.items()}
    with LiveBytes() as counted:
        token_stats(model, ids_bl, chunk_size=chunk, head_groups=groups)
    # Beside the model: the token ids, their positions (int64) and the per-token results (on CPU here).
    outside = length * (8 + 8 + 8 + 8 + 1)
    peak = counted.peak - outside
    assert max(predicted, key=predicted.get) == largest, predicted
    assert peak <= predicted[largest], (peak, predicted)
    assert predicted[largest] <= 1.10 * peak, (peak, predicted)


@pytest.mark.parametrize("slices", [1, 2, 4])
def test_the_whole_row_mlp_phase_bounds_the_peak_tightly(slices):
    """`mlp_slices`: ropelaw's LLaMA MLP over every position at once, its intermediate dimension in slices (a wide
    MLP, so that this phase sets the peak): `whole_row_mlp_bytes` bounds the counted peak, within 10 %."""
    model, length, chunk = small_llama(4096), 4096, 512
    ids_bl = torch.randint(0, 1000, (1, length), generator=torch.Generator().manual_seed(1))
    others = {name: fixed + chunk * per_position for name, (fixed, per_position) in memory_costs(model, length, 1).items()
              if name != "mlp"}
    predicted = whole_row_mlp_bytes(model, length, 1, slices)
    assert predicted > max(others.values()), (predicted, others)
    with LiveBytes() as counted:
        token_stats(model, ids_bl, chunk_size=chunk, mlp_slices=slices)
    peak = counted.peak - length * (8 + 8 + 8 + 8 + 1)
    assert peak <= predicted <= 1.10 * peak, (peak, predicted)
