"""Real test media and real streams on loopback, built at test time from ../shared/datasets.

- `Props`: real objects cut from real dataset photos (an overflowing bin, a person, a truck,
  a car) and a real street photo as the background; nothing is copied into the repository.
- `Timeline` + `write_video`: a static scene with props appearing, staying, walking through,
  encoded to H.264 (2 s keyframe interval) with PyAV, with a recorded start time.
- `RtspServer`: GStreamer's RTSP server (gir1.2-gst-rtsp-server-1.0) serving a video file on
  127.0.0.1 in real time, run by the system Python (python3-gi lives there, not in the venv);
  restartable on the same port to test reconnection.
- `MjpegServer`: an HTTP multipart/x-mixed-replace (MJPEG) server on 127.0.0.1.
"""

from __future__ import annotations

import struct
import subprocess
import textwrap
import threading
import time
import zlib
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import numpy as np

from serving.bench.clips import write_h264
from tests.support.service import pick_port
from tests.support.shared_data import COCO_INT8 as COCO_MODEL
from tests.support.shared_data import DATASETS
SIZE = (640, 360)  # w, h of test videos

# Where the real objects come from: (dataset image stem prefix, COCO class the seed model sees).
BACKGROUND = "facade_signs_spb/images/img_1.jpg"  # no detection of the seed model on it
PROP_SOURCES = {
    # A labelled 'overflow' bin of garbage_overflow_cn (cut by its label); the COCO seed model
    # calls it a fire hydrant, so tests map bin_overflow to that class.
    "bin": ("garbage_overflow_cn/images", "000172_", "label:2"),
    "person": ("thela_india/images", "train_picture_119.", "person"),
    "truck": ("thela_india/images", "train_picture_14.", "truck"),
    "car": ("thela_india/images", "train_picture_138.", "car"),
}


def _find(folder: str, prefix: str) -> Path:
    hits = sorted((DATASETS / folder).glob(prefix + "*"))
    if not hits:
        raise FileNotFoundError(f"{DATASETS / folder}/{prefix}*")
    return hits[0]


def _label_crop(path: Path, image: np.ndarray, class_id: int) -> np.ndarray:
    """The largest box of `class_id` in the image's YOLO label file."""
    label = path.parent.parent / "labels" / (path.stem + ".txt")
    H, W = image.shape[:2]
    best = None
    for line in label.read_text().splitlines():
        parts = line.split()
        if len(parts) == 5 and int(parts[0]) == class_id:
            cx, cy, w, h = map(float, parts[1:])
            if best is None or w * h > best[2] * best[3]:
                best = (cx, cy, w, h)
    if best is None:
        raise RuntimeError(f"no class {class_id} box in {label}")
    cx, cy, w, h = best
    return image[int((cy - h / 2) * H) : int((cy + h / 2) * H), int((cx - w / 2) * W) : int((cx + w / 2) * W)].copy()


@dataclass
class Props:
    background: np.ndarray  # SIZE, BGR
    cutouts: dict[str, np.ndarray]  # name -> BGR crop (as found by the detector)

    @classmethod
    def load(cls, detector) -> Props:
        bg = cv2.resize(cv2.imread(str(DATASETS / BACKGROUND)), SIZE, interpolation=cv2.INTER_AREA)
        cutouts = {}
        for name, (folder, prefix, cls_name) in PROP_SOURCES.items():
            path = _find(folder, prefix)
            image = cv2.imread(str(path))
            if cls_name.startswith("label:"):
                cutouts[name] = _label_crop(path, image, int(cls_name[6:]))
                continue
            dets = detector(image).with_classes({cls_name})
            if not len(dets):
                raise RuntimeError(f"seed model finds no {cls_name} in {folder}/{prefix}*")
            x1, y1, x2, y2 = dets.xyxy[int(np.argmax(dets.scores))].astype(int)
            cutouts[name] = image[y1:y2, x1:x2].copy()
        return cls(bg, cutouts)

    def sized(self, name: str, height: int) -> np.ndarray:
        crop = self.cutouts[name]
        width = max(1, round(crop.shape[1] * height / crop.shape[0]))
        return cv2.resize(crop, (width, height), interpolation=cv2.INTER_AREA)


@dataclass
class Placement:
    """A prop standing with its bottom-centre at `foot(t)` (pixels) from t0 to t1 (video seconds)."""

    prop: str
    height: int
    t0: float
    t1: float
    foot: tuple[float, float] | None = None  # fixed position
    path: tuple[tuple[float, float], tuple[float, float]] | None = None  # walks from A to B

    def at(self, t: float) -> tuple[float, float] | None:
        if not self.t0 <= t < self.t1:
            return None
        if self.path is None:
            return self.foot
        (ax, ay), (bx, by) = self.path
        k = (t - self.t0) / max(self.t1 - self.t0, 1e-6)
        return ax + (bx - ax) * k, ay + (by - ay) * k


