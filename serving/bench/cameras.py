"""`gridwatch bench --cameras N`: how many cameras one machine sustains, and where time goes.

Builds a camera-like clip (default 1080p H.264, 25 fps, 2 s keyframe interval, from a real
photo with a moving object and sensor noise so P-frames cost what they cost), then measures
on this machine, per camera:

- decode: CPU seconds per second of video, keyframe-only decoding of due keyframes (what
  the readers do) against full decoding of every frame (the baseline);
- detect: seconds per analysed frame, frames of several cameras batched as the pipeline does;
- track + rules: seconds per analysed frame.

From these: load per camera = decode/cores + (detect + track)/sample_every (the detector's
time is wall time on all cores), and cameras per machine = 1 / load, for both decode modes.
With `--verify-seconds S` it also runs N live-paced cameras (one reader thread each, frames
released at the clip's real rate) through the real pipeline for S seconds and reports how
many samples arrived late or were dropped; then the verdict on the target is the
verification's (>= 99% of due samples analysed, p95 frame age within the sampling interval),
not the model's, which leaves out queueing and contention.

`serving.commands.bench` calls `run(args)` when `--cameras` is given.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np

from detector.files import SHARED_DIR, is_image
from serving.bench.detector import time_per_frame
from serving.commands.numbers import real, whole



def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("camera throughput (--cameras)")
    g.add_argument("--cameras", type=whole(1), help="camera mode: the number of cameras the machine should sustain")
    g.add_argument("--sample-every", type=real(0, low_open=True), default=5.0, help="seconds between analysed frames per camera")
    g.add_argument("--keyframe-every", type=real(0, low_open=True), default=2.0, help="camera keyframe interval, seconds")
    g.add_argument("--fps", type=whole(1, 240), default=25, help="camera frame rate")
    g.add_argument("--resolution", default="1920x1080", help="camera resolution WxH")
    g.add_argument("--clip-seconds", type=real(0, low_open=True), default=20.0, help="length of the measured clip")
    g.add_argument("--tiled-check-every", type=real(0, low_open=True), default=300.0,
                   help="seconds between tiled full-resolution checks per camera (0: none)")
    g.add_argument("--cores", type=whole(1), default=os.cpu_count() or 1, help="cores of the machine to plan for")
    g.add_argument("--verify-seconds", type=real(0), default=0.0,
                   help="also run N live-paced cameras through the pipeline for this long")


@dataclass
class StreamBench:
    resolution: str
    fps: int
    keyframe_every: float
    sample_every: float
    cores: int
    model: str
    decode_keyframes_s_per_s: float  # CPU s per s of video, keyframe-only (due keyframes)
    decode_full_s_per_s: float  # CPU s per s of video, every frame
    detect_s_per_frame: float  # wall s per analysed frame (batched), all cores
    tiled_s_per_check: float  # wall s per tiled check (tiles + whole frame), all cores
    tiled_check_every: float
    track_s_per_frame: float
    batch: int
    cameras_keyframes: float
    cameras_full: float
    target_cameras: int
    sustains_target: bool  # the verification's verdict when it ran, else the model's estimate
    verify: dict[str, Any] | None = None
    verdict_from: str = "model"  # "verification" once --verify-seconds ran


def _background(images: Path | None, size: tuple[int, int]) -> np.ndarray:
    import cv2

    if images is not None and images.exists():
        files = [images] if images.is_file() else sorted(
            p for p in images.rglob("*") if is_image(p)
        )
        for path in files[:50]:
            image = cv2.imread(str(path))
            if image is not None:
                return cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
    # No real photo to hand: a textured street-like gradient keeps the encoder honest.
    rng = np.random.default_rng(0)
    y = np.linspace(60, 200, size[1], dtype=np.float32)[:, None, None]
    return np.clip(y + rng.normal(0, 25, (size[1], size[0], 3)), 0, 255).astype(np.uint8)


def make_clip(path: Path, background: np.ndarray, fps: int, seconds: float, keyframe_every: float) -> Path:
    """Camera-like H.264: a static street, something crossing it, sensor noise."""
    from serving.bench.clips import write_h264

    h, w = background.shape[:2]
    rng = np.random.default_rng(1)
    base = background.astype(np.int16)
    mover = background[h // 3 : h // 3 + h // 4, w // 8 : w // 8 + w // 10].copy()
    n = int(seconds * fps)

    def frames() -> Iterator[np.ndarray]:
        for i in range(n):
            frame = base + rng.integers(-4, 5, (h, w, 1), dtype=np.int16)  # fresh sensor noise
            x = int((w - mover.shape[1]) * i / n)
            frame[h // 2 : h // 2 + mover.shape[0], x : x + mover.shape[1]] = mover
            yield np.clip(frame, 0, 255).astype(np.uint8)

    # A typical camera main stream: ~4 Mbit/s at 1080p, B-frames, fixed GOP.
    return write_h264(path, frames(), fps=fps, size=(w, h), keyframe_every=keyframe_every, b_frames=2,
                      bit_rate=int(4_000_000 * (w * h) / (1920 * 1080)))


def _decode_cost(clip: Path, sample_every: float, mode: str) -> tuple[float, list[np.ndarray], float]:
    """CPU seconds per second of video for one camera, the frames it kept, and the video length."""
    import av

    from serving.streams.readers import StreamHealth, sample_decoded

    health = StreamHealth("bench", str(clip))
    kept = []
    cpu0, t0 = time.process_time(), time.perf_counter()
    with av.open(str(clip)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "SLICE"  # one camera, one core: what a many-camera machine affords
        stream.codec_context.thread_count = 1
        duration = float(stream.frames / stream.average_rate) if stream.frames else None
        for _, image in sample_decoded(container, sample_every, mode, health, live=False):
            kept.append(image)
    cpu = time.process_time() - cpu0
    wall = time.perf_counter() - t0
    duration = duration or 1.0
    return min(cpu, wall * 1.05) / duration, kept, duration


def measure(args: argparse.Namespace) -> StreamBench:
    from detector import Detector, load_taxonomy
    from serving.cameras import Camera
    from serving.pipeline.rules import RuleEngine
    from serving.settings import SettingsError, load_settings
    from serving.pipeline.tracking import IoUTracker
    from serving.pipeline.zones import ZoneMap

    w, h = (int(v) for v in args.resolution.lower().split("x"))
    try:
        model = load_settings(model=args.model).resolved_model()
    except SettingsError:
        shared = SHARED_DIR / "weights" / "coco-yolov8n-int8.onnx"
        if not shared.is_file():
            raise
        print(f"note: no shipped model yet; timing the seed model {shared}")
        model = shared
    with tempfile.TemporaryDirectory(prefix="gridwatch-bench-") as tmp:
        clip = make_clip(Path(tmp) / "camera.mp4", _background(args.images, (w, h)), args.fps,
                         args.clip_seconds, args.keyframe_every)
        kf_cost, frames, _ = _decode_cost(clip, args.sample_every, "keyframes")
        full_cost, _, _ = _decode_cost(clip, args.sample_every, "all")

        detector = Detector(model, threads=args.threads)
        batch = min(max(1, args.cameras), detector.batch_size, 8)
        frames_b = (frames * batch)[: max(batch, len(frames))]
        results = detector.detect(frames_b[:batch])  # warm-up; the tracker's timing below replays them
        # The median of several calls, each on a quiet process: one pass of two calls read
        # anywhere from 4.2 to 4.9 ms per frame on the same model in one hour.
        detect_s = time_per_frame(detector.detect, [frames_b[:batch]], max(1, 64 // batch)) / 1000
        t0 = time.perf_counter()
        for frame in frames[:3]:
            detector.detect_tiled(frame)
        tiled_s = (time.perf_counter() - t0) / len(frames[:3])

        camera = Camera(id="bench", source="rtsp://bench", division="370202", grid="370202001001001",
                        zones=[{"name": "all", "type": "sidewalk", "polygon": [[0, 0], [1, 0], [1, 1], [0, 1]]}],
                        rules=[{"violation": "street_stall", "zone_types": ["sidewalk"], "classes": ["person", "car"]}])
        tracker, rules = IoUTracker(), RuleEngine(camera, load_taxonomy())
        zones = ZoneMap(camera.zones, w, h)
        start = datetime.now(timezone.utc)
        t0 = time.perf_counter()
        n_track = 200
        for i in range(n_track):
            when = start + timedelta(seconds=i * args.sample_every)
            tracks = tracker.update(results[i % len(results)], when)
            rules.update(tracks, zones, when, frames[0])
        track_s = (time.perf_counter() - t0) / n_track

    # A static check replaces one ordinary detection of that camera.
    static = (tiled_s - detect_s) / args.tiled_check_every if args.tiled_check_every > 0 else 0.0
    per_frame = (detect_s + track_s) / args.sample_every + static
    load_kf = kf_cost / args.cores + per_frame
    load_full = full_cost / args.cores + per_frame
    cams_kf, cams_full = 1 / load_kf, 1 / load_full
    return StreamBench(
        resolution=f"{w}x{h}", fps=args.fps, keyframe_every=args.keyframe_every, sample_every=args.sample_every,
        cores=args.cores, model=str(model), decode_keyframes_s_per_s=kf_cost, decode_full_s_per_s=full_cost,
        detect_s_per_frame=detect_s, tiled_s_per_check=tiled_s if args.tiled_check_every > 0 else 0.0,
        tiled_check_every=args.tiled_check_every, track_s_per_frame=track_s, batch=batch,
        cameras_keyframes=cams_kf, cameras_full=cams_full, target_cameras=args.cameras,
        sustains_target=cams_kf >= args.cameras,
    )


def format_table(b: StreamBench) -> str:
    def row(name: str, decode: float) -> str:
        d = decode / b.cores
        det = b.detect_s_per_frame / b.sample_every
        tiled = (b.tiled_s_per_check - b.detect_s_per_frame) / b.tiled_check_every if b.tiled_check_every > 0 else 0.0
        trk = b.track_s_per_frame / b.sample_every
        total = d + det + tiled + trk
        return (f"{name:<16} {1 / total:>9.0f}   {100 * d / total:>5.1f}%  {100 * det / total:>5.1f}%  "
                f"{100 * tiled / total:>5.1f}%  {100 * trk / total:>5.1f}%")

    lines = [
        f"cameras: {b.resolution} H.264 {b.fps} fps, keyframe every {b.keyframe_every:g} s, analysed every "
        f"{b.sample_every:g} s; {b.cores} cores; model {Path(b.model).name} (batch {b.batch})",
        f"decode: keyframes only {1000 * b.decode_keyframes_s_per_s:.1f} ms CPU per video second, "
        f"every frame {1000 * b.decode_full_s_per_s:.1f} ms ({b.decode_full_s_per_s / max(b.decode_keyframes_s_per_s, 1e-9):.1f}x)",
        f"detect: {1000 * b.detect_s_per_frame:.1f} ms per analysed frame; tiled static check: "
        f"{1000 * b.tiled_s_per_check:.0f} ms every {b.tiled_check_every:g} s; track + rules: "
        f"{1e6 * b.track_s_per_frame:.0f} us",
        "",
        f"{'decoding':<16} {'cameras':>9}   {'decode':>6}  {'detect':>6}  {'tiled':>6}  {'track':>6}"
        "   (share of the machine's time)",
        row("keyframes only", b.decode_keyframes_s_per_s),
        row("every frame", b.decode_full_s_per_s),
        "",
        f"cameras per machine: {b.cameras_keyframes:.0f} (keyframes only) vs {b.cameras_full:.0f} "
        "(full decoding), modelled from the stages above",
    ]
    verdict = "sustained" if b.sustains_target else "NOT sustained"
    if b.verify:
        v = b.verify
        lines.append(
            f"verify: {v['cameras']} live-paced cameras for {v['seconds']:.0f} s: {v['samples']} samples analysed "
            f"of {v['expected']} sent ({100 * v['analysed_share']:.1f}% of those due), dropped before "
            f"analysis {v['dropped']}, still queued at the end {v['pending_at_end']}, "
            f"frame age when analysed p95 {v['age_p95_s']} s, tiled checks {v['tiled']} (longest wait for a "
            f"turn {v.get('tiled_wait_max_s', 0)} s, waiting at the end {v.get('tiled_waiting_at_end', 0)}, "
            f"periods missed {v.get('tiled_missed', 0)}), reader errors {v['errors']}"
        )
        lines.append(f"target {b.target_cameras}: {verdict} (verified: >= {100 * MIN_ANALYSED_SHARE:g}% analysed and "
                     f"p95 frame age <= the {b.sample_every:g} s sampling interval)")
    else:
        lines.append(f"target {b.target_cameras}: {verdict} by the model alone; not verified "
                     "(--verify-seconds runs the cameras through the pipeline)")
    return "\n".join(lines)


MIN_ANALYSED_SHARE = 0.99  # of the samples due, for a verified "sustained"


def verified(v: dict[str, Any], sample_every: float) -> bool:
    """The verification's verdict: the pipeline kept up when it analysed nearly every sample
    the cameras sent and analysed them before the next one was due."""
    return (v["analysed_share"] >= MIN_ANALYSED_SHARE and v["age_p95_s"] is not None
            and v["age_p95_s"] <= sample_every and v["errors"] == 0)


def verify(args: argparse.Namespace, model: str) -> dict[str, Any]:
    """N cameras served live-paced from one clip over HTTP-free pipes: a real concurrent run."""
    import threading

    import av

    from detector import Detector, load_taxonomy
    from serving.cameras import Camera
    from serving.pipeline import Pipeline
    from serving.streams.readers import Frame, StreamHealth, sample_decoded

    w, h = (int(v) for v in args.resolution.lower().split("x"))
    with tempfile.TemporaryDirectory(prefix="gridwatch-bench-") as tmp:
        clip_seconds = max(args.clip_seconds, 10)
        clip = make_clip(Path(tmp) / "camera.mp4", _background(args.images, (w, h)), args.fps,
                         clip_seconds, args.keyframe_every)
        loop_seconds = int(round(clip_seconds * args.fps)) / args.fps  # the clip's frames at its rate
        tiled = args.tiled_check_every > 0
        cams = [Camera(id=f"cam-{i:03d}", source=str(clip), division="370202", grid="370202001001001",
                       sample_every=args.sample_every, tiled_static_checks=tiled,
                       tiled_check_every=args.tiled_check_every if tiled else 300)
                for i in range(args.cameras)]
        pipeline = Pipeline(cams, Detector(model, threads=args.threads), load_taxonomy())
        stop = threading.Event()
        slots: dict[str, Frame | None] = {c.id: None for c in cams}
        health = {c.id: StreamHealth(c.id, str(clip)) for c in cams}
        lock = threading.Lock()
        overwritten = [0]
        released = [0]  # samples the cameras sent; the due count, edge effects of the window included
        ages: list[float] = []

        def read(cam: Camera, offset: float) -> None:
            # Live pacing: packets are released at the clip's real rate, as a camera sends them.
            t_start = time.monotonic() + offset  # cameras start staggered over one interval
            while not stop.is_set():
                with av.open(str(clip)) as container:
                    container.streams.video[0].codec_context.thread_count = 1
                    for t, image in sample_decoded(container, cam.sample_every, "keyframes", health[cam.id],
                                                   live=False, should_stop=stop.is_set):
                        delay = t_start + t - time.monotonic()
                        if delay > 0 and stop.wait(delay):
                            return
                        with lock:
                            # A slot still full means the pipeline missed that camera's last sample.
                            overwritten[0] += slots[cam.id] is not None
                            released[0] += 1
                            slots[cam.id] = Frame(cam.id, datetime.now(timezone.utc), image, 0)
                # The next loop starts when this one's last frame has played, not when its
                # demuxing ends (that is as soon as the last due keyframe is out).
                t_start += loop_seconds

        threads = [threading.Thread(target=read, args=(c, i * args.sample_every / len(cams)), daemon=True)
                   for i, c in enumerate(cams)]
        for t in threads:
            t.start()
        t_end = time.monotonic() + args.verify_seconds
        analysed, longest_wait = 0, 0.0
        while time.monotonic() < t_end:
            with lock:
                # As the service's loop: a camera whose tiled check is running gives no frame.
                batch = [f for k, f in slots.items() if f is not None and pipeline.runtimes[k].held is None]
                for f in batch:
                    slots[f.camera] = None
            if batch or pipeline.checking:
                pipeline.process(batch)
                done = datetime.now(timezone.utc)
                # A frame that started a tiled check is analysed when the check completes.
                ages.extend((done - f.timestamp).total_seconds() for f in pipeline.last_analysed)
                analysed += len(pipeline.last_analysed)
                longest_wait = max(longest_wait, *pipeline.tiled_waits().values(), 0.0)
            else:
                time.sleep(0.01)
        stop.set()
        for t in threads:
            t.join(5)
        with lock:
            # Sent in the window's last moments, after the final batch was taken: not a loss.
            pending = sum(f is not None for f in slots.values())
    due = max(released[0] - pending, 1)  # sent early enough to be analysed in the window
    return {"cameras": args.cameras, "seconds": args.verify_seconds, "samples": analysed, "expected": released[0],
            "pending_at_end": pending, "dropped": overwritten[0], "analysed_share": round(analysed / due, 4),
            "tiled": pipeline.stats["tiled"],
            # A due check waits while another camera's runs or the tiled budget is spent.
            "tiled_wait_max_s": round(longest_wait, 3), "tiled_waiting_at_end": len(pipeline.tiled_waits()),
            "tiled_missed": pipeline.stats["tiled_missed"],
            "age_p95_s": round(float(np.percentile(ages, 95)), 3) if ages else None,
            "errors": sum(hh.errors for hh in health.values())}


def run(args: argparse.Namespace) -> int:
    import sys

    if args.cameras < 1 or args.sample_every <= 0:
        print("error: --cameras must be >= 1 and --sample-every > 0", file=sys.stderr)
        return 2
    try:
        result = measure(args)
        if args.verify_seconds > 0:
            result.verify = verify(args, result.model)
            # What the machine did, not what the per-stage model predicts, decides.
            result.sustains_target = verified(result.verify, args.sample_every)
            result.verdict_from = "verification"
    except Exception as exc:  # a clear line, not a traceback, for a command-line user
        print(f"error: camera benchmark failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    if getattr(args, "json", False):
        print(json.dumps(asdict(result)))
    else:
        print(format_table(result))
    return 0
