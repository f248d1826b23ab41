"""Each evaluation convention against a plain loop written from its definition, on a tiny model.

The references below call `model(ids).logits` (or `model(ids, labels=...)`) row by row and
count bytes and words from decoded text, as YaRN's `compute_perplexity` (truncate mode) and
lm-evaluation-harness's `loglikelihood_rolling` do; none of ropelaw's scoring code is used.
CPU, a few seconds: `pytest -q tests/test_conventions.py`.
"""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from evalkit import ROW, cell_json, make_kit
from tokenizers.processors import TemplateProcessing

from ropelaw import UserError
from ropelaw.cells import Cell
from ropelaw.cli import main
from ropelaw.scoring import Scoring, evaluate_docs
from ropelaw.tokentext import TokenText, adds_bos, bos_id, raw_bytes

LENGTHS = [40, 100, ROW]


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    return make_kit(tmp_path_factory.mktemp("conventions"))


def _table(kit, convention, bos="auto", lengths=LENGTHS):
    scoring = Scoring.for_tokenizer(convention, bos, kit.tokenizer)
    text = TokenText.from_tokenizer(kit.tokenizer, len(kit.tokenizer))
    table, docs = evaluate_docs(kit.model, kit.docs, lengths, scoring=scoring, text=text, train_len=64,
                                chunk_size=32, batch_size=2, progress=False)
    return table[table.scope == "prefix"].set_index("end"), docs


def _logprobs(model, ids):
    with torch.no_grad():
        return torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)


def _decode(kit, ids):
    return kit.tokenizer.decode(list(ids), skip_special_tokens=True)


def ropelaw_by_hand(kit, n, bos):
    nll = tokens = n_bytes = words = 0.0
    for row in kit.docs.tolist():
        ids = ([bos] if bos is not None else []) + row[: n - (bos is not None)]
        logp = _logprobs(kit.model, ids)
        nll -= sum(logp[t, ids[t + 1]].item() for t in range(n - 1))
        targets = _decode(kit, ids[1:])
        tokens, n_bytes, words = tokens + n - 1, n_bytes + len(targets.encode("utf-8")), words + len(targets.split())
    return dict(ppl=math.exp(nll / tokens), bits_per_byte=nll / n_bytes / math.log(2), word_ppl=math.exp(nll / words))


def yarn_by_hand(kit, n):
    """compute_perplexity(truncate=True, add_start_token=True, max_length=n): mean of each row's mean loss."""
    losses = []
    for row in kit.docs.tolist():
        input_ids = torch.tensor([[kit.tokenizer.bos_token_id] + row[: n - 1]])
        labels = input_ids.clone()
        labels[:, :1] = -100  # target_ids[:, :-trg_len] = -100 with trg_len = n - 1
        with torch.no_grad():
            losses.append(kit.model(input_ids, labels=labels).loss.double())
    return math.exp(torch.stack(losses).mean().item())


def rolling_windows(tokens, prefix, max_len):
    """lm-eval's get_rolling_token_windows(context_len=1) + make_disjoint_window: (context, continuation) pairs."""
    first = min(max_len, len(tokens))
    pairs, done = [([prefix] + tokens[: first - 1], tokens[:first])], first
    while done < len(tokens):
        size = min(len(tokens) - done, max_len)
        end = done + size
        pairs.append((tokens[end - max_len - 1 : end - 1], tokens[end - size : end]))
        done += size
    return [(ctx[: len(ctx) - (len(cont) - 1)], cont) for ctx, cont in pairs]


def lm_eval_by_hand(kit, n):
    prefix = kit.tokenizer.bos_token_id
    loglik = n_bytes = words = 0.0
    for row in kit.docs.tolist():
        doc = row[:n]
        for context, continuation in rolling_windows(doc, prefix, n):
            ids = (context + continuation)[-(n + 1):][:-1]
            logp = _logprobs(kit.model, ids)[-len(continuation):]
            loglik += sum(logp[i, t].item() for i, t in enumerate(continuation))
        text = _decode(kit, doc)
        n_bytes, words = n_bytes + len(text.encode("utf-8")), words + len(re.split(r"\s+", text))
    return dict(word_ppl=math.exp(-loglik / words), byte_ppl=math.exp(-loglik / n_bytes),
                bits_per_byte=-loglik / n_bytes / math.log(2))


