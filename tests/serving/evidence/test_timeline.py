"""The event over time: a case keeps a few frames across its event's life (opened, the best,
the latest updates, closed) through the same evidence path as its photo: stored once and
hashed, chained with their moment and camera time, people masked with the original sealed,
bounded per case (the oldest update dropped first, with a tombstone the verifier accepts),
in the bundle and among the webhook's evidence items. Frames are real garbage_overflow_cn photos."""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from detector.detections import Detections
from detector.taxonomy import load_taxonomy
from serving.cases import CasePolicy, CaseService
from serving.cases.public import CasePublic
from serving.chain import TOMBSTONE
from serving.privacy import PrivacyPolicy, outgoing
from serving.retention import Retention
from serving.settings import RetentionSettings
from serving.store.models import ChainEntry, Evidence
from tests.support.evidence import Chained

BASE = datetime(2026, 11, 23, 9, 0, tzinfo=timezone.utc)


def chained(tmp_path: Path, frames: int, privacy: PrivacyPolicy | None = None) -> Chained:
    store = Chained(tmp_path, privacy=privacy)
    store.cases = CaseService(store.db, store.store, load_taxonomy(), CasePolicy(timeline_frames=frames),
                              model_version="test-1", public_url="http://gw.test", privacy=privacy,
                              chain=store.chain)
    return store


def life(make_event, updates: int, *, start_image: int = 0):
    """An event's transitions with their frames as the pipeline hands them: the opening with the
    best frame, then updates and the closing with the latest sighting's frame (best=False)."""
    event, frame = make_event("opened", end_s=60, score=0.8, image=start_image)
    out = [(event, replace(frame, taken_at=BASE + timedelta(seconds=50)))]
    for i in range(updates):
        e, f = make_event("updated", end_s=120 + 60 * i, score=0.8, image=start_image + 1 + i)
        out.append((e, replace(f, best=False, taken_at=e.last_seen)))
    e, f = make_event("closed", end_s=120 + 60 * updates, score=0.8, image=start_image + 1 + updates)
    out.append((e, replace(f, best=False, taken_at=e.last_seen)))
    return out


def rows(store: Chained, case_number: str) -> list[Evidence]:
    with store.db.sessions() as session:
        return [e for e in session.scalars(select(Evidence).order_by(Evidence.id)) if e.case.case_number == case_number]


def chain(store: Chained, case_number: str) -> list[ChainEntry]:
    with store.db.sessions() as session:
        return list(session.scalars(select(ChainEntry).where(ChainEntry.case_number == case_number)
                                    .order_by(ChainEntry.seq)))


def test_each_moment_of_the_event_is_stored_chained_and_listed(tmp_path: Path, make_event) -> None:
    store = chained(tmp_path, frames=6)
    numbers = {store.cases.ingest(event, frame).case_number for event, frame in life(make_event, updates=1)}
    assert len(numbers) == 1
    number = numbers.pop()
    items = rows(store, number)
    # The opening's frame is the case's photo (original, annotated, crop); the update and the
    # closing are timeline frames beside it, never its photo.
    assert [(e.kind, e.moment) for e in items] == [
        ("original", "opened,best"), ("annotated", "opened,best"), ("crop", "opened,best"),
        ("moment", "update"), ("moment_annotated", "update"), ("moment", "closed"), ("moment_annotated", "closed")]
    assert [e.seen_at for e in items if e.kind == "moment"] == [BASE + timedelta(seconds=120),
                                                               BASE + timedelta(seconds=180)]
    assert items[0].seen_at == BASE + timedelta(seconds=50)
    # Each file hashed and stored once, read-only.
    for item in items:
        path = store.store.resolve(item.path)
        assert path.is_file() and not path.stat().st_mode & 0o222
    # Each one in the chain; a timeline frame's entry says which moment and when.
    entries = {e.seq: e for e in chain(store, number)}
    for item in items:
        assert entries[item.chain_seq].sha256 == item.sha256 and entries[item.chain_seq].kind == item.kind
    closing = json.loads(entries[items[5].chain_seq].detail)
    assert closing == {"moment": "closed", "seen_at": (BASE + timedelta(seconds=180)).isoformat()}
    code, out = store.verify()
    assert code == 0, out
    # The webhook's and the API's evidence items: timeline frames say their moment and time;
    # the photo's items are as they always were (no new keys).
    public = json.loads(CasePublic.of(store.cases.get(number), "http://gw.test").model_dump_json())
    by_kind = [(e["kind"], e.get("moment"), e.get("seen_at")) for e in public["evidence"]]
    assert by_kind[0] == ("original", None, None) and "moment" not in public["evidence"][0]
    assert ("moment", "closed", (BASE + timedelta(seconds=180)).isoformat()) in by_kind
    # The bundle carries them, checkable without gridwatch.
    bundle = store.cases.get(number)
    from serving.bundle import build_bundle

    data = build_bundle(store.db, store.store.root, store.signer, number, public)
    names = zipfile.ZipFile(io.BytesIO(data)).namelist()
    assert sum("/evidence/moment-" in n for n in names) == 2 and sum("/evidence/moment_annotated-" in n for n in names) == 2
    assert bundle is not None


