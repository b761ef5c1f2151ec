"""Stream readers: one per camera, frames out at the camera's sampling interval.

- `FileReader`: a video file, read to the end as fast as it decodes; its clock is the file's
  recorded start (container `creation_time`), else the camera's `start:`, else the file's
  own modification time, plus the frame's media time, so archived footage lands in the right
  schedule window and a replay after any restart stamps the same times (the same event ids).
- `FolderReader`: an image folder in name order, one image per sample; its clock is the
  camera's `start:`, else the first image's modification time.
- `LiveReader`: rtsp:// or http(s):// (MJPEG, HLS) in a background thread. It keeps only the
  newest sampled frame (no backlog can grow), times frames by the steady clock it is given
  (serving/clock.py: wall time that a jump of the system clock does not move; the wall clock
  itself when none is given), reconnects with exponential backoff, and gives up a read after
  `read_timeout` seconds of silence.

Decoding is the real cost at scale, so the readers decode as little as they can. With
`decode: auto` (the default) only keyframes are decoded, and only those that are due
(libavcodec's discard-non-key, PyAV `skip_frame = "NONKEY"`; non-key packets never reach the
decoder). If keyframes turn out to come less often than the sampling interval, the reader
switches to full decoding. `decode: all` always decodes every frame (cameras whose rules
need motion between samples), converting to an image only the frames it keeps.

Every reader owns a `StreamHealth` that the rest of the system reads; a dead or malformed
stream marks its own health and never stops another camera.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np

from detector.files import is_image
from serving.cameras import Camera
from serving.clock import SteadyClock, WallClock

log = logging.getLogger(__name__)

TIME_SLACK = 0.05  # seconds: a frame this close to its due time counts as due


@dataclass(frozen=True)
class Frame:
    camera: str
    timestamp: datetime  # timezone-aware
    image: np.ndarray  # HxWx3 BGR uint8
    index: int  # sampled-frame counter for this camera


@dataclass
class StreamHealth:
    camera: str
    source: str
    state: Literal["starting", "connected", "reconnecting", "finished", "failed", "stopped"] = "starting"
    connected: bool = False
    last_frame_at: datetime | None = None  # media clock of the last sampled frame
    last_frame_wall: datetime | None = None  # when it was read
    frames_sampled: int = 0
    frames_dropped: int = 0  # sampled but replaced by a newer one before the pipeline took it
    frames_decoded: int = 0
    packets_read: int = 0
    errors: int = 0
    reconnects: int = 0
    reconnecting_since: datetime | None = None  # when the stream was lost, while it is
    last_error: str | None = None
    decode_mode: str = "keyframes"
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def error(self, message: str, *, quiet: bool = False) -> None:
        """Counted always; logged unless `quiet` (a retry of a stream already known lost)."""
        with self._lock:
            self.errors += 1
            self.last_error = message
        log.log(logging.DEBUG if quiet else logging.WARNING, "camera %s: %s", self.camera, message)

    def to_json(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self) if not f.name.startswith("_")}
        for key in ("last_frame_at", "last_frame_wall", "reconnecting_since"):
            data[key] = data[key].isoformat() if data[key] else None
        return data


def _now() -> datetime:
    return datetime.now(timezone.utc)


def file_origin(path: str | Path) -> datetime:
    """A recording's stable time origin when nothing better says when it began: the file's
    modification time. "Now" would give every replay (each restart of the service) new
    frame times and so new event ids, filing the same footage twice."""
    try:
        return datetime.fromtimestamp(Path(path).stat().st_mtime, timezone.utc)
    except OSError:  # gone since it was configured: the reader reports that itself
        return _now()


def recorded_start(container: Any) -> datetime | None:
    """The container's creation_time (MP4/MKV metadata), if it has a usable one."""
    raw = (container.metadata or {}).get("creation_time")
    if not raw:
        return None
    try:
        value = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        return None
    if value.year < 1971:  # muxers write 1970/1904 for "unknown"
        return None
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def sample_decoded(
    container: Any,
    sample_every: float,
    mode: str,
    health: StreamHealth,
    live: bool,
    should_stop: Callable[[], bool] = lambda: False,
) -> Iterator[tuple[float, np.ndarray]]:
    """Demux one container and yield (seconds, BGR image) for each due frame.

    Seconds are media time for files and the monotonic clock for live streams (whose
    timestamps restart on every reconnect and are not trusted for scheduling).
    """
    stream = container.streams.video[0]
    ctx = stream.codec_context
    keyframes_only = mode in ("auto", "keyframes")
    health.decode_mode = "keyframes" if keyframes_only else "all"
    if keyframes_only:
        ctx.skip_frame = "NONKEY"
    next_due: float | None = None
    last_key: float | None = None
    # Live arrival times jitter; a frame a little early is better than one a whole GOP late.
    slack = min(0.5, 0.25 * sample_every) if live else TIME_SLACK
    base = stream.time_base

    def packet_time(packet: Any) -> float | None:
        if live:
            return time.monotonic()
        ts = packet.pts if packet.pts is not None else packet.dts
        return float(ts * base) if ts is not None and base is not None else None

    def frame_time(frame: Any, fallback: float | None) -> float | None:
        if live:
            return time.monotonic()
        if frame.pts is not None and base is not None:
            return float(frame.pts * base)  # frame.time is NaN for frames drained from the decoder
        return fallback

    def decode(packet: Any) -> list[Any]:
        frames = list(ctx.decode(packet))
        if keyframes_only:
            # H.264/HEVC with B-frames holds decoded pictures back for reordering; with
            # the frames between keyframes skipped, a keyframe would only come out when
            # the next *due* keyframe is fed (one sampling interval late) and the last one
            # of a stream never. Each keyframe stands alone, so drain and reset at once.
            frames += list(ctx.decode(None))
            ctx.flush_buffers()
        return frames

    def take(ft: float) -> bool:
        """Whether the frame at `ft` is due; if so, schedule the next one."""
        nonlocal next_due
        if next_due is not None and ft < next_due - slack:
            return False
        # Keep the average rate when keyframes do not fall on due times; never burst.
        next_due = next_due + sample_every if next_due is not None and ft - next_due < sample_every \
            else ft + sample_every
        return True

    for packet in container.demux(stream):
        if should_stop():
            return
        if packet.size == 0:
            continue  # demuxer's end-of-stream flush packet; handled after the loop
        health.packets_read += 1
        t = packet_time(packet)
        if keyframes_only:
            if not packet.is_keyframe:
                continue
            if mode == "auto" and t is not None and last_key is not None and t - last_key > 1.5 * sample_every:
                # Keyframes too sparse for the interval: decode everything from here on.
                keyframes_only = False
                ctx.skip_frame = "DEFAULT"
                health.decode_mode = "all"
                log.info("camera %s: keyframes every %.1fs > sampling %.1fs, decoding all frames",
                         health.camera, t - last_key, sample_every)
            if t is not None:
                last_key = t
            if keyframes_only and next_due is not None and t is not None and t < next_due - slack:
                continue  # not due: never reaches the decoder
        for frame in decode(packet):
            health.frames_decoded += 1
            ft = frame_time(frame, t)
            if ft is None:
                ft = float(health.frames_decoded)
            if take(ft):
                yield ft, frame.to_ndarray(format="bgr24")
    for frame in ctx.decode(None):  # drain frames the decoder still holds
        health.frames_decoded += 1
        ft = frame_time(frame, None)
        if ft is not None and take(ft):
            yield ft, frame.to_ndarray(format="bgr24")


