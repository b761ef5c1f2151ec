"""People are masked in every copy that leaves, on real street frames with people in them
(thela_india, people found by the COCO seed model): the annotated copy, the crop, the masked
copy that stands in for the original in the API, on the review page and in bundles. The
original is stored unaltered and sealed: admins only, with a reason, on the audit log and in
the chain; the masked copy is its own chain item naming it. Violations a city lists keep
people visible."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

import cv2
import numpy as np
import pytest
from sqlalchemy import select

from serving.events import Location, ViolationEvent
from serving.evidence import EvidenceFrame
from serving.privacy import PrivacyPolicy, pixelate
from serving.store.models import AuditEntry, ChainEntry
from tests.support.evidence import Chained
from tests.support.shared_data import real_images
from tests.support.web import add_user, http_sign_in

MIN_SCORE = 0.4


@pytest.fixture(scope="module")
def frames_with_people(shared_detector) -> list[tuple[Path, np.ndarray, object, list[tuple[float, ...]]]]:
    """Real thela_india frames in which the model finds at least one person: (file, image,
    detections, person boxes)."""
    picked = []
    for path in real_images("thela_india", 40):
        image = cv2.imread(str(path))
        found = shared_detector.detect([image])[0]
        people = [tuple(float(v) for v in b) for b, s, n in zip(found.xyxy, found.scores, found.class_names)
                  if n == "person" and s >= MIN_SCORE and (b[2] - b[0]) >= 24 and (b[3] - b[1]) >= 24]
        if people:
            picked.append((path, image, found, people))
        if len(picked) == 3:
            return picked
    pytest.fail("fewer than 3 thela_india frames with a person found by the model")


def event_for(number: int, box: tuple[float, ...], violation: str = "street_stall") -> ViolationEvent:
    start = datetime(2026, 11, 23, 9, 0, tzinfo=timezone.utc) + timedelta(hours=number)
    return ViolationEvent(
        type="opened", event_id=f"ev-{number}", camera=f"cam-{number:03d}", violation=violation,
        matter_code="37020206015", grid="370202001001001", zone="sidewalk", first_seen=start,
        last_seen=start + timedelta(seconds=200), dwell_s=200, track_id=1, score=0.8, best_score=0.8,
        division="370202", zone_type="sidewalk", box=box, location=Location(lat=36.0, lon=120.3, address="x"))


def around(boxes: list[tuple[float, ...]], shape: tuple[int, ...]) -> tuple[float, ...]:
    """The case's box: around the people, so the crop holds them."""
    h, w = shape[:2]
    xs = [b[0] for b in boxes] + [b[2] for b in boxes]
    ys = [b[1] for b in boxes] + [b[3] for b in boxes]
    return (max(0.0, min(xs) - 20), max(0.0, min(ys) - 20), min(w - 1.0, max(xs) + 20), min(h - 1.0, max(ys) + 20))


def fine_detail(image: np.ndarray, box: tuple[float, ...], inner: tuple[int, int, int, int]) -> float:
    """Detail finer than the mask's blocks inside `inner` (l, t, r, b): how far the image is
    from its own pixelation. A masked region has none left but JPEG noise; a person has
    edges, faces and clothes."""
    blocky = pixelate(image, [box])
    l, t, r, b = inner
    return float(np.abs(image[t:b, l:r].astype(np.int16) - blocky[t:b, l:r].astype(np.int16)).mean())


def assert_masked(copy: np.ndarray, original: np.ndarray, people: list[tuple[float, ...]],
                  offset: tuple[int, int] = (0, 0)) -> None:
    """Every person box in `copy` (cut from the original at `offset`) is the pixelated one,
    not the person: it matches the masked frame and holds no detail finer than its blocks."""
    masked = pixelate(original, people)
    ox, oy = offset
    checked = 0
    for x1, y1, x2, y2 in people:
        # Inside the box, away from block edges the JPEG encoder blurs.
        l, t = int(x1) + 3 - ox, int(y1) + 3 - oy
        r, b = int(x2) - 3 - ox, int(y2) - 3 - oy
        l, t, r, b = max(l, 0), max(t, 0), min(r, copy.shape[1]), min(b, copy.shape[0])
        if r - l < 8 or b - t < 8:
            continue
        got = copy[t:b, l:r].astype(np.int16)
        want = masked[t + oy:b + oy, l + ox:r + ox].astype(np.int16)
        assert np.abs(got - want).mean() < 6, "a person box is not the masked one"
        box = (x1 - ox, y1 - oy, x2 - ox, y2 - oy)
        before = fine_detail(original, (x1, y1, x2, y2), (l + ox, t + oy, r + ox, b + oy))
        after = fine_detail(copy, box, (l, t, r, b))
        assert after < 0.5 * before, f"a person box kept its detail ({after:.1f} of {before:.1f})"
        checked += 1
    assert checked, "no person box in this copy to check"


def decode(data: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)


