"""The small-base study (config/smollm2_small.yaml, issue 15): its parts are slices of it and dry-run,
and its inputs reach the GPU machine in pieces that are checked on arrival (ropelaw.carry,
scripts/gpu_study.sh take and unpack)."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from ropelaw import UserError
from ropelaw.carry import INDEX, Index, check_piece, join, split
from ropelaw.cli import main
from ropelaw.config import load_configs, resolve
from ropelaw.provenance import COMMIT_ENV, tree_record

ROOT = Path(__file__).resolve().parents[1]
STUDY = ROOT / "config" / "smollm2_small.yaml"
PARTS = sorted((ROOT / "config" / "smollm2_small").glob("part_*.yaml"))
SCRIPT = ROOT / "scripts" / "gpu_study.sh"


# --- the parts ---------------------------------------------------------------------------------
def _cells(*paths: Path) -> dict[str, str]:
    """{cell path: the cell's JSON} of the configs merged in order."""
    _, cells = resolve(load_configs([str(p) for p in paths]))
    return {cell.path: cell.to_json() for cell in cells}


def test_the_parts_are_the_study_cut_into_slices():
    assert [p.stem for p in PARTS] == ["part_a", "part_b1", "part_b1x", "part_b2", "part_b2x", "part_c", "part_d",
                                       "part_d2", "part_e"]
    whole = _cells(STUDY)
    union: dict[str, str] = {}
    for part in PARTS:
        mine = _cells(STUDY, part)
        for path, cell in mine.items():
            # the same training, method and evaluation lengths as in the whole study
            assert whole.get(path) == cell, f"{part.name}: {path} differs from config/smollm2_small.yaml"
        union.update(mine)
    assert union == whole


def test_the_parts_answer_what_the_plan_says():
    part = {p.stem: _cells(STUDY, p) for p in PARTS}
    assert sorted(part["part_a"]) == ["results/smollm2/lr1e3/base1304_len8192", "results/smollm2/lr1e4/base1304_len8192",
                                      "results/smollm2/lr3e4/base1304_len8192", "results/smollm2/untuned/base100000_len8192"]
    assert sorted(part["part_b1"]) == ["results/smollm2/base/base100000_len8192", "results/smollm2/base/base1304_len8192"]
    assert sorted(part["part_b2"]) == ["results/smollm2/base/base100000_len8192", "results/smollm2/base/base500_len8192"]
    # PLAN.md's amendment 1: the b parts again at 1,000 steps on the fast training path, apart from b1's cells
    assert sorted(part["part_b1x"]) == ["results/smollm2/steps1000/base100000_len8192",
                                        "results/smollm2/steps1000/base1304_len8192"]
    assert sorted(part["part_b2x"]) == ["results/smollm2/steps1000/base100000_len8192",
                                        "results/smollm2/steps1000/base500_len8192"]
    for name in ("part_b1x", "part_b2x"):
        for cell in part[name].values():
            training = json.loads(cell)["training"]
            assert (training["steps"], training["micro_batch_size"], training["global_batch_size"], training["lr"],
                    training["compile"], training["fused_loss"]) == (1000, 8, 8, 1e-3, True, "grad_in_forward")
    assert sorted(part["part_c"]) == sorted(f"results/smollm2/base/base{b}_len16384"
                                            for b in (100000, 200000, 304201, 500000, 1000000))  # 304201: beta0
    assert sorted(part["part_d"]) == ["results/smollm2/base/base500_len16384", "results/smollm2/base_logn/base500_len16384"]
    # PLAN.md's amendment 2: d with a control tuned the same way, on the fast path; log-scaled attention on steps600's model
    assert sorted(part["part_d2"]) == ["results/smollm2/steps600/base100000_len16384", "results/smollm2/steps600/base500_len16384",
                                       "results/smollm2/steps600_logn/base500_len16384"]
    d2 = {path: json.loads(cell) for path, cell in part["part_d2"].items()}
    for path, cell in d2.items():
        if "logn" in path:
            assert cell["training"] is None and cell["method_options"]["tuned"] == "steps600"
            continue
        training = cell["training"]
        assert (training["steps"], training["micro_batch_size"], training["global_batch_size"], training["lr"],
                training["compile"], training["fused_loss"]) == (600, 4, 4, 1e-3, True, "grad_in_forward")
    # PLAN.md's amendment 3: 500 alone, 900 steps (every packed row once) by d2's recipe; its control is d2's
    assert sorted(part["part_e"]) == ["results/smollm2/steps900/base500_len16384",
                                      "results/smollm2/steps900_logn/base500_len16384"]
    e = {path: json.loads(cell) for path, cell in part["part_e"].items()}
    assert e["results/smollm2/steps900_logn/base500_len16384"]["method_options"]["tuned"] == "steps900"
    training, d2_training = (e["results/smollm2/steps900/base500_len16384"]["training"],
                             d2["results/smollm2/steps600/base500_len16384"]["training"])
    assert training["steps"] * training["global_batch_size"] == 3600  # the pack's rows, each once
    assert {k: v for k, v in training.items() if k != "steps"} == {k: v for k, v in d2_training.items() if k != "steps"}
    learning_rates = {json.loads(c)["training"]["lr"] for c in part["part_a"].values() if json.loads(c)["training"]}
    assert learning_rates == {1e-4, 3e-4, 1e-3}
    for name in ("part_b1", "part_b2", "part_b1x", "part_b2x", "part_d", "part_d2", "part_e"):  # to 1M: one KJV row
        assert {json.loads(c)["eval_lengths"][-1] for c in part[name].values()} == {1_000_000}


@pytest.mark.parametrize("part", PARTS, ids=lambda p: p.stem)
def test_each_part_dry_runs_and_builds_the_corpus_first(part, tmp_path):
    # In a fresh working directory, as tests/test_workflow.py dry-runs the shipped configs.
    (tmp_path / "config").symlink_to(ROOT / "config")
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(tmp_path), "-n", "--cores", "1",
         "--configfile", str(STUDY.relative_to(ROOT)), str(part.relative_to(ROOT))],
        cwd=ROOT, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    jobs = dict(line.split()[:2] for line in result.stdout.splitlines()
                if len(line.split()) == 2 and line.split()[1].isdigit())
    trained = sum(1 for cell in _cells(STUDY, part).values() if json.loads(cell)["training"])
    assert jobs["build_corpus"] == "1" and jobs["finetune"] == str(trained)


