"""Every RoPE method against an independent computation: inv_freq values by formula, attention by hand.

Tiny random LLaMAs on CPU (seconds). The numbers are computed here from the methods'
published formulas in plain Python floats, not with ropelaw.methods or transformers.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
import yaml
from transformers import LlamaConfig, LlamaForCausalLM

from ropelaw import UserError, methods, rope
from ropelaw.cells import Cell
from ropelaw.config import load_yaml, resolve
from ropelaw.evaluate import evaluate_cell
from ropelaw.models import load_causal_lm
from ropelaw.perplexity import naive_perplexity

ROOT = Path(__file__).resolve().parents[1]
D, T, B0, VOCAB = 16, 64, 10000.0, 97


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=2, head_dim=D, max_position_embeddings=T,
        initializer_range=0.2, rope_parameters=rope.rope_parameters(B0),
    )
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny") / "model"
    LlamaForCausalLM(config).save_pretrained(path)
    return path


def load(model_dir, method, **options):
    spec = methods.resolve(method, B0, head_dim=D, train_len=T, tune_len=T, options=options or None)
    model, inv_freq = load_causal_lm(model_dir, spec, precision="fp32")
    return model.eval(), inv_freq, spec


def plain(base):
    return [base ** (-2 * n / D) for n in range(D // 2)]


def assert_inv_freq(actual, expected):
    torch.testing.assert_close(actual.double(), torch.tensor(expected, dtype=torch.float64), rtol=1e-6, atol=0)


def test_linear_divides_every_frequency(model_dir):
    model, inv_freq, _ = load(model_dir, "linear", factor=4.0)
    assert_inv_freq(inv_freq, [f / 4.0 for f in plain(B0)])
    assert model.config.rope_parameters["rope_type"] == "linear"


def test_ntk_raises_the_base(model_dir):
    _, inv_freq, spec = load(model_dir, "ntk", factor=8.0)
    ntk_base = B0 * 8.0 ** (D / (D - 2))
    assert spec.rope_parameters["rope_theta"] == pytest.approx(ntk_base, rel=1e-12)
    assert_inv_freq(inv_freq, plain(ntk_base))
    # The highest frequency is kept; the lowest is divided by exactly the factor.
    assert inv_freq[0] == 1.0
    assert inv_freq[-1].item() == pytest.approx(plain(B0)[-1] / 8.0, rel=1e-6)


def yarn_by_hand(factor, beta_fast, beta_slow):
    """YaRN (Peng et al. 2023, reference code): dims between the correction dims get a linear ramp."""
    def correction_dim(rotations):  # the dim whose pair turns `rotations` times within T
        return D * math.log(T / (rotations * 2 * math.pi)) / (2 * math.log(B0))

    low = max(math.floor(correction_dim(beta_fast)), 0)
    high = min(math.ceil(correction_dim(beta_slow)), D - 1)
    out = []
    for n, theta in enumerate(plain(B0)):
        ramp = min(max((n - low) / (high - low), 0.0), 1.0)
        out.append(theta * (1 - ramp) + theta / factor * ramp)
    return out, low, high


def test_yarn_ramp_and_attention_factor(model_dir):
    model, inv_freq, _ = load(model_dir, "yarn", factor=4.0, beta_fast=2.0, beta_slow=1.0)
    expected, low, high = yarn_by_hand(4.0, 2.0, 1.0)
    assert 0 < low < high < D // 2, "the test must cover kept, ramped and interpolated dims"
    assert_inv_freq(inv_freq, expected)
    assert inv_freq[0] == 1.0 and inv_freq[-1].item() == pytest.approx(plain(B0)[-1] / 4.0, rel=1e-6)
    # cos and sin carry the attention factor 0.1 ln s + 1.
    mscale = 0.1 * math.log(4.0) + 1
    positions = torch.arange(5)[None]
    cos, sin = model.model.rotary_emb(torch.zeros(1, 5, 32), positions)
    angle = torch.tensor(expected)[None, :] * torch.arange(5.0)[:, None]
    torch.testing.assert_close(cos[0, :, : D // 2], torch.cos(angle) * mscale, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(sin[0, :, : D // 2], torch.sin(angle) * mscale, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("factor", [1.0, 2.0])
def test_dynamic_ntk_base_follows_the_length(model_dir, factor):
    model, inv_freq, spec = load(model_dir, "dynamic_ntk", factor=factor)
    assert spec.length_dependent
    assert_inv_freq(inv_freq, plain(B0))  # up to T_train the original frequencies
    for length in (T, 3 * T):
        model.model(torch.zeros(1, length, dtype=torch.long))
        scaled = B0 * max(1.0, factor * length / T - (factor - 1)) ** (D / (D - 2))
        assert_inv_freq(rope.inv_freq_in_effect(model), plain(scaled))
        torch.testing.assert_close(rope.expected_inv_freq(spec, D, length), torch.tensor(plain(scaled), dtype=torch.float64))


def test_dynamic_ntk_resets_before_a_shorter_pass_above_t_train(model_dir):
    """After a pass at 4T the rotary module holds the base scaled for 4T; a pass at 2T (still above
    T_train, where transformers does not reset by itself) must use the base of 2T, as a fresh model does.
    Guards perplexity.reset_dynamic_rope (issue 11: every earlier test started below T_train)."""
    from ropelaw.perplexity import token_stats

    docs = torch.as_tensor(np.random.default_rng(1).integers(0, VOCAB, size=(1, 4 * T)))
    model, _, spec = load(model_dir, "dynamic_ntk", factor=2.0)
    token_stats(model, docs)  # the longest pass first: 4T
    assert_inv_freq(rope.inv_freq_in_effect(model), rope.expected_inv_freq(spec, D, 4 * T).tolist())
    nll_after_long, _ = token_stats(model, docs[:, : 2 * T])
    assert_inv_freq(rope.inv_freq_in_effect(model), rope.expected_inv_freq(spec, D, 2 * T).tolist())
    fresh, _, _ = load(model_dir, "dynamic_ntk", factor=2.0)
    nll_fresh, _ = token_stats(fresh, docs[:, : 2 * T])
    torch.testing.assert_close(nll_after_long, nll_fresh, rtol=1e-6, atol=1e-6)
    assert naive_perplexity(model, docs, 2 * T)[0] == pytest.approx(naive_perplexity(fresh, docs, 2 * T)[0], rel=1e-6)


def write_eval_dir(path: Path, docs: np.ndarray) -> Path:
    path.mkdir()
    docs.astype(np.uint16).tofile(path / "docs.bin")
    (path / "manifest.json").write_text(json.dumps({"n_docs": len(docs), "length": docs.shape[1], "dtype": "<u2"}))
    return path


def cell(method):
    return Cell("tiny", method, int(B0), T, None, kind=method, head_dim=D, train_len=T, orig_base=B0, eval_set="random",
                method_options={"factor": 1.0}, eval_lengths=(T // 2, 2 * T, 4 * T), untuned_dir="", training=None)


def test_dynamic_ntk_is_evaluated_one_forward_per_length(model_dir, tmp_path):
    """The evaluation picks one forward per length from the method, and matches fresh passes."""
    docs = np.random.default_rng(0).integers(0, VOCAB, size=(2, 4 * T))
    eval_dir = write_eval_dir(tmp_path / "eval", docs)
    lengths = [T // 2, 2 * T, 4 * T]
    kwargs = dict(chunk_size=64, batch_size=1, precision="fp32", attn_implementation="sdpa")
    table, sidecar = evaluate_cell(model_dir, cell("dynamic_ntk"), eval_dir, lengths, **kwargs)
    assert sidecar["one_pass"] is False and sidecar["method"]["rope_parameters"]["rope_type"] == "dynamic"
    ppl = table[table.scope == "prefix"].set_index("end").ppl
    for n in lengths:  # a model built afresh for each length: no rotary state carried over
        fresh, _, _ = load(model_dir, "dynamic_ntk", factor=1.0)
        assert ppl[n] == pytest.approx(naive_perplexity(fresh, docs, n)[0], rel=1e-5)
    # The prefix shortcut would score 2T with the base scaled for 4T: a different number.
    fresh, _, _ = load(model_dir, "dynamic_ntk", factor=1.0)
    with torch.no_grad():
        logits = fresh(torch.as_tensor(docs)).logits[:, : 2 * T - 1]
    shortcut = torch.exp(F.cross_entropy(logits.transpose(1, 2), torch.as_tensor(docs)[:, 1 : 2 * T])).item()
    assert shortcut != pytest.approx(ppl[2 * T], rel=1e-3)
    plain_table, plain_sidecar = evaluate_cell(model_dir, cell("untuned"), eval_dir, lengths, **kwargs)
    assert plain_sidecar["one_pass"] is True


def test_log_scaled_attention_matches_a_hand_computation(model_dir):
    t_ref, length = 8, 40
    model, _, spec = load(model_dir, "logn", t_ref=t_ref)
    assert spec.logn_t_ref == t_ref and model.config._attn_implementation == "logn_sdpa"
    ids = torch.randint(0, VOCAB, (1, length), generator=torch.Generator().manual_seed(3))
    captured = {}
    attn = model.model.layers[0].self_attn
    hook = attn.register_forward_hook(lambda m, args, kwargs, out: captured.update(out=out[0], x=kwargs["hidden_states"]),
                                      with_kwargs=True)
    with torch.no_grad():
        logits_model = model(ids).logits
    hook.remove()

    # By hand: project, rotate (LLaMA's rotate-half pairs n and n + d/2), scale the logits of the
    # query at position p by max(1, ln(p+1)/ln(T_ref)), causal softmax, values, output projection.
    x = captured["x"][0].double()
    heads, half = 2, D // 2
    q = (x @ attn.q_proj.weight.double().T).view(length, heads, D).transpose(0, 1)
    k = (x @ attn.k_proj.weight.double().T).view(length, heads, D).transpose(0, 1)
    v = (x @ attn.v_proj.weight.double().T).view(length, heads, D).transpose(0, 1)
    angle = torch.arange(length, dtype=torch.float64)[:, None] * torch.tensor(plain(B0), dtype=torch.float64)[None]
    cos, sin = torch.cos(angle), torch.sin(angle)

    def rotate(t):
        a, b = t[..., :half], t[..., half:]
        return torch.cat([a * cos - b * sin, b * cos + a * sin], dim=-1)

    scale = torch.tensor([max(1.0, math.log(p + 1) / math.log(t_ref)) for p in range(length)], dtype=torch.float64)
    logits_hand = rotate(q) @ rotate(k).transpose(-1, -2) / math.sqrt(D) * scale[:, None]
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    weights = torch.softmax(logits_hand.masked_fill(~causal, -math.inf), dim=-1)
    out_hand = (weights @ v).transpose(0, 1).reshape(length, heads * D) @ attn.o_proj.weight.double().T
    torch.testing.assert_close(captured["out"][0].double(), out_hand, rtol=1e-4, atol=1e-5)

    # Before T_ref the scale is 1: log-scaled attention changes nothing there, and something after.
    untuned, _, _ = load(model_dir, "untuned")
    with torch.no_grad():
        logits_plain = untuned(ids).logits
    torch.testing.assert_close(logits_model[:, :t_ref], logits_plain[:, :t_ref], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(logits_model[:, t_ref:], logits_plain[:, t_ref:], atol=1e-3)


def test_base_logn_keeps_the_tuned_base(model_dir):
    spec = methods.resolve("base_logn", 500, head_dim=D, train_len=T, tune_len=2 * T, options={"t_ref": "tune_len"})
    model, inv_freq = load_causal_lm(model_dir, spec, precision="fp32")
    assert_inv_freq(inv_freq, plain(500.0))
    assert spec.logn_t_ref == 2 * T and spec.uses_tuned_model and not spec.trains
    with pytest.raises(UserError, match="attn_implementation"):
        methods.attention_implementation(spec, "eager")


def test_the_wrong_frequencies_are_refused(model_dir):
    model, _, _ = load(model_dir, "untuned")
    linear = methods.resolve("linear", B0, head_dim=D, train_len=T, options={"factor": 2.0})
    with pytest.raises(RuntimeError, match="does not match method linear"):
        rope.verify_inv_freq(model, linear, D)


def test_defaults_are_the_schemas():
    schema = yaml.safe_load((ROOT / "schemas/config.schema.yaml").read_text())
    blocks = schema["properties"]["methods"]["properties"]
    from_schema = {name: {k: v["default"] for k, v in block["properties"].items()} for name, block in blocks.items()}
    assert from_schema == methods.DEFAULT_OPTIONS
    described = schema["properties"]["grid"]["items"]["properties"]["method"]["description"]
    assert all(name in described for name in methods.GRID_METHODS)  # any other name: a variant (ropelaw.grid)


# --- the grid's method axis -------------------------------------------------------------------


@pytest.fixture
def raw():
    return load_yaml(ROOT / "tests" / "scenario" / "config.yaml")


def test_training_free_cells_sit_at_the_original_base(raw):
    raw["grid"] += [{"model": "mini", "method": m} for m in ("linear", "ntk", "dynamic_ntk", "yarn", "logn")]
    raw["grid"].append({"model": "mini", "method": "base_logn", "tune_lengths": [64], "bases": ["beta3"]})
    _, cells = resolve(raw)
    paths = [c.path for c in cells]
    for method in ("linear", "ntk", "dynamic_ntk", "yarn", "logn"):
        assert f"results/mini/{method}/base10000_len64" in paths
    assert "results/mini/base_logn/base10_len64" in paths


def _error(raw) -> str:
    with pytest.raises(UserError) as info:
        resolve(raw)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_training_free_block_refuses_bases(raw):
    raw["grid"].append({"model": "mini", "method": "yarn", "bases": [500]})
    message = _error(raw)
    assert "grid[1]" in message and "training-free" in message and "bases" in message


def test_base_logn_needs_its_base_cell(raw):
    raw["grid"].append({"model": "mini", "method": "base_logn", "tune_lengths": [64], "bases": [500]})
    message = _error(raw)
    assert "base 500" in message and "method: base" in message


def test_method_options_are_checked(raw):
    raw["grid"].append({"model": "mini", "method": "logn"})
    raw["methods"] = {"logn": {"t_ref": "tune_lenn"}}
    assert "methods.logn.t_ref" in _error(raw)
    raw["methods"] = {"yarn": {"factr": 2}}
    assert "did you mean 'factor'" in _error(raw)


def test_law_and_figures_take_every_method(tmp_path):
    """Training-free cells get a measured bound but no prediction; every figure draws."""
    from synthetic import eval_tables, write_cell

    from ropelaw.figures import Tables, draw, figure_names, prefix_rows
    from ropelaw.law import load_evals, measure

    paths = []
    for method, base in (("untuned", 10000), ("base", 10), ("base", 10000), ("base", 1000000), ("base_logn", 10),
                         ("yarn", 10000), ("dynamic_ntk", 10000)):
        rises = method in ("untuned", "base") and base == 10000  # 1.6x from 128 on
        curve = lambda x, p, r=rises: math.log(10.0) + (math.log(1.6) if r and x > 128 else 0.0)  # noqa: E731
        paths.append(write_cell(tmp_path, *eval_tables(curve, model="mini", method=method, base=base,
                                                       lengths=[32, 64, 128, 256], one_pass=method != "dynamic_ntk")))
    cells, fit, boot, _ = measure(paths, "segment", 1.5, 20, 0)
    table = cells.set_index("method")
    assert table.loc["yarn", "regime"] == "training-free" and np.isnan(table.loc["yarn", "predicted_bound"])
    assert table.loc["yarn", "censored"] == "right" and table.loc["untuned", "censored"] == "no"
    assert set(fit.method) == {"base", "base_logn"}
    tables = Tables(prefix_rows(load_evals(paths)), cells, fit, boot)
    names = figure_names(cells, None)
    assert set(names) == {"ppl_vs_length_mini_len64", "bound_vs_base", "critical_dimension"}
    for args in names.values():
        draw(args.pop("kind"), tables, "test", **args)


def test_editing_a_method_block_changes_only_its_cells(tmp_path):
    """Method options reach the evaluate rule as params (the cell JSON): Snakemake's params
    trigger then re-runs exactly the cells whose command changed."""
    import subprocess
    import sys

    raw = load_yaml(ROOT / "tests" / "scenario" / "config.yaml")
    raw["grid"] += [{"model": "mini", "method": m} for m in ("linear", "yarn", "logn")]
    raw["grid"].append({"model": "mini", "method": "base_logn", "tune_lengths": [64], "bases": ["beta3"]})
    commands = []
    for yarn_factor, t_ref in ((4.0, "tune_len"), (8.0, "tune_len"), (8.0, 32)):
        raw["methods"] = {"yarn": {"factor": yarn_factor}, "logn": {"t_ref": t_ref}}
        path = tmp_path / f"c{len(commands)}.yaml"
        path.write_text(yaml.safe_dump(raw))
        result = subprocess.run([sys.executable, "-m", "snakemake", "-n", "-p", "--cores", "1", "--configfile", str(path),
                                 "--forceall"], cwd=ROOT, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr[-2000:]
        lines = [line for line in result.stdout.splitlines() if "ropelaw evaluate" in line]
        commands.append({line.split("--out ")[1].split()[0]: line for line in lines})
    assert {p.split("/")[2] for p in commands[0]} >= {"untuned", "base", "linear", "yarn", "logn", "base_logn"}
    changed = lambda a, b: sorted(p.split("/")[2] for p in a if a[p] != b[p])  # noqa: E731
    assert changed(commands[0], commands[1]) == ["yarn"]
    assert changed(commands[1], commands[2]) == ["base_logn", "logn"]


# --- split: pairs below k at one base, from k on at another (or not rotating) -----------------

K = 3  # a rotary pair index of the tiny model's 8 pairs


def split_by_hand(low_base, high_base):
    """Pair n < K: low_base^(-2n/D); n >= K: high_base^(-2n/D), or 0 when high_base is None."""
    return [low_base ** (-2 * n / D) if n < K else 0.0 if high_base is None else high_base ** (-2 * n / D)
            for n in range(D // 2)]


def split(base, **options):
    return methods.resolve("crit", base, head_dim=D, train_len=T, tune_len=T, orig_base=B0,
                           options={"kind": "split", "k": K, **options})


@pytest.mark.parametrize("base, options, low, high", [
    (1e6, {"low_base": 1e5}, 1e5, 1e6),                       # (i) low pairs at 1e5, high pairs at 1e6
    (1e5, {"low_base": 1e6}, 1e6, 1e5),                       # (ii) the reverse
    (1e6, {"low_base": 1e5, "high": "frozen"}, 1e5, None),    # (iii) high pairs do not rotate
    (1e6, {}, B0, 1e6),                                       # low_base defaults to the model's own b0
    (1e6, {"low_base": "1e5"}, 1e5, 1e6),                     # as YAML reads 1e5
])
def test_split_inv_freq_is_the_hand_computation(model_dir, base, options, low, high):
    spec = split(base, **options)
    hand = split_by_hand(low, high)
    assert spec.name == "crit" and spec.kind == "split" and spec.trains and spec.base == base
    assert list(spec.inv_freq) == pytest.approx(hand, rel=1e-15, abs=0)
    hand64 = torch.tensor(hand, dtype=torch.float64)
    torch.testing.assert_close(rope.expected_inv_freq(spec, D), hand64, rtol=1e-15, atol=0)
    model, inv_freq = load_causal_lm(model_dir, spec, precision="fp32")
    rotary = model.model.rotary_emb
    for buffer in (rotary.inv_freq, rotary.original_inv_freq):  # both, so no reset brings the old ones back
        assert torch.equal(buffer, torch.tensor(hand, dtype=torch.float64).float())
    torch.testing.assert_close(inv_freq, torch.tensor(hand, dtype=torch.float64), rtol=1e-7, atol=0)


def test_split_attention_logits_match_a_hand_rotation(model_dir):
    """Attention of one head of the split model against numpy float64: q and k rotated by position x inv_freq."""
    low, high, length, head = 1e5, 1e6, 24, 1
    model, _ = load_causal_lm(model_dir, split(high, low_base=low), precision="fp32", attn_implementation="eager")
    ids = torch.randint(0, VOCAB, (1, length), generator=torch.Generator().manual_seed(5))
    captured = {}
    attn = model.model.layers[0].self_attn
    hook = attn.register_forward_hook(lambda m, args, kwargs, out: captured.update(x=kwargs["hidden_states"]),
                                      with_kwargs=True)
    with torch.no_grad():
        probs_model = model(ids, output_attentions=True).attentions[0][0, head].double().numpy()
    hook.remove()

    x = captured["x"][0].double().numpy()
    rows = slice(head * D, (head + 1) * D)
    q = x @ attn.q_proj.weight.detach().double().numpy()[rows].T  # [length, D]
    k = x @ attn.k_proj.weight.detach().double().numpy()[rows].T
    angle = np.arange(length)[:, None] * np.array(split_by_hand(low, high))[None, :]  # [length, D/2]
    cos, sin = np.cos(angle), np.sin(angle)
    half = D // 2

    def rotate(t):  # LLaMA pairs dim n with dim n + D/2
        a, b = t[:, :half], t[:, half:]
        return np.concatenate([a * cos - b * sin, b * cos + a * sin], axis=1)

    logits_hand = rotate(q) @ rotate(k).T / math.sqrt(D)
    logits_hand[np.triu_indices(length, 1)] = -np.inf
    probs_hand = np.exp(logits_hand - logits_hand.max(axis=1, keepdims=True))
    probs_hand /= probs_hand.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(probs_model, probs_hand, rtol=1e-4, atol=1e-6)
    # The same head with plain base 1e6 attends differently: the low pairs matter.
    plain_model, _ = load_causal_lm(model_dir, high, precision="fp32", attn_implementation="eager")
    with torch.no_grad():
        probs_plain = plain_model(ids, output_attentions=True).attentions[0][0, head].double().numpy()
    assert not np.allclose(probs_plain, probs_hand, atol=1e-4)


@pytest.fixture
def trainable_dir(model_dir, tmp_path):
    """The tiny model with a tokenizer beside it, and packed rows of T tokens to train on."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    out = tmp_path / "model"
    LlamaForCausalLM.from_pretrained(model_dir).save_pretrained(out)
    PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({f"t{i}": i for i in range(VOCAB)}, unk_token="t0")),
        eos_token="t1", unk_token="t0",
    ).save_pretrained(out)
    data = tmp_path / "data"
    data.mkdir()
    np.random.default_rng(0).integers(0, VOCAB, size=(4, T)).astype("<u2").tofile(data / "tokens.bin")
    (data / "manifest.json").write_text(json.dumps({"n_sequences": 4, "seq_len": T, "dtype": "<u2"}))
    return out, data


