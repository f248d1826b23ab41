"""The fast fine-tuning paths (`finetune.fused_loss`) compute what the plain path computes (fp32, CPU).

Both chunked losses of `ropelaw.fastloss` (grad_in_forward, checkpointed) against transformers' own
loss, on a tiny LLaMA with tied and with untied embeddings: the same loss, and every parameter's
gradient within 1e-6 relative (in norm), with ignored targets, `num_items_in_batch`, an incoming
gradient other than 1, and chunks that do not divide the positions; never a chunk of logits wider
than the chunk, and grad_in_forward never computes logits in the backward pass (nor gradients
without autograd). Under CPU bf16 autocast its lm_head matmuls run in bf16 and its gradients are as
close to the fp32 ones as the plain path's. Through `ropelaw finetune`, the three paths give the
same per-step losses (1e-5) and final weights (1e-5 in norm) over 5 optimizer steps (torch's fused
AdamW, the Trainer's default); `true` runs grad_in_forward, except under ZeRO-3.
`pytest -q tests/test_finetune_fast.py`: ~90 s on two busy cores.
"""

from __future__ import annotations

import contextlib
import copy
import json
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from finetune_cell import SPEC, finetune, make_cell, manifest
from safetensors.torch import load_file
from torch.utils._python_dispatch import TorchDispatchMode

from ropelaw import UserError, fastloss
from ropelaw.specs import LOSS_PATHS, loss_path

VOCAB = 211
ZERO3 = Path(__file__).resolve().parents[1] / "config" / "deepspeed" / "zero3.json"


@pytest.fixture(scope="module", params=[True, False], ids=["tied", "untied"])
def model(request):
    config = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=16, tie_word_embeddings=request.param,
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).float()
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == request.param
    return model


class LogitRows(TorchDispatchMode):
    """The rows of every matmul output as wide as the vocabulary, in the forward and in the backward,
    and the count of matmul outputs as tall as the vocabulary (the lm_head weight's gradients)."""

    def __init__(self):
        super().__init__()
        self.rows = {"forward": [], "backward": []}
        self.phase = "forward"
        self.dtypes = set()
        self.tall = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in (torch.ops.aten.mm.default, torch.ops.aten.addmm.default) and out.shape[-1] == VOCAB:
            self.rows[self.phase].append(out.shape[0])
            self.dtypes.add(out.dtype)
        elif func is torch.ops.aten.mm.default and out.shape[0] == VOCAB:
            self.tall += 1
        return out


def _batch():
    ids = torch.randint(0, VOCAB, (3, 21), generator=torch.Generator().manual_seed(1))
    labels = ids.clone()
    labels[1, :5] = -100  # ignored targets count neither in the sum nor in the mean
    return ids, labels


def _loss_and_grads(model, ids, labels, count_rows=True, **kwargs):
    """Loss and gradients; `count_rows`: under LogitRows, a dispatch mode, in which torch.compile runs eagerly."""
    model.zero_grad()
    with LogitRows() if count_rows else contextlib.nullcontext(LogitRows()) as rows:
        loss = model(input_ids=ids, labels=labels, **kwargs).loss
        rows.phase = "backward"
        (0.37 * loss).backward()  # a gradient other than 1 flows in, as under some loss scalings
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    return loss.detach(), grads, rows


