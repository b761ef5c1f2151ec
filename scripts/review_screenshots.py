"""Screenshots of the review page for the README: queue, case page, history, dashboard and
labelling mode in zh-CN at 1920x1080 and 1366x768, on real street photos from
../shared/datasets/garbage_overflow_cn posted as camera events (their labelled overflow or
garbage box as the detection). The photos stay where they are; only pictures of our own page
are written.

    python scripts/review_screenshots.py [--out docs/screenshots] [--cases 24]

Needs Debian's Chromium (/usr/bin/chromium) and Playwright, like the browser tests."""

from __future__ import annotations

import argparse
import io
from datetime import datetime, timedelta, timezone
import random
import socket
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.service import RunningService, event_json, push  # noqa: E402
from tests.support.web import add_user, sign_in  # noqa: E402

SIZES = ((1920, 1080), (1366, 768))
MAX_BYTES = 300_000
ADDRESSES = ["青岛市市南区中山路1号", "青岛市市北区辽宁路88号", "青岛市李沧区京口路12号", "青岛市崂山区香港东路200号"]
GRIDS = ["370202001001001", "370202001002003", "370203002001001", "370212004003002"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def labelled(dataset: Path, count: int) -> list[tuple[Path, tuple[float, float, float, float]]]:
    """Photos with an overflow (2) or garbage (0) label, and that box in pixels."""
    import cv2

    found = []
    for image in sorted((dataset / "images").glob("*.jpg")):
        label = dataset / "labels" / (image.stem + ".txt")
        if not label.is_file():
            continue
        rows = [line.split() for line in label.read_text().splitlines() if line.strip()]
        # A pile of garbage of a reasonable size (not the whole frame), else an overflowing bin.
        rows = sorted((r for r in rows if r[0] in ("2", "0") and float(r[3]) * float(r[4]) < 0.3),
                      key=lambda r: r[0] != "0")
        if not rows:
            continue
        h, w = cv2.imread(str(image)).shape[:2]
        if w < 600:
            continue
        _, cx, cy, bw, bh = (float(v) for v in rows[0][:5])
        found.append((image, (round((cx - bw / 2) * w, 1), round((cy - bh / 2) * h, 1),
                              round((cx + bw / 2) * w, 1), round((cy + bh / 2) * h, 1))))
        if len(found) == count:
            break
    return found


def save(png: bytes, path: Path) -> None:
    """As PNG under MAX_BYTES: the full screenshot if it fits, else a palette PNG, else smaller."""
    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("RGB")
    width = image.width
    while True:
        scaled = image if width == image.width else image.resize((width, round(image.height * width / image.width)),
                                                                 Image.LANCZOS)
        out = io.BytesIO()
        scaled.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(out, "PNG", optimize=True)
        if out.tell() <= MAX_BYTES or width < 800:
            path.write_bytes(out.getvalue())
            print(f"{path} {scaled.width}x{scaled.height} {out.tell() // 1024} KB")
            return
        width = int(width * 0.85)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "screenshots")
    parser.add_argument("--cases", type=int, default=24)
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    import cv2
    from playwright.sync_api import sync_playwright

    from serving.pipeline.uncertainty import LabellingSample
    from serving.settings import Settings

    random.seed(29)
    photos = labelled(args.shared / "datasets" / "garbage_overflow_cn", args.cases + 4)
    with tempfile.TemporaryDirectory() as tmp:
        server = RunningService(Settings(data_dir=Path(tmp), port=free_port(), admin_key="gw_screens_admin_key_0123456789",
                                         review_undo_s=0.5))
        try:
            numbers = []
            with server.client(server.key("camera")) as http:
                for i, (image, box) in enumerate(photos[:args.cases]):
                    # The served model's own box where it finds the garbage (as the pipeline would
                    # report it); the dataset's label where it does not.
                    found = server.service.detector.detect([cv2.imread(str(image))])[0]
                    wanted = [k for k, c in enumerate(found.class_ids) if found.names[int(c)] in ("garbage_pile", "bin_overflow")]
                    if wanted:
                        best = max(wanted, key=lambda k: found.scores[k])
                        box = tuple(round(float(v), 1) for v in found.xyxy[best])
                    kind = "exposed_garbage" if wanted and found.names[int(found.class_ids[best])] == "garbage_pile" \
                        else "bin_overflow"
                    camera = f"cam3-hd-{i % 6 + 1:02d}"
                    event = event_json(event_id=f"shot-{i}", camera=camera, start_s=600 * i, end_s=600 * i + 240 + 37 * i,
                                       score=round(random.uniform(0.42, 0.93), 2), box=box, zone=f"bins-{i}",
                                       grid=GRIDS[i % 4], matter_code=GRIDS[i % 4][:6] + "06042",
                                       location={"lat": 36.06, "lon": 120.38, "address": ADDRESSES[i % 4]},
                                       violation=kind)
                    if event["violation"] == "exposed_garbage":
                        event["matter_code"] = GRIDS[i % 4][:6] + "06010"
                    response = push(http, event, image)
                    response.raise_for_status()
                    numbers.append(response.json()["case_number"])
                    extra = [photos[args.cases + (i // 4 + k) % 4][0] for k in range(4)]
                    if i % 4 in (0, 3):  # the event over time: the strip shows its frames
                        # A later frame: better (the new photo) or only the latest sighting (a moment).
                        gain = 0.05 if i % 4 == 0 else -0.1
                        last = datetime.fromisoformat(event["last_seen"]) + timedelta(seconds=300)
                        later = dict(event, type="updated", last_seen=last.isoformat(), dwell_s=event["dwell_s"] + 300,
                                     score=min(0.97, event["score"] + gain), best_score=min(0.97, event["score"] + gain))
                        push(http, later, extra[0 if i % 4 == 0 else 2]).raise_for_status()
                        closed = dict(later, type="closed", last_seen=(last + timedelta(seconds=420)).isoformat(),
                                      dwell_s=later["dwell_s"] + 420)
                        push(http, closed, extra[1 if i % 4 == 0 else 3]).raise_for_status()
            add_user(server, "wangfang")
            add_user(server, "admin", role="admin")
            cases = server.service.cases
            decided = numbers[-8:]
            cases.review(decided[0], "confirm", reviewer="wangfang", note="垃圾箱满溢，已通知环卫班组")
            cases.review(decided[1], "reject", reviewer="wangfang", reason="false_alarm", note="阴影误判")
            cases.review(decided[2], "correct", reviewer="wangfang", violation="road_spillage", note="道路遗撒，非垃圾箱")
            cases.review(decided[3], "reject", reviewer="wangfang", reason="duplicate", note=f"与 {decided[0]} 重复")
            cases.review(decided[4], "confirm", reviewer="wangfang")
            cases.review(decided[5], "confirm", reviewer="admin")
            with server.client(server.key("case_system")) as http:
                http.post(f"/v1/cases/{decided[0]}/status", json={"status": "handled"}).raise_for_status()
            detector = server.service.detector
            for i, (image, _) in enumerate(photos[:3]):
                frame = cv2.imread(str(image))
                server.service.on_sample(LabellingSample(
                    camera=f"cam3-hd-{i + 1:02d}", taken_at=datetime.now(timezone.utc), reasons=("score_band",), image=frame,
                    detections=detector.detect([frame])[0], model_version=detector.version))

            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path="/usr/bin/chromium")
                for width, height in SIZES:
                    context = browser.new_context(viewport={"width": width, "height": height}, locale="zh-CN",
                                                  timezone_id="Asia/Shanghai")
                    page = context.new_page()
                    sign_in(page, server.url, "wangfang")
                    page.wait_for_selector("#review[data-shown]")
                    page.wait_for_selector("#review[data-pending]")
                    page.wait_for_timeout(400)
                    save(page.screenshot(), args.out / f"queue-{width}x{height}.png")
                    page.goto(f"{server.url}/review/cases/{decided[3]}")
                    page.wait_for_load_state("networkidle")
                    page.keyboard.press("ArrowRight")  # the strip: the next moment of the event, with its time
                    page.wait_for_selector("body[data-frame]")
                    page.wait_for_timeout(300)
                    save(page.screenshot(full_page=True), args.out / f"case-{width}x{height}.png")
                    page.goto(f"{server.url}/review/history")
                    save(page.screenshot(), args.out / f"history-{width}x{height}.png")
                    page.goto(f"{server.url}/dashboard")
                    page.wait_for_selector("body[data-loaded][data-evaluated] #per-day canvas")
                    page.wait_for_timeout(400)
                    save(page.screenshot(full_page=True), args.out / f"dashboard-{width}x{height}.png")
                    page.goto(f"{server.url}/review")
                    page.wait_for_selector("#review[data-shown]")
                    page.keyboard.press("l")
                    page.wait_for_selector("#review[data-label-shown]")
                    page.wait_for_timeout(400)
                    save(page.screenshot(), args.out / f"labelling-{width}x{height}.png")
                    context.close()
                browser.close()
        finally:
            server.stop()


if __name__ == "__main__":
    main()
