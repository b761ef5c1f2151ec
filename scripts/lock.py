"""Writes and checks the lock files that every install of gridwatch comes from.

`python scripts/lock.py write` resolves pyproject.toml's dependencies with pip (the machine's
own index configuration, so torch's build comes from where pip finds it) and writes one hashed
requirements file per install mode under requirements/. `python scripts/lock.py check` fails
when pyproject.toml and the lock files disagree: a dependency that was changed, added or removed
since the lock was written, a pin that no longer satisfies its requirement, or a second OpenCV.
The check uses only the standard library, so it runs before anything is installed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOCK_DIR = ROOT / "requirements"
# torch is pinned by the brief: the build on this machine's disk, which also runs on CPU.
TORCH = ["torch==2.14.1", "torchvision==0.29.1"]
# Build and install tools, locked like everything else (the project is installed with
# --no-build-isolation so that no unpinned setuptools is fetched at install time).
TOOLS = ["pip", "setuptools>=77", "wheel"]
MODES = {
    "base": {"extras": [], "extra_reqs": []},
    "test": {"extras": ["train", "cluster", "dev"], "extra_reqs": TORCH},
}
# Ultralytics asks for the GUI OpenCV; gridwatch uses the headless one, and both in one
# environment overwrite each other's cv2. The headless wheel provides the same cv2 module.
REPLACED = {"opencv-python": "opencv-python-headless"}
FINGERPRINT = re.compile(r"^# pyproject-dependencies: ([0-9a-f]{64})$", re.M)
PIN = re.compile(r"^([A-Za-z0-9_.\-]+)==([^\s\\;]+)", re.M)


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def project_requirements(pyproject: Path, extras: list[str]) -> list[str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in extras:
        reqs += project["optional-dependencies"][extra]
    return reqs


def fingerprint(pyproject: Path, mode: str) -> str:
    """What the lock for this mode was made from: its requirement strings, in order."""
    reqs = project_requirements(pyproject, MODES[mode]["extras"]) + MODES[mode]["extra_reqs"] + TOOLS
    return hashlib.sha256("\n".join(reqs).encode()).hexdigest()


def lock_path(mode: str) -> Path:
    return LOCK_DIR / f"{mode}.lock.txt"


def resolve(requirements: list[str], constraints: Path | None) -> list[dict]:
    """pip's own resolution in a clean virtual environment: what `pip install` would take."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        venv = Path(tmp) / "venv"
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = [str(venv / "bin" / "python"), "-m", "pip"]
        subprocess.run([*pip, "install", "-q", "--upgrade", "pip"], check=True)
        cmd = [*pip, "install", "--dry-run", "--ignore-installed", "-q", "--report", str(report)]
        if constraints is not None:
            cmd += ["-c", str(constraints)]
        subprocess.run([*cmd, *requirements], check=True, cwd=ROOT)
        return json.loads(report.read_text())["install"]


def render(mode: str, items: list[dict]) -> str:
    lines = [
        f"# gridwatch {mode} install, written by `python scripts/lock.py write`; do not edit.",
        f"# pyproject-dependencies: {fingerprint(ROOT / 'pyproject.toml', mode)}",
        "# Installed with: pip install --no-deps --require-hashes -r THIS, then the project itself.",
    ]
    pins = {}
    for item in items:
        name = item["metadata"]["name"]
        if canonical(name) == "gridwatch":
            continue
        if canonical(name) in REPLACED:
            continue
        info = item["download_info"]
        digest = info.get("archive_info", {}).get("hashes", {}).get("sha256")
        if digest is None:
            raise SystemExit(f"{name}: pip reported no sha256 for {info.get('url')}")
        pins[canonical(name)] = f"{canonical(name)}=={item['metadata']['version']} \\\n    --hash=sha256:{digest}"
    for replaced, by in REPLACED.items():
        if any(canonical(i["metadata"]["name"]) == replaced for i in items) and by not in pins:
            raise SystemExit(f"{replaced} was resolved but {by}, which replaces it, was not")
    return "\n".join(lines + [pins[k] for k in sorted(pins)]) + "\n"


def read_pins(text: str) -> dict[str, str]:
    return {canonical(n): v for n, v in PIN.findall(text)}


def write() -> None:
    LOCK_DIR.mkdir(exist_ok=True)
    test_items = resolve([*TOOLS, *TORCH, ".[train,cluster,dev]"], None)
    lock_path("test").write_text(render("test", test_items))
    # The serving install takes the very versions the tests ran with.
    with tempfile.NamedTemporaryFile("w", suffix=".txt") as constraints:
        constraints.write("".join(f"{n}=={v}\n" for n, v in read_pins(lock_path("test").read_text()).items()))
        constraints.flush()
        base_items = resolve([*TOOLS, "."], Path(constraints.name))
    lock_path("base").write_text(render("base", base_items))
    print(f"wrote {lock_path('test').relative_to(ROOT)} and {lock_path('base').relative_to(ROOT)}")


def problems(pyproject: Path, lock_dir: Path) -> list[str]:
    """Every way the lock files and pyproject.toml disagree; empty when they agree."""
    from_pip = _requirement_parser()
    found = []
    for mode in MODES:
        path = lock_dir / f"{mode}.lock.txt"
        if not path.exists():
            found.append(f"{path.name}: missing; run `python scripts/lock.py write`")
            continue
        text = path.read_text()
        recorded = FINGERPRINT.search(text)
        if recorded is None or recorded.group(1) != fingerprint(pyproject, mode):
            found.append(f"{path.name}: pyproject.toml's dependencies changed since the lock was written; "
                         "run `python scripts/lock.py write`")
        pins = read_pins(text)
        for req_text in project_requirements(pyproject, MODES[mode]["extras"]) + MODES[mode]["extra_reqs"]:
            req = from_pip(req_text)
            name = canonical(req.name)
            if req.marker is not None and not req.marker.evaluate():
                continue
            if name not in pins:
                found.append(f"{path.name}: {req_text!r} is not pinned")
            elif not req.specifier.contains(pins[name], prereleases=True):
                found.append(f"{path.name}: {name}=={pins[name]} does not satisfy {req_text!r}")
        for replaced in REPLACED:
            if replaced in pins:
                found.append(f"{path.name}: pins {replaced}, which {REPLACED[replaced]} replaces: one OpenCV only")
    return found


def _requirement_parser():
    try:
        from packaging.requirements import Requirement
    except ImportError:  # before anything is installed: pip carries the same parser
        from pip._vendor.packaging.requirements import Requirement
    return Requirement


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["write", "check"])
    args = parser.parse_args(argv)
    if args.action == "write":
        write()
        return 0
    found = problems(ROOT / "pyproject.toml", LOCK_DIR)
    for line in found:
        print(f"lock: {line}", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
