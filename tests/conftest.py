"""Fixtures shared by the test modules."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Rules call `ropelaw` by name: the interpreter's bin directory (the venv's) goes first on PATH,
# also when pytest runs as .venv/bin/python without the venv activated (.ci/run).
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
# In CI every capability a test needs is set up (.ci/run: setup.sh, the SLURM clusters), so a skip there
# means a capability went missing: it fails, with the skip's reason, instead of passing unnoticed.
IN_CI = os.environ.get("CI") == "true"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if IN_CI and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"CI=true and this test was skipped, so a capability CI must have is missing: {reason}"


@pytest.fixture(scope="session")
def scenario(tmp_path_factory):
    """tests/scenario/config.yaml run end to end, locally (--cores 2), once per session, in a fresh directory."""
    work = tmp_path_factory.mktemp("scenario")
    (work / "config").mkdir()
    shutil.copy(ROOT / "tests" / "scenario" / "config.yaml", work / "config" / "config.yaml")
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(work), "--cores", "2"],
        cwd=ROOT, capture_output=True, text=True,
    )
    if result.returncode != 0:
        raise AssertionError(f"the local scenario run failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return work
