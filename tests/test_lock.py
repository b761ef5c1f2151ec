"""The lock files every install comes from agree with pyproject.toml, and the check that CI
runs before installing notices when they stop agreeing."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def lock_module():
    spec = importlib.util.spec_from_file_location("gridwatch_lock", ROOT / "scripts" / "lock.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def copy_project(tmp_path: Path) -> tuple[Path, Path]:
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    shutil.copytree(ROOT / "requirements", tmp_path / "requirements")
    return tmp_path / "pyproject.toml", tmp_path / "requirements"


def test_the_committed_lock_matches_pyproject() -> None:
    assert lock_module().problems(ROOT / "pyproject.toml", ROOT / "requirements") == []


def test_a_dependency_changed_without_relocking_is_caught(tmp_path: Path) -> None:
    lock = lock_module()
    pyproject, lock_dir = copy_project(tmp_path)
    pyproject.write_text(pyproject.read_text().replace('"fastapi>=0.110"', '"fastapi>=99"'))
    found = lock.problems(pyproject, lock_dir)
    assert any("changed since the lock was written" in p for p in found)
    assert any("does not satisfy 'fastapi>=99'" in p for p in found)


def test_an_added_dependency_must_be_pinned(tmp_path: Path) -> None:
    lock = lock_module()
    pyproject, lock_dir = copy_project(tmp_path)
    pyproject.write_text(pyproject.read_text().replace('"pyyaml>=6",', '"pyyaml>=6",\n    "left-pad",'))
    assert any("'left-pad' is not pinned" in p for p in lock.problems(pyproject, lock_dir))


def test_one_opencv_only(tmp_path: Path) -> None:
    lock = lock_module()
    pyproject, lock_dir = copy_project(tmp_path)
    test_lock = lock_dir / "test.lock.txt"
    test_lock.write_text(test_lock.read_text() + "opencv-python==5.1.0.95 \\\n    --hash=sha256:" + "0" * 64 + "\n")
    assert any("one OpenCV only" in p for p in lock.problems(pyproject, lock_dir))


def test_every_lock_line_is_pinned_and_hashed() -> None:
    lock = lock_module()
    for path in (ROOT / "requirements").glob("*.lock.txt"):
        text = path.read_text()
        pins = lock.read_pins(text)
        assert pins, path
        assert text.count("--hash=sha256:") == len(pins), path


def test_the_environment_holds_one_opencv() -> None:
    """Ultralytics asks for the GUI wheel; both in one environment overwrite each other's cv2."""
    from importlib.metadata import PackageNotFoundError, distribution

    distribution("opencv-python-headless")
    try:
        distribution("opencv-python")
    except PackageNotFoundError:
        return
    raise AssertionError("opencv-python is installed beside opencv-python-headless")
