"""Bad inputs to `ropelaw evaluate` and `ropelaw passkey` are refused in one line, before any work.

Every case passes a model folder that does not exist: a case that reached the model load would
fail there instead, so each message proves its check came first. Each asserts a non-zero exit,
one line on stderr naming the option or file, no traceback and no output written.
In-process through `ropelaw.cli.main` (fast); one case runs the installed command.
`pytest -q tests/test_bad_inputs_eval.py`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from evalkit import cell_json, make_kit

from ropelaw import flash4
from ropelaw.cli import main

SPEC = {"lengths": [96], "depths": [0.5], "trials": 1, "seed": 1, "key_digits": 5, "prefix": "",
        "needle": "The key is {key}.", "question": "The key is"}


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    kit = make_kit(tmp_path_factory.mktemp("bad_eval"))
    bad = kit.root / "bad"
    for name, manifest in {"notjson": "{not json", "nokeys": json.dumps({"n_docs": 3}),
                           "shortbin": json.dumps({"n_docs": 99, "length": 160, "dtype": "<u2"})}.items():
        (bad / name).mkdir(parents=True)
        (bad / name / "manifest.json").write_text(manifest)
        (bad / name / "docs.bin").write_bytes(b"\0" * 64)
    (bad / "afile").write_text("x")
    return kit


def _args(kit, command, out, **changes):
    args = {"--model": str(kit.root / "no-model"), "--cell-json": cell_json(), "--eval-data": str(kit.eval_dir),
            "--tokenizer": str(kit.tokenizer_dir), "--out": str(out)}
    if command == "evaluate":
        args.update({"--lengths": "32 64", "--chunk-size": "16"})
    else:
        args["--spec"] = json.dumps(SPEC)
    args.update(changes)
    argv = [command]
    for key, value in args.items():
        argv += [key, *value.split(" ")] if key in ("--lengths", "--bucket-edges") else [key, value]
    return argv


CASES = [  # (command, changes to the good arguments, what the one line must name)
    ("evaluate", {"--out": "{bad}/afile/eval.csv"}, "--out"),
    ("evaluate", {"--out": "/sys/ropelaw-test/eval.csv"}, "--out"),
    ("evaluate", {"--out": "{bad}"}, "is a folder"),
    ("evaluate", {"--batch-size": "0"}, "--batch-size"),
    ("evaluate", {"--batch-size": "-2"}, "--batch-size"),
    ("evaluate", {"--chunk-size": "0"}, "--chunk-size"),
    ("evaluate", {"--lengths": "64 32"}, "--lengths"),
    ("evaluate", {"--lengths": "32 32"}, "--lengths"),
    ("evaluate", {"--lengths": "1 32"}, "--lengths"),
    ("evaluate", {"--bucket-edges": "0 8 4"}, "--bucket-edges"),
    ("evaluate", {"--eval-data": "{bad}/missing"}, "--eval-data"),
    ("evaluate", {"--eval-data": "{bad}/notjson"}, "manifest.json"),
    ("evaluate", {"--eval-data": "{bad}/nokeys"}, "manifest.json"),
    ("evaluate", {"--eval-data": "{bad}/shortbin"}, "docs.bin"),
    ("evaluate", {"--tokenizer": "{bad}/missing"}, "tokenizer"),
    ("evaluate", {"--convention": "yarn", "--bos": "false"}, "evaluation.bos"),
    ("evaluate", {"--lengths": "64 400"}, "prepare_eval"),
    ("evaluate", {"--memory-budget-gib": "0"}, "--memory-budget-gib"),
    ("passkey", {"--memory-budget-gib": "-1"}, "--memory-budget-gib"),
    ("passkey", {"--out": "{bad}/afile/passkey.csv"}, "--out"),
    ("passkey", {"--batch-size": "0"}, "--batch-size"),
    ("passkey", {"--eval-data": "{bad}/missing"}, "--eval-data"),
    ("passkey", {"--eval-data": "{bad}/notjson"}, "manifest.json"),
    ("passkey", {"--spec": "{not json"}, "--spec"),
    ("passkey", {"--tokenizer": "{bad}/missing"}, "tokenizer"),
]
if flash4.missing():  # FlashAttention-4's kernels asked for where they cannot run (any machine without a GPU)
    CASES += [(command, {"--attn-implementation": "flash4"}, "evaluation.attn_implementation is flash4")
              for command in ("evaluate", "passkey")]


@pytest.mark.parametrize("command, changes, named", CASES, ids=[f"{c}_{'_'.join(k.strip('-').replace('-', '_') for k in v)}{i}" for i, (c, v, _) in enumerate(CASES)])
def test_bad_input_is_one_line_before_any_work(kit, tmp_path, capsys, command, changes, named):
    out = tmp_path / "cell" / f"{command}.csv"
    changes = {k: v.replace("{bad}", str(kit.root / "bad")) for k, v in changes.items()}
    code = main(_args(kit, command, out, **changes))
    err = capsys.readouterr().err.strip()
    assert code != 0
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert named in err and "no-model" not in err, err
    assert not out.exists() and not out.with_suffix(".json").exists()
    assert not (out.parent / f"{command}_docs.csv").exists()


def test_installed_command_refuses_unwritable_out_in_one_line(kit, tmp_path):
    ropelaw = Path(sys.executable).with_name("ropelaw")
    argv = _args(kit, "evaluate", str(kit.root / "bad" / "afile" / "eval.csv"))
    result = subprocess.run([str(ropelaw), *argv], capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().startswith("ropelaw evaluate: error: --out") and len(result.stderr.strip().splitlines()) == 1


# --- ropelaw law and ropelaw figures: bad tables and outputs are one line, and nothing is replaced ---------
@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A synthetic study's eval tables (tests/synthetic.py) and the law's tables of it."""
    from synthetic import study as make_study

    root = tmp_path_factory.mktemp("law_inputs")
    paths, passkey = make_study(root)
    passkey.to_csv(root / "passkey.csv", index=False)
    (root / "kept.png").mkdir()
    (root / "kept.png" / "inside.txt").write_text("kept")  # a folder named like a figure
    assert main(["law", "--evals", *paths, "--bootstrap", "5", "--out-cells", str(root / "law/cells.csv"),
                 "--out-fit", str(root / "law/fit.csv")]) == 0
    return root, paths


