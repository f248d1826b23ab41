"""The chunked-MLP forward gives the plain forward's numbers and leaves the model as it was.

Tiny random LLaMA (with grouped-query attention) on CPU, float64 so that any
difference is a bug, not rounding; run with `pytest -q tests/test_lean.py`.
"""

import torch
import transformers

from ropelaw.chunking import SLACK, choose_chunk, memory_costs
from ropelaw.lean import chunked_mlp
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


def test_token_stats_with_small_chunks_equals_one_chunk():
    model = tiny_gqa_llama()
    ids_bl = torch.randint(0, 61, (1, 150), generator=torch.Generator().manual_seed(2))
    nll_small, correct_small = token_stats(model, ids_bl, chunk_size=16)
    nll_whole, correct_whole = token_stats(model, ids_bl, chunk_size=1000)
    torch.testing.assert_close(nll_small, nll_whole, rtol=1e-12, atol=1e-12)
    assert torch.equal(correct_small, correct_whole)


def test_compiled_layers_give_the_eager_numbers():
    """evaluation.compile: every decoder layer compiled (the chunked MLP kept out of the layer's
    graph and compiled on its own) scores as the eager model does, at two lengths (a recompile)."""
    from ropelaw.models import compile_layers

    model = tiny_gqa_llama()
    ids_bl = torch.randint(0, 61, (1, 150), generator=torch.Generator().manual_seed(3))
    eager = [token_stats(model, ids_bl[:, :n], chunk_size=32) for n in (150, 97)]
    assert compile_layers(model, "evaluation.compile") == 3
    assert all(layer._compiled_call_impl is not None for layer in model.model.layers)
    compiled = [token_stats(model, ids_bl[:, :n], chunk_size=32, compiled=True) for n in (150, 97)]
    for (nll_e, correct_e), (nll_c, correct_c) in zip(eager, compiled):
        # The log-softmax runs in float32 (token_stats): 1-ulp flips of the fused float64 hidden state show there.
        torch.testing.assert_close(nll_c, nll_e, rtol=1e-6, atol=1e-6)
        assert torch.equal(correct_c, correct_e)
    assert all("forward" not in vars(layer.mlp) for layer in model.model.layers)


def test_fixed_chunk_is_kept():
    assert choose_chunk(tiny_gqa_llama(), 1000, 1, 37)[0] == 37


def test_memory_costs_follow_the_model_shape():
    # float64: 8 bytes; d=48, heads 6 + 2 x 2 kv heads of 8 dims, I=80, V=61, batch 2, length 100.
    fixed, per_position = memory_costs(tiny_gqa_llama(), 100, 2)
    assert fixed == 2 * 100 * (5 * 48 + (6 + 2 * 2) * 8) * 8
    assert per_position == 2 * (3 * 80 + 48) * 8  # the MLP's activations outweigh 61 logits
    wide = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=3000, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        head_dim=8)).to(torch.bfloat16)
    assert memory_costs(wide, 100, 1)[1] == 3000 * (2 + 8)  # bf16 logits, float32 logits and log-softmax


def test_auto_chunk_follows_the_budget():
    model, length = tiny_gqa_llama(), 100_000
    fixed, per_position = memory_costs(model, length, 1)
    chosen = []
    for positions in (300, 1000, 5000, 40_000, 200_000):
        budget_gib = (fixed + positions * per_position) / SLACK / 2**30
        chunk, why = choose_chunk(model, length, 1, "auto", budget_gib)
        assert why["chunk_size"] == chunk and why["budget_source"] == "evaluation.memory_budget_gib"
        if positions >= length:
            assert chunk == length and "no chunking" in why["reason"]
        else:  # the largest multiple of 256 that fits (one position of rounding slack)
            assert chunk % 256 == 0 and chunk <= positions < chunk + 256 + 1
        chosen.append(chunk)
    assert chosen == sorted(chosen) and chosen[0] == 256
    small, why = choose_chunk(model, length, 1, "auto", fixed / 2**30 / 4)
    assert small == 256 and "smallest" in why["reason"]


def test_auto_chunk_gives_the_numbers_of_any_chunk():
    model = tiny_gqa_llama()
    ids_bl = torch.randint(0, 61, (1, 150), generator=torch.Generator().manual_seed(4))
    whole, _ = choose_chunk(model, 150, 1, "auto")  # the CPU default budget: no chunking at this size
    assert whole == 150
    nll_auto, correct_auto = token_stats(model, ids_bl, chunk_size=whole)
    nll_small, correct_small = token_stats(model, ids_bl, chunk_size=7)
    torch.testing.assert_close(nll_auto, nll_small, rtol=1e-12, atol=1e-12)
    assert torch.equal(correct_auto, correct_small)
