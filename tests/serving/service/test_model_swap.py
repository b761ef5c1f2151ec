"""A promoted model goes live without a restart or a failed request; a broken one is refused
and the old one keeps serving."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from serving.settings import Settings
from tests.support.service import DetectingClient, RunningService, event_json, pick_port, push, wait_for
from tests.support.shared_data import COCO_INT8

SHIPPED = Path(__file__).resolve().parents[3] / "weights" / "gridwatch-int8.onnx"


def test_model_swaps_live_and_broken_models_are_refused(tmp_path, dataset_images, caplog) -> None:
    weights = tmp_path / "weights"
    weights.mkdir()
    served = weights / "model.onnx"
    shutil.copyfile(COCO_INT8, served)
    settings = Settings(data_dir=tmp_path / "data", model=served, port=pick_port(), model_watch_s=0.2,
                        admin_key="gw_test_admin_key_swap_0001")
    server = RunningService(settings)
    try:
        with DetectingClient(server, dataset_images[0].read_bytes()) as client:
            versions = client.versions
            wait_for(lambda: len(versions) >= 3)
            first = versions[0]
            assert set(versions) == {first}
            # A promotion: the new file replaces the old one in one rename; the watcher takes it.
            shutil.copyfile(SHIPPED, weights / ".incoming.onnx")
            os.replace(weights / ".incoming.onnx", served)
            wait_for(lambda: versions[-1] != first, timeout=30)
            promoted = versions[-1]
            assert promoted.startswith("gridwatch")  # the shipped model's own version, from its metadata
            # A broken file, by name and by replacing the served one: refused, old model serves.
            (weights / "broken.onnx").write_bytes(b"not a model at all")
            with server.client(server.admin_key) as admin:
                refused = admin.post("/v1/models/reload", json={"file": "broken.onnx"})
                assert refused.status_code == 422 and "cannot load" in refused.json()["detail"]
                assert admin.post("/v1/models/reload", json={"file": "../etc/passwd"}).status_code == 422
                assert admin.post("/v1/models/reload", json={"file": "missing.onnx"}).status_code == 422
                # Each refusal is logged and audited, as a swap is.
                from sqlalchemy import select

                from serving.store.models import AuditEntry

                with server.service.db.sessions() as session:
                    refusals = session.scalars(select(AuditEntry).where(
                        AuditEntry.action == "model.reload_refused").order_by(AuditEntry.id)).all()
                    # the traversal name was refused by the request's schema: audited all the same
                    assert [r.target for r in refusals] == ["model:broken.onnx", "model:model.onnx",
                                                            "model:missing.onnx"]
                    assert "cannot load" in refusals[0].after["refused"]
                    assert "../etc/passwd" in refusals[1].after["requested"]
                assert sum("model reload by" in r.getMessage() and "refused" in r.getMessage()
                           for r in caplog.records) == 3
                (weights / ".incoming.onnx").write_bytes(b"\0" * 1000)
                os.replace(weights / ".incoming.onnx", served)
                seen = len(versions)
                wait_for(lambda: len(versions) >= seen + 5)
                assert server.service.detector.version == promoted
                # Put the promoted file back and reload on request.
                shutil.copyfile(SHIPPED, weights / ".incoming.onnx")
                os.replace(weights / ".incoming.onnx", served)
                state = admin.post("/v1/models/reload")
                assert state.status_code == 200 and state.json()["model_version"] == promoted
                assert admin.get("/v1/models").json()["file"] == "model.onnx"
            with server.client(server.key("reviewer")) as reviewer:
                assert reviewer.post("/v1/models/reload").status_code == 403
        assert client.failures == []  # not one request failed across the swaps
        assert versions[-1] == promoted
        # Cases carry the version: the edge box's own when it says one, else the served model's.
        with server.client(server.key("camera")) as camera:
            served_case = push(camera, event_json("v1", camera="cam-a"), dataset_images[1]).json()
            edge_case = push(camera, event_json("v2", camera="cam-b", model_version="edge-7"), dataset_images[2]).json()
        with server.client(server.admin_key) as admin:
            assert admin.get(f"/v1/cases/{served_case['case_number']}").json()["model_version"] == promoted
            assert admin.get(f"/v1/cases/{edge_case['case_number']}").json()["model_version"] == "edge-7"
            metrics = admin.get("/metrics").text
        assert f'gridwatch_model_info{{version="{promoted}"}} 1.0' in metrics
        swaps = next(float(line.split()[-1]) for line in metrics.splitlines()
                     if line.startswith("gridwatch_model_swaps_total "))
        assert swaps >= 2  # the watcher's swap and the reload (the watcher may have taken the file back first)
    finally:
        server.stop()