def _break(path: Path, how: str) -> None:
    import pandas as pd

    if how == "empty":
        path.write_text("")
    elif how.startswith("drop "):
        pd.read_csv(path).drop(columns=[how[5:]]).to_csv(path, index=False)
    elif how.startswith("nan "):
        table = pd.read_csv(path)
        table.loc[1, how[4:]] = float("nan")
        table.to_csv(path, index=False)
    elif how.startswith("text "):
        table = pd.read_csv(path).astype({how[5:]: str})
        table.loc[0, how[5:]] = "abc"
        table.to_csv(path, index=False)


LAW_CASES = [  # (argument changes, the file to break and how, what the one line must name)
    ({"--factor": "nan"}, None, "--factor"),
    ({"--bootstrap-seed": "-1"}, None, "--bootstrap-seed"),
    ({"--out-cells": "{root}/law"}, None, "--out-cells {root}/law: is a folder"),
    ({"--out-fit": "{root}/passkey.csv/fit.csv"}, None, "--out-fit"),
    ({}, ("eval.csv", "empty"), "eval.csv: not a readable CSV table"),
    ({}, ("eval.csv", "drop scope"), "eval.csv: columns ['scope'] missing"),
    ({}, ("eval.csv", "text tune_len"), "eval.csv: columns ['tune_len'] hold"),
    ({}, ("eval_docs.csv", "nan nll"), "eval_docs.csv: columns ['nll'] hold"),
    ({"--passkey": "{root}/law/fit.csv", "--out-passkey": "{root}/out/passkey.csv"}, None, "fit.csv: columns"),
]


@pytest.mark.parametrize("changes, broken, named", LAW_CASES, ids=[f"law{i}" for i in range(len(LAW_CASES))])
def test_bad_law_input_is_one_line_and_replaces_nothing(study, tmp_path, capsys, changes, broken, named):
    import shutil

    root, paths = study
    shutil.copytree(root, tmp_path / "s")
    root = tmp_path / "s"
    paths = [p.replace(str(study[0]), str(root)) for p in paths]
    if broken:
        _break(Path(paths[-1]).with_name(broken[0]), broken[1])
    args = {"--evals": paths, "--bootstrap": "5", "--out-cells": f"{root}/out/cells.csv", "--out-fit": f"{root}/out/fit.csv"}
    args.update({k: v.replace("{root}", str(root)) for k, v in changes.items()})
    files = lambda: sorted((p.relative_to(root), p.is_file()) for p in root.rglob("*"))  # noqa: E731
    before = files()
    capsys.readouterr()
    code = main(["law", *[x for k, v in args.items() for x in (k, *(v if isinstance(v, list) else [v]))]])
    err = capsys.readouterr().err.strip()
    assert code != 0 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert named.replace("{root}", str(root)) in err, err
    assert files() == before  # no table written, no folder made, and the folder that --out-cells named is intact


@pytest.mark.parametrize("changes, named", [
    ({"--out": "{root}/fig.txt"}, "--out {root}/fig.txt: the suffix names the format"),
    ({"--out": "{root}/kept.png"}, "--out {root}/kept.png: is a folder"),
    ({"--cells": "{root}/passkey.csv/cells.csv"}, "cells.csv is missing"),
    ({"--cells": "{root}/law/fit.csv"}, "fit.csv: columns ['base'] missing"),
    ({"--model": "nope"}, "--model nope --tune-len 64: no tuned cell of the cells table has them; it has tiny at 64"),
    ({"--tune-len": "65"}, "--model tiny --tune-len 65: no tuned cell"),
], ids=["suffix", "out-folder", "cells-missing", "cells-not-cells", "no-such-model", "no-such-tune-len"])
def test_bad_figures_input_is_one_line(study, capsys, changes, named):
    root, paths = study
    args = {"--evals": paths, "--cells": f"{root}/law/cells.csv", "--model": "tiny", "--tune-len": "64",
            "--out": f"{root}/figs/ppl.png"}
    args.update({k: v.replace("{root}", str(root)) for k, v in changes.items()})
    capsys.readouterr()
    code = main(["figures", "ppl_vs_length", *[x for k, v in args.items() for x in (k, *(v if isinstance(v, list) else [v]))]])
    err = capsys.readouterr().err.strip()
    assert code != 0 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert named.replace("{root}", str(root)) in err, err
    assert (root / "law" / "cells.csv").is_file() and (root / "kept.png" / "inside.txt").is_file()
    assert not (root / "figs").exists()  # a refusal makes no folder
