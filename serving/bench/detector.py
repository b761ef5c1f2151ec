"""Timing our Detector against the bare ONNX Runtime session and Ultralytics' predict.

All three run the same model files on the same 1080p frames in one process, two at a time
(the session with our detector, then our detector with Ultralytics), in alternating blocks of
back-to-back calls, so a busy spell on a shared machine falls on both alike and the ratios
stay fair on whatever machine runs them.

What one contestant leaves behind must not be timed as the other's (docs/benchmarks.md):
- ONNX Runtime's pool threads spin for about 27 ms of a core after a run unless told to stop
  (measured). Ultralytics' session spins so; ours did too, and slowed Ultralytics' predict from
  10.9 to 16.6 ms at batch 1, which is what made the earlier 2.5-2.9x figures. Each block
  starts on a quiet process (settle).
- Timed call by call in turns, each ran on the caches the other had just filled: ours read 6.7
  ms beside Ultralytics and 4.9 ms beside the session. A block is an untimed call, then a pass.
- Importing Ultralytics sets OpenCV to one thread for the whole process; each side runs with
  its own setting (the service never imports Ultralytics).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from detector import Detector
from detector.files import is_image
from detector.runtime import BoundRun
from serving.streams.media import read_image

FRAME_SIZE = (1920, 1080)


@dataclass
class Timing:
    name: str
    batch: int
    ms_per_frame: float


def bench_frames(image_dir: Path, count: int) -> list[np.ndarray]:
    """Real street images scaled and centre-cropped to 1080p, like a camera's frames."""
    files = sorted(p for p in image_dir.rglob("*") if is_image(p))
    if not files:
        raise ValueError(f"no images under {image_dir}")
    step = max(1, len(files) // count)
    frames = []
    for path in files[::step][:count]:
        image = read_image(path)
        h, w = image.shape[:2]
        scale = max(FRAME_SIZE[0] / w, FRAME_SIZE[1] / h)
        image = cv2.resize(image, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_LINEAR)
        y0 = (image.shape[0] - FRAME_SIZE[1]) // 2
        x0 = (image.shape[1] - FRAME_SIZE[0]) // 2
        frames.append(np.ascontiguousarray(image[y0 : y0 + FRAME_SIZE[1], x0 : x0 + FRAME_SIZE[0]]))
    return frames


def time_per_frame(fn: Callable[[list[np.ndarray]], object], batches: list[list[np.ndarray]], rounds: int) -> float:
    """Median ms per frame of fn(batch) over `rounds` blocks (see _timed_block)."""
    return statistics.median(
        sample for _ in range(rounds) for sample in _timed_block(lambda i: fn(batches[i]), batches))


def _batches(frames: list[np.ndarray], size: int) -> list[list[np.ndarray]]:
    return [frames[i : i + size] for i in range(0, len(frames) - size + 1, size)] or [frames]


def bare_session_fn(detector: Detector, batch: list[np.ndarray]) -> Callable[[int], object]:
    """The floor: the session alone on real frames already letterboxed into the model's input,
    run as the detector runs it (outputs into bound buffers, reused; a static-batch model once
    per `batch` frames), for a batch of len(batch) frames; ours over this is our own pre- and
    post-processing. Called with a batch's index, which it ignores: the session's time does not
    depend on what the pixels show, and one reused input mirrors the detector's reused buffers."""
    static = detector.info.batch
    size = static or len(batch)
    run = BoundRun(detector.session, detector.info.input_name, detector.session_input((batch * size)[:size]))
    calls = -(-len(batch) // static) if static else 1

    def session(_index: int) -> None:
        for _ in range(calls):
            run()

    return session


# A process is quiet once it uses under a tenth of a core over a slice; no spinning pool waits
# longer than SETTLE_MAX_S (ORT's stops after about 27 ms).
SETTLE_SLICE_S = 0.002
SETTLE_MAX_S = 0.2


def settle(slice_s: float = SETTLE_SLICE_S, max_s: float = SETTLE_MAX_S) -> float:
    """Sleep until this process's threads stop using the CPU (a spinning ONNX Runtime pool after
    a run), at most max_s; returns the seconds waited."""
    began = time.perf_counter()
    while time.perf_counter() - began < max_s:
        cpu = time.process_time()
        time.sleep(slice_s)
        if time.process_time() - cpu < slice_s / 10:
            break
    return time.perf_counter() - began


def _timed_block(call: Callable[[int], object], batches: list[list[np.ndarray]]) -> list[float]:
    """ms per frame of call(index) on each batch, back to back, once the process is quiet
    (settle) and after one untimed call that allocates, tunes and refills the caches."""
    settle()
    call(0)
    samples = []
    for index, batch in enumerate(batches):
        start = time.perf_counter()
        call(index)
        samples.append((time.perf_counter() - start) * 1000 / len(batch))
    return samples


def time_in_blocks(fns: dict[str, Callable[[int], object]], batches: list[list[np.ndarray]],
                   rounds: int, enter: dict[str, Callable[[], object]] | None = None) -> dict[str, float]:
    """Median ms per frame of each fn (called with a batch's index) over `rounds` blocks each:
    a block is one pass over the batches back to back, as a busy service runs frame after
    frame, after one untimed call that refills the caches the other contestant took. Blocks
    alternate and the order turns each round, so a busy spell on the machine falls on all
    alike. Each block starts on a quiet process (settle), so no contestant pays for the pool
    another left spinning; within its block each runs as it is configured to (enter: what a
    contestant sets before its block, untimed)."""
    names = list(fns)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for turn in range(rounds):
        for name in names[turn % len(names):] + names[: turn % len(names)]:
            if enter and name in enter:
                enter[name]()
            samples[name] += _timed_block(fns[name], batches)
    return {name: statistics.median(values) for name, values in samples.items()}


def ultralytics_fn(model_path: Path, detector: Detector):
    """Ultralytics' predict on model_path at the detector's size and thresholds (None without
    Ultralytics installed)."""
    if Path(model_path).resolve() == detector.info.path.resolve() and detector.info.head == "levels":
        raise ValueError(f"Ultralytics cannot run {model_path}: its graph ends at the detection head's per-level "
                         "outputs, which gridwatch decodes itself; put its fp32 twin beside it (-fp32 for -int8) "
                         "or pass the twin as --reference-model")
    try:
        from ultralytics import YOLO
    except ImportError:
        return None
    model = YOLO(str(model_path), task="detect")

    def run(batch: list[np.ndarray]) -> None:
        model.predict(batch, imgsz=list(detector.input_size), conf=detector.score_threshold,
                      iou=detector.iou_threshold, verbose=False)

    return run


@dataclass(frozen=True)
class OpenCVThreads:
    """OpenCV's thread count on each side. Importing Ultralytics sets it to none for the whole
    process; the service never imports Ultralytics and resizes with OpenCV's default, so each
    side is timed with its own. Read `ours` before the import and `theirs` after it."""

    ours: int
    theirs: int

    def for_ours(self) -> None:
        cv2.setNumThreads(self.ours)

    def for_theirs(self) -> None:
        cv2.setNumThreads(self.theirs)


def run_benchmark(
    model: Path,
    reference_model: Path,
    frames: list[np.ndarray],
    *,
    threads: int | None,
    rounds: int,
    batch_sizes: tuple[int, ...] = (1, 8),
    imgsz: int | None = None,
) -> list[Timing]:
    detector = Detector(model, threads=threads, imgsz=imgsz)
    ours_cv2 = cv2.getNumThreads()
    theirs = ultralytics_fn(reference_model, detector)
    opencv = OpenCVThreads(ours_cv2, cv2.getNumThreads())
    cv2_threads = {"session": opencv.for_ours, "gridwatch": opencv.for_ours, "ultralytics": opencv.for_theirs}
    timings = []
    for size in batch_sizes:
        batches = _batches(frames, size)
        ours = lambda i, batches=batches: detector.detect(batches[i])  # noqa: E731
        # As many timed calls (the median's samples) at every batch size: at batch 8, 16 frames
        # are only two calls a pass.
        passes = rounds * size
        floor = time_in_blocks({"session": bare_session_fn(detector, batches[0]), "gridwatch": ours},
                               batches, passes, cv2_threads)
        timings += [Timing(name, size, ms) for name, ms in floor.items()]
        if theirs is not None:
            against = time_in_blocks({"gridwatch": ours, "ultralytics": lambda i, batches=batches: theirs(batches[i])},
                                     batches, passes, cv2_threads)
            timings += [Timing("gridwatch_beside_ultralytics", size, against["gridwatch"]),
                        Timing("ultralytics", size, against["ultralytics"])]
    opencv.for_ours()
    tiled = time_per_frame(lambda batch: [detector.detect_tiled(f) for f in batch], _batches(frames, 1), 1)
    timings.append(Timing("gridwatch_tiled", 1, tiled))
    return timings


def summarise(timings: list[Timing]) -> dict:
    by = {(t.name, t.batch): t.ms_per_frame for t in timings}
    rows = {}
    for batch in sorted({t.batch for t in timings if t.name != "gridwatch_tiled"}):
        ours, bare, theirs = by.get(("gridwatch", batch)), by.get(("session", batch)), by.get(("ultralytics", batch))
        beside = by.get(("gridwatch_beside_ultralytics", batch), ours)
        rows[batch] = {
            "session_ms": bare,
            "gridwatch_ms": ours,
            "ultralytics_ms": theirs,
            "gridwatch_beside_ultralytics_ms": beside,
            "gridwatch_over_session": ours / bare if bare else None,
            "ultralytics_over_gridwatch": theirs / beside if theirs and beside else None,
            # Our detector runs that very session plus its own pre- and post-processing: timed
            # faster than it, the machine was busy with something else during one of them.
            "noisy": bool(ours and bare and ours < bare),
        }
    return {"timings": [asdict(t) for t in timings], "by_batch": rows,
            "tiled_static_check_ms": by.get(("gridwatch_tiled", 1))}


def frame_input(model: Path, frame: np.ndarray, imgsz: int | None = None) -> str:
    """The input shape the detector gives a camera frame ("448x256" for a dynamic model)."""
    (h, w), _ = Detector(model, threads=1, imgsz=imgsz).input_plan(frame)
    return f"{w}x{h}"


def format_table(summary: dict, model: Path, reference_model: Path) -> str:
    lines = [
        f"model: {model}" + (f" (a 1080p frame runs at {summary['frame_input']})" if summary.get("frame_input") else ""),
        f"ultralytics runs: {reference_model}",
        f"{'batch':>5}  {'session ms':>10}  {'gridwatch ms':>12}  {'ultralytics ms':>14}  "
        f"{'ours/session':>12}  {'ultra/ours':>10}",
    ]
    for batch, row in summary["by_batch"].items():
        def fmt(v, spec):
            return format(v, spec) if v is not None else "-"
        overhead = f"{'noisy':>12}" if row.get("noisy") else f"{fmt(row['gridwatch_over_session'], '11.2f')}x"
        lines.append(
            f"{batch:>5}  {fmt(row['session_ms'], '10.1f')}  {fmt(row['gridwatch_ms'], '12.1f')}  "
            f"{fmt(row['ultralytics_ms'], '14.1f')}  {overhead}  "
            f"{fmt(row['ultralytics_over_gridwatch'], '9.2f')}x"
        )
    lines.append("ms are per frame (median); ours/session: overhead over the bare session, the two timed in turns; "
                 "ultra/ours: our speed-up, ours timed in turns with Ultralytics.")
    noisy = [str(batch) for batch, row in summary["by_batch"].items() if row.get("noisy")]
    if noisy:
        lines.append(f"NOISY RUN: at batch {', '.join(noisy)} gridwatch timed faster than the bare session it "
                     "wraps (ours/session below 1.0): the machine was busy with other work; run again on an idle "
                     "machine before quoting these figures")
    one = summary["by_batch"].get(1, {}).get("ultralytics_over_gridwatch")
    if one is not None:
        lines.append(f"batch 1, end to end: {model.name} is {one:.2f}x as fast as Ultralytics' predict on "
                     f"{reference_model.name}")
    if summary.get("tiled_static_check_ms") is not None:
        lines.append(f"tiled static check (tiles of the model's input size on each pyramid level, plus the whole "
                     f"frame, batch 1): {summary['tiled_static_check_ms']:.1f} ms per frame")
    return "\n".join(lines)


@dataclass
class Option:
    """One runtime option in a side-by-side comparison: a model file, at a size."""

    model: Path
    imgsz: int | None = None

    @classmethod
    def parse(cls, spec: str) -> Option:
        """MODEL or MODEL@IMGSZ; ValueError saying which part is wrong."""
        path, _, size = spec.partition("@")
        if size and not (size.isdigit() and 32 <= int(size) <= 4096):
            raise ValueError(f"--compare {spec}: the size after @ is an input side of 32-4096 px, got {size!r}")
        return cls(Path(path), int(size) if size else None)

    @property
    def label(self) -> str:
        return f"{self.model}" + (f"@{self.imgsz}" if self.imgsz else "")


def compare_options(options: list[Option], references: list[Path], frames: list[np.ndarray], *,
                    threads: int | None, rounds: int) -> list[dict]:
    """Each option through our Detector and Ultralytics' predict on its reference at the same
    size, batch 1, in blocks (a pass each, started on a quiet process, each side with its own
    OpenCV threads), the options interleaved round by round so the machine's drift hits all alike."""
    runners = []
    ours_cv2 = cv2.getNumThreads()
    for option, reference in zip(options, references):
        detector = Detector(option.model, threads=threads, imgsz=option.imgsz)
        theirs = ultralytics_fn(reference, detector)
        (h, w), _ = detector.input_plan(frames[0])
        runners.append((option, reference, f"{w}x{h}", detector.detect, theirs))
    opencv = OpenCVThreads(ours_cv2, cv2.getNumThreads())
    batches = _batches(frames, 1)
    samples: dict[str, dict[str, list[float]]] = {o.label: {"ours": [], "theirs": []} for o in options}
    for _ in range(rounds):
        for option, _, _, ours, theirs in runners:
            opencv.for_ours()
            samples[option.label]["ours"].append(time_per_frame(ours, batches, 1))
            if theirs is not None:
                opencv.for_theirs()
                samples[option.label]["theirs"].append(time_per_frame(theirs, batches, 1))
    opencv.for_ours()
    first_theirs = statistics.median(samples[options[0].label]["theirs"] or [float("nan")])
    rows = []
    for option, reference, shape, _, _ in runners:
        ours = statistics.median(samples[option.label]["ours"])
        theirs = statistics.median(samples[option.label]["theirs"]) if samples[option.label]["theirs"] else None
        rows.append({"option": option.label, "frame_input": shape, "gridwatch_ms": ours,
                     "reference_model": str(reference), "ultralytics_ms": theirs,
                     "ultralytics_over_gridwatch": theirs / ours if theirs else None,
                     "first_ultralytics_over_gridwatch": first_theirs / ours})
    return rows


def format_options(rows: list[dict]) -> str:
    lines = [f"{'option':<48} {'1080p in':>9} {'ours ms':>8} {'ultra ms':>9} {'ultra/ours':>10} {'row1 ultra/ours':>15}"]
    for r in rows:
        theirs = f"{r['ultralytics_ms']:9.1f}" if r["ultralytics_ms"] else f"{'-':>9}"
        ratio = f"{r['ultralytics_over_gridwatch']:9.2f}x" if r["ultralytics_over_gridwatch"] else f"{'-':>10}"
        lines.append(f"{r['option']:<48} {r['frame_input']:>9} {r['gridwatch_ms']:8.1f} {theirs} {ratio} "
                     f"{r['first_ultralytics_over_gridwatch']:14.2f}x")
    lines.append("batch 1, medians over the rounds; ultra: Ultralytics' predict on the option's fp32 twin at the "
                 "same size; row1 ultra/ours: against the first option's Ultralytics time (another size or shape).")
    return "\n".join(lines)
