"""The serving path must never load torch or ultralytics: they are the `train` extra only."""

import subprocess
import sys

CHECK = """
import importlib, pkgutil, sys
import detector, serving
for package in (detector, serving):
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        if ".migrations" in info.name:
            continue  # alembic scripts are not importable outside alembic
        importlib.import_module(info.name)
from serving.cli import build_parser
build_parser().parse_args(["detect", "x.jpg"])
heavy = sorted(m for m in ("torch", "ultralytics", "torchvision") if m in sys.modules)
print("HEAVY", heavy)
"""


def test_detector_and_serving_import_without_torch():
    result = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "HEAVY []" in result.stdout, result.stdout


def test_gridwatch_help_lists_commands():
    result = subprocess.run(
        [sys.executable, "-m", "serving.cli", "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    for command in ("detect", "bench"):
        assert command in result.stdout
