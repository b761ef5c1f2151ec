"""Nothing on the frame path waits on the database: the pipeline hands its events and
labelling samples to the outlet (serving/pipeline/outlet.py), one writer thread stores them.

With the case store blocked (a session that does not answer until the test lets it), a
service's cameras are analysed to their last frame; once the store answers, every event the
same footage makes without a service arrives, in order, none lost, none twice."""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
from sqlalchemy import func, select

from detector import Detections, load_taxonomy
from serving.cameras import parse_cameras
from serving.cases.held import HeldEvents
from serving.events import ViolationEvent
from serving.evidence import EvidenceFrame
from serving.health import Faults
from serving.pipeline import Pipeline
from serving.pipeline.outlet import Outlet
from serving.pipeline.uncertainty import LabellingSample
from tests.support.service import wait_for
from tests.support.streams import whole_frame_check

START = datetime(2026, 11, 24, 2, 0, tzinfo=timezone.utc)  # 10:00 in Shanghai
NAMES = {0: "bin_overflow"}
GATE_TIMEOUT_S = 60.0


class Gate:
    """Holds every call until opened (a database that does not answer); records the threads."""

    def __init__(self) -> None:
        self.open = threading.Event()
        self.threads: list[str] = []

    def wrap(self, call):  # noqa: ANN001, ANN201
        def held(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            self.threads.append(threading.current_thread().name)
            assert self.open.wait(GATE_TIMEOUT_S), "the gate was never opened"
            return call(*args, **kwargs)
        return held


# -- the outlet alone --------------------------------------------------------------------------------
def event(n: int, kind: str = "opened") -> ViolationEvent:
    return ViolationEvent(type=kind, event_id=f"ev-{n}", camera="cam-1", violation="bin_overflow",
                          matter_code="06042370202", grid="370202001001001", zone="bins",
                          first_seen=START, last_seen=START, dwell_s=0.0, track_id=n, score=0.5)


def frame(n: int) -> EvidenceFrame:
    return EvidenceFrame(box=(10.0, 10.0, 50.0, 50.0), image=np.full((64, 96, 3), n, np.uint8), label=f"{n}")


def sample(n: int) -> LabellingSample:
    return LabellingSample(camera="cam-1", taken_at=START, reasons=("score_band",),
                           image=np.zeros((64, 96, 3), np.uint8), detections=Detections.empty(NAMES),
                           model_version="m")


def test_past_its_bound_the_outlet_spools_in_order_and_reports_the_fault_once(tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.INFO)
    stored: list[tuple[str, int | None]] = []
    samples: list[LabellingSample] = []
    gate, faults = Gate(), Faults()

    def store(ev: ViolationEvent, fr: EvidenceFrame | None) -> None:
        stored.append((ev.event_id, None if fr is None else int(fr.decoded()[0, 0, 0])))
        faults.leave("database")  # what a stored event does in the service

    outlet = Outlet(gate.wrap(store), gate.wrap(samples.append), HeldEvents(2**30, spool=tmp_path / "queued"),
                    faults=faults, max_items=3)
    outlet.start()
    for n in range(10):  # the store answers nothing meanwhile: none of these may wait for it
        outlet.event(event(n), frame(n) if n % 2 else None)
        if n == 0:
            wait_for(lambda: gate.threads)  # the writer holds ev-0: three more wait in memory
        if n == 1:
            outlet.sample(sample(n))  # in memory, in its turn
    outlet.sample(sample(99))  # past the bound: let go, counted
    assert stored == [] and outlet.backlog == 11
    assert outlet.counters == {"events": 10, "samples": 1, "events_overflowed": 7, "samples_dropped": 1}
    assert len(list((tmp_path / "queued").glob("*.npz"))) == 7  # a kill now loses none of these
    assert faults.current()["database"].startswith("slow: ")

    gate.open.set()
    assert outlet.close() is True
    assert stored == [(f"ev-{n}", n if n % 2 else None) for n in range(10)]  # in order, frames and all
    assert len(samples) == 1 and outlet.backlog == 0
    assert not list((tmp_path / "queued").glob("*.npz"))
    assert [r.getMessage().split(":")[0] for r in caplog.records if r.levelno >= logging.WARNING] == \
        ["fault database"]
    assert "fault database over after" in caplog.text

    # Caught up: the memory queue takes events again.
    outlet = Outlet(store, samples.append, HeldEvents(2**30, spool=tmp_path / "queued"), max_items=3)
    outlet.event(event(10))
    assert outlet.counters["events_overflowed"] == 0
    assert outlet.close() is True and stored[-1] == ("ev-10", None)


def test_events_spooled_by_a_killed_process_go_first_at_the_next_start(tmp_path: Path) -> None:
    held = HeldEvents(2**30, spool=tmp_path / "queued")
    held.append(event(0), frame(1))
    stored: list[str] = []
    outlet = Outlet(lambda ev, fr: stored.append(ev.event_id), lambda s: None,
                    HeldEvents(2**30, spool=tmp_path / "queued"))
    outlet.event(event(1))  # behind the spooled one
    outlet.start()
    assert outlet.close() is True
    assert stored == ["ev-0", "ev-1"]


# -- a service with its cameras, the case store blocked -------------------------------------------
class BinDetector:
    """A bin wherever the frame is bright, scored just above its rule's bar (an unsure frame)."""

    def __init__(self, tmp_path: Path) -> None:
        self.info = SimpleNamespace(path=tmp_path / "absent.onnx", version="bin-1", names=NAMES)
        self.second_stage: dict = {}

    def detect(self, frames: list[np.ndarray]) -> list[Detections]:
        return [self._one(f) for f in frames]

    def detect_tiled(self, image: np.ndarray, **_options) -> Detections:  # noqa: ANN003
        return self._one(image)

    def tiled_check(self, image: np.ndarray, **_options):  # noqa: ANN003
        return whole_frame_check(self.detect, image)

    def _one(self, image: np.ndarray) -> Detections:
        if image.mean() < 128:
            return Detections.empty(NAMES)
        return Detections(xyxy=np.array([[100, 80, 180, 200]], np.float32), scores=np.array([0.45], np.float32),
                          class_ids=np.array([0], np.int64), names=NAMES)


def footage(tmp_path: Path, cameras: int = 3, frames: int = 24) -> list:
    """Folder cameras whose frames are bright (a bin) and dark (none) in turns of six."""
    entries = []
    for c in range(cameras):
        folder = tmp_path / f"cam-{c}"
        folder.mkdir()
        for i in range(frames):
            level = 220 if (i // 6) % 2 == 0 else 20
            image = np.full((240, 320, 3), level, np.uint8)
            cv2.putText(image, f"{c}-{i}", (10, 230), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (level // 2,) * 3)
            cv2.imwrite(str(folder / f"{i:03d}.png"), image)
        entries.append({"id": f"cam-{c}", "source": str(folder), "division": "370202", "grid": "370202001001001",
                        "sample_every": 10, "close_after": 25, "tiled_static_checks": False,
                        "start": START.isoformat(),
                        "zones": [{"name": "bins", "type": "bin_area", "polygon": [[0, 0], [1, 0], [1, 1], [0, 1]]}],
                        "rules": [{"violation": "bin_overflow", "zone_types": ["bin_area"], "min_score": 0.4,
                                   "dwell": 0}]})
    return list(parse_cameras({"cameras": entries}, tmp_path).cameras)


def test_cameras_are_analysed_while_the_case_store_does_not_answer(tmp_path: Path, caplog) -> None:
    from serving.service import GridwatchService
    from serving.settings import Settings
    from serving.store.models import Case, CaseEvent, LabellingItem

    caplog.set_level(logging.INFO)
    detector = BinDetector(tmp_path)
    cameras = footage(tmp_path)
    expected = Pipeline(cameras, detector, load_taxonomy()).run_until_done()  # the same footage, no service
    assert {e.type for e in expected} >= {"opened", "closed"} and len({e.event_id for e in expected}) == 6

    settings = Settings(data_dir=tmp_path / "data", admin_key="gw_test_admin_key_0123456789", model_watch_s=0,
                        labelling={"daily_budget_per_camera": 2, "band": 0.1, "min_gap_s": 0})
    service = GridwatchService(settings, detector=detector, file_cameras=cameras)
    gate = Gate()
    service.cases.ingest = gate.wrap(service.cases.ingest)  # every case write waits
    service.labelling.add = gate.wrap(service.labelling.add)  # and every labelling frame
    service.outlet.max_items = 4  # and most of the events are past the outlet's bound
    service.start()
    try:
        pipeline = service.cameras.pipeline
        # Every frame of every camera analysed, to the end of the footage, every event handed
        # over (the last ones closed at the end), while nothing is stored.
        wait_for(lambda: (pipeline.stats["frames"], pipeline.stats["sampled"], service.outlet.counters["events"])
                 == (3 * 24, 3 * 2, len(expected)), timeout=60)
        assert not pipeline.wait(0.5)  # it reports its end once its events are stored
        assert set(gate.threads) == {"gridwatch-outlet"}  # the one writer waits; the frame path never did
        with service.db.sessions() as session:
            assert session.scalar(select(func.count()).select_from(CaseEvent)) == 0
        # Every event waits (past the bound, spooled); labelling frames past it are let go, counted.
        counted = service.outlet.counters
        assert counted["events_overflowed"] > 0 and counted["samples"] + counted["samples_dropped"] == 3 * 2
        assert service.metrics()["pending_events"] == len(expected) + counted["samples"]
        assert service.readiness()["database"].startswith("slow: ")

        gate.open.set()  # the database answers again
        assert pipeline.wait(60) and service.outlet.backlog == 0
        with service.db.sessions() as session:
            rows = session.execute(select(CaseEvent.event_id, CaseEvent.event_type).order_by(CaseEvent.id)).all()
            cases = session.scalar(select(func.count()).select_from(Case))
            items = session.scalar(select(func.count()).select_from(LabellingItem))
        # None lost, none twice, in the order they happened.
        applied = [(e.event_id, e.type) for e in expected if (e.event_id, e.type) in set(map(tuple, rows))]
        assert [tuple(r) for r in rows] == applied
        assert {(e.event_id, e.type) for e in expected if e.type in ("opened", "closed")} <= set(applied)
        assert cases == 3  # per camera one: its bin back within the dedup cooldown is the same case
        assert items == counted["samples"]
        assert "database" not in service.faults
    finally:
        gate.open.set()
        service.stop()
    assert len([r for r in caplog.records if r.getMessage().startswith("fault database:")]) == 1
