"""Camera clips for benchmarks and tests: H.264 with a fixed GOP, the way cameras encode."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np


def write_h264(
    path: Path,
    frames: Iterable[np.ndarray],
    *,
    fps: float,
    size: tuple[int, int],
    keyframe_every: float,
    b_frames: int = 0,
    codec: str = "libx264",
    options: dict[str, str] | None = None,
    bit_rate: int | None = None,
    threads: int | None = None,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Encode BGR frames (all `size` = (width, height)) with a fixed GOP, the way cameras do.

    Benchmarks and tests build their camera streams with it: a fixed GOP and no scene-cut
    keyframes make keyframe sampling behave as it does on a real camera.
    """
    import av

    gop = max(1, int(round(keyframe_every * fps)))
    with av.open(str(path), "w") as out:
        out.metadata.update(metadata or {})
        stream = out.add_stream(codec, rate=int(fps) if float(fps).is_integer() else fps)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.codec_context.gop_size = gop
        if threads is not None:
            stream.codec_context.thread_count = threads
        if bit_rate is not None:
            stream.bit_rate = bit_rate
        stream.options = {"g": str(gop), "keyint_min": str(gop), "sc_threshold": "0", "bf": str(b_frames),
                          "preset": "ultrafast", **(options or {})}
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="bgr24")
            frame.pts = i
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path
