"""Decoding uploads within a memory budget: reduced-size decoding for detection (boxes still
in the original's pixels), a bound on concurrent decodes, and a pixel limit that must fit
the stated budget. Memory is measured in a fresh process, where the peak RSS is ours."""

from __future__ import annotations

import json
import subprocess
import sys

import cv2
import numpy as np
import pytest

from serving.settings import DECODE_PEAK_BYTES_PER_PIXEL, Settings

# Eight threads decode one 7000x7000 image each through an UploadDecoder; prints the peak RSS
# growth in MiB. Before the bound, eight PNGs at once reached 1.5 GB.
PEAK_SCRIPT = """
import json, resource, sys, threading
import cv2, numpy as np
from serving.api.uploads import UploadDecoder
fmt, concurrent, min_side = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
data = cv2.imencode(fmt, np.zeros((7000, 7000, 3), np.uint8))[1].tobytes()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
decoder = UploadDecoder(concurrent, 50_000_000)
threads = [threading.Thread(target=decoder.decode, args=(data,), kwargs={"min_side": min_side}) for _ in range(8)]
[t.start() for t in threads]
[t.join() for t in threads]
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)
"""


def peak_mib(fmt: str, concurrent: int, min_side: int | None) -> float:
    # Encoding the test image peaks higher than decoding it: encode first, in a process of its own.
    done = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, fmt, str(concurrent), json.dumps(min_side)],
                          capture_output=True, text=True, timeout=120, check=True)
    return float(done.stdout.strip())


def test_concurrent_decodes_stay_within_the_budget() -> None:
    per_decode_mib = 7000 * 7000 * DECODE_PEAK_BYTES_PER_PIXEL / 2**20
    png = peak_mib(".png", 2, None)
    assert png < 2 * per_decode_mib, png  # eight requests, two decodes' worth of memory
    # JPEG for detection decodes at 1/4 size in the DCT domain: a small fraction of that.
    assert peak_mib(".jpg", 2, 1280) < 0.25 * per_decode_mib


def test_pixel_limit_must_fit_the_memory_budget() -> None:
    defaults = Settings()
    worst = defaults.max_concurrent_decodes * defaults.upload_max_pixels * DECODE_PEAK_BYTES_PER_PIXEL
    assert worst <= defaults.decode_memory_budget_mb * 2**20
    with pytest.raises(ValueError, match="decode_memory_budget_mb"):
        Settings(upload_max_pixels=50_000_000, max_concurrent_decodes=4)
    Settings(upload_max_pixels=50_000_000, max_concurrent_decodes=4, decode_memory_budget_mb=1300)


def test_large_jpeg_is_detected_at_reduced_size_with_boxes_in_original_pixels(run_service, dataset_images) -> None:
    server = run_service()
    # A street picture in which the COCO test model finds something.
    small = next(image for image in map(cv2.imread, map(str, dataset_images[:60]))
                 if len(server.service.detector.detect([image])[0]))
    big = cv2.resize(small, (small.shape[1] * 5, small.shape[0] * 5), interpolation=cv2.INTER_LINEAR)
    encoded = cv2.imencode(".jpg", big, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
    with server.client(server.key("camera")) as http:
        body = http.post("/v1/detect", files={"file": ("big.jpg", encoded, "image/jpeg")}).json()
    assert (body["width"], body["height"]) == (big.shape[1], big.shape[0])
    full = server.service.detector.detect([cv2.imdecode(np.frombuffer(encoded, np.uint8), cv2.IMREAD_COLOR)])[0]
    assert len(body["detections"]) == len(full) > 0
    for found, expected in zip(sorted(body["detections"], key=lambda d: d["box"]), sorted(full.xyxy.tolist())):
        # Decoded at 1/2 (1600 px) rather than 3200: the same boxes, to a few original pixels.
        assert np.allclose(found["box"], expected, atol=0.02 * big.shape[1]), (found["box"], expected)


def test_a_sliver_of_an_image_is_answered_not_a_500(run_service) -> None:
    server = run_service()
    with server.client(server.key("camera")) as http:
        for shape in ((1, 2000, 3), (1500, 1, 3)):
            encoded = cv2.imencode(".png", np.full(shape, 90, np.uint8))[1].tobytes()
            answer = http.post("/v1/detect", files={"file": ("sliver.png", encoded, "image/png")})
            assert answer.status_code == 200, answer.text
            assert (answer.json()["width"], answer.json()["height"]) == (shape[1], shape[0])
