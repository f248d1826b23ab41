"""`ropelaw.flash4`: FlashAttention-4's kernels as the evaluation's attention function, and how `auto` picks it.

The kernels run on NVIDIA GPUs only (their numbers against SDPA's: BENCHMARKS.md, "Twentieth session", and
`bench/attention.py`). Here, on CPU, the package's `flash_attn_func` (`flash4.kernel()`) is an independent float64
computation of what the kernel computes (causal softmax attention in its [B, L, H, d] layout, bottom-right aligned,
grouped KV heads): what is tested is ropelaw's side (layouts, scaling, registration with
transformers, no mask, the log-scaled wrapper, the chunked and grouped evaluation paths, KV-cache decoding, what
eval.json records), against SDPA through the same model. `pytest -q tests/test_flash4.py`.
"""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from evalkit import ROW, cell_json, make_kit

from ropelaw import UserError, flash4, methods
from ropelaw.cli import main


MISSING = flash4.missing  # the real check, before any test replaces it


def reference_flash_attn_func(q, k, v, softmax_scale=None, causal=False, **unused):
    """FlashAttention's function, by its definition: [B, Lq, H, d] queries, [B, Lk, H_kv, d] keys and values."""
    assert causal and not unused, "ropelaw asks for causal attention and nothing else"
    assert q.stride(-1) == k.stride(-1) == v.stride(-1) == 1, "the kernel reads rows of head_dim contiguously"
    _, lq, heads, dim = q.shape
    lk, kv_heads = k.shape[1], k.shape[2]
    qh = q.double().transpose(1, 2)
    kh, vh = (t.double().transpose(1, 2).repeat_interleave(heads // kv_heads, dim=1) for t in (k, v))
    scores = qh @ kh.transpose(-1, -2) * (dim**-0.5 if softmax_scale is None else softmax_scale)
    query_pos = torch.arange(lq)[:, None] + (lk - lq)  # bottom-right: the last query sees every key
    scores = scores.masked_fill(torch.arange(lk)[None, :] > query_pos, float("-inf"))
    return (scores.softmax(-1) @ vh).transpose(1, 2).to(q.dtype), None


@pytest.fixture
def kernel(monkeypatch):
    """The reference in place of the package's function, on a machine where flash4 may run."""
    monkeypatch.setattr(flash4, "kernel", lambda: reference_flash_attn_func)
    monkeypatch.setattr(flash4, "missing", lambda: None)
    return flash4.register()


def gqa_llama(attn: str):
    config = transformers.LlamaConfig(
        vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, max_position_embeddings=256, initializer_range=0.2,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, attn_implementation=attn,
    )
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config).float().eval()


def test_auto_is_flash4_on_hopper_where_the_package_imports(monkeypatch):
    monkeypatch.setattr(flash4, "register", lambda: flash4.NAME)
    for requested in ("sdpa", "eager", "flash_attention_2"):
        assert flash4.resolve(requested) == requested
    with pytest.raises(UserError, match="evaluation.attn_implementation: 'fa4' is not one of"):
        flash4.resolve("fa4")
    monkeypatch.setattr(flash4, "missing", lambda: "the package cannot be imported")
    assert flash4.resolve("auto") == "sdpa"
    monkeypatch.setattr(flash4, "missing", lambda: None)
    for capability, expected in (((9, 0), flash4.NAME), ((8, 0), "sdpa"), ((10, 0), "sdpa")):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, c=capability: c)
        assert flash4.resolve("auto") == expected, capability
        assert flash4.resolve("auto", decoding=True) == "sdpa"  # passkey's decoding: not measured
        assert flash4.resolve("flash4", decoding=True) == flash4.NAME  # asked for: used


