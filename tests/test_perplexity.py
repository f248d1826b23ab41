"""Chunked, one-pass perplexity agrees with the plain full-logits computation.

Tiny random LlamaForCausalLM models on CPU; run with `pytest -q tests/test_perplexity.py`.
"""

import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
import transformers

from ropelaw.perplexity import naive_perplexity, token_stats
from ropelaw.scoring import Scoring, bucket_sums, default_bucket_edges, doc_segments, evaluate_docs, score_window

VOCAB = 97
LENGTHS = [16, 64, 100, 257]


def tiny_llama(attn="eager", rope=None, seed=0):
    config = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, head_dim=16,
        max_position_embeddings=64, initializer_range=0.2,  # sharp attention: RoPE matters
        rope_parameters=rope or {"rope_type": "default", "rope_theta": 10000.0},
        attn_implementation=attn,
    )
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(config).float().eval()


def dynamic_llama():
    return tiny_llama(rope={"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0})


def random_docs(n_docs, length, seed=1):
    return torch.randint(0, VOCAB, (n_docs, length), generator=torch.Generator().manual_seed(seed))


def prefix_rows(frame):
    frame = frame[0] if isinstance(frame, tuple) else frame
    return frame[frame.scope == "prefix"].set_index("end")


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_chunked_stats_match_full_logits(attn):
    model, ids_bl = tiny_llama(attn), random_docs(2, 300)
    nll_bt, correct_bt = token_stats(model, ids_bl, chunk_size=64)
    with torch.no_grad():
        logits_blv = model(ids_bl).logits[:, :-1].float()
    expected_bt = F.cross_entropy(logits_blv.transpose(1, 2), ids_bl[:, 1:], reduction="none")
    assert nll_bt.shape == correct_bt.shape == (2, 299) and nll_bt.dtype == torch.float64
    torch.testing.assert_close(nll_bt, expected_bt.double(), rtol=1e-5, atol=1e-5)
    assert torch.equal(correct_bt, logits_blv.argmax(-1) == ids_bl[:, 1:])


def test_bf16_argmax_is_that_of_the_float32_logits():
    """token_stats takes the argmax of the lm_head's bf16 logits before their float32 copy: the same answer, ties
    included (a 97-token vocabulary in bf16 has many). The targets are the float32
    logits' own argmax, so every position must count as correct, the tied ones too."""
    model, ids_bl = tiny_llama("sdpa").to(torch.bfloat16), random_docs(4, 300)
    with torch.inference_mode():
        hidden_bld = model.get_decoder()(input_ids=ids_bl, use_cache=False).last_hidden_state
        logits_blv = torch.cat([model.lm_head(hidden_bld[:, s:s + 64]).float() for s in range(0, 300, 64)], 1)
    ties_bl = (logits_blv == logits_blv.amax(-1, keepdim=True)).sum(-1) > 1
    assert ties_bl.sum() >= 2, "the check needs positions whose maximum is tied"
    targets_bl = logits_blv.argmax(-1)
    nll_bt, correct_bt = token_stats(model, ids_bl, chunk_size=64, targets_bl=targets_bl)
    assert bool(correct_bt.all())
    expected_bt = F.cross_entropy(logits_blv.transpose(1, 2), targets_bl, reduction="none")
    torch.testing.assert_close(nll_bt, expected_bt.double(), rtol=1e-6, atol=0)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_one_pass_prefixes_match_separate_passes(attn):
    model, docs = tiny_llama(attn), random_docs(3, 300)
    kwargs = dict(chunk_size=64, progress=False)
    one = prefix_rows(evaluate_docs(model, docs, LENGTHS, batch_size=2, **kwargs))
    sep = prefix_rows(evaluate_docs(model, docs, LENGTHS, one_pass=False, **kwargs))
    for n in LENGTHS:
        ppl, accuracy = naive_perplexity(model, docs, n)
        assert one.loc[n, "tokens"] == sep.loc[n, "tokens"] == 3 * (n - 1)
        assert one.loc[n, "n_docs"] == 3
        for frame in (one, sep):
            assert frame.loc[n, "ppl"] == pytest.approx(ppl, rel=1e-5)
            assert frame.loc[n, "accuracy"] == pytest.approx(accuracy, rel=1e-5)


def test_long_forwards_show_their_layers(capsys):
    """Forwards of `layer_progress_from` positions or more show a bar of layers (each layer's end: 2 of 2 per
    forward); the numbers are those without it, the hooks are gone afterwards, and shorter forwards show none.
    Compiled layers too: the hooks run outside their graphs."""
    from ropelaw.models import compile_layers

    model, docs = tiny_llama("sdpa"), random_docs(2, 200)
    kwargs = dict(chunk_size=64, progress=True)
    plain, _ = evaluate_docs(model, docs, [100, 200], **kwargs)
    assert "layers" not in capsys.readouterr().err  # 200 positions < LAYER_PROGRESS_FROM
    shown, _ = evaluate_docs(model, docs, [100, 200], layer_progress_from=200, **kwargs)
    err = capsys.readouterr().err
    assert "layers: 100%" in err and "2/2" in err
    pd.testing.assert_frame_equal(shown, plain)
    decoder = model.get_decoder()
    assert not decoder._forward_pre_hooks and not any(layer._forward_hooks for layer in decoder.layers)
    compile_layers(model, "evaluation.compile")
    compiled, _ = evaluate_docs(model, docs, [100, 200], layer_progress_from=200, compiled=True, **kwargs)
    assert "layers: 100%" in capsys.readouterr().err
    pd.testing.assert_frame_equal(compiled, plain, rtol=1e-6, atol=1e-6)


def test_dynamic_ntk_needs_one_pass_per_length():
    model, docs = dynamic_llama(), random_docs(2, 200)
    lengths = [32, 64, 100, 200]
    # Reference: a freshly built model per length, so no rotary state carries over.
    naive = {n: naive_perplexity(dynamic_llama(), docs, n) for n in lengths}

    # The 200-token pass rotates every position with the base scaled for 200, so
    # its prefixes are wrong at every shorter length, even below max_position_embeddings.
    nll_bt, _ = token_stats(model, docs)
    shortcut = {n: float(torch.exp(nll_bt[:, : n - 1].mean())) for n in lengths}
    assert shortcut[200] == pytest.approx(naive[200][0], rel=1e-5)
    for n in (32, 100):
        assert shortcut[n] != pytest.approx(naive[n][0], rel=1e-2)

    with pytest.raises(ValueError, match="one_pass=False"):
        evaluate_docs(model, docs, lengths, progress=False)
    separate = prefix_rows(evaluate_docs(model, docs, lengths, one_pass=False, progress=False))
    for n in lengths:
        assert separate.loc[n, "ppl"] == pytest.approx(naive[n][0], rel=1e-5)
        assert separate.loc[n, "accuracy"] == pytest.approx(naive[n][1], rel=1e-5)


def test_dynamic_ntk_state_is_reset_between_passes():
    # transformers keeps the largest length seen: without a reset, a 100-token pass
    # after a 200-token pass would use the base scaled for 200.
    model, docs = dynamic_llama(), random_docs(1, 200)
    fresh = naive_perplexity(dynamic_llama(), docs, 100)
    with torch.no_grad():
        model(docs)
        stale_logits = model(docs[:, :100]).logits[:, :-1]
    stale = torch.exp(F.cross_entropy(stale_logits.transpose(1, 2), docs[:, 1:100])).item()
    assert stale != pytest.approx(fresh[0], rel=1e-2)
    token_stats(model, docs)
    assert naive_perplexity(model, docs, 100) == pytest.approx(fresh, rel=1e-6)


def test_buckets_add_up_to_longest_prefix():
    model, docs = tiny_llama(), random_docs(3, 300)
    frame, _ = evaluate_docs(model, docs, LENGTHS, chunk_size=64, batch_size=2, progress=False)
    buckets = frame[frame.scope == "bucket"]
    edges = [0, 2, 4, 8, 16, 32, 64, 128, 256, 257]
    assert default_bucket_edges(257) == edges
    assert list(buckets.start) == edges[:-1] and list(buckets.end) == edges[1:]
    assert default_bucket_edges(256)[-2:] == [128, 256] and default_bucket_edges(2) == [0, 2]
    longest = prefix_rows(frame).loc[257]
    assert buckets.tokens.sum() == longest.tokens == 3 * 256
    assert buckets.correct.sum() == longest.correct
    assert buckets.nll_sum.sum() == pytest.approx(longest.nll_sum, rel=1e-12)
    assert np.isfinite(buckets.ppl).all()


def test_bad_bucket_ranges_raise():
    stats = {k: np.zeros((1, 9)) for k in ("nll", "tokens", "correct", "bytes", "words")}
    for buckets in [[0, 1], [0, 4, 4], [0, 11], [5, 3]]:
        with pytest.raises(ValueError, match="evaluation.bucket_edges"):
            bucket_sums(stats, buckets)


def test_logit_softcapping_is_refused():
    model = tiny_llama()
    model.config.final_logit_softcapping = 30.0
    with pytest.raises(ValueError, match="final_logit_softcapping"):
        token_stats(model, random_docs(1, 16))


def _fsum(frame, column):
    return math.fsum(frame[column].tolist())


@pytest.mark.parametrize("one_pass", [True, False])
def test_doc_segments_add_up_to_the_table_exactly(one_pass):
    """Contract 3: every length's row is the float64 sum of the segments its window scores."""
    model = dynamic_llama() if not one_pass else tiny_llama()
    docs, lengths = random_docs(3, 300), [20, 64, 100, 257]
    table, segs = evaluate_docs(model, docs, lengths, train_len=64, one_pass=one_pass, chunk_size=64,
                                batch_size=2, progress=False)
    prefix = prefix_rows(table)
    grid = [16, 19, 23, 27, 32, 38, 45, 54, 64, 76, 91, 108, 128, 152, 181, 215, 256]
    if one_pass:
        assert sorted(set(segs.end)) == sorted(set(grid + lengths))
    for n in lengths:
        pass_len = 257 if one_pass else n
        part = segs[(segs.pass_len == pass_len) & (segs.end <= n)]
        assert sorted(set(part.doc)) == [0, 1, 2]
        assert _fsum(part, "nll") == prefix.loc[n, "nll_sum"]
        assert part.tokens.sum() == prefix.loc[n, "tokens"] == 3 * (n - 1)
        assert part.correct.sum() == prefix.loc[n, "correct"]
        assert prefix.loc[n, "ppl"] == pytest.approx(naive_perplexity(
            dynamic_llama() if not one_pass else model, docs, n)[0], rel=1e-5)
    # Segments tile each pass: [1, e1), [e1, e2), ... with no gap and no overlap.
    for (_, _), group in segs.groupby(["pass_len", "doc"]):
        assert group.start.iloc[0] == 1 and (group.start.iloc[1:].to_numpy() == group.end.iloc[:-1].to_numpy()).all()
        assert group.end.iloc[-1] == group.pass_len.iloc[0]
    if not one_pass:
        assert set(segs.pass_len) == set(lengths)


def test_doc_segments_are_per_document_sums():
    model, docs = tiny_llama(), random_docs(2, 120)
    _, segs = evaluate_docs(model, docs, [120], train_len=64, batch_size=2, progress=False)
    nll_bt, _ = token_stats(model, docs)
    for doc in (0, 1):
        row = segs[(segs.doc == doc) & (segs.start == 32)].iloc[0]  # positions 32..37
        assert row.end == 38 and row.tokens == 6
        assert row.nll == pytest.approx(float(nll_bt[doc, 31:37].sum()), rel=1e-12)


def test_a_bos_row_is_scored_from_its_first_token():
    """With a prefix token the window of L is [BOS] + row[:L-1]: L-1 predictions, the first of row[0]."""
    model, docs = tiny_llama(), random_docs(2, 64)
    stats = score_window(model, docs, 64, Scoring("ropelaw", prefix_id=5))
    with torch.no_grad():
        ids = torch.cat([torch.full((2, 1), 5), docs[:, :63]], 1)
        logits = model(ids).logits[:, :-1].float()
    expected = F.cross_entropy(logits.transpose(1, 2), docs[:, :63], reduction="none")
    np.testing.assert_allclose(stats["nll"], expected.double().numpy(), rtol=1e-5)
    segs = doc_segments(stats, [1, 16, 64], 64, 0)
    assert list(segs.tokens) == [15, 48, 15, 48]
