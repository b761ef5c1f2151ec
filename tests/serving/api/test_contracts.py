"""The JSON contracts other systems read, pinned byte for byte: one event line (`gridwatch
watch --events`), one case as the API returns it, and one webhook body. The golden files
were written by the code before the event model was reshaped; any change to a field name,
order, rounding or time format fails here. The original frame is stored unaltered, so its
hash and size are pinned; the annotated copy and the crop are the JPEG encoder's output,
which changes with the OpenCV release, so they are checked for shape and decodability and
their hash and size stand as placeholders in the golden files."""

from __future__ import annotations

import json
import os
import re
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlsplit

from tests.support.service import wait_for

GOLDEN = Path(__file__).with_name("golden")
WRITE = os.environ.get("GRIDWATCH_WRITE_GOLDEN") == "1"
# Wall-clock stamps differ per run; everything else must match exactly.
UPDATED_AT = re.compile(r'"updated_at": ?"[^"]+"')
# The annotated copy and the crop: their bytes are the JPEG encoder's, not the contract's.
ENCODED = re.compile(r'("kind": ?"(?:annotated|crop)",[^{}]*?"sha256": ?")[0-9a-f]{64}("[^{}]*?"size": ?)\d+')


def encoder_free(text: str) -> str:
    return ENCODED.sub(r"\1<encoder>\g<2>0", text)


def check(name: str, text: str) -> None:
    text = encoder_free(UPDATED_AT.sub('"updated_at":"<now>"', text))
    path = GOLDEN / name
    if WRITE:
        path.write_text(text, encoding="utf-8")
    assert text == path.read_text(encoding="utf-8")


def golden_event():
    from serving.events import Location, ViolationEvent

    return ViolationEvent(
        type="opened", event_id="cam-001-7-20261123T090000", camera="cam-001", violation="bin_overflow",
        matter_code="37020206042", grid="370202001001001", zone="bins",
        first_seen=datetime(2026, 11, 23, 9, 0, tzinfo=timezone.utc),
        last_seen=datetime(2026, 11, 23, 9, 1, 30, 250000, tzinfo=timezone.utc),
        dwell_s=90.2504, track_id=7, score=0.812345, needs_review=False,
        evidence=("gridwatch-data/evidence/cam-001/x/original.png", "gridwatch-data/evidence/cam-001/x/crop.jpg",
                  "gridwatch-data/evidence/cam-001/x/annotated.jpg"),
        legacy_code="0604", zone_type="bin_area", division="370202", best_score=0.9123456,
        box=(100.5, 120.0, 300.0, 310.2), location=Location(lat=36.0671, lon=120.3826, address="中山路1号 Zhongshan Rd 1"),
    )


def test_event_line_is_the_contract() -> None:
    from serving.commands.watch import event_line

    check("event_line.jsonl", event_line(golden_event()))


def test_case_json_and_webhook_body_are_the_contract(run_service, receiver, dataset_images) -> None:
    receiver.start()
    server = run_service(webhook_url=receiver.url, webhook_secret=receiver.secret,
                         auto_confirm={"bin_overflow": 0.5}, public_url="http://gw.test", instance_id="TEST01")
    event = json.loads(golden_event_line())
    image = dataset_images[0]
    with server.client(server.key("camera")) as http:
        response = http.post("/v1/events", data={"event": json.dumps(event)},
                             files={"frame": (image.name, image.read_bytes(), "image/jpeg")})
        assert response.status_code == 200, response.text
        number = response.json()["case_number"]
    with server.client(server.key("reviewer")) as http:
        case = http.get(f"/v1/cases/{number}")
        assert case.status_code == 200
    check("case.json", case.text)
    check_encoded_copies(server, case.json(), image)
    wait_for(lambda: receiver.received)
    (body,) = receiver.raw_bodies
    check("webhook.json", body.decode("utf-8"))


def check_encoded_copies(server, case: dict, original_file: Path) -> None:
    """The re-encoded items are checked for what they show: the annotated copy is the whole
    frame, the crop the event's box, both decodable, each hash the hash of what is served."""
    import hashlib

    import cv2
    import numpy as np

    original = cv2.imread(str(original_file))
    x1, y1, x2, y2 = case["box"]
    with server.client(server.key("reviewer")) as http:
        for item in case["evidence"]:
            body = http.get(urlsplit(item["url"]).path).content
            assert hashlib.sha256(body).hexdigest() == item["sha256"] and len(body) == item["size"]
            image = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR)
            assert image is not None, item["kind"]
            if item["kind"] == "annotated":
                assert image.shape == original.shape
            elif item["kind"] == "crop":
                # The crop is the box, cut on whole pixels.
                assert abs(image.shape[1] - (x2 - x1)) <= 1 and abs(image.shape[0] - (y2 - y1)) <= 1


def golden_event_line() -> str:
    return (GOLDEN / "event_line.jsonl").read_text(encoding="utf-8")