def test_a_latest_frame_never_becomes_the_case_photo(tmp_path: Path, make_event) -> None:
    """An update whose event reports a higher best score, but whose frame is the latest
    sighting's (best=False), is a timeline frame: the photo and the box stay the best's."""
    store = chained(tmp_path, frames=6)
    event, frame = make_event("opened", end_s=60, score=0.6)
    number = store.cases.ingest(event, frame).case_number
    later, latest = make_event("updated", end_s=120, score=0.95, box=(10.0, 10.0, 50.0, 50.0), image=1)
    store.cases.ingest(later, replace(latest, best=False))
    case = store.cases.get(number)
    originals = [e for e in case.evidence if e.kind == "original"]
    assert len(originals) == 1 and originals[0].moment == "opened,best"
    assert case.box == [100.0, 100.0, 300.0, 300.0]
    assert [e.moment for e in case.evidence if e.kind == "moment"] == ["update"]
    # The same picture sent again with the closing (an edge box resending its frame) is not a new moment.
    closing, again = make_event("closed", end_s=150, score=0.5, image=1)
    store.cases.ingest(closing, again)
    assert [e.moment for e in store.cases.get(number).evidence if e.kind == "moment"] == ["update"]


def test_the_bound_drops_the_oldest_updates_first(tmp_path: Path, make_event) -> None:
    store = chained(tmp_path, frames=3)
    transitions = life(make_event, updates=5)
    for event, frame in transitions:
        number = store.cases.ingest(event, frame).case_number
    items = rows(store, number)
    moments = [(e.moment, e.seen_at) for e in items if e.kind == "moment"]
    # At most 3 timeline frames: the two latest updates and the closing; the opening (the
    # photo) stays; the three oldest updates went, oldest first.
    assert moments == [("update", BASE + timedelta(seconds=300)), ("update", BASE + timedelta(seconds=360)),
                       ("closed", BASE + timedelta(seconds=420))]
    assert [e.moment for e in items if e.kind == "original"] == ["opened,best"]
    # Their files are gone from disk, each drop a tombstone in the chain naming what went,
    # and the verifier accepts the chain and every remaining file.
    entries = chain(store, number)
    tombstones = [json.loads(e.detail) for e in entries if e.kind == TOMBSTONE]
    assert len(tombstones) == 3 and all(t["rule"] == "timeline: keep 3 frames" for t in tombstones)
    dropped = [item for t in tombstones for item in t["items"]]
    assert {d["kind"] for d in dropped} == {"moment", "moment_annotated"} and len(dropped) == 6
    for d in dropped:
        assert not store.store.resolve(d["path"]).exists()
    code, out = store.verify()
    assert code == 0, out