@pytest.mark.parametrize("path", LOSS_PATHS)
@pytest.mark.parametrize("chunk", [7, 24, 64, 4096])
@pytest.mark.parametrize("num_items", [None, 50])
def test_chunked_loss_and_gradients_equal_the_plain_ones(model, path, chunk, num_items):
    ids, labels = _batch()
    kwargs = {} if num_items is None else {"num_items_in_batch": torch.tensor(num_items)}
    plain_loss, plain_grads, plain_rows = _loss_and_grads(model, ids, labels, **kwargs)
    assert plain_rows.rows == {"forward": [3 * 21], "backward": []}
    fast = copy.deepcopy(model)
    fastloss.install_chunked_loss(fast, path, chunk)
    compiled = path == "grad_in_forward_compiled"  # counted, it would run eagerly: its rows are grad_in_forward's
    fast_loss, fast_grads, logits = _loss_and_grads(fast, ids, labels, count_rows=not compiled, **kwargs)
    rows = logits.rows
    chunks = [min(chunk, 63 - start) for start in range(0, 63, chunk)]
    # grad_in_forward: each chunk's logits once, in the forward; checkpointed: again in the backward
    assert rows["forward"] == ([] if compiled else chunks)
    assert sorted(rows["backward"]) == ([] if path.startswith("grad_in_forward") else sorted(chunks))
    torch.testing.assert_close(fast_loss, plain_loss, rtol=1e-6, atol=0)
    assert set(fast_grads) == set(plain_grads)
    for name, grad in plain_grads.items():  # relative to the tensor: elements near 0 are summation noise
        assert (fast_grads[name] - grad).norm() <= 1e-6 * grad.norm(), name
    assert fast(input_ids=ids).logits.shape == (3, 21, VOCAB)  # without labels: the plain forward


def test_under_bf16_autocast_the_gradients_are_as_accurate_as_the_plain_ones(model):
    """bf16 rounds at other points than the plain path does: both are compared with the fp32 gradients."""
    ids, labels = _batch()
    fast = copy.deepcopy(model)
    fastloss.install_chunked_loss(fast, "grad_in_forward", 24)
    _, exact, _ = _loss_and_grads(copy.deepcopy(model), ids, labels)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain_loss, plain_grads, plain_logits = _loss_and_grads(model, ids, labels)
        fast_loss, fast_grads, fast_logits = _loss_and_grads(fast, ids, labels)
    assert plain_logits.dtypes == fast_logits.dtypes == {torch.bfloat16}  # the lm_head matmuls in bf16
    torch.testing.assert_close(fast_loss, plain_loss, rtol=1e-5, atol=0)
    assert all(grad.dtype == torch.float32 for grad in fast_grads.values())

    def error(grads):  # the largest relative error of a parameter's gradient (measured: plain 7.5e-3, fast 8.1e-3)
        return max(((grads[name] - grad).norm() / grad.norm()).item() for name, grad in exact.items())

    assert error(fast_grads) <= 1.25 * error(plain_grads) and error(plain_grads) < 0.02


def test_without_gradients_only_the_loss_is_computed(model):
    ids, labels = _batch()
    fast = copy.deepcopy(model)
    fastloss.install_chunked_loss(fast, "grad_in_forward", 24)
    with torch.no_grad(), LogitRows() as logits:
        loss = fast(input_ids=ids, labels=labels).loss
        plain = model(input_ids=ids, labels=labels).loss
    torch.testing.assert_close(loss, plain, rtol=1e-6, atol=0)
    assert logits.rows["forward"] == [24, 24, 15, 63] and logits.tall == 0 and not loss.requires_grad


def test_the_loss_path_of_each_setting(tmp_path):
    from ropelaw.trainer import loss_path_of
    from ropelaw.train_plan import TrainSpec

    assert [loss_path(v, zero3=False) for v in (True, False, *LOSS_PATHS)] == [
        "grad_in_forward", "plain", "grad_in_forward", "checkpointed", "grad_in_forward_compiled"]
    assert [loss_path(v, zero3=True) for v in (True, False, "checkpointed")] == [
        "checkpointed", "plain", "checkpointed"]
    with pytest.raises(UserError, match="'finetune.fused_loss' is grad_in_forward, which is not supported under "
                       "DeepSpeed ZeRO-3.*set it to true or checkpointed"):
        loss_path("grad_in_forward", zero3=True)
    with pytest.raises(UserError, match="'finetune.fused_loss' is grad_in_forward_compiled, which is not supported "
                       "under DeepSpeed ZeRO-3.*set it to true or checkpointed"):
        loss_path("grad_in_forward_compiled", zero3=True)
    spec = TrainSpec(**{**SPEC, "fused_loss": True})
    assert loss_path_of(spec) == "grad_in_forward"
    assert loss_path_of(dataclasses.replace(spec, deepspeed=str(ZERO3))) == "checkpointed"
    # the stage DeepSpeed itself reads from the JSON, through the Trainer's arguments
    args = transformers.TrainingArguments(output_dir=str(tmp_path), deepspeed=str(ZERO3), report_to=[])
    assert args.deepspeed_plugin.zero_stage == 3


