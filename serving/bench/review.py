"""`gridwatch bench --review N`: the review page's speed as a reviewer feels it.

A throwaway service gets N cases with synthetic street scenes (no third-party images),
a user signs in with Debian's Chromium (through Playwright), confirms each case with one
keypress, and the page reports how long each took from the keypress to the next case's
image decoded and painted (`window.gwReview.timings`)."""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import cv2
import numpy as np

from serving.commands.numbers import whole

CHROMIUM = "/usr/bin/chromium"
BENCH_PASSWORD = "bench password 1"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("review page (--review)")
    g.add_argument("--review", type=whole(1), metavar="N", help="review mode: decide N cases in a real browser")
    g.add_argument("--chromium", default=CHROMIUM, help="the browser Playwright drives")


def street_scene(seed: int, width: int = 1280, height: int = 720) -> tuple[bytes, tuple[float, float, float, float]]:
    """A drawn street (sky, buildings, sidewalk, road) with an overflowing bin: JPEG bytes and the bin's box."""
    rng = np.random.default_rng(seed)
    image = np.zeros((height, width, 3), np.uint8)
    image[: height // 3] = (200, 170, 120)
    for x in range(0, width, 160):
        top = int(rng.integers(40, height // 3))
        cv2.rectangle(image, (x, top), (x + 150, height // 2), tuple(int(v) for v in rng.integers(90, 180, 3)), -1)
        for wy in range(top + 20, height // 2 - 20, 40):
            cv2.rectangle(image, (x + 20, wy), (x + 50, wy + 22), (230, 220, 160), -1)
    image[height // 2: height * 2 // 3] = (170, 175, 180)
    image[height * 2 // 3:] = (70, 70, 75)
    for x in range(0, width, 120):
        cv2.line(image, (x, height * 5 // 6), (x + 60, height * 5 // 6), (230, 230, 230), 4)
    x0 = int(rng.integers(100, width - 300))
    y0 = height // 2 - 40
    cv2.rectangle(image, (x0, y0), (x0 + 110, y0 + 150), (40, 120, 30), -1)
    for _ in range(40):
        cx, cy = int(rng.normal(x0 + 55, 50)), int(rng.normal(y0 + 10, 25))
        cv2.circle(image, (cx, cy), int(rng.integers(8, 22)), tuple(int(v) for v in rng.integers(30, 255, 3)), -1)
    box = (float(x0 - 60), float(y0 - 50), float(x0 + 170), float(y0 + 150))
    return cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 85])[1].tobytes(), box


def synthetic_cases(service, count: int) -> None:  # noqa: ANN001
    """`count` pending cases, each from its own camera, first seen a minute apart."""
    from serving.events import Location, ViolationEvent
    from serving.evidence import EvidenceFrame

    base = datetime.now(timezone.utc) - timedelta(hours=2)
    for i in range(count):
        encoded, box = street_scene(i)
        event = ViolationEvent(
            type="opened", event_id=f"bench-{i}", camera=f"cam-{i + 1:03d}", violation="bin_overflow",
            matter_code="37020206042", grid="370202001001001", zone="bins", zone_type="bin_area",
            first_seen=base + timedelta(minutes=i), last_seen=base + timedelta(minutes=i + 4), dwell_s=240.0,
            track_id=i, score=0.62 + (i % 7) * 0.04, best_score=0.8, division="370202", box=box,
            location=Location(lat=36.0671, lon=120.3826, address=f"Zhongshan Rd {i + 1}, Shinan"),
        )
        service.cases.ingest(event, EvidenceFrame(box=box, label="bin_overflow", encoded=encoded, suffix=".jpg"))


class ServedInThread:
    """A GridwatchService behind uvicorn on 127.0.0.1, for as long as the `with` lasts."""

    def __init__(self, service, port: int) -> None:  # noqa: ANN001
        import uvicorn

        from serving.api.app import create_app

        self.service = service
        self.url = f"http://127.0.0.1:{port}"
        self.server = uvicorn.Server(uvicorn.Config(create_app(service), host="127.0.0.1", port=port,
                                                    log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ServedInThread:
        self.service.start()
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("the service did not start within 20 s")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(15)
        self.service.stop()


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def decide_all(url: str, count: int, chromium: str) -> list[float]:
    """Sign in, confirm `count` cases with Y, and return the page's keypress-to-image times (ms)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.goto(f"{url}/login")
        page.fill("input[name=username]", "bench")
        page.fill("input[name=password]", BENCH_PASSWORD)
        page.press("input[name=password]", "Enter")
        page.wait_for_selector("#review[data-shown]")
        for _ in range(count - 1):
            before = page.evaluate("() => document.getElementById('review').dataset.shown")
            page.keyboard.press("y")
            page.wait_for_function("b => document.getElementById('review').dataset.shown !== b", arg=before)
        timings = page.evaluate("() => window.gwReview.timings")
        browser.close()
    return timings


def run(args: argparse.Namespace) -> int:
    from serving.accounts import add_user
    from serving.service import GridwatchService
    from serving.settings import load_settings

    count = max(2, args.review)
    with tempfile.TemporaryDirectory(prefix="gridwatch-review-bench-") as tmp:
        # One reviewer at key-repeat speed: the per-person decision limit would be what is measured.
        settings = load_settings(data_dir=Path(tmp), port=free_port(), admin_key="gw_bench_admin_key_0000000000",
                                 review_max_per_min=0)
        service = GridwatchService(settings)
        synthetic_cases(service, count)
        add_user(service.db, "bench", "reviewer", BENCH_PASSWORD, actor="bench")
        with ServedInThread(service, settings.port) as served:
            timings = decide_all(served.url, count, args.chromium)
    if not timings:
        print("no timings recorded")
        return 1
    ordered = sorted(timings)
    print(f"review page, {len(timings)} decisions (Y), keypress to the next case's image on screen: "
          f"median {statistics.median(timings):.1f} ms, p90 {ordered[int(0.9 * (len(ordered) - 1))]:.1f} ms, "
          f"max {ordered[-1]:.1f} ms")
    return 0
