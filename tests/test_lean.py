"""The chunked-MLP forward gives the plain forward's numbers and leaves the model as it was.

Tiny random LLaMA (with grouped-query attention) on CPU, float64 so that any
difference is a bug, not rounding; run with `pytest -q tests/test_lean.py`.
"""

from pathlib import Path

import torch
import transformers

import pytest

from ropelaw import UserError
from ropelaw.chunking import CHUNK_CAP, SLACK, choose_chunk, memory_costs, whole_row_mlp_bytes
from ropelaw.lean import chunked_mlp, chunked_norms, group_counts, grouped_attention
from ropelaw.methods import register_logn_attention
from ropelaw.perplexity import token_stats


def tiny_gqa_llama():
    config = transformers.LlamaConfig(
        vocab_size=61, hidden_size=48, intermediate_size=80, num_hidden_layers=3,
        num_attention_heads=6, num_key_value_heads=2, head_dim=8, max_position_embeddings=32,
        tie_word_embeddings=True, attn_implementation="sdpa",
        rope_parameters={"rope_type": "default", "rope_theta": 100000.0},
    )
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config).double().eval()


def tiny_mha_llama(attn_implementation="sdpa", **extra):
    config = transformers.LlamaConfig(
        vocab_size=61, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, head_dim=8, max_position_embeddings=32,
        tie_word_embeddings=False, attn_implementation=attn_implementation, attention_bias=True,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, **extra,
    )
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config).double().eval()


def _hidden(model, ids_bl):
    with torch.no_grad():
        return model.get_decoder()(ids_bl, use_cache=False).last_hidden_state


@pytest.mark.parametrize("attention", ["sdpa", "eager", "logn_sdpa"])
def test_grouped_attention_matches_the_model_attention_and_restores_it(attention):
    """Every possible number of groups gives the model's own numbers (float64: any difference is a bug),
    with grouped-query heads (6 query heads on 2 KV heads) and with biases and log-scaled attention."""
    if attention.startswith("logn"):
        register_logn_attention()
    ids_bl = torch.randint(0, 61, (2, 203), generator=torch.Generator().manual_seed(1))
    for model in (tiny_gqa_llama(), tiny_mha_llama()):
        model.config._attn_implementation = attention
        model.config.logn_t_ref = 16  # read by log-scaled attention only: positions >= 16 are scaled
        before = {k: v.clone() for k, v in model.state_dict().items()}
        plain_bld = _hidden(model, ids_bl)
        seen = []
        hook = model.model.layers[0].self_attn.o_proj.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[1]))
        for groups in group_counts(model)[1:]:
            with grouped_attention(model, groups, 64):  # 203 = 3 x 64 + 11: a ragged last chunk
                grouped_bld = _hidden(model, ids_bl)
            torch.testing.assert_close(grouped_bld, plain_bld, rtol=1e-12, atol=1e-12)
        hook.remove()
        assert seen and set(seen) == {64, 11}  # the output projection ran over chunks of positions
        assert torch.equal(_hidden(model, ids_bl), plain_bld)
        assert all("forward" not in vars(layer.self_attn) and "forward" not in vars(layer) for layer in model.model.layers)
        assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    with pytest.raises(UserError, match="does not divide"), grouped_attention(tiny_gqa_llama(), 3, 64):
        pass


def test_chunked_norms_give_the_same_numbers_over_slices_and_restore_the_model(monkeypatch):
    """Every RMSNorm (two per layer and the final one) runs over slices of `chunk` positions, with the
    same numbers bitwise; compiled layers keep their fused norms; the model is as it was afterwards."""
    model, ids_bl = tiny_gqa_llama(), torch.randint(0, 61, (2, 203), generator=torch.Generator().manual_seed(1))
    plain_bld = _hidden(model, ids_bl)
    rows, forward = [], transformers.models.llama.modeling_llama.LlamaRMSNorm.forward
    monkeypatch.setattr(transformers.models.llama.modeling_llama.LlamaRMSNorm, "forward",
                        lambda self, x: rows.append(x.shape[1]) or forward(self, x))
    with chunked_norms(model, 64):  # 203 = 3 x 64 + 11: a ragged last slice
        sliced_bld = _hidden(model, ids_bl)
    assert torch.equal(sliced_bld, plain_bld)
    assert rows == [64, 64, 64, 11] * (2 * 3 + 1)  # 3 layers x 2 norms, and the final norm
    norms = [n for layer in model.model.layers for n in (layer.input_layernorm, layer.post_attention_layernorm)]
    assert all("forward" not in vars(norm) for norm in [*norms, model.model.norm])
    rows.clear()
    with chunked_norms(model, 64, compiled=True):
        _hidden(model, ids_bl)
    assert rows == [203] * 7
    with pytest.raises(UserError, match="norm chunk"), chunked_norms(model, 0):
        pass


