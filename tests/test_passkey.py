"""Passkey retrieval: prompts put the key where they say, scoring is exact, and the pipeline runs.

Scoring is checked with tiny fakes whose greedy answer is always (or never) the key; the rest
runs a tiny random LlamaForCausalLM on CPU. Run with `pytest -q tests/test_passkey.py`.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import asdict, replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
import transformers

from ropelaw import UserError
from ropelaw.cli import main
from ropelaw.config import load_yaml, passkey_args, resolve
from ropelaw.evaldata import load_eval_docs, prepare_eval
from ropelaw.law import PASSKEY_COLUMNS, join_passkey, passkey_table
from ropelaw.passkey import PasskeySpec, build_prompts, evaluate_passkey, greedy_answer, score
from ropelaw.pile import write_shard
from ropelaw.tokenizer import train_tokenizer

ROOT = Path(__file__).resolve().parents[1]
WORDS = "the of and to in a is that it was pass key remember what there is the 1623 12 7 40".split()
SPEC = PasskeySpec(
    lengths=(96, 160, 256),
    depths=(0.0, 0.5, 1.0),
    trials=2,
    seed=7,
    key_digits=5,
    prefix="A number is hidden below.\n",
    needle="\nThe pass key is {key}. Remember it. {key} is the pass key.\n",
    question="\nWhat is the pass key? The pass key is",
)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A shard of six long documents, its tokenizer, and evaluation rows of 256 tokens."""
    root = tmp_path_factory.mktemp("passkey")
    rng = random.Random(0)
    records = [
        {"text": " ".join(rng.choice(WORDS) for _ in range(900)), "meta": {"pile_set_name": "Books3", "title": f"b{i}"}}
        for i in range(6)
    ]
    write_shard(root / "00.jsonl.zst", records)
    train_tokenizer([root / "00.jsonl.zst"], 400, root / "tokenizer")
    prepare_eval([root / "00.jsonl.zst"], root / "tokenizer", 256, root / "eval", windows_per_doc=2)
    tokenizer = transformers.AutoTokenizer.from_pretrained(root / "tokenizer")
    return SimpleNamespace(root=root, tokenizer=tokenizer, docs=load_eval_docs(root / "eval"))


def tiny_llama(vocab_size: int, seed: int = 0):
    config = transformers.LlamaConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, head_dim=16, max_position_embeddings=64,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    )
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(config).eval()


def test_key_sits_where_the_generator_says(corpus):
    tok, docs = corpus.tokenizer, corpus.docs
    head = tok(SPEC.prefix)["input_ids"]
    tail = tok(SPEC.question, add_special_tokens=False)["input_ids"]
    for length in SPEC.lengths:
        prompts = build_prompts(tok, docs, SPEC, length)
        assert [(p.trial, p.depth) for p in prompts] == [(t, d) for t in range(2) for d in SPEC.depths]
        for p in prompts:
            ids = p.input_ids.tolist()
            assert len(ids) == length and ids[: len(head)] == head and ids[-len(tail) :] == tail
            assert re.fullmatch(r"[1-9]\d{4}", p.key)
            assert re.sub(r"\D", "", tok.decode(ids[p.key_start : p.key_end])) == p.key
            # The needle is spliced whole into a window of real evaluation text.
            needle = tok(SPEC.needle.replace("{key}", p.key), add_special_tokens=False)["input_ids"]
            at = p.key_start - next(i for i, t in enumerate(needle) if p.key[0] in tok.decode([t]))
            assert ids[at : at + len(needle)] == needle
            filler = ids[len(head) : at] + ids[at + len(needle) : -len(tail)]
            assert filler == docs[p.doc, p.doc_offset : p.doc_offset + len(filler)].tolist()
            assert at - len(head) == round(p.depth * len(filler))
        # Depth 0: right after the prefix; depth 1: right before the question.
        first, last = prompts[0], prompts[2]
        assert tok.decode(first.input_ids[len(head) :].tolist()).startswith(SPEC.needle.split("{key}")[0])
        assert tok.decode(last.input_ids[: length - len(tail)].tolist()).endswith(SPEC.needle.split("{key}")[-1])
    # A fixed seed gives the same prompts every time; another seed gives others.
    again = build_prompts(tok, docs, SPEC, 160)
    assert all(np.array_equal(a.input_ids, b.input_ids) for a, b in zip(again, build_prompts(tok, docs, SPEC, 160)))
    other = build_prompts(tok, docs, replace(SPEC, seed=8), 160)
    assert [p.key for p in other] != [p.key for p in again]


