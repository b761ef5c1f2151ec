"""What the caller got wrong (a folder that cannot be written, a damaged database, a file
that is not text, a missing extra) ends a command with one line and status 2, not a traceback;
a fault of gridwatch's own still shows its traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from detector.files import REPO_ROOT
from serving.cli import plain_problem
from tests.support.shared_data import real_images


def gridwatch(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "serving.cli", *args], capture_output=True, text=True,
                          timeout=120, cwd=cwd, env={"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin"})


def test_the_callers_mistakes_end_in_one_line(tmp_path: Path) -> None:
    (image,) = real_images("thela_india", 1)
    (tmp_path / "a-file").write_text("x")
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "gridwatch.db").write_bytes(b"this is not a database" * 100)
    (tmp_path / "binary.yaml").write_bytes(b"\xff\xfe\x00cameras")
    for args, said in (
        (("detect", str(image), "--save", str(tmp_path / "a-file" / "out")), "Not a directory"),
        (("users", "list", "--data-dir", str(damaged)), "the database cannot be read"),
        (("watch", "--config", str(tmp_path / "binary.yaml")), "binary.yaml: cannot read settings"),
    ):
        done = gridwatch(*args, cwd=tmp_path)
        assert done.returncode == 2, (args, done.stderr)
        assert said in done.stderr and "Traceback" not in done.stderr, (args, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr


@pytest.mark.parametrize(("error", "said"), [
    (ModuleNotFoundError("No module named 'torch'", name="torch"), "pip install 'gridwatch[train]'"),
    (ModuleNotFoundError("No module named 'ray'", name="ray"), "pip install 'gridwatch[cluster]'"),
    (PermissionError(13, "Permission denied", "/srv/out"), "Permission denied: /srv/out"),
])
def test_what_becomes_one_line(error: Exception, said: str) -> None:
    assert said in plain_problem(error)


@pytest.mark.parametrize("error", [ModuleNotFoundError("No module named 'serving.x'", name="serving.x"),
                                   KeyError("a bug"), ZeroDivisionError()])
def test_gridwatchs_own_faults_keep_their_traceback(error: Exception) -> None:
    assert plain_problem(error) is None