def test_an_opening_and_closing_stay_when_updates_crowd_the_bound(tmp_path: Path, make_event) -> None:
    """A case whose opening was not its photo (no frame came with it): its opening frame is a
    timeline frame, kept with the closing while updates are dropped."""
    store = chained(tmp_path, frames=2)
    event, _ = make_event("opened", end_s=60, evidence=False)
    number = store.cases.ingest(event).case_number
    first, photo = make_event("updated", end_s=90, score=0.9)
    store.cases.ingest(first, photo)  # the photo
    later, frame = make_event("updated", end_s=100, score=0.8, image=1)
    store.cases.ingest(later, replace(frame, best=False))
    e, f = make_event("closed", end_s=130, score=0.8, image=2)
    store.cases.ingest(e, replace(f, best=False))
    assert [(x.moment, x.seen_at) for x in rows(store, number) if x.kind == "moment"] == [
        ("update", BASE + timedelta(seconds=100)), ("closed", BASE + timedelta(seconds=130))]
    e, f = make_event("opened", event_id="ev-2", start_s=140, end_s=150, score=0.8, image=3)
    store.cases.ingest(e, replace(f, best=False))
    # Over the bound of 2: the update goes first; the closing and the new opening stay.
    assert [x.moment for x in rows(store, number) if x.kind == "moment"] == ["closed", "opened"]


def test_people_are_masked_in_timeline_frames_and_the_original_sealed(tmp_path: Path, make_event) -> None:
    store = chained(tmp_path, frames=6, privacy=PrivacyPolicy())
    event, frame = make_event("opened", end_s=60)
    number = store.cases.ingest(event, frame).case_number
    person = (20.0, 20.0, 140.0, 200.0)
    seen = Detections(xyxy=np.asarray([person], np.float32), scores=np.asarray([0.9], np.float32),
                      class_ids=np.asarray([0], np.int64), names={0: "person"})
    later, latest = make_event("updated", end_s=120, image=1)
    store.cases.ingest(later, replace(latest, best=False, detections=seen))
    case = store.cases.get(number)
    moment = next(e for e in case.evidence if e.kind == "moment")
    masked = next(e for e in case.evidence if e.kind == "masked")
    # The frame as it came is kept, sealed; its masked copy stands in for it wherever it leaves,
    # and the annotated copy on the strip is made from the masked frame.
    assert masked.masks == moment.sha256 and masked.moment == "update"
    assert store.store.resolve(moment.path).read_bytes() == latest.encoded
    assert outgoing(case, moment).id == masked.id
    import cv2

    original = cv2.imdecode(np.frombuffer(latest.encoded, np.uint8), cv2.IMREAD_COLOR)
    shown = cv2.imread(str(store.store.resolve(masked.path)))
    x1, y1, x2, y2 = (int(v) for v in person)
    assert np.abs(shown[y1:y2, x1:x2].astype(int) - original[y1:y2, x1:x2].astype(int)).mean() > 8
    entries = {e.seq: json.loads(e.detail) for e in chain(store, number)}
    assert entries[masked.chain_seq]["of"] == moment.chain_seq
    # A bundle leaves the sealed timeline frame out and carries its masked copy.
    public = json.loads(CasePublic.of(case, "http://gw.test").model_dump_json())
    from serving.bundle import build_bundle

    names = zipfile.ZipFile(io.BytesIO(build_bundle(store.db, store.store.root, store.signer, number,
                                                    public))).namelist()
    assert not any(n.endswith(Path(moment.path).name) for n in names)
    assert any(n.endswith(Path(masked.path).name) for n in names)


def test_retention_purges_timeline_frames_with_the_case(tmp_path: Path, make_event) -> None:
    store = chained(tmp_path, frames=6)
    for event, frame in life(make_event, updates=1):
        number = store.cases.ingest(event, frame).case_number
    paths = [store.store.resolve(e.path) for e in rows(store, number)]
    retention = Retention(store.db, store.store, store.chain, RetentionSettings(keep_days={"pending": 1}))
    report = retention.purge(BASE + timedelta(days=3))
    assert report.cases == [number] and not rows(store, number)
    assert not any(p.exists() for p in paths)
    code, out = store.verify()
    assert code == 0, out


@pytest.mark.parametrize("frames", [0])
def test_no_timeline_frames_when_turned_off(tmp_path: Path, make_event, frames: int) -> None:
    store = chained(tmp_path, frames=frames)
    for event, frame in life(make_event, updates=2):
        number = store.cases.ingest(event, frame).case_number
    assert [e.kind for e in rows(store, number)] == ["original", "annotated", "crop"]