def test_rows_hold_what_the_conventions_must_handle(kit):
    eos = kit.tokenizer.eos_token_id
    assert (kit.docs == eos).any(), "rows should join documents with EOS (a special token: 0 bytes)"
    text = _decode(kit, kit.docs[0])
    assert "  " in text and "\n" in text and "\t" in text


@pytest.mark.parametrize("bos", ["false", "true"])
def test_ropelaw_convention_matches_a_plain_loop(kit, bos):
    table, _ = _table(kit, "ropelaw", bos)
    prefix = kit.tokenizer.bos_token_id if bos == "true" else None
    for n in LENGTHS:
        expected = ropelaw_by_hand(kit, n, prefix)
        for key, value in expected.items():
            assert table.loc[n, key] == pytest.approx(value, rel=1e-6), (n, key)


def test_yarn_convention_matches_compute_perplexity(kit):
    table, _ = _table(kit, "yarn")
    for n in LENGTHS:
        assert table.loc[n, "ppl"] == pytest.approx(yarn_by_hand(kit, n), rel=1e-6)
        assert table.loc[n, "tokens"] == len(kit.docs) * (n - 1)


def test_lm_eval_convention_matches_rolling_loglikelihood(kit):
    table, docs = _table(kit, "lm_eval")
    for n in LENGTHS:
        expected = lm_eval_by_hand(kit, n)
        assert table.loc[n, "tokens"] == len(kit.docs) * n
        for key, value in expected.items():
            assert table.loc[n, key] == pytest.approx(value, rel=1e-6), (n, key)
    # Its windows score the token after the last input: segments end at L + 1.
    assert {n + 1 for n in LENGTHS} <= set(docs.end)


def test_conventions_differ_where_they_should(kit):
    plain, _ = _table(kit, "ropelaw", "false")
    bos, _ = _table(kit, "ropelaw", "true")
    yarn, _ = _table(kit, "yarn")
    assert bos.loc[ROW, "ppl"] == pytest.approx(yarn.loc[ROW, "ppl"], rel=1e-12)
    assert plain.loc[ROW, "ppl"] != pytest.approx(bos.loc[ROW, "ppl"], rel=1e-4)


def test_per_token_bytes_rebuild_the_text(kit):
    sample = "the  of\tand\n\nit was — café, naïve 漢字 done.\n"
    ids = kit.tokenizer(sample, add_special_tokens=False)["input_ids"]
    pieces = raw_bytes(kit.tokenizer, len(kit.tokenizer))
    assert b"".join(pieces[i] for i in ids) == sample.encode("utf-8")
    assert pieces[kit.tokenizer.eos_token_id] == b""
    text = TokenText.from_bytes(pieces)
    assert text.word_starts([ids]).sum() == len(sample.split())
    assert text.whitespace_runs([ids]).sum() + 1 == len(re.split(r"\s+", sample))
    leading = kit.tokenizer("  x y ", add_special_tokens=False)["input_ids"]
    assert text.word_starts([leading]).sum() == 2 and text.whitespace_runs([leading]).sum() + 1 == 4


def test_byte_level_tokens_behind_a_sequence_decoder_count_their_bytes(kit):
    """transformers 5.17 turns SmolLM2's GGUF tokenizer into byte-level tokens (`Ġthe`) with the decoder
    [ByteFallback, Fuse, Replace ▁, ByteLevel]; read as SentencePiece, `Ġ` counted as its two UTF-8 bytes
    and no token began a word (the GPU studies' bytes and words columns, docs/results)."""
    from tokenizers import Tokenizer, decoders
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer.from_str(kit.tokenizer.backend_tokenizer.to_str())
    backend.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Fuse(), decoders.Replace("▁", " "),
                                         decoders.ByteLevel()])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=kit.tokenizer.eos_token)
    sample = "the  of\tand\n\nit was — café, naïve 漢字 done.\n"
    ids = tokenizer(sample, add_special_tokens=False)["input_ids"]
    assert any(tokenizer.convert_ids_to_tokens(i).startswith("Ġ") for i in ids)
    pieces = raw_bytes(tokenizer, len(tokenizer))
    assert b"".join(pieces[i] for i in ids) == sample.encode("utf-8") == tokenizer.decode(ids).encode()
    assert TokenText.from_bytes(pieces).word_starts([ids]).sum() == len(sample.split())