def test_grouped_attention_runs_one_group_at_a_time(monkeypatch):
    """The q/k/v products of one layer: one per group, each over that group's heads only."""
    model = tiny_mha_llama()
    shapes, linear = [], torch.nn.functional.linear
    monkeypatch.setattr(torch.nn.functional, "linear", lambda x, w, b=None: shapes.append(tuple(w.shape)) or linear(x, w, b))
    with grouped_attention(model, 4, 64):
        _hidden(model, torch.zeros(1, 20, dtype=torch.long))
    # 2 layers x 4 groups x (q, k, v) of 1 head x 8 dims each; then the MLP and o_proj run as modules.
    assert shapes.count((8, 32)) == 2 * 4 * 3


def test_token_stats_with_head_groups_equals_the_plain_path(monkeypatch):
    """Same numbers with 4 groups; the norms run over chunks only when the heads are grouped."""
    model = tiny_mha_llama()
    ids_bl = torch.randint(0, 61, (1, 150), generator=torch.Generator().manual_seed(5))
    rows, forward = [], transformers.models.llama.modeling_llama.LlamaRMSNorm.forward
    monkeypatch.setattr(transformers.models.llama.modeling_llama.LlamaRMSNorm, "forward",
                        lambda self, x: rows.append(x.shape[1]) or forward(self, x))
    nll_plain, correct_plain = token_stats(model, ids_bl, chunk_size=32)
    assert set(rows) == {150}  # one group: whole-sequence norms
    rows.clear()
    nll_grouped, correct_grouped = token_stats(model, ids_bl, chunk_size=32, head_groups=4)
    assert set(rows) == {32, 22}  # 150 = 4 x 32 + 22
    torch.testing.assert_close(nll_grouped, nll_plain, rtol=1e-12, atol=1e-12)
    assert torch.equal(correct_grouped, correct_plain)


def test_chunked_mlp_matches_plain_forward_and_restores_the_model():
    model = tiny_gqa_llama()
    ids_bl = torch.randint(0, 61, (2, 203), generator=torch.Generator().manual_seed(1))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        plain_bld = model.get_decoder()(ids_bl).last_hidden_state
        # 203 = 3 x 64 + 11: a ragged last chunk, and chunks far shorter than the sequence.
        with chunked_mlp(model, 64):
            chunked_bld = model.get_decoder()(ids_bl).last_hidden_state
        after_bld = model.get_decoder()(ids_bl).last_hidden_state
    torch.testing.assert_close(chunked_bld, plain_bld, rtol=1e-12, atol=1e-12)
    assert torch.equal(after_bld, plain_bld)
    assert all("forward" not in vars(layer.mlp) for layer in model.model.layers)
    assert model.state_dict().keys() == before.keys()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())


def test_chunked_mlp_runs_each_mlp_on_slices():
    model = tiny_gqa_llama()
    seen = []
    hook = model.model.layers[0].mlp.gate_proj.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[1]))
    with torch.no_grad(), chunked_mlp(model, 50):
        model.get_decoder()(torch.zeros(1, 120, dtype=torch.long))
    hook.remove()
    assert seen == [50, 50, 20]


