"""One fine-tune across two SLURM nodes, through Snakemake and profiles/slurm, as a user runs it.

The local cluster's nodes rlnode1 and rlnode2 (.ci/slurm/start-local-cluster.sh with
LOCAL_SLURM_NS_NODES=2) each run their slurmd in a network namespace of their own, with
addresses 10.199.77.11 and .12 on a bridge: the two nodes meet over a network, as a
cluster's do. The tiny scenario's cell base1000000_len64 is fine-tuned with `nodes: 2`
(CPU, gloo, DeepSpeed ZeRO-3 from config/deepspeed/zero3.json, one worker per node): the
rule's shell runs `ropelaw launch --launcher srun`, which starts one task per node and
torchrun in each.

Checked through `sacct`: the step ran on both nodes, one task each, and is named after the
rendezvous, which is the first node's `NodeAddr`. From the manifest: world size 2, so the
global batch of 8 is micro-batch 2 x 2 ranks x 2 accumulation steps. The result must equal a
one-node run of the same spec on the same world size (torchrun, two workers, one node)
**bitwise**: the same ranks do the same arithmetic, and a gloo all-reduce of two ranks adds
the same two numbers whichever node holds them. (Against one process with accumulation 4 the
sums run in another order: tests/test_deepspeed.py measures that at about 1e-6.)

Failure across nodes, in one re-submitted run: `scancel --signal=USR1` of the job stops both
nodes at the same step with one checkpoint; then one node's worker is killed (SIGKILL) while the
other node's is frozen (SIGSTOP, a rank that would never notice): the killed node's torchrun
fails, `--kill-on-bad-exit` ends the whole step, the job fails, Snakemake re-submits it, and the
cell resumes from its last checkpoint to the same bitwise result. The attempt's record says
how it ended: no end written, or `failed` with the error of a frozen rank that ran again before
SLURM ended it.

Without the two-node cluster every test here skips with the reason (fails in CI: conftest.py).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from test_slurm import _cluster_problem as single_node_problem
from test_slurm import cluster_marks, is_cell_job

from ropelaw.checkpoints import KILLED

ROOT = Path(__file__).resolve().parents[1]
CELL = "results/mini/base/base1000000_len64"
NODES = ("rlnode1", "rlnode2")
FINETUNE = {"steps": 60, "global_batch_size": 8, "micro_batch_size": 2, "checkpoint_every": 20, "logging_steps": 1,
            "deepspeed": "config/deepspeed/zero3.json"}
# The nodes' workers find each other on the namespaces' interface (a site sets NCCL_SOCKET_IFNAME alike);
# the shims of .ci/slurm/cpu-deepspeed let DeepSpeed run without a GPU.
ENV = {"GLOO_SOCKET_IFNAME": "eth0", "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1",
       "TOKENIZERS_PARALLELISM": "false",
       "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / ".ci/slurm/cpu-deepspeed"), os.environ.get("PYTHONPATH")]))}


def _cluster_problem() -> str | None:
    """test_slurm's checks (tools, controller, accounting), then the two idle nodes of partition `multi`."""
    problem = single_node_problem()
    if problem:
        return problem
    nodes = subprocess.run(["sinfo", "-h", "-N", "-p", "multi", "-o", "%N %T"], capture_output=True, text=True)
    if nodes.returncode:
        return f"`sinfo` fails: {nodes.stderr.strip().splitlines()[-1]}"
    states = dict(line.split() for line in nodes.stdout.splitlines())
    if sorted(states) != list(NODES) or not all(s in ("idle", "mixed") for s in states.values()):
        return f"no idle partition `multi` of {', '.join(NODES)} (sinfo: {states})"
    return None


PROBLEM = _cluster_problem()
pytestmark = cluster_marks(PROBLEM, "two-node local SLURM cluster")