def keyframe_gap(container: Any, horizon: float = 30.0) -> float:
    """Largest keyframe interval in the first seconds of a file (demux only, no decoding);
    inf when no second keyframe comes within `horizon`. Rewinds the file."""
    stream = container.streams.video[0]
    base = stream.time_base
    keys: list[float] = []
    first: float | None = None
    for packet in container.demux(stream):
        ts = packet.pts if packet.pts is not None else packet.dts
        if packet.size == 0 or ts is None or base is None:
            continue
        t = float(ts * base)
        first = t if first is None else first
        if packet.is_keyframe:
            keys.append(t)
        if len(keys) >= 4 or t - first > horizon:
            break
    container.seek(0)
    if len(keys) < 2:
        return float("inf")
    return max(b - a for a, b in zip(keys, keys[1:]))


class FileReader:
    """A video file, sampled from start to end; with `loop`, again and again, the clock
    running on (soak tests and demos: a day of a camera from a minute of video)."""

    def __init__(self, camera: Camera, clock_start: datetime | None = None) -> None:
        self.camera = camera
        self.health = StreamHealth(camera.id, camera.source)
        self._clock_start = clock_start

    def frames(self) -> Iterator[Frame]:
        index, start = 0, None
        while True:
            last = None
            for frame in self._one_pass(start, index):
                last, index = frame, index + 1
                yield frame
            if not self.camera.loop or last is None or self.health.state == "failed":
                return
            start = last.timestamp + timedelta(seconds=self.camera.sample_every)

    def _one_pass(self, start: datetime | None, first_index: int) -> Iterator[Frame]:
        import av

        try:
            container = av.open(self.camera.source)
        except (av.error.FFmpegError, OSError) as exc:
            self.health.state = "failed"
            self.health.error(f"cannot open {self.camera.source}: {exc}")
            return
        try:
            if not container.streams.video:
                raise ValueError("no video stream in the file")
            start = (start or recorded_start(container) or self.camera.start or self._clock_start
                     or file_origin(self.camera.source))
            self.health.state, self.health.connected = "connected", True
            mode = self.camera.decode
            if mode == "auto" and keyframe_gap(container, max(30.0, 3 * self.camera.sample_every)) \
                    > 1.5 * self.camera.sample_every:
                mode = "all"  # long GOP (or one keyframe only): keyframes alone would under-sample
            first: float | None = None
            for i, (t, image) in enumerate(
                sample_decoded(container, self.camera.sample_every, mode, self.health, live=False)
            ):
                first = t if first is None else first
                stamp = start + timedelta(seconds=t - first)
                self.health.frames_sampled += 1
                self.health.last_frame_at, self.health.last_frame_wall = stamp, _now()
                yield Frame(self.camera.id, stamp, image, first_index + i)
            self.health.state = "finished"
        except (av.error.FFmpegError, ValueError, OSError) as exc:
            # A truncated or corrupt file: what was read stands, the camera is marked failed.
            self.health.state = "failed"
            self.health.error(f"reading {self.camera.source} failed: {exc}")
        finally:
            self.health.connected = False
            container.close()


