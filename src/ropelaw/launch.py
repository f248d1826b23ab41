"""Start a training command on every GPU of a job: plain, torchrun, or srun + torchrun on SLURM.

    ropelaw finetune ...                                   # one process on the CPU
    torchrun --standalone --nproc-per-node 8 -m ropelaw.cli finetune ...   # one node, 1 to 8 GPUs
    ropelaw launch --launcher srun -- finetune ...         # inside a SLURM job, any number of nodes

The rules take their prefix from `launch_prefix(gpus, mpi)`: `mpi` is the Snakemake
resource that the SLURM profile sets for fine-tuning (`mpi: srun`), which tells the
SLURM executor plugin to run the rule's shell in the batch step and leave the launch
to it. `ropelaw launch` then starts one task per node with `srun` (all of the node's
CPUs and GPUs to that task), and each task runs `torchrun` with one worker per GPU of
its node (static rendezvous at the first node of the step, at the address SLURM reaches
it by: its `NodeAddr`, which the step's name records, `finetune@ADDR:PORT` in `sacct`),
or the command itself when its node has no GPU and it is the only node.

Why one step of our own: `--signal=USR1@T` and `scancel --signal=USR1` reach the
processes of every job step but not the batch step, so the training workers hear it
(and save a checkpoint, see `ropelaw.finetune`) while Snakemake, in the batch step,
lives on to report the exit code and retry. torchrun itself ignores SIGUSR1 (the
disposition is set here and survives exec); its workers install their own handler.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys

from ropelaw import UserError


def launch_prefix(gpus: int, mpi: str | None) -> str:
    """The words before a `ropelaw` subcommand in a rule's shell, from the job's resources."""
    if mpi:
        return f"ropelaw launch --launcher {shlex.quote(mpi)} --"
    # One GPU too: DeepSpeed finds its process group in torchrun's environment (without it,
    # it tries MPI discovery); with one worker accelerate adds no DDP wrapper.
    if gpus >= 1:
        return f"torchrun --standalone --nproc-per-node {gpus} -m ropelaw.cli"
    return "ropelaw"


def master_port(job_id: str) -> int:
    """A rendezvous port that differs between jobs sharing a node."""
    return 20000 + int(job_id) % 20000


def srun_command(
    launcher: list[str], nodes: int, cpus_per_node: int, rendezvous: str, command: list[str]
) -> list[str]:
    """One task per node, holding every CPU of its node; each task runs `ropelaw launch --node`.

    `rendezvous` is the first node's address and port; the step is named after it (`sacct`).
    """
    return [
        *launcher,
        f"--nodes={nodes}",
        f"--ntasks={nodes}",
        "--ntasks-per-node=1",
        f"--cpus-per-task={cpus_per_node}",
        "--kill-on-bad-exit=1",
        f"--job-name={command[0]}@{rendezvous}",
        sys.executable, "-m", "ropelaw.cli", "launch", "--node", "--master-addr", rendezvous.rsplit(":", 1)[0],
        "--", *command,
    ]


def node_command(env: dict, first_host: str, command: list[str]) -> list[str]:
    """What one node's task runs: the command itself, or torchrun with one worker per GPU."""
    nodes = int(env["SLURM_STEP_NUM_NODES"])
    gpus = int(env.get("SLURM_GPUS_ON_NODE") or 0)
    if nodes == 1 and gpus == 0:
        return [sys.executable, "-m", "ropelaw.cli", *command]
    return [
        sys.executable, "-m", "torch.distributed.run",
        f"--nnodes={nodes}",
        f"--node-rank={env['SLURM_NODEID']}",
        f"--nproc-per-node={max(gpus, 1)}",
        f"--master-addr={first_host}",
        f"--master-port={master_port(env['SLURM_JOB_ID'])}",
        "-m", "ropelaw.cli", *command,
    ]


def _job_size(job_id: str) -> tuple[int, int, str]:
    """(nodes, CPUs per node, node list) of a running job, as SLURM allocated them.

    From squeue: the SLURM executor plugin removes the allocation's SLURM_* variables but the job id.
    """
    out = subprocess.run(
        ["squeue", "--noheader", "--jobs", job_id, "--format", "%D %C %N"],
        capture_output=True, text=True, check=True,
    ).stdout.split()
    nodes, cpus = int(out[0]), int(out[1])
    return nodes, cpus // nodes, out[2]


def _first_address(nodelist: str) -> str:
    """The address SLURM reaches the first node of `nodelist` by (`NodeAddr`, often its host name)."""
    hosts = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=True)
    first = hosts.stdout.split()[0]
    node = subprocess.run(["scontrol", "show", "node", first], capture_output=True, text=True, check=True).stdout
    return parse_node_addr(node, first)


def parse_node_addr(scontrol_node: str, name: str) -> str:
    """`NodeAddr=` of one node's `scontrol show node` text; the node's name where it has none."""
    for word in scontrol_node.split():
        if word.startswith("NodeAddr="):
            return word.removeprefix("NodeAddr=")
    return name


def _exec(argv: list[str]) -> None:
    print("ropelaw launch:", shlex.join(argv), file=sys.stderr, flush=True)
    os.execvp(argv[0], argv)


def add_arguments(parser) -> None:
    parser.add_argument("--launcher", help="the job-step launcher and its options (the profile's `mpi` resource, e.g. srun)")
    parser.add_argument("--node", action="store_true", help="(internal) run as the task of one node, inside the step")
    parser.add_argument("--master-addr", help="(internal, with --node) the first node's address: the rendezvous")
    parser.add_argument("command", nargs="+", help="the ropelaw subcommand and its arguments, after --")


def run(args) -> None:
    env = os.environ
    if args.node:
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # inherited through exec: torchrun ignores it
        if not args.master_addr:
            raise UserError("ropelaw launch --node needs --master-addr (ropelaw launch --launcher passes it)")
        _exec(node_command(env, args.master_addr, args.command))
    if not args.launcher:
        raise UserError("ropelaw launch needs --launcher (e.g. srun) or --node")
    if "SLURM_JOB_ID" not in env:
        raise UserError(
            "ropelaw launch --launcher runs inside a SLURM job (the profile's `mpi` resource); "
            "for a local run leave `mpi` unset"
        )
    nodes, cpus_per_node, nodelist = _job_size(env["SLURM_JOB_ID"])
    rendezvous = f"{_first_address(nodelist)}:{master_port(env['SLURM_JOB_ID'])}"
    _exec(srun_command(shlex.split(args.launcher), nodes, cpus_per_node, rendezvous, args.command))
