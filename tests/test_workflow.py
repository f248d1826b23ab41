"""The workflow as a user runs it: dry runs of every shipped config, lint, and the tiny scenario end to end."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
# config/paper.yaml needs the Pile on disk: tests/test_cluster.py dry-runs it with stand-in shards.
CONFIGS = sorted(p for p in (ROOT / "config").glob("*.yaml") if p.name != "paper.yaml")


def snakemake(*args, cwd=ROOT, check=True):
    result = subprocess.run([*SNAKEMAKE, *args], cwd=cwd, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_dry_run_of_every_shipped_config(config, tmp_path):
    # In a fresh working directory: what the checkout's results/ holds must not matter (issue 11).
    (tmp_path / "config").symlink_to(ROOT / "config")
    result = snakemake("-s", str(ROOT / "Snakefile"), "-d", str(tmp_path), "-n", "--cores", "1",
                       "--configfile", str(config.relative_to(ROOT)))
    assert "evaluate" in result.stdout and "law" in result.stdout


def test_each_cell_reads_the_eval_set_of_its_longest_length(tmp_path):
    import yaml

    config = yaml.safe_load((ROOT / "tests/scenario/config.yaml").read_text())
    # A second block takes the base-1e6 cell (also in grid[0]) to 1024 tokens.
    config["grid"].append({"model": "mini", "tune_lengths": [64], "bases": [1000000],
                           "eval_lengths": [64, 512, 1024]})
    (tmp_path / "config").mkdir()
    (tmp_path / "config/config.yaml").write_text(yaml.safe_dump(config))
    result = snakemake("-s", str(ROOT / "Snakefile"), "-d", str(tmp_path), "-n", "-p", "--cores", "1")
    jobs = _dry_run_jobs(result.stdout)
    prepared = {job["output"]: _flag(job["shell"], "--length") for job in jobs if job["rule"] == "prepare_eval"}
    assert prepared == {"results/mini/data/eval_len256": "256", "results/mini/data/eval_len1024": "1024"}
    short, long = "results/mini/data/eval_len256", "results/mini/data/eval_len1024"
    evaluated = {
        job["output"].split(", ")[0].removesuffix("/eval.csv"):
            (_flag(job["shell"], "--eval-data"), _flag(job["shell"], "--lengths"))
        for job in jobs if job["rule"] == "evaluate"
    }
    assert evaluated == {
        "results/mini/untuned/base10000_len64": (short, "32 64 128 256"),
        "results/mini/base/base10_len64": (short, "32 64 128 256"),
        "results/mini/base/base10000_len64": (short, "32 64 128 256"),
        "results/mini/base/base1000000_len64": (long, "32 64 128 256 512 1024"),
    }
    inputs = {(job["rule"], job["output"].split(", ")[0]): job["input"] for job in jobs}
    assert long in inputs["passkey", "results/mini/base/base1000000_len64/passkey.csv"]
    for training in ("pretrain", "results/mini/pretrained"), ("finetune", "results/mini/base/base10_len64/model"):
        assert not any("eval" in path for path in inputs[training])  # training waits for no evaluation set


def test_seeds_and_variants_are_jobs_of_their_own(tmp_path):
    import yaml

    config = yaml.safe_load((ROOT / "tests/scenario/config.yaml").read_text())
    config["methods"] = {"again": {"kind": "base"}, "ntk8": {"kind": "ntk", "factor": 8},
                         "again_logn": {"kind": "base_logn", "tuned": "again"}}
    config["grid"] += [{"model": "mini", "tune_lengths": [64], "bases": [500], "seeds": [1, 2]},
                       {"model": "mini", "method": "again", "tune_lengths": [64], "bases": [500]},
                       {"model": "mini", "method": "again_logn", "tune_lengths": [64], "bases": [500]},
                       {"model": "mini", "method": "ntk8"}]
    (tmp_path / "config").mkdir()
    (tmp_path / "config/config.yaml").write_text(yaml.safe_dump(config))
    jobs = _dry_run_jobs(snakemake("-s", str(ROOT / "Snakefile"), "-d", str(tmp_path), "-n", "-p", "--cores", "1").stdout)
    seeds = {job["output"]: json.loads(re.search(r"--spec '([^']*)'", job["shell"]).group(1))["seed"]
             for job in jobs if job["rule"] == "finetune"}
    assert seeds == {
        "results/mini/base/base10_len64/model": 1234, "results/mini/base/base10000_len64/model": 1234,
        "results/mini/base/base1000000_len64/model": 1234, "results/mini/base/base500_len64_seed1/model": 1,
        "results/mini/base/base500_len64_seed2/model": 2, "results/mini/again/base500_len64/model": 1234,
    }
    models = {job["output"].split(", ")[0]: _flag(job["shell"], "--model") for job in jobs if job["rule"] == "evaluate"}
    assert models["results/mini/ntk8/base10000_len64/eval.csv"] == "results/mini/pretrained"
    assert models["results/mini/base/base500_len64_seed2/eval.csv"] == "results/mini/base/base500_len64_seed2/model"
    # a base_logn variant evaluates the model of the method its `tuned` names, and trains none of its own
    assert models["results/mini/again_logn/base500_len64/eval.csv"] == "results/mini/again/base500_len64/model"
    inputs = {job["output"].split(", ")[0]: job["input"] for job in jobs if job["rule"] == "evaluate"}
    assert "results/mini/again/base500_len64/model" in inputs["results/mini/again_logn/base500_len64/eval.csv"]


def test_a_method_name_with_an_underscore_is_not_split_into_the_model_name(tmp_path):
    """passkey_heatmap_mini_base_logn_...: model mini, method base_logn, not model mini_base, method logn
    (both are method names; part d of config/smollm2_small.yaml failed this way in its CPU rehearsal)."""
    import yaml

    config = yaml.safe_load((ROOT / "tests/scenario/config.yaml").read_text())
    config["grid"] += [{"model": "mini", "tune_lengths": [64], "bases": [500]},
                       {"model": "mini", "method": "base_logn", "tune_lengths": [64], "bases": [500]}]
    (tmp_path / "config").mkdir()
    (tmp_path / "config/config.yaml").write_text(yaml.safe_dump(config))
    jobs = _dry_run_jobs(snakemake("-s", str(ROOT / "Snakefile"), "-d", str(tmp_path), "-n", "-p", "--cores", "1").stdout)
    heatmaps = {job["output"].split(", ")[0]: (_flag(job["shell"], "--model"), _flag(job["shell"], "--method"))
                for job in jobs if job["rule"] == "passkey_heatmap"}
    assert heatmaps["results/figures/passkey_heatmap_mini_base_logn_base500_len64.png"] == ("mini", "base_logn")
    assert heatmaps["results/figures/passkey_heatmap_mini_base_base500_len64.png"] == ("mini", "base")


def _dry_run_jobs(output: str) -> list[dict]:
    """Rule, inputs, outputs and shell command of every job that `snakemake -n -p` lists."""
    jobs = []
    for block in re.split(r"^(?:local)?rule ", output, flags=re.M)[1:]:
        fields = dict(re.findall(r"^    (input|output): (.*)$", block, re.M))
        shell = re.search(r"^Shell command: (.*)$", block, re.M)
        jobs.append({"rule": block.split(":", 1)[0], "input": fields.get("input", "").split(", "),
                     "output": fields.get("output", ""), "shell": shell.group(1) if shell else ""})
    return jobs


def _flag(command: str, flag: str) -> str:
    """The value of `flag` in a shell command: the words after it, up to the next flag."""
    return re.search(rf"{flag} ([^-][^>]*?) (?:--|>)", command).group(1)


def test_lint_is_clean():
    result = snakemake("--lint", check=False)
    assert "Congratulations" in result.stdout + result.stderr, result.stdout + result.stderr


def test_snakefmt_is_clean():
    result = subprocess.run(
        [sys.executable, "-m", "snakefmt", "--check", "Snakefile", "rules"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


# `scenario` (tests/conftest.py): the tiny scenario run end to end once per session.


def test_scenario_produces_every_table_and_figure(scenario):
    cells = pd.read_csv(scenario / "results/law/cells.csv")
    assert sorted(zip(cells.method, cells.base)) == [("base", 10), ("base", 10000), ("base", 1000000), ("untuned", 10000)]
    assert (cells.predicted_bound > 0).all()
    for name in ("bound_vs_base", "critical_dimension", "ppl_vs_length_mini_len64"):
        for fmt in ("png", "pdf"):
            assert (scenario / f"results/figures/{name}.{fmt}").stat().st_size > 1000


def test_scenario_eval_tables_and_provenance(scenario):
    cell = scenario / "results/mini/base/base1000000_len64"
    table = pd.read_csv(cell / "eval.csv")
    prefix = table[table.scope == "prefix"]
    assert list(prefix.end) == [32, 64, 128, 256]
    assert (prefix.ppl > 1).all() and prefix.ppl.notna().all()
    sidecar = json.loads((cell / "eval.json").read_text())
    assert sidecar["inv_freq_sha256"] and sidecar["git_commit"] and "torch" in sidecar["versions"]
    assert sidecar["resumed_batches_seconds"] == 0
    assert not (cell / "eval_partial").exists() and not (cell / "passkey_partial").exists()  # finished: removed
    # the passkey rule's allocator setting reaches the job (rules/passkey.smk)
    assert json.loads((cell / "passkey.json").read_text())["alloc_conf"] == "expandable_segments:True"
    manifest = json.loads((cell / "model/ropelaw_manifest.json").read_text())
    assert manifest["base"] == 1e6 and manifest["final_loss"] > 0
    assert manifest["spec"]["steps"] == 4 and manifest["gradient_accumulation_steps"] == 1
    expected = [1e6 ** (-2 * n / 32) for n in range(16)]
    assert manifest["inv_freq"] == pytest.approx(expected, rel=1e-6)


def test_scenario_is_up_to_date_and_figures_regenerate(scenario):
    assert "Nothing to be done" in snakemake("-s", str(ROOT / "Snakefile"), "-d", str(scenario), "-n", "--cores", "1").stdout
    figure = scenario / "results/figures/bound_vs_base.png"
    before = figure.stat().st_mtime_ns
    result = snakemake("-s", str(ROOT / "Snakefile"), "-d", str(scenario), "--cores", "1", "--forcerun", "bound_vs_base")
    assert _count(result.stdout + result.stderr, "finetune") == 0
    assert figure.stat().st_mtime_ns > before


def test_one_cell_reruns_alone_by_its_output_path(scenario):
    target = "results/mini/base/base10_len64/eval.csv"
    result = snakemake(
        "-s", str(ROOT / "Snakefile"), "-d", str(scenario), "-n", "--cores", "1", target, "--forcerun", target
    )
    stats = result.stdout.split("Job stats:")[-1]
    assert _count(stats, "evaluate") == 1 and _count(stats, "finetune") == 0 and _count(stats, "pretrain") == 0


def test_changing_one_override_reruns_only_its_cells(scenario, tmp_path):
    import yaml

    config = yaml.safe_load((scenario / "config/config.yaml").read_text())
    config["models"]["mini"]["finetune"] = {"lr": 5.0e-4}
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(config))
    result = snakemake("-s", str(ROOT / "Snakefile"), "-d", str(scenario), "-n", "--cores", "1", "--configfile", str(changed))
    stats = result.stdout.split("Job stats:")[-1]
    assert _count(stats, "finetune") == 3
    assert _count(stats, "pretrain") == 0


def test_longer_eval_lengths_rerun_only_the_cells_evaluation(scenario, tmp_path):
    import yaml

    config = yaml.safe_load((scenario / "config/config.yaml").read_text())
    config["grid"].append({"model": "mini", "tune_lengths": [64], "bases": [1000000], "eval_lengths": [64, 512]})
    changed = tmp_path / "longer.yaml"
    changed.write_text(yaml.safe_dump(config))
    result = snakemake("-s", str(ROOT / "Snakefile"), "-d", str(scenario), "-n", "--cores", "1",
                       "--configfile", str(changed))
    stats = result.stdout.split("Job stats:")[-1]
    # A new evaluation set, the one cell's evaluate and passkey; training never reruns.
    assert _count(stats, "prepare_eval") == 1
    assert _count(stats, "evaluate") == 1 and _count(stats, "passkey") == 1
    assert _count(stats, "finetune") == 0 and _count(stats, "pretrain") == 0


def test_the_next_part_in_the_same_folder_runs_everything_it_needs(scenario, tmp_path):
    """Parts of a study run one after another in one folder: a part whose cell is new but whose evaluation set
    exists trains and evaluates it, and going back to the first part re-runs the law (its set of cells changed).
    With training waiting on a list of evaluation sets through an ancient() input, each change of that list made
    Snakemake 9 leave out every job behind it (snakemake/snakemake#4166): it ran the list alone and exited 0, or
    drew the figures from the other part's law tables. Found running config/smollm2_small.yaml's parts on CPU."""
    import yaml

    work = Path(shutil.copytree(scenario, tmp_path / "work", symlinks=True))
    first = yaml.safe_load((work / "config/config.yaml").read_text())
    second = {**first, "grid": [{"model": "mini", "tune_lengths": [64], "bases": [500], "eval_lengths": [64, 512]}]}
    (work / "second.yaml").write_text(yaml.safe_dump(second))
    other = ("--configfile", str(work / "second.yaml"))
    run = ("-s", str(ROOT / "Snakefile"), "-d", str(work), "--cores", "1")
    snakemake(*run, "results/mini/data/eval_len512")  # the second part's evaluation set exists already
    stats = snakemake(*run, "-n", *other).stdout.split("Job stats:")[-1]
    assert _count(stats, "prepare_eval") == 0 and _count(stats, "finetune") == 1 and _count(stats, "evaluate") == 1
    assert _count(stats, "passkey") == 1 and _count(stats, "law") == 1
    snakemake(*run, *other)
    stats = snakemake(*run, "-n").stdout.split("Job stats:")[-1]  # back to the first part: nothing to train
    assert _count(stats, "law") == 1 and _count(stats, "bound_vs_base") == 1 and _count(stats, "finetune") == 0


def _count(stats: str, rule: str) -> int:
    for line in stats.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == rule:
            return int(parts[1])
    return 0