class FolderReader:
    """Images of a folder in name order, one per sample, `sample_every` seconds apart."""

    def __init__(self, camera: Camera, clock_start: datetime | None = None) -> None:
        self.camera = camera
        self.health = StreamHealth(camera.id, camera.source, decode_mode="images")
        self._clock_start = clock_start

    def frames(self) -> Iterator[Frame]:
        import cv2

        files = sorted(p for p in Path(self.camera.source).iterdir() if is_image(p))
        if not files:
            self.health.state = "failed"
            self.health.error(f"no images in folder {self.camera.source}")
            return
        start = self.camera.start or self._clock_start or file_origin(files[0])
        self.health.state, self.health.connected = "connected", True
        index = 0
        for i, path in enumerate(files):
            try:
                image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            except cv2.error as exc:  # past OpenCV's pixel limit: one image, not the camera
                self.health.error(f"image skipped: {path.name}: {str(exc).strip().splitlines()[-1][:200]}")
                continue
            if image is None:
                self.health.error(f"unreadable image skipped: {path.name}")
                continue
            self.health.frames_decoded += 1
            stamp = start + timedelta(seconds=i * self.camera.sample_every)
            self.health.frames_sampled += 1
            self.health.last_frame_at, self.health.last_frame_wall = stamp, _now()
            yield Frame(self.camera.id, stamp, image, index)
            index += 1
        self.health.state, self.health.connected = "finished", False