@pytest.mark.parametrize("chunk, slices", [(64, 1), (1000, 1), (64, 3), (1000, 4)])
def test_ropelaw_llama_mlp_matches_the_module_forward(chunk, slices):
    """`mlp_slices`: ropelaw's own LLaMA MLP, the down projection written into its rows (1 slice) or summed over
    slices of the intermediate dimension (80 in 3 slices: ragged), gives the module's numbers (float64), with a
    batch of 2 and a ragged last chunk (203 = 3 x 64 + 11), and leaves the model as it was."""
    model = tiny_gqa_llama()
    ids_bl = torch.randint(0, 61, (2, 203), generator=torch.Generator().manual_seed(1))
    plain_bld = _hidden(model, ids_bl)
    calls = []
    hook = model.model.layers[0].mlp.down_proj.register_forward_hook(lambda m, i, o: calls.append(i[0].shape))
    with torch.no_grad(), chunked_mlp(model, chunk, slices=slices):
        ours_bld = model.get_decoder()(ids_bl, use_cache=False).last_hidden_state
    hook.remove()
    torch.testing.assert_close(ours_bld, plain_bld, rtol=1e-12, atol=1e-12)
    assert calls == []  # the products are ropelaw's, not the module's
    assert all("forward" not in vars(layer.mlp) for layer in model.model.layers)
    nll_bt, correct_bt = token_stats(model, ids_bl, chunk_size=chunk, mlp_slices=slices)
    nll_ref, correct_ref = token_stats(model, ids_bl, chunk_size=chunk)
    torch.testing.assert_close(nll_bt, nll_ref, rtol=1e-12, atol=1e-12)
    assert torch.equal(correct_bt, correct_ref)


def test_token_stats_runs_the_sliced_mlp_over_whole_rows():
    """With `mlp_slices` the MLP's products take every position at once (its intermediate dimension in slices),
    while the lm_head keeps `chunk_size` positions: the products' shapes, as aten sees them."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Shapes(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.mm = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.overloadpacket in (torch.ops.aten.mm, torch.ops.aten.addmm_):
                self.mm.append((func.overloadpacket.__name__, tuple(args[-2].shape), tuple(args[-1].shape)))
            return func(*args, **(kwargs or {}))

    model = tiny_gqa_llama()  # hidden 48, intermediate 80
    ids_bl = torch.randint(0, 61, (2, 203), generator=torch.Generator().manual_seed(1))
    with Shapes() as seen:
        token_stats(model, ids_bl, chunk_size=64, mlp_slices=2)
    mlp = [(op, a, b) for op, a, b in seen.mm if 40 in a or 40 in b]  # 80 in 2 slices of 40
    assert len(mlp) == 3 * 3 * 2  # 3 layers x (gate, up, down) x 2 slices
    assert {a[0] for _, a, _ in mlp} == {2 * 203}  # every row of the batch at once
    assert [op for op, _, _ in mlp].count("addmm_") == 3  # the second slice's down projection, summed


def test_ropelaw_llama_mlp_refuses_another_mlp_and_bad_slices():
    model = tiny_gqa_llama()
    with pytest.raises(UserError, match="slices must be >= 0"):
        with chunked_mlp(model, 64, slices=-1):
            pass
    model.model.layers[1].mlp = torch.nn.Identity()
    with pytest.raises(UserError, match="computes LLaMA's MLP"):
        with chunked_mlp(model, 64, slices=1):
            pass


def test_token_stats_with_small_chunks_equals_one_chunk():
    model = tiny_gqa_llama()
    ids_bl = torch.randint(0, 61, (1, 150), generator=torch.Generator().manual_seed(2))
    nll_small, correct_small = token_stats(model, ids_bl, chunk_size=16)
    nll_whole, correct_whole = token_stats(model, ids_bl, chunk_size=1000)
    torch.testing.assert_close(nll_small, nll_whole, rtol=1e-12, atol=1e-12)
    assert torch.equal(correct_small, correct_whole)


def test_compiled_layers_give_the_eager_numbers():
    """evaluation.compile: every decoder layer compiled (the chunked MLP and the head groups kept out of
    the layer's graph and compiled on their own) scores as the eager model does, at two lengths (a recompile)."""
    from ropelaw.models import compile_layers

    model = tiny_gqa_llama()
    ids_bl = torch.randint(0, 61, (1, 150), generator=torch.Generator().manual_seed(3))
    eager = [token_stats(model, ids_bl[:, :n], chunk_size=32) for n in (150, 97)]
    assert compile_layers(model, "evaluation.compile") == 3
    assert all(layer._compiled_call_impl is not None for layer in model.model.layers)
    compiled = [token_stats(model, ids_bl[:, :n], chunk_size=32, compiled=True) for n in (150, 97)]
    # With the attention over two head groups too (each group's work compiled on its own).
    compiled += [token_stats(model, ids_bl[:, :n], chunk_size=32, compiled=True, head_groups=2) for n in (150, 97)]
    for (nll_e, correct_e), (nll_c, correct_c) in zip(eager * 2, compiled):
        # The log-softmax runs in float32 (token_stats): 1-ulp flips of the fused float64 hidden state show there.
        torch.testing.assert_close(nll_c, nll_e, rtol=1e-6, atol=1e-6)
        assert torch.equal(correct_c, correct_e)
    assert all("forward" not in vars(layer.mlp) and "forward" not in vars(layer.self_attn) for layer in model.model.layers)


def test_fixed_chunk_is_kept():
    assert choose_chunk(tiny_gqa_llama(), 1000, 1, 37)[0] == 37


def _need(phases: dict, positions: int) -> int:
    """Bytes for a chunk of `positions`: the largest phase."""
    return max(fixed + positions * per_position for fixed, per_position in phases.values())


def test_memory_costs_follow_the_model_shape():
    # float64: 8 bytes; d=48, heads 6 + 2 x 2 kv heads of 8 dims, I=80, V=61, batch 2, length 100.
    phases = memory_costs(tiny_gqa_llama(), 100, 2)
    assert set(phases) == {"attention", "norm", "mlp", "layer_end", "logits"}
    held = 2 * 48 + 2 * 8  # embeddings, the layer's input, cos and sin
    # One group: the norm's output, Q, K, V and the rotation's peak (with 6 query heads to 2 KV heads, the
    # three Q-sized temporaries while Q is rotated, not Q's rotated copy and three K-sized ones).
    assert phases["attention"] == (2 * 100 * (held + 48 + (6 + 2 * 2) * 8 + 3 * 6 * 8) * 8, 0)
    assert phases["mlp"] == (2 * 100 * (held + 2 * 48) * 8, 2 * (3 * 80 + 48) * 8)
    assert phases["logits"] == (2 * 100 * 48 * 8, 2 * 61 * (8 + 8))
    assert memory_costs(wide_vocab_llama(), 100, 1)["logits"][1] == 3000 * (2 + 8)  # bf16, float32, log-softmax


def wide_vocab_llama():
    """bf16, d=16, a vocabulary of 3000: the loss's logits are what a chunk must fit."""
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=3000, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        head_dim=8)).to(torch.bfloat16)