def test_a_decoder_whose_text_the_token_bytes_do_not_give_is_refused():
    """Per-id bytes are checked against the tokenizer's own decode of a probe text, whatever its decoder says."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, **{f"<0x{b:02X}>": 1 + b for b in range(256)}}
    for piece in ["▁", *"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"]:
        vocab.setdefault(piece, len(vocab))
    backend = Tokenizer(models.BPE(vocab, [], unk_token="<unk>", byte_fallback=True))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    backend.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                         decoders.Replace("e", "E")])  # decodes to other text than its tokens
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>")
    with pytest.raises(UserError, match="read as sentencepiece tokens, the ids of a probe text give"):
        raw_bytes(tokenizer, len(tokenizer))


def test_bos_policy_follows_the_tokenizer(kit):
    tokenizer = kit.tokenizer
    assert not adds_bos(tokenizer) and bos_id(tokenizer, "auto") is None
    assert bos_id(tokenizer, "true") == tokenizer.bos_token_id and bos_id(tokenizer, "false") is None
    adding = type(tokenizer).from_pretrained(kit.tokenizer_dir)
    bos = adding.bos_token
    adding.backend_tokenizer.post_processor = TemplateProcessing(
        single=f"{bos} $A", special_tokens=[(bos, adding.bos_token_id)])
    assert adds_bos(adding) and bos_id(adding, "auto") == adding.bos_token_id
    with pytest.raises(UserError, match="evaluation.bos"):
        Scoring.for_tokenizer("yarn", "false", tokenizer)
    # YaRN's main() adds the start token only when the tokenizer has one.
    adding.bos_token = None
    assert Scoring.for_tokenizer("yarn", "auto", adding).prefix_id is None
    assert Scoring.for_tokenizer("lm_eval", "auto", adding).prefix_id == adding.eos_token_id


def test_cli_writes_doc_sums_that_add_up_to_the_table(kit, tmp_path):
    out = tmp_path / "cell" / "eval.csv"
    out.parent.mkdir()
    assert main(["evaluate", "--model", str(kit.model_dir), "--cell-json", cell_json(), "--eval-data",
                 str(kit.eval_dir), "--tokenizer", str(kit.tokenizer_dir), "--lengths", *map(str, LENGTHS),
                 "--chunk-size", "50", "--precision", "fp32", "--bos", "true", "--out", str(out)]) == 0
    table = pd.read_csv(out)
    docs = pd.read_csv(out.parent / "eval_docs.csv")
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert sidecar["convention"] == "ropelaw" and sidecar["bos"] == "true"
    assert sidecar["prefix_token_id"] == kit.tokenizer.bos_token_id
    assert list(docs.columns) == ["doc", "pass_len", "start", "end", "nll", "tokens", "correct", "bytes", "words"]
    prefix = table[table.scope == "prefix"].set_index("end")
    assert (table.convention == "ropelaw").all()
    for n in LENGTHS:
        part = docs[docs.end <= n]
        assert math.fsum(part.nll.tolist()) == prefix.loc[n, "nll_sum"]  # exact after the CSV round trip
        for key in ("tokens", "correct", "bytes", "words"):
            assert part[key].sum() == prefix.loc[n, key]
        assert prefix.loc[n, "bits_per_byte"] == pytest.approx(
            prefix.loc[n, "nll_sum"] / prefix.loc[n, "bytes"] / math.log(2), rel=1e-12)
    assert np.isfinite(prefix.word_ppl).all()


def test_cli_auto_chunk_is_recorded_and_changes_no_number(kit, tmp_path, monkeypatch):
    import ropelaw.lean

    tables, sidecars, ran = {}, {}, {}
    llama_rows = ropelaw.lean._llama_rows  # watched, not replaced: which forwards ran ropelaw's MLP, in what slices
    monkeypatch.setattr(ropelaw.lean, "_llama_rows",
                        lambda mlp, forward, chunk, slices: ran[name].add(slices) or llama_rows(mlp, forward, chunk, slices))
    # auto with room to spare; a fixed chunk; auto with a budget too small for anything: the most head groups.
    for name, chunk, budget in (("auto", "auto", "1"), ("16", "16", "1"), ("tight", "auto", "1e-5")):
        ran[name] = set()
        out = tmp_path / name / "eval.csv"
        assert main(["evaluate", "--model", str(kit.model_dir), "--cell-json", cell_json(), "--eval-data",
                     str(kit.eval_dir), "--tokenizer", str(kit.tokenizer_dir), "--lengths", "64", str(ROW),
                     "--chunk-size", chunk, "--memory-budget-gib", budget, "--precision", "fp32", "--out", str(out)]) == 0
        tables[name] = pd.read_csv(out)
        sidecars[name] = json.loads(out.with_suffix(".json").read_text())
    assert sidecars["auto"]["chunk_size"] == ROW and sidecars["16"]["chunk_size"] == 16
    assert sidecars["16"]["chunking"]["reason"] == "fixed by evaluation.chunk_size"
    auto, tight = sidecars["auto"]["chunking"], sidecars["tight"]["chunking"]
    assert auto["budget_source"] == "evaluation.memory_budget_gib" and auto["budget_bytes"] == 2**30
    assert auto["head_groups"] == 1 and len(tight["head_groups_possible"]) > 1
    assert tight["head_groups"] == tight["head_groups_possible"][-1] and tight["chunk_size"] == 256
    # The MLP: over whole rows where that raises no peak (auto, room to spare), else over chunks of rows.
    assert (auto["mlp_slices"], tight["mlp_slices"], sidecars["16"]["chunking"]["mlp_slices"]) == (1, 0, 0)
    assert ran == {"auto": {1}, "16": set(), "tight": set()}  # and the forwards ran as recorded
    for name in ("16", "tight"):
        np.testing.assert_allclose(tables[name].nll_sum, tables["auto"].nll_sum, rtol=1e-6)


def test_sentencepiece_bytes_count_byte_fallback_and_the_word_marker():
    """LLaMA-style: `▁` is a space, `<0xNN>` one byte; the text's own bytes plus the marker's leading space."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"<0x{b:02X}>": 3 + b for b in range(256)}}
    for piece in ["▁", *"abcdefghijklmnopqrstuvwxyz", "▁t", "he", "▁the"]:
        vocab[piece] = len(vocab)
    model = models.BPE(vocab, [("▁", "t"), ("h", "e"), ("▁t", "he")], unk_token="<unk>", byte_fallback=True)
    backend = Tokenizer(model)
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    backend.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                         decoders.Strip(" ", 1, 0)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    sample = "the café of naïve 漢 words"
    ids = tokenizer(sample, add_special_tokens=False)["input_ids"]
    assert any(tokenizer.convert_ids_to_tokens(i).startswith("<0x") for i in ids), "byte fallback must be exercised"
    pieces = raw_bytes(tokenizer, len(tokenizer))
    assert b"".join(pieces[i] for i in ids) == b" " + sample.encode("utf-8")
    assert tokenizer.decode(ids) == sample and pieces[1] == pieces[2] == b""
    assert TokenText.from_bytes(pieces).word_starts([ids]).sum() == len(sample.split())


def test_the_chosen_chunk_reaches_the_forward(kit):
    """evaluate_cell_docs runs the MLPs in slices of the chunk it records (a global forward hook sees them)."""
    from ropelaw.evaluate import evaluate_cell_docs

    seen = []

    def hook(module, args, output):
        if isinstance(module, torch.nn.Linear) and module.out_features == 64:  # gate/up projections (intermediate 64)
            seen.append(args[0].shape[1])

    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    try:
        _, _, sidecar = evaluate_cell_docs(kit.model_dir, Cell.from_json(cell_json()), kit.eval_dir, [ROW], chunk_size=24,
                                           batch_size=1, precision="fp32", attn_implementation="sdpa",
                                           tokenizer_dir=kit.tokenizer_dir)
    finally:
        handle.remove()
    assert sidecar["chunk_size"] == 24 and set(seen) == {24, ROW % 24}  # the window of ROW tokens, in slices