class LiveReader:
    """A live stream read in a background thread; `take()` hands out the newest frame once."""

    def __init__(
        self,
        camera: Camera,
        *,
        open_timeout: float = 10.0,
        backoff_start: float = 0.5,
        backoff_max: float = 30.0,
        clock: SteadyClock | WallClock | None = None,
    ) -> None:
        self.camera = camera
        self.clock = clock
        self.health = StreamHealth(camera.id, camera.source)
        self.open_timeout = open_timeout
        self.backoff_start = backoff_start
        self.backoff_max = backoff_max
        self._latest: Frame | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._fresh = threading.Event()
        self._thread: threading.Thread | None = None
        self._index = 0

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"reader-{self.camera.id}", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self.health.state, self.health.connected = "stopped", False

    def take(self) -> Frame | None:
        """The newest frame not handed out yet, or None. Older unread frames are gone."""
        with self._lock:
            frame, self._latest = self._latest, None
            self._fresh.clear()
            return frame

    def wait(self, timeout: float) -> bool:
        return self._fresh.wait(timeout)

    def _options(self) -> dict[str, str]:
        source = self.camera.source.lower()
        # Probe briefly: the SDP names the codec, the first keyframe gives the size; the
        # default 5 s analysis would delay every (re)connection.
        probe = {"analyzeduration": "1500000", "probesize": "500000"}
        if source.startswith(("rtsp://", "rtsps://")):
            return {"rtsp_transport": "tcp", **probe}
        if source.startswith(("http://", "https://")):
            return {"reconnect": "0", **probe}  # reconnection is ours, with backoff and health
        return probe

    def _run(self) -> None:
        import av

        backoff = self.backoff_start
        lost_at = 0.0  # monotonic, while the stream is lost
        while not self._stop.is_set():
            container = None
            try:
                container = av.open(
                    self.camera.source,
                    options=self._options(),
                    timeout=(self.open_timeout, self.camera.read_timeout),
                )
                if not container.streams.video:
                    raise ValueError("no video stream")
                self.health.state, self.health.connected = "connected", True
                for _, image in sample_decoded(
                    container, self.camera.sample_every, self.camera.decode, self.health,
                    live=True, should_stop=self._stop.is_set,
                ):
                    backoff = self.backoff_start  # frames flow again: next failure starts small
                    if self.health.reconnecting_since is not None:
                        log.info("camera %s: stream back after %.0f s", self.camera.id, time.monotonic() - lost_at)
                        self.health.reconnecting_since = None
                    stamp = self.clock.now() if self.clock is not None else _now()
                    with self._lock:
                        if self._latest is not None:
                            self.health.frames_dropped += 1
                        self._latest = Frame(self.camera.id, stamp, image, self._index)
                        self._index += 1
                        self._fresh.set()
                    self.health.frames_sampled += 1
                    self.health.last_frame_at = self.health.last_frame_wall = stamp
                if not self._stop.is_set():
                    self.health.error("stream ended", quiet=True)  # logged below, once per outage
            except Exception as exc:  # any failure of one camera is that camera's business
                if not self._stop.is_set():
                    self.health.error(f"{type(exc).__name__}: {exc}", quiet=True)
            finally:
                if container is not None:
                    try:
                        container.close()
                    except Exception:
                        pass
            if self._stop.is_set():
                break
            if self.health.reconnecting_since is None:
                self.health.reconnecting_since, lost_at = _now(), time.monotonic()
                log.warning("camera %s: stream lost (%s), reconnecting with backoff up to %.0f s",
                            self.camera.id, self.health.last_error, self.backoff_max)
            self.health.state, self.health.connected = "reconnecting", False
            self.health.reconnects += 1
            self._stop.wait(backoff)
            backoff = min(backoff * 2, self.backoff_max)


def open_reader(camera: Camera, clock_start: datetime | None = None,
                live_clock: SteadyClock | None = None) -> FileReader | FolderReader | LiveReader:
    if camera.is_live:
        return LiveReader(camera, clock=live_clock)
    if camera.is_folder:
        return FolderReader(camera, clock_start)
    return FileReader(camera, clock_start)


def grab_frame(camera: Camera, timeout: float = 20.0) -> Frame | None:
    """One current frame of a camera, opening its source once (a re-check of a camera the
    running pipeline does not read now). A live stream: the first frame within `timeout`.
    A folder or a file is the camera's recording, so what it shows now is its last frame."""
    import cv2

    if camera.is_live:
        reader = LiveReader(camera, open_timeout=min(10.0, timeout))
        reader.start()
        try:
            reader.wait(timeout)
            return reader.take()
        finally:
            reader.stop()
    if camera.is_folder:
        for path in sorted((p for p in Path(camera.source).iterdir() if is_image(p)), reverse=True):
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is not None:
                return Frame(camera.id, _now(), image, 0)
        return None
    last = None
    for last in FileReader(camera.model_copy(update={"loop": False})).frames():
        pass
    return Frame(camera.id, _now(), last.image, last.index) if last is not None else None