# --- the pieces --------------------------------------------------------------------------------
def _files(tmp_path: Path) -> dict[str, bytes]:
    """A folder (with a sub-folder and an empty file) and a single file: bytes that no piece boundary respects."""
    rng = random.Random(0)
    folder = {"a.whl": rng.randbytes(2500), "sub/b.whl": b"", "sub/c.whl": b"x"}
    for rel, blob in folder.items():
        (tmp_path / "src/wheels" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "src/wheels" / rel).write_bytes(blob)
    single = rng.randbytes(7777)
    (tmp_path / "src/model.gguf").write_bytes(single)
    return {**{f"wheels/{rel}": blob for rel, blob in folder.items()}, "gguf/model.gguf": single}


def _split(tmp_path: Path, piece_bytes: int = 1000) -> Index:
    return split([("wheels", tmp_path / "src/wheels"), ("gguf", tmp_path / "src/model.gguf")],
                 tmp_path / "carry", piece_bytes)


def test_split_then_join_gives_every_file_back(tmp_path):
    data = _files(tmp_path)
    index = _split(tmp_path)
    total = sum(len(b) for b in data.values())
    assert index.total_bytes == total and len(index.pieces) == -(-total // 1000)
    assert all(p.size == 1000 for p in index.pieces[:-1]) and 0 < index.pieces[-1].size <= 1000
    assert [e.name for e in index.files] == list(data)
    join(tmp_path / "carry", tmp_path / "out")
    for name, blob in data.items():
        assert (tmp_path / "out" / name).read_bytes() == blob


def test_the_cli_splits_checks_and_joins(tmp_path, capsys):
    data = _files(tmp_path)
    assert main(["carry", "split", "--out", str(tmp_path / "carry"), "--piece-mib", str(4000 / 2**20),
                 f"wheels={tmp_path / 'src/wheels'}", f"gguf={tmp_path / 'src/model.gguf'}"]) == 0
    assert main(["carry", "check", "--dir", str(tmp_path / "carry"), "--piece", "2"]) == 0
    sha = hashlib.sha256(data["gguf/model.gguf"]).hexdigest()
    assert main(["carry", "join", "--dir", str(tmp_path / "carry"), "--out", str(tmp_path / "out"),
                 "--expect", f"gguf/model.gguf={sha}"]) == 0
    assert (tmp_path / "out/gguf/model.gguf").read_bytes() == data["gguf/model.gguf"]
    assert main(["carry", "join", "--dir", str(tmp_path / "carry"), "--out", str(tmp_path / "out2"),
                 "--expect", "gguf/model.gguf=" + "0" * 64]) == 2
    assert "--expect" in capsys.readouterr().err and not (tmp_path / "out2/gguf/model.gguf").exists()


def test_carry_manifests_names_a_cell_whose_eval_json_is_not_json(tmp_path, capsys):
    """The check of what comes back: an eval.json cut short in transit is one line naming it, not a traceback."""
    cell = tmp_path / "cells/steps900/base500_len16384"
    cell.mkdir(parents=True)
    (cell / "model_manifest.json").write_text(MODEL_MANIFEST)
    (cell / "eval.json").write_text('{"model_manifest_sha256": "ab')
    assert main(["carry", "manifests", "--cells", str(tmp_path / "cells")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{cell / 'eval.json'} is not JSON" in err and "pack the part again" in err
    (cell / "eval.json").write_text(json.dumps({"model_manifest_sha256": hashlib.sha256(MODEL_MANIFEST.encode()).hexdigest()}))
    assert main(["carry", "manifests", "--cells", str(tmp_path / "cells")]) == 0
    assert "1 model manifests, each the one its cell's eval.json names" in capsys.readouterr().out


@pytest.mark.parametrize("damage", ["flip", "truncate", "missing"])
def test_a_damaged_piece_is_named_on_arrival(tmp_path, damage):
    _files(tmp_path)
    index = _split(tmp_path)
    piece = tmp_path / "carry" / index.pieces[3].name
    if damage == "flip":
        blob = bytearray(piece.read_bytes())
        blob[17] ^= 1
        piece.write_bytes(bytes(blob))
    elif damage == "truncate":
        piece.write_bytes(piece.read_bytes()[:-1])
    else:
        piece.unlink()
    check_piece(tmp_path / "carry", 2)  # the others are fine
    for call in (lambda: check_piece(tmp_path / "carry", 3), lambda: join(tmp_path / "carry", tmp_path / "out")):
        with pytest.raises(UserError, match="piece-03"):
            call()


def test_join_checks_every_file_and_removes_a_bad_one(tmp_path):
    _files(tmp_path)
    _split(tmp_path)
    index = json.loads((tmp_path / "carry" / INDEX).read_text())
    index["files"][0]["sha256"] = "0" * 64  # the pieces are intact, the recorded file is not what they hold
    (tmp_path / "carry" / INDEX).write_text(json.dumps(index))
    with pytest.raises(UserError, match="wheels/a.whl"):
        join(tmp_path / "carry", tmp_path / "out")
    assert not (tmp_path / "out/wheels/a.whl").exists()


def test_split_refuses_to_mix_with_old_pieces(tmp_path):
    _files(tmp_path)
    _split(tmp_path)
    with pytest.raises(UserError, match="already holds"):
        _split(tmp_path)


# --- scripts/gpu_study.sh on arrival ---------------------------------------------------------
def _script(step: list[str], repo: Path, home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "GPU_STUDY_ROOT": str(home), "PYTHON": sys.executable}
    return subprocess.run(["bash", str(SCRIPT), *step], cwd=repo, capture_output=True, text=True, env=env)


@pytest.fixture
def device_repo(tmp_path):
    """A stand-in for the tree on the device: src/, .carry/ with a corpus and its manifest, as `payload` makes it."""
    repo = tmp_path / "repo"
    (repo / "docs/corpus").mkdir(parents=True)
    (repo / "src").symlink_to(ROOT / "src")
    corpus = tmp_path / "resources/corpus"
    corpus.mkdir(parents=True)
    (corpus / "corpus.jsonl.zst").write_bytes(random.Random(1).randbytes(5000))
    (corpus / "manifest.json").write_text("{}")
    sha = hashlib.sha256((corpus / "corpus.jsonl.zst").read_bytes()).hexdigest()
    (repo / "docs/corpus/manifest.json").write_text(json.dumps({"sha256": sha}))
    split([("corpus", corpus)], repo / ".carry", 2048)
    return repo


def test_take_checks_each_piece_and_unpack_checks_the_corpus(device_repo, tmp_path):
    home = tmp_path / "home"
    for i in range(3):
        result = _script(["take", str(i)], device_repo, home)
        assert result.returncode == 0, result.stdout + result.stderr
    result = _script(["unpack"], device_repo, home)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (home / "payload/corpus/corpus.jsonl.zst").read_bytes() == (
        tmp_path / "resources/corpus/corpus.jsonl.zst").read_bytes()


def test_take_fails_on_a_damaged_piece(device_repo, tmp_path):
    piece = device_repo / ".carry/piece-01"
    piece.write_bytes(piece.read_bytes()[:-1] + b"!")
    result = _script(["take", "1"], device_repo, tmp_path / "home")
    assert result.returncode != 0 and "piece-01" in result.stderr


def test_unpack_fails_on_a_corpus_that_is_not_the_recorded_one(device_repo, tmp_path):
    (device_repo / "docs/corpus/manifest.json").write_text(json.dumps({"sha256": "0" * 64}))
    home = tmp_path / "home"
    for i in range(3):
        assert _script(["take", str(i)], device_repo, home).returncode == 0
    result = _script(["unpack"], device_repo, home)
    assert result.returncode != 0 and "FAILED" in result.stdout + result.stderr


# --- what a part's results go through: the law and every figure --------------------------------
@pytest.mark.parametrize("part", PARTS, ids=lambda p: p.stem)
def test_the_law_and_every_figure_take_a_parts_cells(part, tmp_path):
    """Synthetic tables of the part's cells, shaped as the part's runs will write them: one document per
    cell evaluated to 1M (the KJV holds one row of 1,000,000), four for 245,760; parts a, b1, b2 and d have
    no base above beta0, so nothing to fit. The law tables and every figure of the part must come out."""
    import math

    import matplotlib.pyplot as plt
    from synthetic import eval_tables, write_cell

    from ropelaw.figures import Tables, draw, figure_names, prefix_rows
    from ropelaw.law import join_passkey, load_evals, measure, passkey_table

    _, cells = resolve(load_configs([str(STUDY), str(part)]))
    paths, passkey = [], []
    for cell in cells:
        knee = 12000 if cell.base >= 100000 else 400000
        curve = lambda x, p, k=knee: math.log(12) + 0.8 * max(0.0, math.log(x / k))  # noqa: E731
        evals, docs = eval_tables(curve, model=cell.model, method=cell.method, base=cell.base, tune_len=cell.tune_len,
                                  head_dim=64, train_len=8192, orig_base=100000.0, lengths=list(cell.eval_lengths),
                                  n_docs=1 if cell.eval_lengths[-1] == 1_000_000 else 4, noise=0.05)
        paths.append(write_cell(tmp_path, evals, docs))
        passkey += [dict(model=cell.model, method=cell.method, base=cell.base, tune_len=cell.tune_len, seed=None,
                         length=length, depth=depth, trial=trial, correct=length <= cell.tune_len)
                    for length in (2048, 8192, 32768) for depth in (0.1, 0.9) for trial in (0, 1)]
    measured, fit, boot, _ = measure(paths, "segment", 1.5, 50, 0)
    assert len(measured) == len(cells)
    tables = Tables(prefix_rows(load_evals(paths)), join_passkey(measured, pd.DataFrame(passkey)), fit, boot,
                    passkey_table(pd.DataFrame(passkey)))
    for stem, args in figure_names(tables.cells, tables.passkey).items():
        fig = draw(args["kind"], tables, "test", **{k: v for k, v in args.items() if k != "kind"})
        assert fig.axes, stem
        plt.close(fig)


# --- the CPU rehearsal of a part (scripts/rehearse_part.py) --------------------------------------
@pytest.mark.parametrize("part", PARTS, ids=lambda p: p.stem)
def test_a_rehearsal_keeps_the_parts_cells_and_cuts_their_sizes(part, tmp_path):
    """Same methods, kinds, learning rates and numeric bases; every length / 16; 2 steps of 2 rows."""
    override = tmp_path / "rehearsal.yaml"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "rehearse_part.py"), str(STUDY), str(part),
                    "--out", str(override)], check=True, capture_output=True)
    real = [json.loads(c) for c in _cells(STUDY, part).values()]
    small = [json.loads(c) for c in _cells(STUDY, part, override).values()]
    what = lambda cells: sorted((c["method"], c["kind"], c["training"] and c["training"]["lr"]) for c in cells)  # noqa: E731
    assert what(small) == what(real)
    assert sorted(c["tune_len"] * 16 for c in small) == sorted(c["tune_len"] for c in real)
    declared = {b for block in yaml.safe_load(part.read_text())["grid"] for b in block["bases"] if not isinstance(b, str)}
    kept = lambda cells: sorted(c["base"] for c in cells if c["base"] in declared)  # noqa: E731
    assert kept(small) == kept(real)  # a number stays; a named base (beta3, beta0) follows the shorter lengths
    for cut in small:
        assert cut["train_len"] == 8192 // 16 and max(cut["eval_lengths"]) > max(cut["tune_len"], cut["train_len"])
        if cut["training"]:
            assert (cut["training"]["steps"], cut["training"]["global_batch_size"]) == (2, 2)


