"""The workflow on a real SLURM cluster: .ci/slurm/start-local-cluster.sh (.ci/run starts it as root).

The tiny scenario runs with `--profile profiles/slurm`, changed only in the local cluster's
account and sizes (`local_profile`): every GPU rule must run as a SLURM job with its gres, the
local rules locally, and the results must equal a local run's. Then a fine-tune is stopped
through SLURM (`scancel --signal=USR1`) and must be re-submitted and finish from its checkpoint
exactly as an uninterrupted run; a failing job must show its cause and log paths.
Without a running cluster (no root, no slurmdbd) every test here is skipped with the reason (fails in CI: conftest.py).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from ropelaw.config import resolve, training_args
from test_cluster import local_rules

ROOT = Path(__file__).resolve().parents[1]
GPU_RULES = {"pretrain", "finetune", "evaluate", "passkey"}
LOCAL_RULES = local_rules() | {"all"}
CELL = "results/mini/base/base1000000_len64"


def _cluster_problem() -> str | None:
    for tool in ("sinfo", "sbatch", "scancel", "sacct", "scontrol"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed"
    if "UP" not in subprocess.run(["scontrol", "ping"], capture_output=True, text=True).stdout:
        return "slurmctld does not answer `scontrol ping`"
    if subprocess.run(["sacct", "-n", "-X", "-S", "now-1minutes"], capture_output=True).returncode:
        return "`sacct` fails: no slurmdbd accounting"
    return None


def cluster_marks(problem: str | None, what: str) -> list:
    """A module's marks: slow, and skipped with the reason and the fix while `problem` (fails in CI: conftest.py)."""
    return [
        pytest.mark.slow,
        pytest.mark.skipif(
            problem is not None,
            reason=f"no {what} ({problem}): start one as root with "
            "`LOCAL_SLURM_NS_NODES=2 bash .ci/slurm/start-local-cluster.sh`, as .ci/run does",
        ),
    ]


PROBLEM = _cluster_problem()
pytestmark = cluster_marks(PROBLEM, "local SLURM cluster")


def local_profile(directory: Path) -> Path:
    """profiles/slurm with the local cluster's account and sizes; every other entry as shipped."""
    profile = yaml.safe_load((ROOT / "profiles/slurm/config.yaml").read_text())
    sizes = {"cpus_per_task": 1, "mem_mb": 2000, "runtime": 30}  # a 2-CPU node; runtime keeps USR1@900 away
    profile["default-resources"].update(slurm_account="root", **sizes)
    for resources in profile["set-resources"].values():
        resources.update(sizes)
    # One node and one (fake) A100; two task slots because the plugin's MPI mode needs more than one.
    profile["set-resources"]["finetune"].update(nodes=1, gres="gpu:a100:1", tasks_per_node=2)
    profile["slurm-init-seconds-before-status-checks"] = 1  # test speed: poll sooner than 40 s
    profile["latency-wait"] = 5  # one machine: no NFS delay
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))
    return directory


def snakemake(work: Path, *args: str, **popen) -> subprocess.CompletedProcess | subprocess.Popen:
    command = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), *args]
    if popen:
        return subprocess.Popen(command, cwd=work, text=True, **popen)
    return subprocess.run(command, cwd=work, capture_output=True, text=True)


def sacct(*args: str) -> list[dict]:
    fields = ["JobID", "Comment", "Partition", "AllocTRES", "State", "ExitCode"]
    out = subprocess.run(
        ["sacct", "--noheader", "--parsable2", "-S", "2020-01-01", "--format", ",".join(f"{f}%300" for f in fields), *args],
        capture_output=True, text=True, check=True,
    ).stdout
    return [dict(zip(fields, line.split("|"))) for line in out.splitlines() if line]


def is_cell_job(comment: str) -> bool:
    """A fine-tune of CELL: the plugin's comment is `rule_finetune_wildcards_` + the wildcards' values."""
    return comment.startswith("rule_finetune_wildcards_mini_base_") and "1000000" in comment


def rule_of(comment: str) -> str:
    """The executor plugin comments each job `rule_<rule>[_wildcards_<values>]`."""
    return comment.removeprefix("rule_").split("_wildcards_")[0]


@pytest.fixture(scope="module")
def profile(tmp_path_factory) -> Path:
    return local_profile(tmp_path_factory.mktemp("profile"))


@pytest.fixture(scope="module")
def slurm_scenario(profile, tmp_path_factory):
    """tests/scenario/config.yaml end to end through SLURM."""
    work = tmp_path_factory.mktemp("slurm_scenario")
    (work / "config").mkdir()
    shutil.copy(ROOT / "tests/scenario/config.yaml", work / "config/config.yaml")
    started = time.monotonic()
    result = snakemake(work, "--profile", str(profile))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-5000:]
    run_id = re.search(r"SLURM run ID: (\S+)", output).group(1)
    print(f"SLURM scenario: {time.monotonic() - started:.0f} s")
    return SimpleNamespace(work=work, output=output, run_id=run_id)