def two_node_profile(directory: Path) -> Path:
    """profiles/slurm as shipped, but for the local cluster: its account, its sizes, fine-tuning on 2 nodes."""
    profile = yaml.safe_load((ROOT / "profiles/slurm/config.yaml").read_text())
    sizes = {"cpus_per_task": 1, "mem_mb": 2000, "runtime": 30}  # runtime keeps USR1@900 away
    profile["default-resources"].update(slurm_account="root", **sizes)
    for resources in profile["set-resources"].values():
        resources.update(sizes)
    # Two nodes of one (fake) A100; two task slots per node because the plugin's MPI mode needs more than one.
    profile["set-resources"]["finetune"].update(slurm_partition="multi", nodes=2, gres="gpu:a100:1", tasks_per_node=2)
    profile["slurm-init-seconds-before-status-checks"] = 1
    profile["latency-wait"] = 5
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))
    return directory


def sacct(*args: str, fields=("JobID", "JobName", "Comment", "NodeList", "NNodes", "NTasks", "State", "ExitCode")):
    out = subprocess.run(
        ["sacct", "--noheader", "--parsable2", "-S", "2020-01-01", "--format", ",".join(f"{f}%300" for f in fields),
         *args], capture_output=True, text=True, check=True,
    ).stdout
    return [dict(zip(fields, line.split("|"))) for line in out.splitlines() if line]


def node_addr(node: str) -> str:
    shown = subprocess.run(["scontrol", "show", "node", node], capture_output=True, text=True, check=True).stdout
    return re.search(r"NodeAddr=(\S+)", shown).group(1)


def _work(scenario: Path, destination: Path) -> Path:
    """A copy of the scenario's directory whose config fine-tunes with ZeRO-3 and logs every step."""
    work = Path(shutil.copytree(scenario, destination, ignore=shutil.ignore_patterns(".snakemake")))
    config = yaml.safe_load((work / "config/config.yaml").read_text())
    config["finetune"].update(FINETUNE)
    (work / "config/config.yaml").write_text(yaml.safe_dump(config))
    (work / "config/deepspeed").mkdir()
    shutil.copy(ROOT / "config/deepspeed/zero3.json", work / "config/deepspeed/zero3.json")
    shutil.rmtree(work / CELL / "model")
    (work / "logs/finetune/mini/base/base1000000_len64.log").unlink()
    return work


def snakemake(work: Path, profile: Path, out: Path) -> subprocess.Popen:
    """The user's command for one cell (the target first: --forcerun takes every word after it)."""
    return subprocess.Popen(
        [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), f"{CELL}/model", "--profile", str(profile),
         "--forcerun", f"{CELL}/model"],
        cwd=work, env={**os.environ, **ENV}, stdout=out.open("w"), stderr=subprocess.STDOUT, text=True,
    )


def _one_node_reference(rule_words: list[str], work: Path, base: Path) -> subprocess.Popen:
    """The rule's command on one node: torchrun with two workers, the same world size as the two nodes'."""
    words = list(rule_words)
    words[words.index("--checkpoints") + 1] = str(base / "one_node/checkpoints")
    words[words.index("--out") + 1] = str(base / "one_node/model")
    return subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "ropelaw.cli",
         *words],
        cwd=work, env={**os.environ, **ENV, "GLOO_SOCKET_IFNAME": "lo"},
        stdout=(base / "one_node.out").open("w"), stderr=subprocess.STDOUT, text=True,
    )


def _rule_words(work: Path) -> list[str]:
    """The fine-tune's arguments as the rule passes them (`finetune --model ... --out ...`, from a dry run)."""
    dry = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-n", "-p", "--cores", "1",
         f"{CELL}/model", "--forcerun", f"{CELL}/model"], cwd=work, capture_output=True, text=True, check=True,
    ).stdout
    words = shlex.split(next(line for line in dry.splitlines() if " finetune --model " in line))
    return words[words.index("finetune"):words.index(">")]