MODEL_MANIFEST = '{"kind": "finetune", "spec": {"steps": 2}}\n'


FINISHED = "Finished jobid: 0 (Rule: all)\n20 of 20 steps (100%) done\nComplete log(s): x.log\n"


def _study_tgz(tmp_path: Path, models: tuple[str, ...], named: str = MODEL_MANIFEST, log: str = FINISHED) -> Path:
    """A study.tgz as `gpu_study.sh pack` writes it (results without models, logs, benchmarks), its cell's
    eval.json naming the sha256 of `named` as the model manifest, `log` its Snakemake log."""
    root = tmp_path / "device"
    (root / "logs").mkdir(parents=True, exist_ok=True)
    (root / "logs/study.log").write_text(log)
    files = ["results/law/cells.csv", "results/figures/ppl.png", "logs/finetune/smollm2/base/base500_len8192.log",
             "benchmarks/finetune/x.tsv"]
    for model in models:
        files += [f"results/{model}/data/train_len8192/manifest.json", f"results/{model}/base/base500_len8192/eval.csv"]
    for name in files:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(name)
    cell = root / f"results/{models[0]}/base/base500_len8192"
    (cell / "model_manifest.json").write_text(MODEL_MANIFEST)
    (cell / "eval.json").write_text(json.dumps({"model_manifest_sha256": hashlib.sha256(named.encode()).hexdigest()}))
    subprocess.run(["tar", "czf", str(tmp_path / "study.tgz"), "results", "logs", "benchmarks"], cwd=root, check=True)
    return tmp_path / "study.tgz"