def test_an_lm_head_with_a_bias_is_refused_by_grad_in_forward(model):
    biased = copy.deepcopy(model)
    biased.lm_head = torch.nn.Linear(32, VOCAB, bias=True)
    with pytest.raises(UserError, match="lm_head with a bias.*set fused_loss: checkpointed or false"):
        fastloss.install_chunked_loss(biased, "grad_in_forward")


def test_the_schema_offers_exactly_the_paths():
    from ropelaw.config import load_schema

    node = load_schema()["$defs"]["training"]["properties"]["fused_loss"]
    assert node["enum"] == [True, False, *LOSS_PATHS] and node["default"] is True


def test_finetune_with_each_loss_path_trains_like_the_plain_path(tmp_path, monkeypatch):
    cell = make_cell(tmp_path, hidden=32, vocab=96)
    monkeypatch.setattr(fastloss, "CHUNK_TOKENS", 24)  # 64 positions per micro-batch: 3 uneven chunks
    runs = {"plain": False, "fast": True, "checkpointed": "checkpointed", "compiled": "grad_in_forward_compiled"}
    steps, weights = {}, {}
    for name, fused in runs.items():
        assert finetune(cell, name, {"logging_steps": 1, "steps": 5, "fused_loss": fused}) == 0
        record = manifest(cell, name)
        assert record["spec"]["fused_loss"] == fused
        assert record["loss_path"] == {"plain": "plain", "fast": "grad_in_forward"}.get(name, fused)
        steps[name] = [(row["step"], row["loss"]) for row in record["log_history"] if "loss" in row]
        weights[name] = load_file(cell / name / "model.safetensors")
    assert all([s for s, _ in steps[name]] == [1, 2, 3, 4, 5] for name in runs)
    assert steps["plain"][0][1] != steps["plain"][-1][1]  # the weights moved
    for name in ("fast", "checkpointed", "compiled"):
        np.testing.assert_allclose([x for _, x in steps[name]], [x for _, x in steps["plain"]], rtol=1e-5)
        for key, tensor in weights["plain"].items():  # in norm: Adam magnifies the noise of gradients near 0
            assert (weights[name][key] - tensor).norm() <= 1e-5 * tensor.norm(), f"{name} {key}"
    assert SPEC["precision"] == "fp32"


def test_the_compiled_path_runs_the_chunk_through_torch_compile(model):
    """grad_in_forward_compiled computes each chunk's NLL and gradient in a torch.compile'd function (the
    equality test above holds for it too): dynamo captures it, and the eager grad_in_forward captures nothing."""
    from torch._dynamo.utils import counters

    ids, labels = _batch()
    for path, graphs in (("grad_in_forward", 0), ("grad_in_forward_compiled", 1)):
        torch._dynamo.reset()
        counters.clear()
        fast = copy.deepcopy(model)
        fastloss.install_chunked_loss(fast, path, 24)
        _loss_and_grads(fast, ids, labels, count_rows=False)
        assert (counters["stats"]["unique_graphs"] >= 1) == bool(graphs), path


def test_a_compile_mode_reaches_every_layers_torch_compile(tmp_path, monkeypatch):
    """`finetune.compile: max-autotune-no-cudagraphs` trains with each decoder layer compiled in that mode (recorded
    at nn.Module.compile, which still compiles), and names it in the manifest's spec; true compiles in torch's
    default mode; the schema offers exactly true, false and COMPILE_MODES."""
    from ropelaw.config import load_schema
    from ropelaw.specs import COMPILE_MODES

    node = load_schema()["$defs"]["training"]["properties"]["compile"]
    assert node["enum"] == [True, False, *COMPILE_MODES] and node["default"] is False
    seen, compile_ = [], torch.nn.Module.compile

    def recorded(module, *args, **kwargs):
        seen.append((type(module).__name__, kwargs.get("mode")))
        return compile_(module, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "compile", recorded)
    cell = make_cell(tmp_path, hidden=32, vocab=96)
    for name, value, mode in (("default", True, None), ("autotune", "max-autotune-no-cudagraphs",
                                                          "max-autotune-no-cudagraphs")):
        seen.clear()
        torch._dynamo.reset()
        assert finetune(cell, name, {"steps": 2, "compile": value}) == 0
        assert seen and all(kind == "LlamaDecoderLayer" for kind, _ in seen), seen
        assert {m for _, m in seen} == {mode}, seen
        assert manifest(cell, name)["spec"]["compile"] == value