@dataclass
class Timeline:
    props: Props
    duration: float
    fps: float = 5.0
    placements: list[Placement] = field(default_factory=list)
    patches: list[tuple[float, tuple[int, int, int, int], tuple[int, int, int]]] = field(default_factory=list)

    def add(self, *placements: Placement) -> Timeline:
        self.placements.extend(placements)
        return self

    def add_patch(self, t0: float, rect: tuple[int, int, int, int], color=(60, 70, 80)) -> Timeline:
        """A flat new patch from t0 on (debris on the road, a poster on a wall): x, y, w, h."""
        self.patches.append((t0, rect, color))
        return self

    def frame(self, t: float) -> np.ndarray:
        out = self.props.background.copy()
        for t0, (x, y, w, h), color in self.patches:
            if t >= t0:
                patch = np.empty((h, w, 3), np.uint8)
                patch[:] = color
                # Texture, so it looks like a thing and not a codec artefact.
                noise = np.random.default_rng(x * 7 + y).integers(-40, 40, (h, w, 1))
                out[y : y + h, x : x + w] = np.clip(patch + noise, 0, 255).astype(np.uint8)
        for p in self.placements:
            foot = p.at(t)
            if foot is None:
                continue
            crop = self.props.sized(p.prop, p.height)
            h, w = crop.shape[:2]
            x0, y0 = int(round(foot[0] - w / 2)), int(round(foot[1] - h))
            xa, ya = max(x0, 0), max(y0, 0)
            xb, yb = min(x0 + w, SIZE[0]), min(y0 + h, SIZE[1])
            if xb > xa and yb > ya:
                out[ya:yb, xa:xb] = crop[ya - y0 : yb - y0, xa - x0 : xb - x0]
        return out


def write_video(
    path: Path,
    timeline: Timeline,
    *,
    keyframe_every: float = 2.0,
    creation_time: datetime | None = None,
    codec: str = "libx264",
) -> Path:
    """Encode the timeline to H.264 in MP4 (or MKV by suffix), `keyframe_every` s GOP."""
    fps = timeline.fps
    n = int(round(timeline.duration * fps))
    return write_h264(
        path, (timeline.frame(i / fps) for i in range(n)), fps=fps, size=SIZE, keyframe_every=keyframe_every,
        codec=codec, threads=1,  # same bits on every machine: tests stay exact
        options={"crf": "23", "tune": "zerolatency"},
        metadata={"creation_time": creation_time.isoformat()} if creation_time is not None else None,
    )


_RTSP_SERVER = textwrap.dedent(
    """
    import sys, gi
    gi.require_version("Gst", "1.0"); gi.require_version("GstRtspServer", "1.0")
    from gi.repository import Gst, GstRtspServer, GLib
    Gst.init(None)
    path, port = sys.argv[1], sys.argv[2]
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(port)
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(
        f'( filesrc location="{path}" ! qtdemux ! h264parse config-interval=-1 ! rtph264pay name=pay0 pt=96 )')
    factory.set_shared(False)  # each client its own pipeline, from the start of the file
    server.get_mount_points().add_factory("/cam", factory)
    if server.attach(None) == 0:
        sys.exit("cannot bind rtsp port " + port)
    print("ready", flush=True)
    GLib.MainLoop().run()
    """
)