def test_scoring_is_exact_match_on_the_digits():
    assert score(" 48213.", "48213") and score("48213", "48213") and score(" 48213 and 7", "48213")
    assert not score(" 482130", "48213") and not score(" 4821", "48213") and not score(" 048213", "48213")
    assert not score(" the key", "48213") and not score("", "48213") and not score(" 4 8213", "48213")


class FakeModel(torch.nn.Module):
    """Greedy answer: the key of the prompt it is shown (right=True), or the key with its last digit changed."""

    def __init__(self, tokenizer, prompts, right: bool):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.vocab = len(tokenizer)
        self.stop = tokenizer(".", add_special_tokens=False)["input_ids"]
        self.answers = {}
        for p in prompts:
            key = p.key if right else p.key[:-1] + str((int(p.key[-1]) + 1) % 10)
            self.answers[tuple(p.input_ids.tolist())] = tokenizer(" " + key, add_special_tokens=False)["input_ids"]

    def forward(self, input_ids, past_key_values=None, use_cache=True, logits_to_keep=0):
        assert use_cache and logits_to_keep == 1
        if past_key_values is None:
            past_key_values = ([self.answers[tuple(row)] + self.stop * 8 for row in input_ids.tolist()], 0)
        answers, step = past_key_values
        logits = torch.zeros(len(answers), 1, self.vocab)
        logits[torch.arange(len(answers)), 0, [a[step] for a in answers]] = 1.0
        return SimpleNamespace(logits=logits, past_key_values=(answers, step + 1))


@pytest.mark.parametrize("right, accuracy", [(True, 1.0), (False, 0.0)])
def test_always_right_scores_one_never_right_scores_zero(corpus, right, accuracy):
    tok, docs = corpus.tokenizer, corpus.docs
    prompts = [p for n in SPEC.lengths for p in build_prompts(tok, docs, SPEC, n)]
    table, _, _ = evaluate_passkey(FakeModel(tok, prompts, right), tok, docs, SPEC, batch_size=4, progress=False)
    assert len(table) == len(SPEC.lengths) * len(SPEC.depths) * SPEC.trials
    assert table.correct.mean() == accuracy
    assert (table.answer.str.strip().str[:5] == table.key).all() == right