@pytest.fixture(scope="module")
def runs(scenario, tmp_path_factory):
    """Three runs at once: the clean two-node run, the interrupted two-node run, and the one-node reference."""
    base = tmp_path_factory.mktemp("multinode")
    profile = two_node_profile(base / "profile")
    clean, broken = _work(scenario, base / "clean"), _work(scenario, base / "interrupted")
    rule_words = _rule_words(clean)
    spec = json.loads(rule_words[rule_words.index("--spec") + 1])
    started = time.monotonic()
    procs = {"clean": snakemake(clean, profile, base / "clean.out"),
             "interrupted": snakemake(broken, profile, base / "interrupted.out"),
             "one_node": _one_node_reference(rule_words, clean, base)}
    try:
        interruptions = _interrupt(broken, procs["interrupted"], base / "interrupted.out")
        codes = {name: proc.wait(timeout=900) for name, proc in procs.items()}
    finally:  # on a failure, leave no Snakemake, job or worker of this test behind
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        run_ids = re.findall(r"SLURM run ID: (\S+)", "".join((base / f"{name}.out").read_text() for name in procs))
        if run_ids:
            subprocess.run(["scancel", "--name", ",".join(run_ids)], capture_output=True)
    print(f"two-node runs: {time.monotonic() - started:.0f} s")
    output = {name: (base / f"{name}.out").read_text() for name in procs}
    for name, code in codes.items():
        assert code == 0, f"{name} failed:\n{output[name][-6000:]}"
    return SimpleNamespace(base=base, spec=spec, clean=clean, interrupted=broken, output=output, **interruptions)


def _job_of(output_file: Path, proc: subprocess.Popen, deadline: float) -> str:
    """The SLURM job running the fine-tune now (its comment names rule and wildcards)."""
    while True:
        assert proc.poll() is None and time.monotonic() < deadline, output_file.read_text()[-5000:]
        queue = subprocess.run(["squeue", "--noheader", "--states", "RUNNING", "--format", "%i %k"],
                               capture_output=True, text=True).stdout
        jobs = [line.split()[0] for line in queue.splitlines() if is_cell_job(line.split()[-1])]
        run_id = re.search(r"SLURM run ID: (\S+)", output_file.read_text())
        mine = {j["JobID"] for j in sacct("--allocations", "--name", run_id.group(1))} if run_id else set()
        if mine & set(jobs):
            return (mine & set(jobs)).pop()
        time.sleep(0.2)


def _wait_for_losses(log: Path, count: int, proc, output_file: Path, deadline: float) -> None:
    """Until this attempt's log has `count` optimizer steps (rank 0 logs each: `{'loss': ...}`)."""
    while not (log.is_file() and log.read_text().count("{'loss'") >= count):
        assert proc.poll() is None and time.monotonic() < deadline, output_file.read_text()[-5000:]
        time.sleep(0.1)


def _interrupt(work: Path, proc: subprocess.Popen, output_file: Path) -> dict:
    """USR1 to the first job after its second step; SIGKILL to rlnode2's worker after four more steps."""
    log = work / "logs/finetune/mini/base/base1000000_len64.log"
    deadline = time.monotonic() + 600
    first = _job_of(output_file, proc, deadline)
    _wait_for_losses(log, 2, proc, output_file, deadline)
    subprocess.run(["scancel", "--signal=USR1", first], check=True)  # what SLURM does before the time limit
    while log.read_text().count("stopped by SIGUSR1") < 2:  # both ranks; read before the next attempt rewrites it
        assert proc.poll() is None and time.monotonic() < deadline, output_file.read_text()[-5000:]
        time.sleep(0.2)
    log_at_usr1 = log.read_text()
    checkpoints = work / CELL / "checkpoints"
    checkpoints_at_usr1 = sorted(str(p.relative_to(checkpoints)) for p in checkpoints.glob("checkpoint-*/global_step*/*"))
    while (second := _job_of(output_file, proc, deadline)) == first:
        time.sleep(0.5)
    while log.is_file() and "stopped by SIGUSR1" in log.read_text():  # until the new attempt rewrites the log
        time.sleep(0.2)
    _wait_for_losses(log, 4, proc, output_file, deadline)
    # rlnode1's worker is frozen first, so it cannot notice its peer's death itself (as a rank hung in a
    # collective would not): only SLURM's --kill-on-bad-exit can end its task, and with it the step.
    os.kill(_worker_on(second, "rlnode1"), signal.SIGSTOP)
    os.kill(_worker_on(second, "rlnode2"), signal.SIGKILL)
    killed = time.monotonic()
    while _running(second):
        if time.monotonic() - killed > 120:
            subprocess.run(["scancel", second])
            raise AssertionError(f"job {second} still runs 120 s after one node's worker was killed")
        time.sleep(0.5)
    return {"first_job": first, "second_job": second, "log_at_usr1": log_at_usr1,
            "checkpoints_at_usr1": checkpoints_at_usr1}


