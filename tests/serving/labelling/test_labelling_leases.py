"""Labelling leases run on the service's clock, as case leases do: taken, renewed, judged and
timed out on it, so a clock the service moves (tests, a corrected wall clock) moves them too."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from detector import Detections
from serving.evidence import EvidenceStore
from serving.labelling.queue import LabelBox, LabellingError, LabellingQueue
from serving.pipeline.uncertainty import LabellingSample
from serving.store.db import Database
from tests.support.service import MovableClock

T0 = datetime(2026, 11, 24, 2, 0, tzinfo=timezone.utc)


def test_a_labelling_lease_times_out_on_the_services_clock(db_url, tmp_path) -> None:
    db = Database(db_url)
    clock = MovableClock()
    queue = LabellingQueue(db, EvidenceStore(tmp_path / "ev"), lambda: ["person"], ZoneInfo("Asia/Shanghai"),
                           clock=clock)
    item_id = queue.add(LabellingSample(camera="cam-l", taken_at=T0, reasons=("score_band",),
                                        image=np.zeros((64, 96, 3), np.uint8),
                                        detections=Detections.empty({0: "person"}), model_version="v"))
    try:
        assert queue.claim_next("alice", [], 60).id == item_id
        for _ in range(3):  # alice's page renews it past the lease time
            clock.offset += timedelta(seconds=40)
            assert queue.renew("alice", [item_id], 60) == 1
            assert queue.claim_next("bob", [], 60) is None
            with pytest.raises(LabellingError, match="someone else") as held:
                queue.skip(item_id, labeller="bob")
            assert held.value.status == 409
        clock.offset += timedelta(seconds=61)  # alice went away: the lease runs out
        assert queue.claim_next("bob", [], 60).id == item_id
        with pytest.raises(LabellingError, match="someone else"):
            queue.save(item_id, [], labeller="alice")
        saved = queue.save(item_id, [LabelBox(class_name="person", box=[1, 1, 20, 30])], labeller="bob")
        assert saved.labelled_by == "bob" and saved.leased_by == ""
        assert abs((saved.labelled_at - clock.now()).total_seconds()) < 5  # stamped on the same clock
    finally:
        db.close()