@pytest.mark.parametrize("broken, says", [
    (lambda q, k, v, **kw: (torch.zeros_like(q), None), "differs from SDPA's by"),
    (lambda q, k, v, **kw: (reference_flash_attn_func(q, k, v, **kw)[0].flip(1), None), "differs from SDPA's by"),
    (lambda q, k, v, **kw: 1 / 0, "failed here (ZeroDivisionError"),
])
def test_a_kernel_that_fails_its_probe_is_not_used(monkeypatch, capsys, broken, says):
    monkeypatch.setattr(flash4, "missing", lambda: None)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (9, 0))
    monkeypatch.setattr(flash4, "kernel", lambda: reference_flash_attn_func)
    assert flash4.probe(16) is None and flash4.resolve("auto", head_dim=16) == flash4.NAME
    monkeypatch.setattr(flash4, "kernel", lambda: broken)
    assert says in flash4.probe(16)
    assert flash4.resolve("auto", head_dim=16) == "sdpa"  # auto falls back, and says why in one line
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "auto runs SDPA" in err[0] and says in err[0], err
    with pytest.raises(UserError, match="evaluation.attn_implementation is flash4, but its kernel"):
        flash4.resolve("flash4", head_dim=16)


@pytest.mark.skipif(flash4.missing() is None, reason="flash4 can run here")
def test_flash4_where_it_cannot_run_is_one_line_naming_the_key():
    with pytest.raises(UserError) as err:
        flash4.resolve("flash4")
    message = str(err.value)
    assert "evaluation.attn_implementation is flash4" in message and "flash-attn-4" in message
    assert "auto or sdpa" in message and len(message.splitlines()) == 1


def test_the_model_computes_the_same_with_flash4_as_with_sdpa(kernel):
    ids = torch.randint(0, 97, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = gqa_llama("sdpa")(ids).logits
        model = gqa_llama(kernel)
        got = model(ids).logits
        assert torch.allclose(got, want, atol=1e-5, rtol=1e-5), (got - want).abs().max()
        # KV-cache decoding: one query against every cached key, bottom-right aligned
        prompt = ids[:1, :24]
        greedy = dict(max_new_tokens=8, do_sample=False, pad_token_id=0)
        assert torch.equal(model.generate(prompt, **greedy), gqa_llama("sdpa").generate(prompt, **greedy))
        # the log-scaled methods wrap it as they wrap SDPA
        methods.register_logn_attention()
        scaled = {}
        for name in ("logn_sdpa", f"logn_{kernel}"):
            model = gqa_llama(name)
            model.config.logn_t_ref = 8
            scaled[name] = model(ids).logits
        assert torch.allclose(scaled["logn_sdpa"], scaled[f"logn_{kernel}"], atol=1e-5, rtol=1e-5)
        assert not torch.allclose(scaled["logn_sdpa"], want, atol=1e-3)  # the scale did something


def test_flash4_refuses_a_mask(kernel):
    query = torch.zeros(1, 2, 4, 8)
    with pytest.raises(ValueError, match="no attention mask"):
        flash4.attention(None, query, query, query, torch.ones(1, 1, 4, 4, dtype=torch.bool))


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    return make_kit(tmp_path_factory.mktemp("flash4"))


@pytest.mark.parametrize("chunk", ["auto", "16"])
def test_evaluate_with_flash4_scores_as_with_sdpa_and_says_so(kit, kernel, tmp_path, chunk, monkeypatch):
    tables = {}
    for attn in ("sdpa", "flash4", "auto"):
        if attn == "auto":  # this machine as it is: no GPU, so SDPA
            monkeypatch.setattr(flash4, "missing", MISSING)
        out = tmp_path / attn / "eval.csv"
        assert main(["evaluate", "--model", str(kit.model_dir), "--cell-json", cell_json(), "--eval-data",
                     str(kit.eval_dir), "--tokenizer", str(kit.tokenizer_dir), "--lengths", "64", str(ROW),
                     "--chunk-size", chunk, "--precision", "fp32", "--attn-implementation", attn,
                     "--out", str(out)]) == 0
        sidecar = json.loads(out.with_suffix(".json").read_text())
        assert sidecar["attn_implementation"] == attn
        assert sidecar["attention"] == {"sdpa": "sdpa", "flash4": flash4.NAME, "auto": "sdpa"}[attn]
        tables[attn] = __import__("pandas").read_csv(out)
    ppl = {attn: table["ppl"].to_numpy() for attn, table in tables.items()}
    assert abs(ppl["flash4"] / ppl["sdpa"] - 1).max() < 1e-6
    assert tables["auto"].equals(tables["sdpa"])