def test_auto_runs_the_mlp_over_whole_rows_only_where_the_peak_allows(monkeypatch):
    """`evaluation.chunk_size: auto`: ropelaw's LLaMA MLP over every position (one slice) where its phase is no
    larger than the forward's peak otherwise; the MLP over chunks of rows with a fixed chunk, compiled layers,
    another MLP, or where the whole row would raise the peak (a 13B at 1M tokens in 80 GiB)."""
    monkeypatch.syspath_prepend(str(Path(__file__).parents[1] / "bench"))
    from benchlib import llama_config

    with torch.device("meta"):
        seven, thirteen = (transformers.LlamaForCausalLM(llama_config(s)).to(torch.bfloat16)
                           for s in ("llama2-7b", "llama2-13b"))
    why = choose_chunk(seven, 100_000, 1, "auto", 80)[1]
    assert (why["chunk_size"], why["head_groups"], why["mlp_slices"]) == (8192, 1, 1), why["mlp_reason"]
    peak = max(f + 8192 * p for f, p in (v.values() for v in why["phases"].values()))
    assert whole_row_mlp_bytes(seven, 100_000, 1, 1) <= peak < whole_row_mlp_bytes(seven, 100_000, 1, 1) * 1.1
    assert choose_chunk(seven, 100_000, 1, 4096, 80)[1]["mlp_slices"] == 0
    assert choose_chunk(seven, 100_000, 1, "auto", 80, compiled=True)[1]["mlp_slices"] == 0
    big = choose_chunk(thirteen, 1_048_576, 1, "auto", 80)[1]
    assert big["head_groups"] > 1 and big["mlp_slices"] == 0, big["mlp_reason"]
    model = tiny_gqa_llama()
    assert choose_chunk(model, 200, 1, "auto")[1]["mlp_slices"] == 1
    model.model.layers[0].mlp = torch.nn.Identity()
    assert choose_chunk(model, 200, 1, "auto")[1]["mlp_slices"] == 0