class RtspServer:
    """`rtsp://127.0.0.1:PORT/cam` serving an MP4 (H.264) file in real time."""

    SYSTEM_PYTHON = "/usr/bin/python3"

    def __init__(self, video: Path, port: int | None = None) -> None:
        self.video = video
        self.port = port or pick_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"rtsp://127.0.0.1:{self.port}/cam"

    @classmethod
    def available(cls) -> bool:
        if not Path(cls.SYSTEM_PYTHON).exists():
            return False
        probe = subprocess.run(
            [cls.SYSTEM_PYTHON, "-c", "import gi; gi.require_version('GstRtspServer', '1.0');"
             "from gi.repository import GstRtspServer"],
            capture_output=True,
        )
        return probe.returncode == 0

    def start(self) -> RtspServer:
        self.proc = subprocess.Popen(
            [self.SYSTEM_PYTHON, "-c", _RTSP_SERVER, str(self.video), str(self.port)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            err = self.proc.stderr.read() if self.proc.poll() is not None else ""
            self.stop()
            raise RuntimeError(f"RTSP server did not start: {line!r} {err}")
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def __enter__(self) -> RtspServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class MjpegServer:
    """`http://127.0.0.1:PORT/stream.mjpg`: a timeline as multipart JPEG at its fps, in real time.

    Each client starts at the timeline's t=0, like a camera that was just switched on.
    `stop()` also cuts the connections in progress (a camera losing power); `start()` again
    serves on the same port.
    """

    def __init__(self, timeline: Timeline, port: int | None = None, stall_after: int | None = None) -> None:
        self.timeline = timeline
        self.port = port or pick_port()
        self.stall_after = stall_after  # frames per connection, then silence (a hung camera)
        self.clients = 0
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        # Pre-encode: the test measures the reader, not our JPEG encoder.
        n = int(round(timeline.duration * timeline.fps))
        self._jpegs = [cv2.imencode(".jpg", timeline.frame(i / timeline.fps))[1].tobytes() for i in range(n)]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/stream.mjpg"

    def start(self) -> MjpegServer:
        owner = self
        self._stopping.clear()

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                owner.clients += 1
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                period = 1 / owner.timeline.fps
                start = time.monotonic()
                try:
                    for i, jpeg in enumerate(owner._jpegs):
                        if owner._stopping.is_set():
                            return  # the camera went away: the connection closes
                        if owner.stall_after is not None and i >= owner.stall_after:
                            owner._stopping.wait()  # connection stays open, nothing more comes
                            return
                        delay = start + i * period - time.monotonic()
                        if delay > 0:
                            time.sleep(delay)
                        self.wfile.write(
                            b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: "
                            + str(len(jpeg)).encode() + b"\r\n\r\n" + jpeg + b"\r\n"
                        )
                except (BrokenPipeError, ConnectionResetError):
                    pass

        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> MjpegServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()




# --- shared scenes -------------------------------------------------------------------------

EXAMPLE_YAML = """\
cameras:
  - id: cam-001
    source: recordings/cam-001.mp4        # relative to this file; or rtsp://, http(s)://, a folder
    division: "370202"                    # 6-digit administrative division
    grid: "370202001001001"               # 15-char unit grid (or grid_map: FILE.geojson)
    location: {lat: 36.0671, lon: 120.3826, address: "Zhongshan Rd 1, Shinan"}
    sample_every: 2.0                     # seconds between analysed frames
    static_check_every: 60                # seconds between full re-checks of static things
    zones:
      - {name: east-sidewalk, type: sidewalk, polygon: [[0, 0.55], [1, 0.55], [1, 1], [0, 1]]}
      - {name: bins, type: bin_area, polygon: [[0.6, 0.3], [1, 0.3], [1, 0.8], [0.6, 0.8]]}
    rules:
      - {violation: bin_overflow, zone_types: [bin_area, sidewalk], min_score: 0.4, dwell: 60}
      - {violation: street_stall, zone_types: [sidewalk], min_score: 0.5, dwell: 180}
    schedule: [{days: mon-sun, from: "07:00", to: "22:00", tz: Asia/Shanghai}]
"""

# The seed COCO model has no bin_overflow or push_cart class: map them onto what it sees.
SEED_TAXONOMY_OVERRIDE = """\
violations:
  - {id: bin_overflow, detector_classes: ["fire hydrant"]}
  - {id: street_stall, detector_classes: [car]}
  - {id: mobile_vendor, detector_classes: [car]}
"""

BIN_FOOT = (500, 280)  # inside the example's `bins` zone (x 0.6-1, y 0.3-0.8 of 640x360)
CART_FOOT = (200, 330)  # on the example's east sidewalk (y > 0.55)


def street_scene(
    props: Props,
    *,
    duration: float = 300,
    fps: float = 5,
    bin_at: tuple[float, float] | None = (20, 200),
    cart_at: tuple[float, float] | None = (40, 300),
    walker_at: tuple[float, float] | None = (100, 112),
) -> Timeline:
    """The example camera's street: an overflowing bin that comes and goes, a cart (car) that
    parks on the sidewalk and stays, and a person who walks along the sidewalk without stopping."""
    tl = Timeline(props, duration=duration, fps=fps)
    if bin_at:
        tl.add(Placement("bin", 160, *bin_at, foot=BIN_FOOT))
    if cart_at:
        tl.add(Placement("car", 90, *cart_at, foot=CART_FOOT))
    if walker_at:
        tl.add(Placement("person", 150, *walker_at, path=((40, 345), (600, 345))))
    return tl


_cache: dict[str, object] = {}


def whole_frame_check(detect, image: np.ndarray):
    """A scripted detector's tiled check: one image, the whole frame (a tile as large as the
    frame leaves no pyramid level), run through the pipeline's real TiledCheck."""
    from detector.tiling import TiledCheck

    return TiledCheck(detect, image, size=max(image.shape[:2]), iou_threshold=0.7, max_detections=300)


def seed_detector():
    """One seed-model Detector per test process (loading it is the slow part)."""
    if "detector" not in _cache:
        from detector import Detector

        _cache["detector"] = Detector(COCO_MODEL, threads=2, spinning=False)
    return _cache["detector"]


def seed_props() -> Props:
    if "props" not in _cache:
        _cache["props"] = Props.load(seed_detector())
    return _cache["props"]  # type: ignore[return-value]


def standing_bin_stream(detector, duration: float) -> MjpegServer:
    """A started MJPEG stream of an overflowing bin standing on the pavement for the whole clip
    (the COCO seed model calls it a fire hydrant; the tests' camera rules map that class to
    bin_overflow). Stop it when done."""
    timeline = Timeline(Props.load(detector), duration=duration, fps=4).add(
        Placement("bin", 170, 0.0, duration, foot=(320, 340)))
    return MjpegServer(timeline).start()


def png_header(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height: a decompression bomb's calling card."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