def test_split_fine_tunes_and_reloads_with_its_inv_freq(trainable_dir, tmp_path):
    from ropelaw.cli import main

    model_dir, data = trainable_dir
    spec = split(1e6, low_base=1e5)
    hand = torch.tensor(split_by_hand(1e5, 1e6), dtype=torch.float64)
    train_spec = {
        "steps": 1, "global_batch_size": 2, "micro_batch_size": 2, "lr": 1e-3, "lr_schedule": "constant",
        "warmup_steps": 0, "weight_decay": 0.0, "max_grad_norm": 1.0, "adam_beta1": 0.9, "adam_beta2": 0.999,
        "adam_epsilon": 1e-8, "seed": 0, "precision": "fp32", "gradient_checkpointing": False,
        "attn_implementation": "sdpa", "deepspeed": None, "checkpoint_every": 100, "length_multiple": 1,
        "logging_steps": 1, "compile": False,
    }
    out = tmp_path / "tuned"
    assert main(["finetune", "--model", str(model_dir), "--data", str(data), "--base", "1e6",
                 "--spec", json.dumps(train_spec), "--method", json.dumps(spec.to_json()),
                 "--checkpoints", str(tmp_path / "ckpt"), "--out", str(out)]) == 0
    manifest = json.loads((out / "ropelaw_manifest.json").read_text())
    assert torch.equal(torch.tensor(manifest["inv_freq"], dtype=torch.float64).float(), hand.float())
    assert manifest["method"]["kind"] == "split" and manifest["method"]["name"] == "crit"
    # A plain reload cannot know the split (transformers' config holds one base): the loader re-applies it.
    plain = LlamaForCausalLM.from_pretrained(out)
    assert not torch.equal(rope.inv_freq_in_effect(plain).float(), hand.float())
    reloaded, inv_freq = load_causal_lm(out, spec, precision="fp32")
    assert torch.equal(inv_freq.float(), hand.float())
    assert torch.equal(reloaded.model.rotary_emb.original_inv_freq, hand.float())
    name = "model.layers.0.self_attn.q_proj.weight"  # the step moved the weights
    assert not torch.equal(reloaded.state_dict()[name], LlamaForCausalLM.from_pretrained(model_dir).state_dict()[name])