def _running(job_id: str) -> bool:
    return bool(subprocess.run(["squeue", "--noheader", "--jobs", job_id, "--states", "RUNNING,COMPLETING"],
                               capture_output=True, text=True).stdout.strip())


def _worker_on(job_id: str, node: str) -> int:
    """The PID of the training worker that runs on `node` for this job: the process with the job's LOCAL_RANK whose
    parent is torchrun (`python -m torch.distributed.run`). Not the first such process found: a process the worker
    starts inherits its environment, and PIDs wrap, so a child's PID can be the lower."""
    found = {}
    for proc in Path("/proc").iterdir():
        try:
            env = dict(e.split("=", 1) for e in (proc / "environ").read_bytes().decode().split("\0") if "=" in e)
            parent = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if env.get("SLURM_JOB_ID") == job_id and env.get("SLURMD_NODENAME") == node and "LOCAL_RANK" in env:
                found[int(proc.name)] = (parent, Path(f"/proc/{parent}/cmdline").read_bytes())
        except (OSError, ValueError, IndexError):
            continue
    workers = [pid for pid, (_, launcher) in found.items() if b"torch.distributed.run" in launcher]
    assert len(workers) == 1, f"job {job_id} on {node}: processes with LOCAL_RANK and their parents {found}"
    return workers[0]


def _result(directory: Path) -> tuple[dict, dict]:
    from safetensors.torch import load_file

    return json.loads((directory / "ropelaw_manifest.json").read_text()), load_file(directory / "model.safetensors")


def _losses(manifest: dict) -> list[tuple[int, float]]:
    return [(row["step"], row["loss"]) for row in manifest["log_history"] if "loss" in row]


def _assert_bitwise(result: tuple[dict, dict], reference: tuple[dict, dict]) -> None:
    assert _losses(result[0]) == _losses(reference[0]) and len(_losses(result[0])) == FINETUNE["steps"]
    assert result[0]["final_loss"] == reference[0]["final_loss"]
    assert result[1].keys() == reference[1].keys()
    assert all(result[1][k].equal(reference[1][k]) for k in reference[1]), "weights differ"


def test_the_step_ran_on_both_nodes_with_the_rendezvous_at_the_first(runs):
    run_id = re.search(r"SLURM run ID: (\S+)", runs.output["clean"]).group(1)
    (job,) = [j for j in sacct("--allocations", "--name", run_id) if is_cell_job(j["Comment"])]
    assert job["State"] == "COMPLETED" and job["NNodes"] == "2" and job["NodeList"] == "rlnode[1-2]", job
    steps = {j["JobID"]: j for j in sacct("--jobs", job["JobID"])}
    step = steps[f"{job['JobID']}.0"]  # ropelaw launch's srun step: one task per node
    assert step["NodeList"] == "rlnode[1-2]" and step["NNodes"] == "2" and step["NTasks"] == "2", step
    assert step["State"] == "COMPLETED" and step["ExitCode"] == "0:0", step
    port = 20000 + int(job["JobID"]) % 20000
    assert step["JobName"] == f"finetune@{node_addr('rlnode1')}:{port}" and node_addr("rlnode1") == "10.199.77.11"


def test_two_nodes_keep_the_global_batch_and_equal_one_node_bitwise(runs):
    two_nodes, one_node = _result(runs.clean / CELL / "model"), _result(runs.base / "one_node/model")
    manifest = two_nodes[0]
    assert manifest["spec"] == runs.spec and manifest["spec"]["deepspeed"] == "config/deepspeed/zero3.json"
    assert manifest["world_size"] == 2 and manifest["gradient_accumulation_steps"] == 2  # 8 = 2 x 2 ranks x 2
    assert manifest["spec"]["global_batch_size"] == 8 and manifest["spec"]["micro_batch_size"] == 2
    assert one_node[0]["world_size"] == 2
    _assert_bitwise(two_nodes, one_node)
    print(f"final loss: two nodes {manifest['final_loss']}, one node {one_node[0]['final_loss']}")