def job_stats(output: str) -> dict[str, int]:
    """The `Job stats` table Snakemake prints before it runs anything."""
    table = output.split("Job stats:", 1)[1].split("total", 1)[0]
    return {m[0]: int(m[1]) for m in re.findall(r"^(\w+)\s+(\d+)$", table, re.M)}


def test_every_gpu_rule_ran_as_a_slurm_job_with_its_gres(slurm_scenario):
    jobs = sacct("--allocations", "--name", slurm_scenario.run_id)
    rules = Counter(rule_of(job["Comment"]) for job in jobs)
    planned = job_stats(slurm_scenario.output)
    assert rules == {rule: n for rule, n in planned.items() if rule not in LOCAL_RULES}, (planned, jobs)
    assert {"pretrain", "finetune", "evaluate"} <= set(rules)
    for job in jobs:
        assert job["State"] == "COMPLETED", job
        if rule_of(job["Comment"]) in GPU_RULES:
            assert job["Partition"] == "gpu" and "gres/gpu:a100=1" in job["AllocTRES"], job
        else:
            assert job["Partition"] == "cpu" and "gres/gpu" not in job["AllocTRES"], job
    # Local rules ran in Snakemake's own process: no SLURM job, "localrule" in its output.
    assert {"law", "fetch_embedded", "ppl_vs_length"} <= set(planned)
    for rule in (LOCAL_RULES - {"all"}) & set(planned):
        assert f"localrule {rule}:" in slurm_scenario.output and rule not in rules
    print("sacct:", dict(rules))


def test_slurm_results_equal_a_local_run(slurm_scenario, scenario):
    tables = sorted(p.relative_to(scenario) for p in (scenario / "results").rglob("*.csv"))
    assert len(tables) >= 6
    for table in tables:
        assert (slurm_scenario.work / table).read_bytes() == (scenario / table).read_bytes(), table
    for cell in ("base10_len64", "base10000_len64", "base1000000_len64"):
        manifests = [json.loads((w / f"results/mini/base/{cell}/model/ropelaw_manifest.json").read_text())
                     for w in (slurm_scenario.work, scenario)]
        assert manifests[0]["final_loss"] == manifests[1]["final_loss"]
        assert manifests[0]["inv_freq_sha256"] == manifests[1]["inv_freq_sha256"]


def _copy(work: Path, destination: Path) -> Path:
    return Path(shutil.copytree(work, destination, ignore=shutil.ignore_patterns(".snakemake")))


@pytest.fixture(scope="module")
def side_runs(slurm_scenario, profile, tmp_path_factory):
    """Three runs at once, on copies of the SLURM scenario's directory:

    - `stopped`: one fine-tune (40 steps) through SLURM, sent `scancel --signal=USR1` once it has
      logged three steps, then left to the profile's retries;
    - `straight`: the same fine-tune, uninterrupted, run locally;
    - `failing`: a fine-tune through SLURM whose input model is broken, with no retries.
    """
    base = tmp_path_factory.mktemp("side_runs")
    stopped, failing = _copy(slurm_scenario.work, base / "stopped"), _copy(slurm_scenario.work, base / "failing")
    config = yaml.safe_load((stopped / "config/config.yaml").read_text())
    config["finetune"].update(steps=40, logging_steps=1, checkpoint_every=100)  # no periodic checkpoint
    (stopped / "config/resume.yaml").write_text(yaml.safe_dump(config))
    cfg, cells = resolve(config)
    spec = training_args(cfg, next(c for c in cells if c.path == "results/mini/base/base1000000_len64"))
    (failing / "results/mini/pretrained/config.json").write_text("{ not json")
    log = stopped / "logs/finetune/mini/base/base1000000_len64.log"
    log.unlink()

    target, broken = f"{CELL}/model", "results/mini/base/base10_len64/model"
    outputs = {name: open(base / f"{name}.out", "w") for name in ("stopped", "straight", "failing")}
    runs = {
        # The target first: --forcerun takes every word after it.
        "stopped": snakemake(stopped, target, "--profile", str(profile), "--configfile", "config/resume.yaml",
                             "--forcerun", target, stdout=outputs["stopped"], stderr=subprocess.STDOUT),
        "failing": snakemake(failing, broken, "--profile", str(profile), "--retries", "0", "--forcerun", broken,
                             stdout=outputs["failing"], stderr=subprocess.STDOUT),
        "straight": subprocess.Popen(
            [sys.executable, "-m", "ropelaw.cli", "finetune", "--model", "results/mini/pretrained",
             "--data", "results/mini/data/train_len64", "--base", "1000000", "--spec", json.dumps(spec),
             "--checkpoints", str(base / "straight/checkpoints"), "--out", str(base / "straight/model")],
            cwd=stopped, stdout=outputs["straight"], stderr=subprocess.STDOUT, text=True),
    }
    deadline = time.monotonic() + 300
    while not (log.is_file() and log.read_text().count("'loss'") >= 3):
        assert runs["stopped"].poll() is None and time.monotonic() < deadline, (base / "stopped.out").read_text()
        time.sleep(0.2)
    queue = subprocess.run(["squeue", "--noheader", "--format", "%i %k"], capture_output=True, text=True).stdout
    job_id = next(line.split()[0] for line in queue.splitlines() if is_cell_job(line.split()[-1]))
    subprocess.run(["scancel", "--signal=USR1", job_id], check=True)  # what SLURM does before the time limit
    codes = {name: run.wait(timeout=600) for name, run in runs.items()}
    for out in outputs.values():
        out.close()
    return SimpleNamespace(
        codes=codes, spec=spec, first_job=job_id, stopped=stopped, straight=base / "straight",
        output={name: (base / f"{name}.out").read_text() for name in outputs},
    )


