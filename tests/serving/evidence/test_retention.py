"""Retention on real frames: each outcome's evidence is kept for its period, then purged with
a tombstone in the chain, after which `verify` still passes and says what was removed, when
and by which rule; disk use and the purge schedule are on /metrics."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

from sqlalchemy import select

from serving.retention import Retention
from serving.settings import RetentionSettings
from serving.store.models import ChainEntry, Evidence
from tests.support.evidence import Chained


def test_a_purge_leaves_a_tombstone_and_verify_passes(tmp_path: Path, make_event) -> None:
    store = Chained(tmp_path / "data")
    rejected = store.cases.ingest(*make_event("opened", end_s=60)).case_number
    store.cases.ingest(*make_event("closed", end_s=90))
    confirmed = store.cases.ingest(*make_event("opened", event_id="ev-2", box=(600, 600, 700, 700), image=1)).case_number
    store.cases.ingest(*make_event("closed", event_id="ev-2", box=(600, 600, 700, 700), end_s=90, image=1))
    active = store.cases.ingest(*make_event("opened", event_id="ev-3", violation="exposed_garbage", image=2)).case_number
    store.cases.review(rejected, "reject", reviewer="ana", reason="false_alarm")
    store.cases.review(confirmed, "confirm", reviewer="ana")
    store.cases.review(active, "reject", reviewer="ana", reason="false_alarm")  # still seen: kept
    with store.db.sessions() as session:
        doomed = {e.path for e in session.scalars(select(Evidence)) if e.case.case_number == rejected}
    assert len(doomed) == 3
    retention = Retention(store.db, store.store, store.chain,
                          RetentionSettings(keep_days={"rejected": 30, "confirmed": 3650}), lock=None)
    now = datetime.now(timezone.utc)
    assert retention.purge(now + timedelta(days=29)).items == 0  # not yet
    report = retention.purge(now + timedelta(days=31))
    assert report.cases == [rejected] and report.items == 3 and report.bytes > 0
    assert not any(store.store.resolve(p).exists() for p in doomed)
    with store.db.sessions() as session:
        left = {e.case.case_number for e in session.scalars(select(Evidence))}
        stone = session.scalars(select(ChainEntry).where(ChainEntry.kind == "tombstone")).one()
    assert left == {confirmed, active}
    assert stone.case_number == rejected and "rejected: keep 30 days" in stone.detail
    store.signer.sign_head()
    code, out = store.verify()
    assert code == 0, out
    assert f"removed: {rejected}: 3 item(s) removed at" in out and "by rule rejected: keep 30 days" in out
    # A file gone without a tombstone is still caught.
    next(p for p in store.store.root.rglob("crop-*") if confirmed in str(p)).unlink()
    code, out = store.verify()
    assert code == 1 and f"FAIL {confirmed}" in out and f"FAIL {rejected}" not in out
    assert retention.figures()["purged_items"] == 3
    store.db.close()


def test_disk_use_and_the_purge_schedule_are_on_metrics(run_service, dataset_images) -> None:
    server = run_service(retention={"keep_days": {"rejected": 30}, "purge_every_s": 3600})
    from tests.support.service import event_json, push

    with server.client(server.key("camera")) as http:
        assert push(http, event_json(), dataset_images[0]).status_code == 200
    with server.client(server.admin_key) as http:
        text = http.get("/metrics").text
    values = {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
              if line.startswith("gridwatch_evidence")}
    assert values["gridwatch_evidence_files"] == 3 and values["gridwatch_evidence_bytes"] > 0
    assert values["gridwatch_evidence_chain_entries"] >= 3
    assert 'gridwatch_evidence_keep_days{outcome="rejected"}' in values
    assert values["gridwatch_evidence_next_purge_timestamp_seconds"] > datetime.now(timezone.utc).timestamp()


def test_a_bad_keep_period_is_refused_with_its_name() -> None:
    import pytest

    from serving.settings import SettingsError, load_settings

    with pytest.raises(SettingsError, match="retention.keep_days.rejected"):
        load_settings(None, retention={"keep_days": {"rejected": 0}})
    with pytest.raises(SettingsError, match="retention.keep_days"):
        load_settings(None, retention={"keep_days": {"forever": 3}})
