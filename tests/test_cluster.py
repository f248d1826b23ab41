"""Cluster readiness without a cluster: the launcher's commands, stop-on-SIGUSR1, the profile,
config/paper.yaml's dry run with the SLURM profile, and the cost plan. tests/test_slurm.py runs
the same pieces against a real SLURM cluster."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from ropelaw import UserError
from ropelaw.launch import launch_prefix, node_command, parse_node_addr, srun_command
from ropelaw.plan import STEP_EFFICIENCY

ROOT = Path(__file__).resolve().parents[1]
PROFILE = ROOT / "profiles/slurm/config.yaml"
TABLE = """\
Some text, then the table the plan reads (other columns may follow).

| model | phase | gpu | seq_len | tokens_per_s_per_gpu | source |
|---|---|---|---|---|---|
| llama2-7b | finetune | h100 | 4096 | 3000 | test |
| llama2-7b | finetune | h100 | 16384 | 2000 | test |
| llama2-7b | evaluate | h100 | 4096 | 10000 | test |
| llama2-7b | evaluate | h100 | 102400 | 4000 | test |
| llama2-13b | finetune | a100 | 4096 | 600 | test |
| llama2-13b | evaluate | a100 | 4096 | 2000 | test |
"""


def test_launch_prefix_follows_the_profile():
    assert launch_prefix(0, None) == "ropelaw"
    assert launch_prefix(8, None).startswith("torchrun --standalone --nproc-per-node 8 -m ropelaw.cli")
    assert launch_prefix(8, "srun") == "ropelaw launch --launcher srun --"


def test_srun_starts_one_task_per_node_with_all_its_cpus():
    cmd = srun_command(["srun"], nodes=4, cpus_per_node=64, rendezvous="10.0.0.7:21234",
                       command=["finetune", "--base", "500"])
    assert cmd[:8] == ["srun", "--nodes=4", "--ntasks=4", "--ntasks-per-node=1", "--cpus-per-task=64",
                       "--kill-on-bad-exit=1", "--job-name=finetune@10.0.0.7:21234", sys.executable]
    assert cmd[-7:] == ["--node", "--master-addr", "10.0.0.7", "--", "finetune", "--base", "500"]


def test_the_rendezvous_is_the_first_nodes_address():
    shown = "NodeName=rlnode1 Arch=x86_64 CoresPerSocket=1\n   NodeAddr=10.199.77.11 NodeHostName=rlnode1 Version=22.05.8\n"
    assert parse_node_addr(shown, "rlnode1") == "10.199.77.11"
    assert parse_node_addr("NodeName=gpu001 Arch=x86_64", "gpu001") == "gpu001"


def test_each_node_runs_torchrun_with_one_worker_per_gpu():
    env = {"SLURM_STEP_NUM_NODES": "4", "SLURM_NODEID": "2", "SLURM_GPUS_ON_NODE": "8", "SLURM_JOB_ID": "1234"}
    cmd = node_command(env, "gpu001", ["finetune", "--base", "500"])
    assert cmd[1:3] == ["-m", "torch.distributed.run"]
    assert {"--nnodes=4", "--node-rank=2", "--nproc-per-node=8", "--master-addr=gpu001"} <= set(cmd)
    assert cmd[-4:] == ["ropelaw.cli", "finetune", "--base", "500"]
    cpu_only = node_command({"SLURM_STEP_NUM_NODES": "1", "SLURM_NODEID": "0", "SLURM_JOB_ID": "1"}, "n1", ["finetune"])
    assert cpu_only == [sys.executable, "-m", "ropelaw.cli", "finetune"]


def test_launch_outside_slurm_is_a_user_error(monkeypatch):
    from ropelaw import launch

    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    with pytest.raises(UserError, match="inside a SLURM job"):
        launch.run(SimpleNamespace(node=False, launcher="srun", command=["finetune"]))


def test_sigusr1_saves_and_stops_at_the_end_of_the_step():
    from ropelaw.finetune import StopOnSignal

    previous = signal.getsignal(signal.SIGUSR1)
    try:
        stopper = StopOnSignal()
        control = SimpleNamespace(should_save=False, should_training_stop=False, should_log=False)
        state = SimpleNamespace(global_step=3, max_steps=10)
        stopper.on_step_end(SimpleNamespace(device="cpu"), state, control)
        assert not control.should_save and stopper.stopped_at is None
        os.kill(os.getpid(), signal.SIGUSR1)
        stopper.on_step_end(SimpleNamespace(device="cpu"), state, control)
        assert control.should_save and control.should_training_stop and control.should_log
        assert stopper.stopped_at == 3
    finally:
        signal.signal(signal.SIGUSR1, previous)


def test_checkpoints_of_another_run_are_not_resumed(tmp_path):
    from ropelaw.finetune import _claim_checkpoints, newest_checkpoint

    ckpt = tmp_path / "checkpoints"
    _claim_checkpoints(ckpt, {"spec": {"lr": 1e-3}}, main=True)
    (ckpt / "checkpoint-2").mkdir()
    (ckpt / "checkpoint-2/trainer_state.json").write_text("{}")
    _claim_checkpoints(ckpt, {"spec": {"lr": 1e-3}}, main=True)  # the same run: kept
    assert newest_checkpoint(ckpt).name == "checkpoint-2"
    _claim_checkpoints(ckpt, {"spec": {"lr": 5e-4}}, main=True)  # another run: removed
    assert newest_checkpoint(ckpt) is None
    assert json.loads((ckpt / "ropelaw_run.json").read_text()) == {"spec": {"lr": 5e-4}}


def test_every_profile_entry_has_a_comment():
    for number, line in enumerate(PROFILE.read_text().splitlines(), 1):
        if re.match(r"\s*[A-Za-z_-]+:", line):
            assert "#" in line, f"profiles/slurm/config.yaml:{number} has no comment: {line.strip()}"


def test_profile_puts_gpu_rules_on_gpus_and_the_rest_on_cpus():
    profile = yaml.safe_load(PROFILE.read_text())
    assert profile["executor"] == "slurm" and profile["retries"] >= 1
    rules = profile["set-resources"]
    finetune = rules["finetune"]
    assert finetune["mpi"] == "srun" and finetune["gres"].startswith("gpu:a100:") and finetune["nodes"] >= 1
    assert "--signal=USR1@" in finetune["slurm_extra"] and "B:" not in finetune["slurm_extra"]
    for rule in ("evaluate", "passkey", "pretrain"):
        assert rules[rule]["gpu"] == 1 and rules[rule]["gpu_model"] == "a100" and rules[rule]["slurm_partition"] == "gpu"
    for rule in ("pack", "prepare_eval", "train_tokenizer", "init_model", "fetch_hub", "convert_gguf"):
        assert "gpu" not in rules[rule] and "gres" not in rules[rule]
    assert {"law", "fetch_embedded", "ppl_vs_length", "bound_vs_base"} <= local_rules()


def local_rules() -> set[str]:
    """Every rule declared `localrules` in rules/*.smk: they run in Snakemake's own process."""
    blocks = (re.findall(r"localrules:\n((?:\s+\w+,\n)+)", smk.read_text()) for smk in (ROOT / "rules").glob("*.smk"))
    return {rule for found in blocks for block in found for rule in re.findall(r"\w+", block)}


@pytest.fixture
def paper_workdir(tmp_path):
    """A working directory where config/paper.yaml resolves: empty files stand in for the Pile."""
    (tmp_path / "config").symlink_to(ROOT / "config")
    for shard in ("resources/pile/train/00.jsonl.zst", "resources/pile/val.jsonl.zst"):
        (tmp_path / shard).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / shard).touch()
    return tmp_path


def test_paper_grid_dry_runs_with_the_slurm_profile(paper_workdir):
    pytest.importorskip("snakemake_executor_plugin_slurm")
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-n", "--quiet", "rules",
         "--profile", str(ROOT / "profiles/slurm"), "--configfile", "config/paper.yaml"],
        cwd=paper_workdir, capture_output=True, text=True,
    )
    seconds = time.monotonic() - started
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", result.stdout, re.M))
    # 2 models x (9 + 4 + 5 bases) fine-tunes; + untuned, base_logn and dynamic NTK cells evaluated.
    assert counts["finetune"] == "36" and counts["evaluate"] == "42" and counts["fetch_hub"] == "2"
    assert counts["prepare_eval"] == "4"  # per model: rows of 100K, and of 1M (E4)
    print(f"dry run of config/paper.yaml with profiles/slurm: {seconds:.1f} s")
    assert seconds < 30


def test_paper_grid_resolves_offline_from_its_given_geometry():
    from ropelaw.config import eval_lengths, load_yaml, resolve, training_args

    cfg, cells = resolve(load_yaml(ROOT / "config/paper.yaml"), check_data=False)
    methods = {c.method for c in cells}
    assert methods == {"untuned", "base", "base_logn", "dynamic_ntk"}
    tuned = [c for c in cells if c.method == "base"]
    assert sorted({c.tune_len for c in tuned}) == [4096, 16384]
    assert {c.base for c in tuned if c.model == "llama2-7b" and c.tune_len == 4096} >= {500, 652, 1304, 2608, 10000, 1000000}
    args = {m: training_args(cfg, next(c for c in tuned if c.model == m)) for m in ("llama2-7b", "llama2-13b")}
    assert args["llama2-7b"]["max_grad_norm"] == 2.5 and args["llama2-13b"]["max_grad_norm"] == 1.0
    assert args["llama2-7b"]["lr"] == 2e-5 and args["llama2-7b"]["warmup_steps"] == 0 and args["llama2-7b"]["weight_decay"] == 0
    assert args["llama2-7b"]["global_batch_size"] == 128 and args["llama2-7b"]["steps"] == 1000
    assert max(cfg["evaluation"]["lengths"]) == 102400
    # E4 (NOTES 6): base 500 with and without log-scaled attention, and base 1e6, tuned at 16K, to 1M.
    longest = {(c.model, c.method, c.base, c.tune_len): max(eval_lengths(cfg, c)) for c in cells}
    to_1m = {cell for cell, length in longest.items() if length == 2**20}
    assert to_1m == {(m, method, base, 16384) for m in ("llama2-7b", "llama2-13b")
                     for method, base in (("base", 500), ("base_logn", 500), ("base", 1000000))}
    assert {length for cell, length in longest.items() if cell not in to_1m} == {102400}
    e4 = next(c for c in cells if (c.method, c.base) == ("base", 500) and c.tune_len == 16384)
    assert eval_lengths(cfg, e4) == cfg["evaluation"]["lengths"] + [131072, 262144, 524288, 1048576]


def test_plan_prints_every_cell_and_the_total(tmp_path):
    table = tmp_path / "BENCHMARKS.md"
    table.write_text(TABLE)
    result = subprocess.run(
        [sys.executable, "-m", "ropelaw.cli", "plan", "--configfile", str(ROOT / "config/paper.yaml"),
         "--profile", str(ROOT / "profiles/slurm"), "--benchmarks", str(table)],
        cwd=ROOT, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "Assumptions:" in out and "finetune: 32 x a100" in out
    assert len(re.findall(r"^llama2-\S+ +finetune ", out, re.M)) == 36
    assert len(re.findall(r"^llama2-\S+ +evaluate ", out, re.M)) == 42
    # 7B at 4K: 1000 x 128 x 4096 tokens at 3000 tok/s on an H100, 989.4/312 slower on an A100, a step at 55%.
    row = re.search(r"^llama2-7b/base/base500_len4096 +finetune +([\d,]+) +32 +([\d,.]+)", out, re.M)
    assert int(row.group(1).replace(",", "")) == 1000 * 128 * 4096
    expected = 1000 * 128 * 4096 / 3000 * (989.4 / 312) / STEP_EFFICIENCY / 3600
    assert float(row.group(2).replace(",", "")) == pytest.approx(expected, rel=1e-3)
    assert re.search(r"^total +78 jobs", out, re.M) and "not measured" not in out
    # Evaluation reads 16 rows of the cell's longest length: 1M for the E4 cells, 100K for the rest.
    evaluated = {m[0]: int(m[1].replace(",", "")) for m in re.findall(r"^(llama2-\S+) +evaluate +([\d,]+) ", out, re.M)}
    for cell in ("base/base500_len16384", "base_logn/base500_len16384", "base/base1000000_len16384"):
        assert evaluated[f"llama2-7b/{cell}"] == evaluated[f"llama2-13b/{cell}"] == 16 * 1048576
    assert evaluated["llama2-7b/base/base40000_len16384"] == evaluated["llama2-7b/base/base500_len4096"] == 16 * 102400


def test_plan_of_the_shipped_benchmarks_lists_unmeasured_models():
    result = subprocess.run(
        [sys.executable, "-m", "ropelaw.cli", "plan", "--configfile", str(ROOT / "config/paper.yaml"),
         "--profile", str(ROOT / "profiles/slurm"), "--benchmarks", str(ROOT / "BENCHMARKS.md")],
        cwd=ROOT, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr
    assert re.search(r"^llama2-7b/base/base500_len16384 +finetune +[\d,]+ +32 +[\d,.]+ ", result.stdout, re.M)
    assert re.search(r"^total +78 jobs", result.stdout, re.M)


def test_plan_interpolates_in_length_and_names_missing_rows(tmp_path):
    from ropelaw.plan import read_throughput, seconds_per_token

    table = tmp_path / "b.md"
    table.write_text(TABLE)
    rows = read_throughput(table)
    at = lambda length: seconds_per_token(rows, "llama2-7b", "finetune", "h100", length)  # noqa: E731
    assert at(4096) == pytest.approx(1 / 3000) and at(16384) == pytest.approx(1 / 2000)
    assert at(10240) == pytest.approx((1 / 3000 + 1 / 2000) / 2)
    assert at(32768) > at(16384)  # extrapolated along the same line
    assert seconds_per_token(rows, "llama2-13b", "finetune", "a100", 16384) == pytest.approx(1 / 600)
    assert seconds_per_token(rows, "smollm2", "finetune", "a100", 4096) is None  # listed as not measured


@pytest.mark.parametrize("ci", ["true", ""])
def test_in_ci_a_skipped_test_fails_with_its_reason(tmp_path, ci):
    """tests/conftest.py: with CI=true (.ci/run) a skip is a failure; elsewhere it stays a skip."""
    (tmp_path / "conftest.py").write_text((ROOT / "tests/conftest.py").read_text())
    (tmp_path / "test_one.py").write_text(
        "import pytest\n\n@pytest.mark.skipif(True, reason='no frobnicator')\ndef test_needs_it():\n    pass\n\n"
        "def test_other():\n    pytest.skip('not here either')\n"
    )
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", str(tmp_path)],
                          cwd=tmp_path, capture_output=True, text=True, env={**os.environ, "CI": ci})
    if ci:
        assert done.returncode == 1, done.stdout
        assert done.stdout.count("a capability CI must have is missing") == 2 and "no frobnicator" in done.stdout
    else:
        assert done.returncode == 0 and "2 skipped" in done.stdout and "no frobnicator" in done.stdout, done.stdout


def test_plan_takes_whole_step_rows_as_measured(tmp_path):
    """A `finetune_step` row (a whole fine-tuning step) is not discounted by STEP_EFFICIENCY, as forward+backward
    rows are; SmolLM2's row in BENCHMARKS.md is one, so the plan prices the small-base study's fine-tunes at it."""
    from ropelaw.config import load_configs, resolve
    from ropelaw.plan import Job, plan, read_throughput

    table = tmp_path / "b.md"
    table.write_text(TABLE + "| smollm2 | finetune_step | h200 | 8192 | 100000 | test |\n"
                     "| smollm2 | finetune | h200 | 8192 | 400000 | test (ignored: the whole-step row wins) |\n"
                     "| smollm2 | evaluate | h200 | 8192 | 50000 | test |\n")
    cfg, cells = resolve(load_configs([ROOT / "config/smollm2_small.yaml", ROOT / "config/smollm2_small/part_b1.yaml"]),
                         check_data=False)
    jobs = {rule: Job(1, "h200", None) for rule in ("finetune", "evaluate", "passkey")}
    tuned = [line for line in plan(cfg, cells, jobs, read_throughput(table)) if line["step"] == "finetune"]
    assert len(tuned) == 2
    for line in tuned:
        assert line["tokens"] == 450 * 8 * 8192
        assert line["gpu_hours"] == pytest.approx(450 * 8 * 8192 / 100000 / 3600)


def test_plan_prices_each_training_path_at_its_own_row(tmp_path):
    """A table with a `training` column: b1's cells (plain, micro-batch 4) at the plain row, b1x's (fused loss,
    compiled, micro-batch 8) at theirs; a path with no row of its own at the rows that name none, else the slowest."""
    from ropelaw.config import load_configs, resolve
    from ropelaw.plan import Job, plan, read_throughput

    head = "| model | phase | gpu | seq_len | tokens_per_s_per_gpu | training | source |\n|---|---|---|---|---|---|---|\n"
    rows = ("| smollm2 | finetune_step | h200 | 8192 | 100000 | plain, micro-batch 4 | test |\n"
            "| smollm2 | finetune_step | h200 | 8192 | 160000 | grad_in_forward+compiled, micro-batch 8 | test |\n"
            "| smollm2 | evaluate | h200 | 8192 | 50000 |  | test |\n")
    jobs = {rule: Job(1, "h200", None) for rule in ("finetune", "evaluate", "passkey")}

    def seconds(part: str, table_text: str, **override) -> set[float]:
        table = tmp_path / "b.md"
        table.write_text(table_text)
        configs = load_configs([ROOT / "config/smollm2_small.yaml", ROOT / f"config/smollm2_small/{part}.yaml"])
        for block in configs["grid"]:
            block["finetune"].update(override)
        cfg, cells = resolve(configs, check_data=False)
        return {round(line["gpu_hours"] * 3600 / line["tokens"] * 1e6, 6)
                for line in plan(cfg, cells, jobs, read_throughput(table)) if line["step"] == "finetune"}

    assert seconds("part_b1", head + rows) == {10.0}  # microseconds per token: 1 / 100,000
    assert seconds("part_b1x", head + rows) == {6.25}  # 1 / 160,000
    # checkpointed has no row: the slowest of the named paths; with an unnamed row present, that one
    assert seconds("part_b1x", head + rows, fused_loss="checkpointed") == {10.0}
    unnamed = "| smollm2 | finetune_step | h200 | 8192 | 125000 |  | test |\n"
    assert seconds("part_b1x", head + rows + unnamed, fused_loss="checkpointed") == {8.0}
    # a compile mode is a path of its own: priced at its row where one is measured, not at the default mode's
    autotune = "| smollm2 | finetune_step | h200 | 8192 | 200000 | grad_in_forward+compiled max-autotune-no-cudagraphs, micro-batch 8 | test |\n"
    assert seconds("part_b1x", head + rows + autotune, compile="max-autotune-no-cudagraphs") == {5.0}
    assert seconds("part_b1x", head + rows + autotune) == {6.25}


def test_plan_counts_the_prepared_rows_where_they_exist(tmp_path, monkeypatch):
    """Evaluation is priced at data.eval.max_docs rows until prepare-eval has made them; then at the rows its
    manifest lists (the KJV gives one row of 1M, not max_docs = 4)."""
    from ropelaw.config import load_configs, resolve
    from ropelaw.plan import Job, plan, read_throughput

    table = tmp_path / "b.md"
    table.write_text(TABLE + "| smollm2 | evaluate | h200 | 8192 | 50000 | test |\n")
    cfg, cells = resolve(load_configs([ROOT / "config/smollm2_small.yaml", ROOT / "config/smollm2_small/part_b1.yaml"]),
                         check_data=False)
    jobs = {rule: Job(1, "h200", None) for rule in ("finetune", "evaluate", "passkey")}
    monkeypatch.chdir(tmp_path)
    evaluated = lambda: [line["tokens"] for line in plan(cfg, cells, jobs, read_throughput(table))  # noqa: E731
                         if line["step"] == "evaluate"]
    assert evaluated() == [4 * 1000000] * 2  # data.eval.max_docs
    manifest = tmp_path / cells[0].eval_rows_dir / "manifest.json"
    manifest.parent.mkdir(parents=True)
    manifest.write_text(json.dumps({"n_docs": 1, "length": 1000000}))
    assert evaluated() == [1000000] * 2


def test_plan_counts_the_resubmissions_each_kind_of_job_needs():
    """A fine-tune resumes where it stopped; an evaluation or passkey job keeps the batches it finished and loses
    the one it was in (`ropelaw.evaljournal`). 'never': one batch is longer than the limit."""
    from ropelaw.plan import _resubmits

    assert _resubmits(7.9, 8, None) == _resubmits(7.9, 8, 7.9) == 0
    assert _resubmits(30, None, 30) == 0  # no time limit
    assert _resubmits(14, 8, None) == 1  # 8 h + 6 h
    assert _resubmits(14, 8, 14 / 3) == 2  # batches of 4.67 h: one per attempt
    assert _resubmits(14.6, 8, 14.6 / 16) == 1  # the 13B's 1M cell on an A100: 16 rows of 0.91 h, 8 per attempt
    assert _resubmits(16, 8, 1) == 1  # 8 whole batches per attempt, none lost
    assert _resubmits(9, 8, 9) == "never"  # one batch longer than the limit
