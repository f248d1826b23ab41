"""A stopped evaluation resumes from the batches it finished (`ropelaw.evaljournal`), and only its own.

The stop is a forward that fails partway through the cell (as a time limit or a lost node stops a
job between two batches); the resumed run must write what an uninterrupted run writes, byte for byte,
running only the batches that were not finished. CPU, a few seconds: `pytest -q tests/test_eval_resume.py`.
"""

from __future__ import annotations

import json

import pytest
from evalkit import ROW, cell_json, make_kit

import ropelaw.scoring
from ropelaw.cli import main


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    return make_kit(tmp_path_factory.mktemp("resume"))


class Stop(Exception):
    """The job's end partway through the cell."""


@pytest.fixture
def forwards(monkeypatch):
    """Counts the windows scored (the real function runs); `stop_at` makes that forward fail instead."""
    seen = {"calls": 0, "stop_at": None}
    score_window = ropelaw.scoring.score_window

    def watched(*args, **kwargs):
        seen["calls"] += 1
        if seen["calls"] == seen["stop_at"]:
            raise Stop("stopped")
        return score_window(*args, **kwargs)

    monkeypatch.setattr(ropelaw.scoring, "score_window", watched)
    return seen


def evaluate(kit, out, chunk="50"):
    return main(["evaluate", "--model", str(kit.model_dir), "--cell-json", cell_json(), "--eval-data",
                 str(kit.eval_dir), "--tokenizer", str(kit.tokenizer_dir), "--lengths", "64", str(ROW),
                 "--chunk-size", chunk, "--batch-size", "1", "--precision", "fp32", "--out", str(out)])


def outputs(out):
    return out.read_text(), (out.parent / "eval_docs.csv").read_text()


def test_a_stopped_evaluation_resumes_from_its_finished_batches(kit, tmp_path, forwards, capsys):
    assert kit.docs.shape[0] == 3
    reference = tmp_path / "reference" / "eval.csv"
    assert evaluate(kit, reference) == 0 and forwards["calls"] == 3
    assert not (reference.parent / "eval_partial").exists()

    out = tmp_path / "cell" / "eval.csv"
    forwards.update(calls=0, stop_at=3)  # the third document's forward: two batches finished
    with pytest.raises(Stop):
        evaluate(kit, out)
    assert not out.exists()
    journal = out.parent / "eval_partial"
    assert sorted(p.name for p in journal.iterdir()) == ["batch-0.json", "batch-1.json", "identity.json"]

    forwards.update(calls=0, stop_at=None)
    capsys.readouterr()
    assert evaluate(kit, out) == 0
    assert forwards["calls"] == 1  # only the batch the stopped job had not finished
    assert "resuming: 2 finished batch(es) of 1 document(s)" in capsys.readouterr().out
    assert outputs(out) == outputs(reference)
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert sidecar["resumed_batches_seconds"] > 0
    assert not journal.exists()  # finished: a forced re-run evaluates afresh

    forwards.update(calls=0)
    assert evaluate(kit, out) == 0 and forwards["calls"] == 3
    assert outputs(out) == outputs(reference)


def test_batches_of_another_evaluation_are_not_taken(kit, tmp_path, forwards, capsys):
    out = tmp_path / "cell" / "eval.csv"
    forwards.update(stop_at=2)
    with pytest.raises(Stop):
        evaluate(kit, out, chunk="50")
    assert (out.parent / "eval_partial" / "batch-0.json").is_file()

    reference = tmp_path / "reference" / "eval.csv"
    forwards.update(calls=0, stop_at=None)
    assert evaluate(kit, reference, chunk="32") == 0
    forwards.update(calls=0)
    capsys.readouterr()
    assert evaluate(kit, out, chunk="32") == 0
    assert "holds batches of another evaluation (chunk_size differs): starting afresh" in capsys.readouterr().out
    assert forwards["calls"] == 3
    assert outputs(out) == outputs(reference)


def test_an_unreadable_batch_is_run_again(kit, tmp_path, forwards):
    out = tmp_path / "cell" / "eval.csv"
    forwards.update(stop_at=3)
    with pytest.raises(Stop):
        evaluate(kit, out)
    (out.parent / "eval_partial" / "batch-1.json").write_text('{"first": 1, "seconds"')  # cut short
    reference = tmp_path / "reference" / "eval.csv"
    forwards.update(calls=0, stop_at=None)
    assert evaluate(kit, reference) == 0
    forwards.update(calls=0)
    assert evaluate(kit, out) == 0
    assert forwards["calls"] == 2  # batches 1 and 2
    assert outputs(out) == outputs(reference)


def test_a_folder_without_its_identity_is_not_taken(kit, tmp_path, forwards, capsys):
    out = tmp_path / "cell" / "eval.csv"
    forwards.update(stop_at=3)
    with pytest.raises(Stop):
        evaluate(kit, out)
    (out.parent / "eval_partial" / "identity.json").unlink()
    forwards.update(calls=0, stop_at=None)
    capsys.readouterr()
    assert evaluate(kit, out) == 0 and forwards["calls"] == 3
    assert "(no readable identity.json): starting afresh" in capsys.readouterr().out