def test_usr1_stops_both_nodes_at_one_step_with_one_checkpoint(runs):
    stops = re.findall(r"stopped by SIGUSR1 after step (\d+)", runs.log_at_usr1)
    assert len(stops) == 2 and stops[0] == stops[1], stops  # one line per rank, the same step
    step = int(stops[0])
    # One checkpoint of that step, holding both ranks' ZeRO-3 shards (parameters and optimizer state).
    assert {f"checkpoint-{step}/global_step{step}/zero_pp_rank_{rank}_mp_rank_00_{kind}_states.pt"
            for rank in (0, 1) for kind in ("model", "optim")} <= set(runs.checkpoints_at_usr1), runs.checkpoints_at_usr1
    first = {j["JobID"]: j for j in sacct("--jobs", runs.first_job)}
    assert first[runs.first_job]["State"] == "FAILED", first
    assert first[f"{runs.first_job}.0"]["NodeList"] == "rlnode[1-2]"


def test_a_node_killed_ends_the_step_and_the_cell_resumes_to_the_same_result(runs):
    output = runs.output["interrupted"]
    second = {j["JobID"]: j for j in sacct("--jobs", runs.second_job)}
    assert second[runs.second_job]["State"] == "FAILED", second
    # rlnode2's worker was killed; --kill-on-bad-exit ended rlnode1's task too: the step failed as a whole.
    assert second[f"{runs.second_job}.0"]["State"] in ("FAILED", "CANCELLED"), second
    run_id = re.search(r"SLURM run ID: (\S+)", output).group(1)
    jobs = [j for j in sacct("--allocations", "--name", run_id) if is_cell_job(j["Comment"])]
    attempts = {j["JobID"]: j["State"] for j in jobs}
    # USR1 and the kill each failed one attempt, and the last one completed, within the profile's
    # `retries: 3`. An attempt that failed on its own is named with its log's tail (a warning, shown
    # in the summary): one did once in CI, with no log kept to say why.
    assert list(attempts.values())[-1] == "COMPLETED" and len(attempts) <= 4, attempts
    assert {runs.first_job, runs.second_job} <= {job for job, state in attempts.items() if state == "FAILED"}, attempts
    for job in set(attempts) - {runs.first_job, runs.second_job, list(attempts)[-1]}:
        log = next(runs.interrupted.glob(f".snakemake/slurm_logs/rule_finetune/*/{job}.log"), None)
        tail = "\n".join(log.read_text().splitlines()[-40:]) if log else "(no log)"
        warnings.warn(f"attempt {job} ({attempts[job]}) failed though neither USR1 nor the kill hit it:\n{tail}")
    resumed, one_node = _result(runs.interrupted / CELL / "model"), _result(runs.base / "one_node/model")
    assert re.fullmatch(r".*/checkpoint-\d+", resumed[0]["resumed_from"] or ""), resumed[0]["resumed_from"]
    # The manifest lists every attempt (Snakemake deleted their logs): stopped by USR1, the killed one, ...,
    # the completed one. The killed one has no end written (rank 0's worker was frozen, then ended by SLURM)
    # or, once in CI, `failed` with an error: rank 0 ran again before it was ended (SLURM's SIGCONT before
    # SIGTERM can wake it) and met its lost peer. Either is a true record; a warning shows the second's error.
    records = {a["slurm_job_id"]: a for a in resumed[0]["attempts"]}
    listed = {job: record["outcome"] for job, record in records.items()}
    assert list(listed) == list(attempts), (listed, attempts)
    assert listed[runs.first_job] == "stopped by SIGUSR1", records[runs.first_job]
    killed = records[runs.second_job]
    assert killed["outcome"] == KILLED or (killed["outcome"] == "failed" and killed.get("error")), killed
    if killed["outcome"] == "failed":
        warnings.warn(f"the killed attempt {runs.second_job} recorded its own end: {killed}")
    assert list(listed.values())[-1] == "completed", listed
    _assert_bitwise(resumed, one_node)
