"""`gridwatch bench --soak-hours H`: does `gridwatch serve` hold for days?

An accelerated replay: N cameras play a two-minute clip of real street photos in a loop
(`loop: true`, the clock running on), as fast as the machine decodes and detects, through a
real `gridwatch serve` process with its own database and evidence folder. Every interval
the process's resident memory, open file descriptors and threads, the database's and the
evidence folder's size are sampled against simulated camera time (frames analysed /
cameras x sampling interval). Growth is the least-squares slope per simulated hour over the
samples after the first quarter (warm-up: caches, the first cases), so a leak shows as a
slope and start-up costs do not.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import yaml

from detector.files import SHARED_DIR
from serving.commands.numbers import real, whole

CLIP_SECONDS = 120  # a bin for the first 50 s, a plain facade after: one event a loop
BIN_SECONDS = 50
SOAK_KEY = "gw_soak_admin_key_0123456789"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("soak (--soak-hours)")
    g.add_argument("--soak-hours", type=real(0, low_open=True), help="soak mode: simulated hours of camera time to replay")
    g.add_argument("--soak-cameras", type=whole(1), default=50, help="cameras replayed at once")
    g.add_argument("--soak-interval", type=real(0, low_open=True), default=60.0, help="real seconds between samples")
    g.add_argument("--soak-max-minutes", type=real(0, low_open=True), default=240.0, help="stop after this much real time")
    g.add_argument("--soak-dir", type=Path, help="keep the soak's database, evidence and log here")


@dataclass
class SoakSample:
    real_s: float
    simulated_h: float
    rss_mb: float
    fds: int
    threads: int
    db_mb: float  # the database file itself
    wal_mb: float  # SQLite's write-ahead log: grows to its checkpoint size, then is reused
    evidence_mb: float
    cases: int


@dataclass
class SoakResult:
    cameras: int
    sample_every: float
    simulated_h: float
    real_s: float
    samples: list[SoakSample] = field(default_factory=list)
    growth_per_simulated_h: dict[str, float] = field(default_factory=dict)
    # The verdict a months-long service needs: RSS slope over the second half alone, per
    # camera and simulated hour (a plateau reads near 0 however large the start-up costs).
    rss_mb_per_camera_h_last_half: float | None = None


def _scene_images(size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """A real overflowing bin (garbage_overflow_cn, label 'overflow') and a real facade."""
    import cv2

    garbage = SHARED_DIR / "datasets" / "garbage_overflow_cn"
    bin_image = None
    for label in sorted((garbage / "labels").glob("*.txt")):
        if any(line.split()[:1] == ["2"] for line in label.read_text().splitlines()):
            bin_image = cv2.imread(str(garbage / "images" / f"{label.stem}.jpg"))
            if bin_image is not None:
                break
    facade = cv2.imread(str(next(iter(sorted((SHARED_DIR / "datasets" / "facade_signs_spb" / "images").iterdir())))))
    if bin_image is None or facade is None:
        raise FileNotFoundError(f"soak needs the real images under {SHARED_DIR / 'datasets'}")
    return (cv2.resize(bin_image, size, interpolation=cv2.INTER_AREA),
            cv2.resize(facade, size, interpolation=cv2.INTER_AREA))


def make_soak_clip(path: Path, fps: int = 5, size: tuple[int, int] = (640, 360)) -> Path:
    from serving.bench.clips import write_h264

    with_bin, without = _scene_images(size)
    rng = np.random.default_rng(2)

    def frames():  # noqa: ANN202
        for i in range(CLIP_SECONDS * fps):
            scene = with_bin if i < BIN_SECONDS * fps else without
            noise = rng.integers(-3, 4, (size[1], size[0], 1), dtype=np.int16)  # sensor noise
            yield np.clip(scene.astype(np.int16) + noise, 0, 255).astype(np.uint8)

    return write_h264(path, frames(), fps=fps, size=size, keyframe_every=2.0)


def write_config(folder: Path, clip: Path, cameras: int, sample_every: float) -> Path:
    entries = [{
        "id": f"soak-{i:03d}", "source": str(clip), "loop": True, "division": "370202",
        "grid": "370202001001001", "sample_every": sample_every,
        "start": "2026-05-01T08:00:00+08:00",
        "zones": [{"name": "all", "type": "bin_area", "polygon": [[0, 0], [1, 0], [1, 1], [0, 1]]}],
        "rules": [{"violation": "bin_overflow", "zone_types": ["bin_area"], "min_score": 0.3, "dwell": 10}],
    } for i in range(cameras)]
    config = folder / "soak.yaml"
    config.write_text(yaml.safe_dump({"settings": {"data_dir": str(folder / "data"), "model_watch_s": 0},
                                      "cameras": entries}))
    return config


def _proc_status(pid: int) -> tuple[float, int]:
    text = Path(f"/proc/{pid}/status").read_text()
    rss_kb = int(re.search(r"VmRSS:\s+(\d+)", text).group(1))
    threads = int(re.search(r"Threads:\s+(\d+)", text).group(1))
    return rss_kb / 1024, threads


def _size_mb(paths: list[Path]) -> float:
    total = 0
    for path in paths:
        if path.is_file():
            total += path.stat().st_size
        elif path.is_dir():
            total += sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return total / 1e6


def _metric(text: str, name: str) -> float:
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


def sample(pid: int, data: Path, metrics: str, cameras: int, sample_every: float, real_s: float) -> SoakSample:
    rss, threads = _proc_status(pid)
    frames = _metric(metrics, "gridwatch_frames_total ")
    db = data / "gridwatch.db"
    return SoakSample(
        real_s=round(real_s, 1),
        simulated_h=round(frames / cameras * sample_every / 3600, 4),
        rss_mb=round(rss, 1),
        fds=len(os.listdir(f"/proc/{pid}/fd")),
        threads=threads,
        db_mb=round(_size_mb([db]), 3),
        wal_mb=round(_size_mb([db.with_name(db.name + "-wal")]), 3),
        evidence_mb=round(_size_mb([data / "evidence"]), 3),
        cases=int(_metric(metrics, "gridwatch_cases{")),
    )


def growth(samples: list[SoakSample], after: float = 0.25) -> dict[str, float]:
    """Least-squares slope per simulated hour of each figure, over the samples past `after` of
    the simulated time (default: after the first quarter)."""
    if len(samples) < 3:
        return {}
    end = samples[-1].simulated_h
    steady = [s for s in samples if s.simulated_h >= end * after] or samples
    if len(steady) < 2 or steady[-1].simulated_h <= steady[0].simulated_h:
        return {}
    hours = np.array([s.simulated_h for s in steady])
    return {name: round(float(np.polyfit(hours, [getattr(s, name) for s in steady], 1)[0]), 3)
            for name in ("rss_mb", "fds", "threads", "db_mb", "evidence_mb")}


def soak(args: argparse.Namespace) -> SoakResult:
    import httpx

    result = SoakResult(cameras=args.soak_cameras, sample_every=args.sample_every, simulated_h=0.0, real_s=0.0)
    with tempfile.TemporaryDirectory(prefix="gridwatch-soak-") as tmp:
        folder = args.soak_dir or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        clip = make_soak_clip(folder / "street.mp4")
        config = write_config(folder, clip, args.soak_cameras, args.sample_every)
        port = _free_port()
        env = {**os.environ, "GRIDWATCH_ADMIN_KEY": SOAK_KEY}
        if args.model:
            env["GRIDWATCH_MODEL"] = str(args.model)
        with open(folder / "serve.log", "w") as log:
            proc = subprocess.Popen([sys.executable, "-m", "serving.cli", "serve", "--config", str(config),
                                     "--port", str(port)], cwd=folder, env=env, stdout=log, stderr=log)
        started = time.monotonic()
        try:
            url = f"http://127.0.0.1:{port}/metrics"
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"serve exited with {proc.returncode}: {(folder / 'serve.log').read_text()[-2000:]}")
                try:
                    metrics = httpx.get(url, timeout=10).text
                except httpx.HTTPError:
                    time.sleep(0.5)
                    continue
                now = time.monotonic() - started
                result.samples.append(sample(proc.pid, folder / "data", metrics, args.soak_cameras,
                                             args.sample_every, now))
                result.simulated_h, result.real_s = result.samples[-1].simulated_h, now
                if result.simulated_h >= args.soak_hours or now >= args.soak_max_minutes * 60:
                    break
                time.sleep(args.soak_interval)
        finally:
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
    result.growth_per_simulated_h = growth(result.samples)
    last_half = growth(result.samples, after=0.5).get("rss_mb")
    if last_half is not None:
        result.rss_mb_per_camera_h_last_half = round(last_half / result.cameras, 4)
    return result


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def format_table(r: SoakResult) -> str:
    lines = [f"soak: {r.cameras} cameras analysed every {r.sample_every:g} s, {r.simulated_h:.2f} simulated h "
             f"in {r.real_s / 60:.1f} real min ({r.simulated_h * 3600 / max(r.real_s, 1e-9):.0f}x)",
             f"{'sim h':>7} {'RSS MB':>8} {'fds':>5} {'threads':>7} {'db MB':>8} {'wal MB':>7} "
             f"{'evidence MB':>11} {'cases':>6}"]
    for s in r.samples:
        lines.append(f"{s.simulated_h:>7.2f} {s.rss_mb:>8.1f} {s.fds:>5} {s.threads:>7} {s.db_mb:>8.3f} "
                     f"{s.wal_mb:>7.2f} {s.evidence_mb:>11.2f} {s.cases:>6}")
    if r.growth_per_simulated_h:
        g = r.growth_per_simulated_h
        lines.append("growth per simulated hour (after the first quarter): "
                     + ", ".join(f"{k} {v:+.3f}" for k, v in g.items()))
    if r.rss_mb_per_camera_h_last_half is not None:
        lines.append(f"RSS slope over the second half: {r.rss_mb_per_camera_h_last_half:+.4f} MB per camera-hour")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if args.soak_cameras < 1 or args.soak_hours <= 0:
        print("error: --soak-cameras must be >= 1 and --soak-hours > 0", file=sys.stderr)
        return 2
    try:
        result = soak(args)
    except (OSError, RuntimeError) as exc:
        print(f"error: soak failed: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(asdict(result)) if args.json else format_table(result))
    return 0