def test_publish_lays_a_part_out_as_verdicts_reads_it(tmp_path):
    dest = tmp_path / "part_b2"
    (dest / "cells" / "stale").mkdir(parents=True)  # an earlier publication of the part is replaced
    done = subprocess.run(["bash", str(SCRIPT), "publish", str(_study_tgz(tmp_path, ("smollm2",))), str(dest)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (dest / "cells/base/base500_len8192/eval.csv").read_text() == "results/smollm2/base/base500_len8192/eval.csv"
    assert (dest / "data/train_len8192/manifest.json").exists() and not (dest / "cells/data").exists()
    assert (dest / "law/cells.csv").exists() and (dest / "figures/ppl.png").exists()
    assert (dest / "logs/finetune/smollm2/base/base500_len8192.log").exists() and (dest / "benchmarks/finetune/x.tsv").exists()
    assert not (dest / "cells/stale").exists()
    assert (dest / "cells/base/base500_len8192/model_manifest.json").read_text() == MODEL_MANIFEST
    assert "carry manifests: 1 model manifests, each the one its cell's eval.json names" in done.stdout
    # A model manifest that is not the one the cell was evaluated with is refused, naming both files.
    wrong = subprocess.run(["bash", str(SCRIPT), "publish", str(_study_tgz(tmp_path / "wrong", ("smollm2",), "{}")),
                            str(tmp_path / "wrong_part")], capture_output=True, text=True)
    assert wrong.returncode == 1 and "is not the model manifest" in wrong.stderr and "eval.json" in wrong.stderr
    assert "Traceback" not in wrong.stderr
    two = subprocess.run(["bash", str(SCRIPT), "publish", str(_study_tgz(tmp_path / "two", ("smollm2", "tiny"))),
                          str(tmp_path / "other")], capture_output=True, text=True)
    assert two.returncode == 1 and "expected one model folder" in two.stdout


def test_publish_refuses_a_run_that_did_not_finish(tmp_path):
    """A tarball packed while Snakemake still ran (the first call's pack) or after a failed job is no finished part:
    refused in one line, unless PUBLISH_UNFINISHED=1, which marks the part; a finished run published again clears it."""
    running = _study_tgz(tmp_path / "running", ("smollm2",), log="Finished jobid: 4 (Rule: pack)\n7 of 20 steps (35%) done\n")
    dest = tmp_path / "part_e"
    done = subprocess.run(["bash", str(SCRIPT), "publish", str(running), str(dest)], capture_output=True, text=True)
    assert done.returncode == 1 and "is not a finished run" in done.stdout and not dest.exists()
    done = subprocess.run(["bash", str(SCRIPT), "publish", str(running), str(dest)], capture_output=True, text=True,
                          env={**os.environ, "PUBLISH_UNFINISHED": "1"})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "7 of 20 steps (35%) done" in (dest / "UNFINISHED").read_text() and "published as UNFINISHED" in done.stdout
    done = subprocess.run(["bash", str(SCRIPT), "publish", str(_study_tgz(tmp_path / "finished", ("smollm2",))),
                           str(dest)], capture_output=True, text=True)
    assert done.returncode == 0 and not (dest / "UNFINISHED").exists()


def test_pack_carries_each_model_manifest_beside_its_cell_and_no_weights(tmp_path):
    home, out = tmp_path / "home", tmp_path / "out"
    model = home / "repo/results/smollm2/base/base500_len8192/model"
    model.mkdir(parents=True)
    (model / "ropelaw_manifest.json").write_text(MODEL_MANIFEST)
    (model / "model.safetensors").write_bytes(b"weights")
    (model.parent / "eval.csv").write_text("eval")
    for folder in ("logs", "benchmarks"):
        (home / "repo" / folder).mkdir()
    (home / "study.log").write_text("log")
    (home / "versions.txt").write_text("versions")
    out.mkdir()
    env = {**os.environ, "GPU_STUDY_ROOT": str(home), "PYTHON": sys.executable, "OUT": str(out)}
    done = subprocess.run(["bash", str(SCRIPT), "pack"], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert (out / "study.tgz").is_file(), done.stdout + done.stderr
    listed = subprocess.run(["tar", "tzf", str(out / "study.tgz")], capture_output=True, text=True, check=True).stdout
    names = set(listed.split())
    assert "results/smollm2/base/base500_len8192/model_manifest.json" in names
    assert "results/smollm2/base/base500_len8192/eval.csv" in names
    assert not any("/model/" in name or name.endswith("/model") for name in names), names


def _git_checkout(path: Path) -> str:
    """A git checkout at `path` with two committed files; its commit."""
    path.mkdir(parents=True)
    (path / "a.txt").write_text("a\n")
    (path / "sub").mkdir()
    (path / "sub/b.txt").write_text("b\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    for args in (["init", "-q"], ["add", "."], ["commit", "-q", "-m", "x"]):
        subprocess.run([*git, *args], cwd=path, check=True, capture_output=True)
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=path, check=True, capture_output=True, text=True).stdout.strip()


def test_the_device_copy_is_named_by_the_commit_it_was_carried_from(tmp_path):
    """The device's tree has no .git: `payload` carries the commit and every tracked file's sha256, `start`
    names the copy's commit from them (+dirty if a file changed since) and every job's provenance reads it."""
    commit = _git_checkout(tmp_path / "checkout")
    record = tmp_path / "source/tree.json"
    record.parent.mkdir()
    record.write_text(json.dumps(tree_record(tmp_path / "checkout")))
    repo = tmp_path / "repo"  # the copy that travels: the files without .git
    shutil.copytree(tmp_path / "checkout", repo, ignore=shutil.ignore_patterns(".git"))
    (repo / "src").symlink_to(ROOT / "src")
    index = split([("source", record.parent)], repo / ".carry", 1 << 20)
    home = tmp_path / "home"
    for i in range(len(index.pieces)):
        assert _script(["take", str(i)], repo, home).returncode == 0
    assert _script(["unpack"], repo, home).returncode == 0
    result = _script(["commit"], repo, home)
    assert result.returncode == 0 and result.stdout.strip() == commit, result.stdout + result.stderr
    env = {**os.environ, COMMIT_ENV: result.stdout.strip()}
    here = subprocess.run([sys.executable, "-c", "from ropelaw.provenance import git_commit; print(git_commit('.'))"],
                          cwd=repo, env=env, capture_output=True, text=True)
    assert here.stdout.strip() == commit, here.stderr
    (repo / "sub/b.txt").write_text("changed\n")
    assert _script(["commit"], repo, home).stdout.strip() == commit + "+dirty"