def test_auto_chunk_follows_the_budget():
    model, length = wide_vocab_llama(), 10_000
    phases = memory_costs(model, length, 1)
    chosen = []
    for positions in (300, 1000, 5000, 40_000, 200_000):
        budget_gib = _need(phases, positions) / SLACK / 2**30
        chunk, why = choose_chunk(model, length, 1, "auto", budget_gib, head_groups=1)
        assert why["chunk_size"] == chunk and why["budget_source"] == "evaluation.memory_budget_gib"
        assert why["head_groups"] == 1
        if positions >= CHUNK_CAP:  # never more than the cap, however much memory is free
            assert chunk == CHUNK_CAP and "cap" in why["reason"] and why["binding_phase"] is None
        else:  # the largest multiple of 256 that fits (one position of rounding slack)
            assert chunk % 256 == 0 and chunk <= positions < chunk + 256 + 1
            assert why["binding_phase"] == "logits"
        chosen.append(chunk)
    assert chosen == sorted(chosen) and chosen[0] == 256
    small, why = choose_chunk(model, length, 1, "auto", phases["attention"][0] / 2**30 / 4, head_groups=1)
    assert small == 256 and "smallest" in why["reason"]
    whole, why = choose_chunk(model, 5000, 1, "auto", 1.0)
    assert whole == 5000 and "no chunking" in why["reason"] and why["head_groups"] == 1


def test_auto_adds_head_groups_only_as_memory_requires():
    """The fewest groups whose whole-sequence tensors leave room for a chunk of CHUNK_CAP positions."""
    model, length = tiny_mha_llama(), 1_000_000
    assert group_counts(model) == [1, 2, 4] and group_counts(tiny_gqa_llama()) == [1, 2]
    costs = {g: memory_costs(model, length, 1, g) for g in (1, 2, 4)}
    attention = {g: c["attention"][0] for g, c in costs.items()}
    assert attention[1] > attention[2] > attention[4]
    # float64, d = 32, 4 + 2 x 4 heads of 8 dims. G > 1: the output buffer (4 heads), and one group's share of
    # Q, K, V (12 heads) and of the rotation's peak (Q's rotated copy and three K-sized temporaries: 16 heads).
    assert attention[2] == length * (2 * 32 + 2 * 8 + 32 + 4 * 8 + (12 + 16) * 8 // 2) * 8
    assert attention[1] == length * (2 * 32 + 2 * 8 + 32 + (12 + 16) * 8) * 8
    for groups in (1, 2, 4):
        chunk, why = choose_chunk(model, length, 1, "auto", _need(costs[groups], CHUNK_CAP) / SLACK / 2**30 * 1.0001)
        assert (chunk, why["head_groups"]) == (CHUNK_CAP, groups), why
    # Too little even for 4 groups: 4 groups and a smaller chunk. A fixed chunk keeps its size.
    tight = _need(costs[4], 1000) / SLACK / 2**30
    chunk, why = choose_chunk(model, length, 1, "auto", tight)
    assert why["head_groups"] == 4 and chunk == 768
    assert choose_chunk(model, length, 1, 100, tight)[0] == 100
    assert choose_chunk(model, length, 1, "auto", 1e6, head_groups=2)[1]["head_groups"] == 2
    with pytest.raises(UserError, match="does not divide"):
        choose_chunk(model, length, 1, "auto", None, head_groups=3)


def test_auto_chunk_gives_the_numbers_of_any_chunk():
    model = tiny_gqa_llama()
    ids_bl = torch.randint(0, 61, (1, 150), generator=torch.Generator().manual_seed(4))
    whole, _ = choose_chunk(model, 150, 1, "auto")  # the CPU default budget: no chunking at this size
    assert whole == 150
    nll_auto, correct_auto = token_stats(model, ids_bl, chunk_size=whole)
    nll_small, correct_small = token_stats(model, ids_bl, chunk_size=7)
    torch.testing.assert_close(nll_auto, nll_small, rtol=1e-12, atol=1e-12)
    assert torch.equal(correct_auto, correct_small)