class _ScalarReads(TorchDispatchMode):
    """Where a run reads a tensor's value on the host (`.item()`, `bool(t)`: aten._local_scalar_dense), by the
    transformers or ropelaw file and line that asked; on a GPU each read makes the host wait for the device. The
    data loader's sampler draws its seeds from CPU tensors, on a GPU machine too: those reads are left out."""

    def __init__(self):
        super().__init__()
        self.sites: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        import traceback

        stack = traceback.extract_stack() if func is torch.ops.aten._local_scalar_dense.default else []
        if stack and not any("/torch/utils/data/" in f.filename for f in stack):
            frames = [f for f in stack if "/transformers/" in f.filename or "/ropelaw/" in f.filename]
            self.sites.append(f"{Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else "?")
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("path", ["grad_in_forward", "grad_in_forward_compiled"])
def test_a_training_step_reads_no_device_value_between_logs(tmp_path, path, monkeypatch):
    """The fast path's steps read nothing back from the device but at a log (BENCHMARKS.md train14: each read was a
    host-GPU sync that left the GPU idle at every step's start): 8 steps logged every 4 read the loss and the grad
    norm twice and the total loss once at the end, nothing per step. The path before train14 (`host_syncs`: transformers' mask creation, which
    tests the position ids for packed sequences) read one value at every forward. The batches are copied without
    blocking."""
    from ropelaw.finetune import train
    from ropelaw.train_plan import TrainSpec
    from ropelaw import trainer as trainer_module

    cell = make_cell(tmp_path, hidden=32, vocab=96)
    spec = TrainSpec(**{**SPEC, "steps": 8, "logging_steps": 4, "fused_loss": path, "global_batch_size": 4,
                        "micro_batch_size": 4, "checkpoint_every": 100})
    made = []
    build = trainer_module.build_trainer
    monkeypatch.setattr(trainer_module, "build_trainer", lambda *a, **k: made.append(build(*a, **k)) or made[-1])
    sites = {}
    for host_syncs in (False, True):
        reads = _ScalarReads()

        class During(transformers.TrainerCallback):  # only the training loop's steps, not the load or the save
            def on_train_begin(self, *a, **k):
                reads.__enter__()

            def on_train_end(self, *a, **k):
                reads.__exit__(None, None, None)

        train(str(cell / "model"), str(cell / "data"), 50000.0, spec, str(tmp_path / f"ckpt{host_syncs}"),
              str(tmp_path / f"out{host_syncs}"), callbacks=[During()], host_syncs=host_syncs)
        sites[host_syncs] = reads.sites
        assert made[-1].accelerator.dataloader_config.non_blocking is (not host_syncs)
        trained = json.loads((tmp_path / f"out{host_syncs}/ropelaw_manifest.json").read_text())["attention_trained"]
        assert trained == ("sdpa" if host_syncs else "ropelaw_causal_sdpa")
    assert sorted(set(sites[False])) == sorted({s for s in sites[False] if s.startswith("trainer.py")}), sites[False]
    assert len(sites[False]) == 5, sites[False]  # the loss and the grad norm at steps 4 and 8; the total at the end
    masking = [s for s in sites[True] if s.startswith("masking_utils.py")]
    assert len(masking) == 8, sites[True]  # one per micro-batch forward
    # the same attention with and without the mask creation: the same losses, the same weights
    logged = [[r["loss"] for r in json.loads((tmp_path / f"out{h}/ropelaw_manifest.json").read_text())["log_history"]
               if "loss" in r] for h in (False, True)]
    assert logged[0] == logged[1] and len(logged[0]) == 2
    weights = [load_file(tmp_path / f"out{h}/model.safetensors") for h in (False, True)]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[1])