def test_no_unmasked_person_in_any_copy_that_leaves(tmp_path: Path, frames_with_people) -> None:
    store = Chained(tmp_path / "data", privacy=PrivacyPolicy())
    for number, (path, image, found, people) in enumerate(frames_with_people):
        box = around(people, image.shape)
        encoded = path.read_bytes()
        result = store.cases.ingest(event_for(number, box), EvidenceFrame(
            box=box, label="street_stall", encoded=encoded, suffix=".jpg", detections=found))
        case = store.cases.get(result.case_number)
        kinds = {e.kind: e for e in case.evidence}
        assert set(kinds) == {"original", "masked", "annotated", "crop"}
        # The original is the frame as it came, byte for byte.
        assert store.store.resolve(kinds["original"].path).read_bytes() == encoded
        assert kinds["original"].sha256 == hashlib.sha256(encoded).hexdigest()
        assert kinds["masked"].masks == kinds["original"].sha256
        original = decode(encoded)
        for kind in ("masked", "annotated"):
            assert_masked(decode(store.store.resolve(kinds[kind].path).read_bytes()), original, people)
        x1, y1 = (int(v) for v in box[:2])
        assert_masked(decode(store.store.resolve(kinds["crop"].path).read_bytes()), original, people, (x1, y1))
        # The masked copy is its own chain item, naming the original's entry.
        with store.db.sessions() as session:
            masked = session.get(ChainEntry, kinds["masked"].chain_seq)
        assert json.loads(masked.detail) == {"of": kinds["original"].chain_seq, "of_sha256": kinds["original"].sha256}
    assert store.verify()[0] == 0
    store.db.close()


def test_a_listed_violation_keeps_people_visible(tmp_path: Path, frames_with_people) -> None:
    store = Chained(tmp_path / "data", privacy=PrivacyPolicy(keep_visible=frozenset({"street_stall"})))
    path, image, found, people = frames_with_people[0]
    box = around(people, image.shape)
    number = store.cases.ingest(event_for(0, box), EvidenceFrame(
        box=box, label="street_stall", encoded=path.read_bytes(), suffix=".jpg", detections=found)).case_number
    assert {e.kind for e in store.cases.get(number).evidence} == {"original", "annotated", "crop"}
    store.db.close()


def test_the_sealed_original_in_the_api_review_page_and_bundle(run_service, frames_with_people) -> None:
    server = run_service()
    path, image, found, people = frames_with_people[0]
    box = around(people, image.shape)
    number = server.service.ingest(event_for(0, box), EvidenceFrame(
        box=box, label="street_stall", encoded=path.read_bytes(), suffix=".jpg", detections=found)).case_number
    case = server.service.cases.get(number)
    original = next(e for e in case.evidence if e.kind == "original")
    masked = next(e for e in case.evidence if e.kind == "masked")
    with server.client(server.key("reviewer")) as http:
        refused = http.get(f"/v1/cases/{number}/evidence/{original.id}")
        assert refused.status_code == 403 and f"evidence {masked.id}" in refused.json()["detail"]
        shown = http.get(f"/v1/cases/{number}/evidence/{masked.id}")
        assert shown.status_code == 200
        assert_masked(decode(shown.content), decode(path.read_bytes()), people)
        bundle = http.get(f"/v1/cases/{number}/bundle")
        assert bundle.status_code == 200 and bundle.headers["content-type"] == "application/zip"
        assert http.get(f"/v1/cases/{number}/bundle", params={"originals": "true", "reason": "x"}).status_code == 403
    names = zipfile.ZipFile(io.BytesIO(bundle.content)).namelist()
    assert not any(original.path.split("/")[-1] in n for n in names)
    assert any(masked.path.split("/")[-1] in n for n in names)
    with server.client(server.admin_key) as http:
        assert http.get(f"/v1/cases/{number}/evidence/{original.id}").status_code == 422  # no reason
        read = http.get(f"/v1/cases/{number}/evidence/{original.id}", params={"reason": "court order 2026-17"})
        assert read.status_code == 200 and read.content == path.read_bytes()
        full = http.get(f"/v1/cases/{number}/bundle", params={"originals": "true", "reason": "court order 2026-17"})
        assert full.status_code == 200
    assert any(original.path.split("/")[-1] in n for n in zipfile.ZipFile(io.BytesIO(full.content)).namelist())
    with server.service.db.sessions() as session:
        audits = session.scalars(select(AuditEntry).where(AuditEntry.action.like("evidence.%"))).all()
        chained = session.scalars(select(ChainEntry).where(ChainEntry.kind == "decision",
                                                           ChainEntry.case_number == number)).all()
    assert [a.action for a in audits] == ["evidence.unseal", "evidence.bundle_originals"]
    assert audits[0].after["reason"] == "court order 2026-17"
    assert [json.loads(c.detail)["action"] for c in chained] == ["evidence.unseal", "evidence.bundle_originals"]
    # The review page shows reviewers the masked copy where the original is asked for.
    add_user(server, "rita")
    with server.client() as http:
        assert http_sign_in(http, "rita").status_code in (200, 303)
        page = http.get(f"/review/evidence/{number}/{original.id}")
        assert page.status_code == 200 and page.content == server.service.evidence.resolve(masked.path).read_bytes()


def test_an_uploaded_frame_is_looked_at_for_people(run_service, frames_with_people) -> None:
    """POST /v1/events carries no detections: the model looks for people in the frame itself."""
    from tests.support.service import event_json, push

    server = run_service()
    path, image, found, people = frames_with_people[0]
    with server.client(server.key("camera")) as http:
        answer = push(http, event_json(box=around(people, image.shape)), path)
        assert answer.status_code == 200, answer.text
        number = answer.json()["case_number"]
    case = server.service.cases.get(number)
    kinds = {e.kind: e for e in case.evidence}
    assert set(kinds) == {"original", "masked", "annotated", "crop"}
    assert server.service.evidence.resolve(kinds["original"].path).read_bytes() == path.read_bytes()
    original = decode(path.read_bytes())
    for kind in ("masked", "annotated"):
        assert_masked(decode(server.service.evidence.resolve(kinds[kind].path).read_bytes()), original, people)
    with server.client(server.key("reviewer")) as http:
        assert http.get(f"/v1/cases/{number}/evidence/{kinds['original'].id}").status_code == 403