def test_cached_greedy_answer_matches_full_recomputation(corpus):
    model = tiny_llama(len(corpus.tokenizer))
    prompts = build_prompts(corpus.tokenizer, corpus.docs, SPEC, 160)
    ids_bl = torch.as_tensor(np.stack([p.input_ids for p in prompts[:3]]))
    cached = greedy_answer(model, ids_bl, 5)
    ids = ids_bl
    with torch.no_grad():
        for _ in range(5):
            ids = torch.cat([ids, model(ids).logits[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(cached, ids[:, 160:])


@pytest.mark.parametrize("groups, slices", [(1, 0), (2, 1)])
def test_recomputed_greedy_answer_is_the_cached_one(corpus, groups, slices):
    """Without a KV cache (the chunked forward, head groups and MLP slices as perplexity runs them), the same
    greedy tokens: with a draft that is the answer itself (kept whole: one forward per row), a draft that is
    wrong from its first token (the key: a random model does not retrieve it), and none (one forward per token)."""
    from ropelaw.passkey import greedy_answer_recomputed

    model = tiny_llama(len(corpus.tokenizer)).float()
    prompts = build_prompts(corpus.tokenizer, corpus.docs, SPEC, 160)[:3]
    ids_bl = np.stack([p.input_ids for p in prompts])
    cached = greedy_answer(model, ids_bl, 6)
    keys = [corpus.tokenizer(" " + p.key, add_special_tokens=False)["input_ids"] for p in prompts]
    half = [row[:3] + [row[3] + 1] for row in cached.tolist()]  # right for 3 tokens, then wrong
    for drafts, forwards in ((cached.tolist(), 3), (half, 3 * 3), ([[]] * 3, 3 * 6), (keys, None)):
        answers, ran = greedy_answer_recomputed(model, ids_bl, 6, drafts, chunk_size=32, head_groups=groups,
                                                mlp_slices=slices)
        assert torch.equal(answers, cached)
        if forwards is not None:  # half: 3 kept + the fix in one forward, then one per token: 1 + 2
            assert ran == forwards


def test_prompts_whose_cache_does_not_fit_are_recomputed(corpus):
    """choose_decoding: the cache where weights + KV cache + activations fit the budget, else the chunked
    forward; a length-dependent rotation (dynamic NTK) is always cached."""
    from ropelaw.passkey import ACTIVATION_BYTES, cached_peak_bytes, choose_decoding

    model = tiny_llama(len(corpus.tokenizer)).float()
    config = model.config
    weights = sum(p.numel() * 4 for p in model.parameters())
    kv = 2 * config.num_hidden_layers * 1000 * config.num_key_value_heads * config.head_dim * 4
    assert cached_peak_bytes(model, 500, 2) == weights + kv + int(ACTIVATION_BYTES * 2 * config.intermediate_size * 1000)
    roomy, tight = choose_decoding(model, 256, 1, 1.0), choose_decoding(model, 256, 1, 1e-4)
    assert roomy["path"] == "cache" and roomy["cached_peak_gib"] < 1e-3
    assert tight["path"] == "recompute" and tight["chunk_size"] >= 1 and tight["head_groups"] >= 1
    config.rope_parameters = {"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0}
    dynamic = transformers.LlamaForCausalLM(config).eval()
    assert choose_decoding(dynamic, 256, 1, 1e-4)["path"] == "cache"


@pytest.mark.parametrize("shape, fits, runs_out", [("llama2-7b", 98304, 131072), ("llama2-13b", 49152, 65536)])
def test_the_cache_reckoning_agrees_with_the_measured_limits(shape, fits, runs_out):
    """Under an A100-80GB's 80 GiB (the budget: what the weights leave), the cache where it was measured to fit
    and the chunked forward where it ran out (BENCHMARKS.md, nineteenth session, passkeymem3); the reckoned peak
    within 5% of the measured one (7B 69.68 GiB at 98,304, 13B 67.47 at 49,152). Meta weights: shapes only."""
    import sys

    sys.path.insert(0, str(ROOT / "bench"))
    from benchlib import llama_config

    from ropelaw.passkey import choose_decoding

    with torch.device("meta"):
        model = transformers.LlamaForCausalLM._from_config(llama_config(shape), dtype=torch.bfloat16)
    budget = 80 - sum(p.numel() * 2 for p in model.parameters()) / 2**30
    at_fit, beyond = choose_decoding(model, fits, 1, budget), choose_decoding(model, runs_out, 1, budget)
    assert (at_fit["path"], beyond["path"]) == ("cache", "recompute")
    measured = {"llama2-7b": 69.68, "llama2-13b": 67.47}[shape]
    assert at_fit["cached_peak_gib"] == pytest.approx(measured, rel=0.05)  # reckoned 70.63 and 68.07


def test_cli_prompts_are_identical_across_cells(corpus, tmp_path):
    tok = corpus.tokenizer
    model_dir = tmp_path / "model"
    tiny_llama(len(tok)).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    spec = json.dumps({**asdict(SPEC), "lengths": [96, 256], "depths": [0.25, 0.75], "trials": 1})
    sidecars, tables = [], []
    for base, batch in ((10000, 1), (500, 3)):
        cell = dict(model="t", method="base", base=base, tune_len=64, head_dim=16, train_len=64, orig_base=1e4, eval_set="e",
                    seed=None, kind="base", method_options={}, eval_lengths=[96, 256], untuned_dir="", training=None)
        out = tmp_path / f"base{base}" / "passkey.csv"
        assert main([
            "passkey", "--model", str(model_dir), "--cell-json", json.dumps(cell), "--eval-data", str(corpus.root / "eval"),
            "--tokenizer", str(corpus.root / "tokenizer"), "--spec", spec, "--precision", "fp32",
            "--batch-size", str(batch), "--out", str(out),
        ]) == 0
        sidecars.append(json.loads(out.with_suffix(".json").read_text()))
        tables.append(pd.read_csv(out, dtype={"key": str}))
    assert sidecars[0]["prompts_sha256"] == sidecars[1]["prompts_sha256"]
    assert sidecars[0]["bos"] == "auto" and sidecars[0]["bos_token_id"] is None
    assert sidecars[1]["inv_freq"][1] == pytest.approx(500 ** (-2 / 16))
    cols = ["length", "depth", "trial", "key", "key_start", "key_end", "doc", "doc_offset"]
    assert tables[0][cols].equals(tables[1][cols]) and len(tables[0]) == 4
    assert list(tables[1].columns[:4]) == ["model", "method", "base", "tune_len"] and (tables[1].base == 500).all()


def test_a_stopped_passkey_job_resumes_from_its_answered_batches(corpus, tmp_path, monkeypatch, capsys):
    """As `tests/test_eval_resume.py` for perplexity: a job stopped partway through (here: the third batch's
    forward fails) leaves its answered batches in passkey_partial/; the next attempt answers only the rest and
    writes what an uninterrupted run writes, byte for byte."""
    import ropelaw.passkey

    tok = corpus.tokenizer
    model_dir = tmp_path / "model"
    tiny_llama(len(tok)).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    spec = json.dumps({**asdict(SPEC), "lengths": [96, 256], "depths": [0.25, 0.75], "trials": 1})
    cell = dict(model="t", method="base", base=10000, tune_len=64, head_dim=16, train_len=64, orig_base=1e4,
                eval_set="e", seed=None, kind="base", method_options={}, eval_lengths=[96, 256], untuned_dir="",
                training=None)
    seen = {"calls": 0, "stop_at": None}
    answer = ropelaw.passkey.greedy_answer

    def watched(*args):  # the real decoding, counted; the forward `stop_at` fails instead
        seen["calls"] += 1
        if seen["calls"] == seen["stop_at"]:
            raise KeyboardInterrupt("stopped")
        return answer(*args)

    monkeypatch.setattr(ropelaw.passkey, "greedy_answer", watched)

    def run(out):
        return main(["passkey", "--model", str(model_dir), "--cell-json", json.dumps(cell), "--eval-data",
                     str(corpus.root / "eval"), "--tokenizer", str(corpus.root / "tokenizer"), "--spec", spec,
                     "--precision", "fp32", "--batch-size", "1", "--out", str(out)])

    reference = tmp_path / "reference" / "passkey.csv"
    assert run(reference) == 0 and seen["calls"] == 4
    out = tmp_path / "cell" / "passkey.csv"
    seen.update(calls=0, stop_at=3)  # the first prompt of length 256
    with pytest.raises(KeyboardInterrupt):
        run(out)
    assert not out.exists()
    journal = out.parent / "passkey_partial"
    assert sorted(p.name for p in journal.iterdir()) == ["L96-batch-0.json", "L96-batch-1.json", "identity.json"]
    seen.update(calls=0, stop_at=None)
    capsys.readouterr()
    assert run(out) == 0 and seen["calls"] == 2
    assert "resuming: 2 finished batch(es) of 1 prompt(s)" in capsys.readouterr().out
    assert out.read_text() == reference.read_text()
    sidecars = [json.loads(path.with_suffix(".json").read_text()) for path in (reference, out)]
    for key in ("prompts_sha256", "accuracy_by_length"):
        assert sidecars[0][key] == sidecars[1][key]
    assert sidecars[1]["resumed_batches_seconds"] > 0 and not journal.exists()


def test_cli_answers_without_the_cache_where_it_does_not_fit(corpus, tmp_path):
    """`--memory-budget-gib` below the KV cache's reckoning: every length answered by the chunked forward
    (passkey.json says so, with its forwards), the table the cached run's."""
    tok = corpus.tokenizer
    model_dir = tmp_path / "model"
    tiny_llama(len(tok)).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    spec = json.dumps({**asdict(SPEC), "lengths": [96, 256], "depths": [0.5], "trials": 2})
    cell = dict(model="t", method="base", base=10000, tune_len=64, head_dim=16, train_len=64, orig_base=1e4,
                eval_set="e", seed=None, kind="base", method_options={}, eval_lengths=[96, 256], untuned_dir="",
                training=None)
    outs = {}
    for name, budget in (("cached", []), ("recomputed", ["--memory-budget-gib", "1e-4"])):
        outs[name] = tmp_path / name / "passkey.csv"
        assert main(["passkey", "--model", str(model_dir), "--cell-json", json.dumps(cell), "--eval-data",
                     str(corpus.root / "eval"), "--tokenizer", str(corpus.root / "tokenizer"), "--spec", spec,
                     "--precision", "fp32", *budget, "--out", str(outs[name])]) == 0
    assert outs["cached"].read_text() == outs["recomputed"].read_text()
    decoding = {name: json.loads(out.with_suffix(".json").read_text())["decoding"] for name, out in outs.items()}
    assert [(d["length"], d["path"], d["forwards"]) for d in decoding["cached"]] == [(96, "cache", 2), (256, "cache", 2)]
    assert [(d["length"], d["path"]) for d in decoding["recomputed"]] == [(96, "recompute"), (256, "recompute")]
    assert all(2 <= d["forwards"] <= 2 * 8 and d["head_groups"] >= 1 for d in decoding["recomputed"])


def test_prompt_that_cannot_fit_is_a_user_error(corpus):
    with pytest.raises(UserError, match="passkey.lengths: 40 tokens"):
        build_prompts(corpus.tokenizer, corpus.docs, SPEC, 40)
    with pytest.raises(UserError, match="passkey.lengths"):
        build_prompts(corpus.tokenizer, corpus.docs, SPEC, 512)
    with pytest.raises(UserError, match=r"passkey.needle must contain \{key\}"):
        replace(SPEC, needle="no key here")


@pytest.mark.parametrize("lengths, words", [([40, 96], "passkey.lengths: 40 tokens"), ([96, 512], "passkey.lengths: 512")])
def test_cli_refuses_a_length_it_cannot_build_before_loading_the_model(corpus, tmp_path, capsys, lengths, words):
    """Every length's prompts are built before the model loads: a bad one is the one line, not a model error
    (the model folder here holds no model) and not after the other lengths have run."""
    spec = json.dumps({**asdict(SPEC), "lengths": lengths, "depths": [0.5], "trials": 1})
    cell = dict(model="t", method="base", base=500, tune_len=64, head_dim=16, train_len=64, orig_base=1e4, eval_set="e",
                seed=None, kind="base", method_options={}, eval_lengths=[96, 256], untuned_dir="", training=None)
    (tmp_path / "model").mkdir()
    code = main(["passkey", "--model", str(tmp_path / "model"), "--cell-json", json.dumps(cell),
                 "--eval-data", str(corpus.root / "eval"), "--tokenizer", str(corpus.root / "tokenizer"),
                 "--spec", spec, "--precision", "fp32", "--out", str(tmp_path / "out/passkey.csv")])
    err = capsys.readouterr().err
    assert code != 0 and words in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def test_law_joins_retrieval_accuracy():
    # Base 500 finds every key at 128 and none at 256; base 1e6 misses one of its 8 prompts, at 256.
    rows = []
    for base in (500, 10**6):
        for length in (128, 256):
            for depth in (0.0, 1.0):
                for trial in range(2):
                    correct = length == 128 or (base == 10**6 and (depth, trial) != (0.0, 0))
                    rows.append(dict(model="m", method="base", base=base, tune_len=64, length=length,
                                     depth=depth, trial=trial, correct=correct))
    passkey = pd.DataFrame(rows)
    table = passkey_table(passkey)
    assert list(table.columns) == PASSKEY_COLUMNS and len(table) == 8 and (table.prompts == 2).all()
    assert table.set_index(["base", "length", "depth"]).loc[(10**6, 256, 0.0), "accuracy"] == 0.5
    cells = pd.DataFrame([dict(model="m", method="base", base=b, tune_len=64, measured_bound=256) for b in (500, 10**6)])
    joined = join_passkey(cells, passkey).set_index("base")
    assert joined.loc[500, "passkey_accuracy_len128"] == 1.0 and joined.loc[500, "passkey_accuracy_len256"] == 0.0
    assert joined.loc[10**6, "passkey_accuracy"] == pytest.approx(7 / 8)
    assert join_passkey(cells, pd.DataFrame()).equals(cells)


def test_config_checks_passkey_lengths():
    raw = load_yaml(ROOT / "tests" / "scenario" / "config.yaml")
    raw["passkey"]["lengths"] = [128, 512]
    with pytest.raises(UserError, match="passkey.lengths.*512 exceeds the longest of evaluation.lengths"):
        resolve(raw)
    raw["passkey"]["lengths"] = [8, 128]  # the scenario's templates have more than 8 words
    with pytest.raises(UserError, match=r"'passkey.lengths': 8 tokens cannot hold a passkey prompt of .*, which needs "
                                        r"at least \d+ .*drop the length or shorten the templates"):
        resolve(raw)
    raw["passkey"]["needle"] = "no key"
    with pytest.raises(UserError, match="passkey.needle"):
        resolve(raw)
    raw["passkey"] = {"enabled": False, "lengths": [512]}
    cfg, cells = resolve(raw)
    assert passkey_args(cfg, cells[0])["depths"] == [0.0, 0.25, 0.5, 0.75, 1.0]
    del raw["passkey"]
    cfg, cells = resolve(raw)
    assert not cfg["passkey"]["enabled"] and passkey_args(cfg, cells[0])["lengths"] == cfg["evaluation"]["lengths"]


def test_the_config_check_floor_is_below_the_prompt_the_job_builds(corpus):
    """lengths.template_floor refuses at check time only lengths the passkey job would refuse too (SmolLM2's
    tokenizer: tests/test_smollm2.py)."""
    assert_floor_holds(corpus.tokenizer, corpus.docs, SPEC)


def assert_floor_holds(tokenizer, docs, spec: PasskeySpec) -> None:
    from ropelaw.lengths import template_floor

    floor = template_floor(dict(asdict(spec), lengths=list(spec.lengths)))
    shortest = next(n for n in range(2, 4096) if _fits(tokenizer, docs, spec, n))
    assert floor <= shortest, (floor, shortest)
    with pytest.raises(UserError, match="cannot hold"):
        build_prompts(tokenizer, docs, spec, floor - 1)


def _fits(tokenizer, docs, spec, length) -> bool:
    try:
        build_prompts(tokenizer, docs, spec, length)
    except UserError:
        return False
    return True


@pytest.mark.parametrize("policy", ["auto", "true", "false"])
def test_bos_policy_puts_bos_first_or_not(corpus, policy):
    """evaluation.bos applies to prompts as to evaluation rows; this tokenizer adds no BOS by itself."""
    from ropelaw.tokentext import bos_id

    bos = bos_id(corpus.tokenizer, policy)
    prompts = build_prompts(corpus.tokenizer, corpus.docs, SPEC, 96, bos)
    plain = build_prompts(corpus.tokenizer, corpus.docs, SPEC, 96)
    assert (bos is not None) == (policy == "true")
    for prompt, other in zip(prompts, plain):
        assert len(prompt.input_ids) == 96
        assert (prompt.input_ids[0] == corpus.tokenizer.bos_token_id) == (policy == "true")
        assert np.array_equal(prompt.input_ids[prompt.key_start:prompt.key_end], other.input_ids[other.key_start:other.key_end])
        head = corpus.tokenizer(SPEC.prefix, add_special_tokens=False)["input_ids"]
        shift = int(policy == "true")
        assert prompt.input_ids[shift:shift + len(head)].tolist() == head == other.input_ids[:len(head)].tolist()