@pytest.mark.parametrize("options, key", [
    ({"k": 0}, "methods.crit.k"),
    ({"k": D // 2}, "methods.crit.k"),
    ({"k": 2.5}, "methods.crit.k"),
    ({"k": True}, "methods.crit.k"),
    ({"k": None}, "methods.crit.k"),
    ({"k": K, "low_base": 1}, "methods.crit.low_base"),
    ({"k": K, "low_base": "original"}, "methods.crit.low_base"),
    ({"k": K, "low_base": float("nan")}, "methods.crit.low_base"),
    ({"k": K, "high": "off"}, "methods.crit.high"),
    ({"k": K, "lowbase": 1e5}, "methods.crit.lowbase"),
])
def test_split_options_are_one_line_errors(options, key):
    with pytest.raises(UserError) as info:
        methods.resolve("crit", 1e6, head_dim=D, orig_base=B0, options={"kind": "split", **options})
    message = str(info.value)
    assert f"'{key}'" in message and "\n" not in message


def test_variants_resolve_by_kind_and_say_whether_they_train():
    assert methods.trains("split") and methods.trains("base") and not methods.trains("yarn")
    yarn8 = methods.resolve("yarn8", B0, head_dim=D, train_len=T, options={"kind": "yarn", "factor": 8.0})
    assert (yarn8.name, yarn8.kind, yarn8.rope_parameters["factor"], yarn8.trains) == ("yarn8", "yarn", 8.0, False)
    with pytest.raises(UserError, match="'methods.yarn8.factor'"):
        methods.resolve("yarn8", B0, head_dim=D, train_len=T, options={"kind": "yarn", "factor": 0.5})
    with pytest.raises(UserError, match="needs 'kind'"):
        methods.resolve("mystery", B0)
    with pytest.raises(UserError, match="'methods.odd.kind'"):
        methods.resolve("odd", B0, options={"kind": "rotate"})
    spec = split(1e6, low_base=1e5)
    by_kind = methods.resolve("split", 1e6, head_dim=D, orig_base=B0, options={"k": K, "low_base": 1e5}, name="crit")
    assert by_kind == spec
    with pytest.raises(UserError, match="'methods.crit.k'"):
        methods.resolve("split", 1e6, head_dim=D, orig_base=B0, options={"k": D}, name="crit")
    assert methods.MethodSpec.from_json(json.dumps(spec.to_json())) == spec
    with pytest.raises(UserError) as info:
        methods.MethodSpec.from_json('{"name": "crit"')
    assert "\n" not in str(info.value) and "--method" in str(info.value)
