"""Every command the documentation shows runs as shown (issue 18). About 30 s, offline.

The commands are taken from the bash code blocks and the inline code spans of README.md,
config/README.md and docs/*.md. Each cheap one (predict, check-config, plan, config-doc, a
`snakemake -n`, a `--help`) runs in a temporary copy of the repository and must exit 0.
A command that trains, installs or needs a GPU or a cluster is listed below by its exact text
with the reason it does not run here: a snakemake or make command that would train is dry-run
(`-n` added), the rest are skipped. A command that is neither cheap nor listed fails the test, so a new
one cannot slip in untested; a listed command that no page shows any more fails it too.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ropelaw.cli import COMMANDS

ROOT = Path(__file__).resolve().parents[1]
PAGES = ["README.md", "config/README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))]
PROGRAMS = {"ropelaw", "snakemake", "bash", "sudo", "make", "pip", "python", "python3", "pytest",
            "sacct", "scancel", "torchrun", "kill", "apt-get"}
CHEAP_SUBCOMMANDS = {"predict", "check-config", "plan", "config-doc", "cell"}

# Shown commands that would train: run with `-n` added (the DAG, config and flags are checked;
# for make, the Makefile's commands are printed, not run).
DRY = {
    "make demo": "sets the machine up and runs the main job (minutes)",
    "make demo CORES=2": "as make demo",
    "make test": "the test suite itself",
    ".venv/bin/snakemake --cores 2": "the main job trains (minutes)",
    "snakemake --cores 2 results/tiny/base/base1500000_len64/eval.csv": "trains a cell",
    "snakemake --cores 2 --forcerun ppl_vs_length passkey_vs_length passkey_heatmap bound_vs_base critical_dimension":
        "needs the main job's results",
    "snakemake --profile profiles/slurm --configfile config/paper.yaml": "the paper's grid on a cluster",
    ".venv/bin/snakemake --cores 2 --configfile config/smollm2_cpu.yaml": "SmolLM2 at 16K on CPU (20 min)",
}
# Shown templates: the concrete command run in their place.
INSTEAD = {
    "ropelaw check-config --configfile config/x.yaml": "ropelaw check-config --configfile config/smollm2.yaml",
    "snakemake --cores 2 --configfile config/<study>.yaml": "snakemake -n --cores 2 --configfile config/smollm2.yaml",
}
SKIP = {
    ".venv/bin/python -m pytest -q": "the test suite itself",
    "apt-get install make python3-venv": "installs packages (root)",
    "bash scripts/setup.sh": "installs packages (network)",
    "make setup": "installs packages (scripts/setup.sh)",
    ".venv/bin/snakemake --cores 2 --report report.html": "needs the main job's results",
    ".venv/bin/python -c \"import glob, pandas as pd; t = pd.concat(map(pd.read_csv, glob.glob('results/tiny/*/*/eval.csv'))); "
    "print(t[t.scope == 'prefix'].pivot_table(index=['method', 'base'], columns='end', values='ppl').round(1)); "
    "print(pd.read_csv('results/law/cells.csv')[['method', 'base', 'measured_bound', 'bound_lo', 'bound_hi', 'n_docs', "
    "'passkey_accuracy']].round(1).to_string()); "
    "print(pd.read_csv('results/law/fit.csv')[['fitted_slope', 'fitted_slope_lo', 'fitted_slope_hi', 'theory_slope']])\"":
        "prints the main job's tables (README, what the embedded default shows): needs its results",
    "pip install -e '.[test]'": "installs packages",
    "pip install --no-deps": "installs packages (a fragment of pip's options)",
    "pytest tests/test_slurm.py": "needs the local SLURM cluster (root)",
    "sudo bash .ci/slurm/start-local-cluster.sh": "root: starts SLURM daemons",
    "sudo LOCAL_SLURM_NS_NODES=2 bash .ci/slurm/start-local-cluster.sh": "root: SLURM daemons and network namespaces",
    "sudo bash .ci/slurm/stop-local-cluster.sh": "root: stops SLURM daemons",
    "ropelaw launch --launcher srun": "runs inside a SLURM job (srun)",
    "torchrun --nnodes 2": "what each node's task runs inside a SLURM job",
    "snakemake --profile": "a fragment: the cluster run shown in full above",
    "sacct -o JobID,Comment%60,State,ExitCode,AllocTRES%60": "needs a SLURM cluster",
    "scancel --signal=USR1 JOBID": "needs a SLURM cluster and a job",
    "scancel --signal=USR1": "needs a SLURM cluster and a job",
    "snakemake --profile profiles/slurm --configfile config/paper.yaml --set-resources evaluate:gpu_model=h200 "
    "evaluate:runtime=2880 results/llama2-7b/base/base500_len16384/eval.csv ...":
        "a template (`...`: more outputs) for a cluster with H200s",
    "kill -USR1": "a signal to running workers",
    "torchrun --standalone --nproc-per-node <gpu> -m ropelaw.cli finetune ...": "what a GPU job runs (GPUs)",
    "python3 -m venv .venv && . .venv/bin/activate": "creates a venv (docs/gpu.md install)",
    "pip install torch": "installs packages",
    "pip install -e '.[deepspeed]'": "installs packages",
    "pip install flash-attn --no-build-isolation": "installs packages (CUDA)",
    "pip install -e '.[flash4]'": "installs packages (GPU kernels)",
    "bash bench/flash4_site.sh pack DIR": "downloads wheels (network) and packs them for a machine without network",
    "N=$(nvidia-smi -L | wc -l)": "needs a GPU",
    "snakemake --configfile config/<study>.yaml --cores 32 --resources gpu=$N --set-resources finetune:gpu=$N "
    "pretrain:gpu=$N evaluate:gpu=$N passkey:gpu=$N": "needs GPUs ($N from nvidia-smi)",
    "python bench/summarize.py <folder>": "a template: needs a benchmark run's folder",
    "snakemake -s Snakefile -d /tmp/smollm2_cpu --cores 2 --configfile config/smollm2_cpu.yaml":
        "a record of how the run was made (a scratch directory with the repository's config/)",
    ".venv/bin/python -c \"import pandas as pd; t = pd.concat(pd.read_csv(f'results/smollm2_cpu/{m}/base100000_len8192/"
    "eval.csv') for m in ('untuned', 'dynamic_ntk')); print(t[['method', 'scope', 'start', 'end', 'ppl', 'accuracy']]"
    ".to_string())\"": "reads the tables of the 20-minute SmolLM2 CPU run (docs/smollm2_cpu.md), not committed",
}


def _code_block_commands(text: str) -> list[str]:
    commands = []
    for lang, body in re.findall(r"^```(\w*)\n(.*?)^```", text, re.M | re.S):
        if lang not in ("bash", "sh", "shell"):
            continue
        for line in body.replace("\\\n", " ").splitlines():
            line = " ".join(re.sub(r"(^|\s)#.*$", "", line).split())
            if line:
                commands.append(line)
    return commands


def _inline_commands(text: str) -> list[str]:
    text = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
    spans = (" ".join(span.split()) for span in re.findall(r"`([^`]+)`", text))
    return [s for s in spans if len(s.split()) > 1 and (s.split()[0] in PROGRAMS or s.startswith(".venv/bin/"))]


def shown_commands() -> dict[str, str]:
    """{command: the page that shows it} over every page."""
    shown = {}
    for page in PAGES:
        text = (ROOT / page).read_text()
        for command in _code_block_commands(text) + _inline_commands(text):
            shown.setdefault(command, page)
    return shown


def how_to_run(command: str) -> str | None:
    """The command line to run for a shown command, or None when it is skipped."""
    if command in SKIP:
        return None
    if command in INSTEAD:
        return INSTEAD[command]
    if command in DRY:
        return command + " -n"
    words = shlex.split(command)
    program = words[0].removeprefix(".venv/bin/")
    if program == "ropelaw" and len(words) == 2 and words[1] in COMMANDS:
        return command + " --help"  # a subcommand named in the text
    if "--help" in words:
        return command
    if program == "ropelaw" and words[1] in CHEAP_SUBCOMMANDS:
        return command
    if program == "snakemake" and "-n" in words:
        return command
    if program in ("python", "python3") and len(words) > 1 and re.fullmatch(r"docs/results/[\w/]+\.py", words[1]):
        return command  # a results page's script: it reads the committed tables only
    raise AssertionError(f"{command!r}: neither cheap nor listed in DRY, INSTEAD or SKIP of {__file__} with a reason")


SHOWN = shown_commands()


@pytest.fixture(scope="module")
def repo_copy(tmp_path_factory) -> Path:
    """A copy of the repository without what git ignores (results, the venv, ...); `.venv` links to this interpreter's venv and empty
    files stand in for the Pile shards of config/paper.yaml (the README's "once" step before its commands)."""
    work = tmp_path_factory.mktemp("repo") / "ropelaw"
    lines = [line.strip() for line in (ROOT / ".gitignore").read_text().splitlines()]
    # "/results/" is the root's folder only (docs/results/ is committed); "__pycache__/" is any folder's
    at_root = {".git"} | {line.strip("/") for line in lines if line.startswith("/") and "*" not in line}
    anywhere = {line.strip("/") for line in lines if line and not line.startswith(("/", "#")) and "*" not in line}
    skip = lambda folder, names: [n for n in names if n in anywhere or (Path(folder) == ROOT and n in at_root)]  # noqa: E731
    shutil.copytree(ROOT, work, ignore=skip, symlinks=True)
    (work / ".venv").symlink_to(sys.prefix)
    for shard in ("resources/pile/train/00.jsonl.zst", "resources/pile/val.jsonl.zst"):
        (work / shard).parent.mkdir(parents=True, exist_ok=True)
        (work / shard).touch()
    return work


def test_every_shown_command_is_run_or_listed():
    assert len(SHOWN) > 20, SHOWN  # the extraction finds the pages' commands
    for command in SHOWN:
        how_to_run(command)  # raises for a command neither cheap nor listed
    stale = sorted((set(DRY) | set(INSTEAD) | set(SKIP)) - set(SHOWN))
    assert not stale, f"listed in {__file__} but shown on no page any more: {stale}"


@pytest.mark.parametrize("command", [c for c in SHOWN if c not in SKIP], ids=str)
def test_shown_command_runs(command, repo_copy):
    line = how_to_run(command)
    result = subprocess.run(["bash", "-c", line], cwd=repo_copy, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{SHOWN[command]}: `{line}` exited {result.returncode}:\n{result.stderr[-2000:]}"


@pytest.mark.parametrize("subcommand", sorted(COMMANDS))
def test_help_of_every_subcommand(subcommand, repo_copy):
    result = subprocess.run([sys.executable, "-m", "ropelaw.cli", subcommand, "--help"], cwd=repo_copy,
                            capture_output=True, text=True)
    assert result.returncode == 0 and "usage: ropelaw" in result.stdout, result.stderr


def test_predict_takes_several_bases_after_one_flag(capsys):
    from ropelaw.cli import main

    geometry = ["predict", "--head-dim", "128", "--train-len", "4096", "--rope-base", "10000", "--format", "json"]
    assert main([*geometry, "--base", "500", "1e6", "--target-len", "1e5", "2e5"]) == 0
    several = capsys.readouterr().out
    assert main([*geometry, "--base", "500", "--base", "1e6", "--target-len", "1e5", "--target-len", "2e5"]) == 0
    assert capsys.readouterr().out == several
    assert '"base": 1000000' in several and '"target_len": 200000' in several


def test_workflow_catalog_usage_runs(repo_copy):
    """.snakemake-workflow-catalog.yml: the catalog's keys, and its mandatory flags dry-run."""
    import yaml

    usage = yaml.safe_load((ROOT / ".snakemake-workflow-catalog.yml").read_text())["usage"]
    assert set(usage) == {"mandatory-flags", "software-stack-deployment", "report"}
    assert set(usage["software-stack-deployment"]) == {"conda", "apptainer", "apptainer+conda"}
    assert all(isinstance(v, bool) for v in usage["software-stack-deployment"].values())
    if usage["software-stack-deployment"]["conda"]:
        assert list((ROOT / "envs").glob("*.yaml"))
    line = f"snakemake -n --cores 1 {usage['mandatory-flags']['flags']}"
    result = subprocess.run(["bash", "-c", line], cwd=repo_copy, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
