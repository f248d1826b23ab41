"""The benchmark tools of issue 14 on the CPU, with tiny shapes: bench/finetune_speed.py's --profile (every run's
record carries the profiled steps' time per step by class; a --profile that leaves no step to time is one line) and
its variants (at most one attention kernel each); bench/eval_vs_plain.py's --profile; bench/run_all.sh's check of
the modules every part imports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def finetune_speed(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}:{ROOT / 'bench'}", "OUT": str(tmp_path)}
    return subprocess.run([sys.executable, str(ROOT / "bench/finetune_speed.py"), "--tiny", *args],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


def test_profile_records_time_per_step_by_class(tmp_path):
    done = finetune_speed(tmp_path, "--steps", "5", "--skip", "1", "--profile", "2", "--variants", "plain:4",
                          "grad_in_forward:4")
    assert done.returncode == 0, done.stderr[-2000:]
    runs = [r for r in map(json.loads, (tmp_path / "finetune_speed.jsonl").read_text().splitlines()) if "path" in r]
    assert [r["path"] for r in runs] == ["plain", "grad_in_forward"]
    for run in runs:
        assert run["profiled_steps"] == 2
        by_class = run["cpu_seconds_by_class"]  # no GPU here: the operators' CPU time
        assert set(by_class) == {"attention", "matmul", "optimizer", "compiled", "other"}
        assert by_class["matmul"] > 0 and by_class["attention"] > 0 and by_class["optimizer"] > 0
        # per step, not summed over the profiled steps: the operators fit in one step's wall time
        assert 0 < sum(by_class.values()) < run["profiled_step_s"] * 1.05
        assert run["busy_fraction"] == sum(by_class.values()) / run["profiled_step_s"]
        matmul_calls = sum(k["calls"] for k in run["top_kernels"] if k["kernel"] == "aten::mm")
        assert matmul_calls > 0 and matmul_calls == int(matmul_calls)
        assert len(run["step_s_all"]) == 5


def test_trace_is_written_and_trace_gaps_reads_it(tmp_path):
    """--trace writes each profiled run as a Chrome trace; bench/trace_gaps.py finds the busy time as the union of
    the lane's events (checked here against a count of covered microseconds, computed apart), the idle rest, and the
    largest gaps in order. A CPU trace has no kernels: the default lane is refused in one line naming --lane cpu_op."""
    import gzip

    import numpy as np

    done = finetune_speed(tmp_path, "--steps", "5", "--skip", "1", "--profile", "2", "--trace", "--variants",
                          "grad_in_forward:4")
    assert done.returncode == 0, done.stderr[-2000:]
    run = [r for r in map(json.loads, (tmp_path / "finetune_speed.jsonl").read_text().splitlines()) if "path" in r][0]
    trace = tmp_path / run["trace"]
    assert trace.name == "trace_grad_in_forward_mb4.json.gz"
    gaps = [sys.executable, str(ROOT / "bench/trace_gaps.py"), str(trace), "--steps", "2"]
    refused = subprocess.run(gaps, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and refused.stderr.strip().splitlines() == [
        "trace_gaps.py: no events of kernel, gpu_memcpy, gpu_memset in the trace (it has: Trace, cpu_op, "
        "user_annotation); a CPU-only trace has no kernels: read its host operators with --lane cpu_op"]
    read = subprocess.run([*gaps, "--lane", "cpu_op", "--top", "5", "--min-us", "10"], capture_output=True, text=True,
                          timeout=120)
    assert read.returncode == 0, read.stderr[-2000:]
    result = json.loads(read.stdout)
    events = [e for e in json.load(gzip.open(trace, "rt"))["traceEvents"] if e.get("cat") == "cpu_op" and e.get("ph") == "X"]
    start = min(e["ts"] for e in events)
    covered = np.zeros(int(max(e["ts"] + e["dur"] for e in events) - start) + 2, dtype=bool)
    for e in events:
        covered[int(e["ts"] - start):int(np.ceil(e["ts"] + e["dur"] - start))] = True
    assert result["events"] == len(events)
    assert abs(result["busy_ms"] - covered.sum() / 1e3) <= 2 * len(events) / 1e3  # each event's ends rounded to 1 us
    assert result["idle_ms"] == pytest.approx(result["window_ms"] - result["busy_ms"])
    assert result["idle_ms_per_step"] == pytest.approx(result["idle_ms"] / 2)
    largest = [g["us"] for g in result["largest"]]
    assert 0 < len(largest) <= 5 and largest == sorted(largest, reverse=True) and min(largest) >= 10
    assert result["idle_in_gaps_at_least_min_ms_per_step"] * 2 <= result["idle_ms"] + 1e-9


def test_a_trace_that_is_not_one_is_one_line(tmp_path):
    (tmp_path / "t.json.gz").write_bytes(b"not gzip")
    done = subprocess.run([sys.executable, str(ROOT / "bench/trace_gaps.py"), str(tmp_path / "t.json.gz")],
                          capture_output=True, text=True, timeout=60)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and lines[0].startswith(f"trace_gaps.py: {tmp_path}/t.json.gz is "
                                                                          "not a readable Chrome trace (")
    assert lines[0].endswith("pass the file finetune_speed.py --trace wrote")


def test_trace_without_profile_is_one_line(tmp_path):
    done = finetune_speed(tmp_path, "--trace", "--variants", "plain:4")
    assert done.returncode == 2 and done.stderr.strip().splitlines()[-1].endswith(
        "--trace writes the profiled steps: give --profile N too")


def test_profile_that_leaves_no_step_to_time_is_one_line(tmp_path):
    done = finetune_speed(tmp_path, "--steps", "4", "--skip", "1", "--profile", "3", "--variants", "plain:4")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].endswith(
        "--profile 3: --skip 1 + 3 profiled steps leave none of --steps 4 to time; raise --steps")
    assert not (tmp_path / "finetune_speed.jsonl").exists()


def test_a_variant_names_one_attention_kernel(tmp_path):
    done = finetune_speed(tmp_path, "--steps", "3", "--variants", "plain:4", "plain:4:flash")
    assert done.returncode == 0, done.stderr[-2000:]
    runs = [r for r in map(json.loads, (tmp_path / "finetune_speed.jsonl").read_text().splitlines()) if "path" in r]
    assert [r["sdpa"] for r in runs] == ["torch's choice", "flash only"]
    for bad in ("plain:4:cudnn:flash", "plain:4:fast", "plain:4:flash:compiled", "plain:4:synced:flash",
                "plain:4:synced:synced"):
        done = finetune_speed(tmp_path, "--variants", bad)
        assert done.returncode == 2 and \
            "expected PATH:MICRO_BATCH[:compiled|:autotune][:cudnn|:flash|:efficient][:synced]" in done.stderr


def test_a_synced_variant_trains_as_before_train14(tmp_path):
    """':synced' is the path train14's fixes replaced (blocking batch copies, transformers' mask creation), the
    reference beside the path that replaced it: its record says so, and it computes the same losses."""
    done = finetune_speed(tmp_path, "--steps", "3", "--variants", "grad_in_forward:4:synced", "grad_in_forward:4")
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [json.loads(line) for line in (tmp_path / "finetune_speed.jsonl").read_text().splitlines()]
    runs = [r for r in lines if "path" in r]
    assert [r["host_syncs"] for r in runs] == [True, False]
    assert runs[0]["losses"] == runs[1]["losses"]
    summary = [r for r in lines if "variants" in r][0]
    assert summary["variants"] == ["grad_in_forward_mb4_synced", "grad_in_forward_mb4"]
    assert summary["grad_in_forward_mb4_max_rel_loss_diff"] == 0
    assert "--variants grad_in_forward:4:synced grad_in_forward:4`" in summary["table_row"]


def test_an_autotune_variant_compiles_with_that_mode(tmp_path):
    """':autotune' trains as `finetune.compile: max-autotune-no-cudagraphs` (train13): its record names the mode and
    its own graphs; on the CPU Inductor has no GPU kernels to time, so `inductor_autotuned` is 0 here."""
    done = finetune_speed(tmp_path, "--steps", "3", "--variants", "plain:4:compiled", "plain:4:autotune")
    assert done.returncode == 0, done.stderr[-2000:]
    runs = [r for r in map(json.loads, (tmp_path / "finetune_speed.jsonl").read_text().splitlines()) if "path" in r]
    assert [r["compile"] for r in runs] == [True, "max-autotune-no-cudagraphs"]
    assert all(r["graphs_compiled"] >= 1 and r["inductor_autotuned"] == 0 for r in runs)
    summary = [r for r in map(json.loads, (tmp_path / "finetune_speed.jsonl").read_text().splitlines())
               if "variants" in r][0]
    assert summary["variants"] == ["plain_mb4_compiled", "plain_mb4_autotune"]
    assert "--variants plain:4:compiled plain:4:autotune`" in summary["table_row"]


def test_each_compiled_variant_compiles_its_own_graphs(tmp_path):
    """Dynamo's guards do not cover the SDPA backend: a compiled variant that reused an earlier one's graphs would
    time that one's attention kernel under its own name (train8's ':flash' and ':efficient' did)."""
    variants = ("--steps", "3", "--variants", "plain:4:compiled", "plain:4:compiled:flash")
    done = finetune_speed(tmp_path, *variants)
    assert done.returncode == 0, done.stderr[-2000:]
    runs = [r for r in map(json.loads, (tmp_path / "finetune_speed.jsonl").read_text().splitlines()) if "path" in r]
    assert [r["sdpa"] for r in runs] == ["torch's choice", "flash only"]
    assert all(r["graphs_compiled"] >= 1 for r in runs), [r["graphs_compiled"] for r in runs]
    (tmp_path / "finetune_speed.jsonl").unlink()
    kept = finetune_speed(tmp_path, *variants, "--keep-compiled")  # what train8 did
    assert kept.returncode == 0, kept.stderr[-2000:]
    runs = [r for r in map(json.loads, (tmp_path / "finetune_speed.jsonl").read_text().splitlines()) if "path" in r]
    assert [r["graphs_compiled"] for r in runs][1] == 0


def test_run_all_names_a_missing_module_before_any_step(tmp_path):
    """bench/run_all.sh on a python3 that cannot import zstandard (the device machine's, before the carried wheel is
    installed): one line naming it and the fix, exit 2, before any benchmark (the part name is a bogus one, so a
    check that lets it through ends at the unknown part instead)."""
    (tmp_path / "mods").mkdir()
    (tmp_path / "mods/zstandard.py").write_text("raise ImportError('blocked for this test')\n")
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin/python3").write_text(f"#!/bin/sh\nexec {sys.executable} \"$@\"\n")
    (tmp_path / "bin/python3").chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}", "PYTHONPATH": str(tmp_path / "mods"),
           "OUT": str(tmp_path / "out")}
    done = subprocess.run(["bash", "bench/run_all.sh", "no-such-part"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"bench/run_all.sh: {tmp_path / 'bin/python3'} cannot import: zstandard; install them for that python3 (on the "
        "device machine, carry the wheels: python3 -m pip install --no-index --no-deps .wheels/zstandard-*.whl)"]


def test_eval_vs_plain_profiles_every_path(tmp_path):
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}:{ROOT / 'bench'}", "OUT": str(tmp_path)}
    done = subprocess.run([sys.executable, str(ROOT / "bench/eval_vs_plain.py"), "--tiny", "--tokens", "256",
                           "--variants", "whole:1", "--profile"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [json.loads(line) for line in (tmp_path / "eval_vs_plain.jsonl").read_text().splitlines()]
    assert [r["path"] for r in rows] == ["plain", "default", "whole:1"]
    for row in rows:  # one profiled call each: its operators' time, the matrix products among them
        by_class = row["cpu_seconds_by_class"]
        assert by_class["matmul"] > 0 and by_class["attention"] > 0
        assert sum(by_class.values()) < 10 * row["seconds"]
        assert any(k["kernel"] == "aten::mm" or k["kernel"] == "aten::addmm" for k in row["top_kernels"])


def test_eval_vs_plain_interleaves_the_paths(tmp_path):
    """--interleave times every path again, one call each per round, the first path rotating; each interleaved call
    runs its own path's chunk (a call bound late to the loop's last values would run 64 for every path). The variant
    `plain` is plain transformers again (`plain2`, the A/A control): the same perplexity exactly."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}:{ROOT / 'bench'}", "OUT": str(tmp_path)}
    done = subprocess.run([sys.executable, str(ROOT / "bench/eval_vs_plain.py"), "--tiny", "--tokens", "256",
                           "--variants", "whole:1", "64:1", "64:1:3", "plain", "--interleave", "3"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [json.loads(line) for line in (tmp_path / "eval_vs_plain.jsonl").read_text().splitlines()]
    names = ["plain", "default", "whole:1", "64:1", "64:1:3", "plain2"]
    assert [r["path"] for r in rows] == names
    assert [r.get("chunk_size") for r in rows[1:]] == [256, 256, 64, 64, None]
    # auto: ropelaw's LLaMA MLP over whole rows (no higher peak); a fixed chunk: rows; CHUNK:GROUPS:SLICES fixes it
    assert [r.get("mlp_slices") for r in rows[1:]] == [1, 0, 0, 3, None]
    assert rows[-2]["ppl_rel_diff"] < 1e-5
    assert rows[-1]["ppl_rel_diff"] == 0.0 and rows[-1]["compared_with"] == "plain"
    assert rows[0]["interleaved_order"] == [names, names[1:] + names[:1], names[2:] + names[:2]]
    assert rows[0]["time_ratio_interleaved"] == 1.0
    for row in rows:
        assert row["seconds_interleaved"] > 0
        assert row["time_ratio_interleaved"] == row["seconds_interleaved"] / rows[0]["seconds_interleaved"]


def test_long_kernel_names_stay_distinct():
    """Two kernels whose names share their first 120 characters keep two names in a record; short names stay as
    the profiler gives them."""
    sys.path.insert(0, str(ROOT / "bench"))
    from benchlib import kernel_name

    prefix = "void at::native::unrolled_elementwise_kernel<at::native::direct_copy_kernel_cuda(" + "x" * 60
    first, second = kernel_name(prefix + "bfloat16>"), kernel_name(prefix + "float>")
    assert first != second and first.startswith(prefix[:120]) and len(first) < 140
    assert kernel_name(prefix + "bfloat16>") == first
    assert kernel_name("aten::mm") == "aten::mm"


def test_eval_vs_plain_layer_progress(tmp_path):
    """--layer-progress: a line after each decoder layer of every forward (the untimed one, the timed one), and the
    timed forward's layers kept in its row, in order, their seconds rising."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}:{ROOT / 'bench'}", "OUT": str(tmp_path)}
    done = subprocess.run([sys.executable, str(ROOT / "bench/eval_vs_plain.py"), "--tiny", "--tokens", "256",
                           "--no-plain", "--variants", "64:2", "--layer-progress"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [line.split(":")[0] for line in done.stderr.splitlines() if line.startswith("layer ")]
    assert lines == ["layer 1/2", "layer 2/2"] * 4  # two paths, each one untimed and one timed forward
    rows = [json.loads(line) for line in (tmp_path / "eval_vs_plain.jsonl").read_text().splitlines()]
    assert [r["path"] for r in rows] == ["default", "64:2"]
    for row in rows:
        (first, peak_first), (second, peak_second) = row["layers_done"]
        assert 0 < first < second <= row["seconds"] and peak_first is peak_second is None  # no GPU: no peak


def test_passkey_memory_answers_each_length(tmp_path):
    """bench/passkey_memory.py on the CPU: a row per length with the KV cache's size (2 x layers x tokens x KV heads
    x head_dim x 4 bytes for fp32) and the greedy tokens' shape."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}:{ROOT / 'bench'}", "OUT": str(tmp_path)}
    done = subprocess.run([sys.executable, str(ROOT / "bench/passkey_memory.py"), "--tiny", "--tokens", "512", "256"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [json.loads(line) for line in (tmp_path / "passkey_memory.jsonl").read_text().splitlines()]
    assert [r["tokens"] for r in rows] == [256, 512]
    for row in rows:
        assert row["kv_cache_gib"] * 2**30 == 2 * 2 * row["tokens"] * 2 * 16 * 4
        assert row["answer_tokens"] == [1, 8] and row["seconds"] > 0 and "out_of_memory" not in row
    # --recompute: without a cache, no draft: one chunked forward per new token
    done = subprocess.run([sys.executable, str(ROOT / "bench/passkey_memory.py"), "--tiny", "--tokens", "256",
                           "--recompute"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    row = json.loads((tmp_path / "passkey_memory.jsonl").read_text().splitlines()[-1])
    assert (row["path"], row["forwards"], row["answer_tokens"]) == ("recompute", 8, [1, 8]) and row["chunk_size"] >= 1