def test_finetune_stopped_through_slurm_resumes_to_the_uninterrupted_result(side_runs):
    output = side_runs.output["stopped"]
    assert side_runs.codes["stopped"] == 0 and side_runs.codes["straight"] == 0, output[-5000:]
    # The trainer saved a checkpoint and exited (75; torchrun, around it on a GPU node, exits 1),
    # SLURM recorded the failed job and the re-submitted one, which resumed from that checkpoint.
    assert "stopped by SIGUSR1 after step" in output and "Trying to restart job" in output
    first = {job["JobID"]: job for job in sacct("--jobs", side_runs.first_job)}
    assert first[side_runs.first_job]["State"] == "FAILED" and first[f"{side_runs.first_job}.0"]["ExitCode"] != "0:0"
    run_id = re.search(r"SLURM run ID: (\S+)", output).group(1)
    attempts = [job["State"] for job in sacct("--allocations", "--name", run_id)
                if is_cell_job(job["Comment"])]
    assert attempts == ["FAILED", "COMPLETED"], attempts
    resumed = json.loads((side_runs.stopped / CELL / "model/ropelaw_manifest.json").read_text())
    straight = json.loads((side_runs.straight / "model/ropelaw_manifest.json").read_text())
    assert resumed["spec"] == side_runs.spec == straight["spec"]
    step = re.fullmatch(r".*/checkpoint-(\d+)", resumed["resumed_from"])
    assert step and 3 <= int(step.group(1)) < 40 and straight["resumed_from"] is None
    # The manifest lists both attempts with their SLURM jobs (Snakemake deleted the first one's log).
    jobs = [job["JobID"] for job in sacct("--allocations", "--name", run_id) if is_cell_job(job["Comment"])]
    assert [(a["slurm_job_id"], a["outcome"], a.get("step"), a["resumed_from"]) for a in resumed["attempts"]] == [
        (jobs[0], "stopped by SIGUSR1", int(step.group(1)), None),
        (jobs[1], "completed", 40, f"checkpoint-{step.group(1)}"),
    ]
    assert jobs[0] == side_runs.first_job and [a["slurm_job_id"] for a in straight["attempts"]] == [None]
    # The same losses at every step, the same final loss, the same weights.
    losses = [[(row["step"], row["loss"]) for row in m["log_history"] if "loss" in row] for m in (resumed, straight)]
    assert losses[0] == losses[1] and len(losses[0]) == 40
    assert resumed["final_loss"] == straight["final_loss"]
    from safetensors.torch import load_file

    weights = [load_file(d / "model.safetensors") for d in (side_runs.stopped / CELL / "model", side_runs.straight / "model")]
    assert weights[0].keys() == weights[1].keys() and all(weights[0][k].equal(weights[1][k]) for k in weights[1])
    print(f"final loss: resumed {resumed['final_loss']} (from {resumed['resumed_from']}), "
          f"uninterrupted {straight['final_loss']}")


def test_a_failed_job_shows_its_cause_and_log_paths(side_runs):
    output = side_runs.output["failing"]
    assert side_runs.codes["failing"] != 0
    assert "Error in rule finetune" in output and "SLURM status is: 'FAILED'" in output
    assert "logs/finetune/mini/base/base10_len64.log" in output  # the rule's log ...
    assert re.search(r"\.snakemake/slurm_logs/rule_finetune/mini_base_\w*?10_\w*?64/\d+\.log", output)  # ... and SLURM's
    assert "not a valid JSON file" in output or "JSONDecodeError" in output  # the cause: show-failed-logs
