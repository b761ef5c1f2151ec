"""The served model has a history: a promotion keeps the model it replaces, `gridwatch models
list` shows who put each one in service and why, and `gridwatch models rollback` puts one back,
which a running service takes live. `gridwatch export` never writes into weights/."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from detector.files import REPO_ROOT
from serving.cli import main
from serving.settings import Settings
from tests.support.service import RunningService, pick_port, wait_for
from tests.support.shared_data import COCO_INT8, DATASETS
from tests.support.training import bootstrapped_pt

SHIPPED = REPO_ROOT / "weights"

pytestmark = pytest.mark.skipif(not COCO_INT8.is_file() or not (SHIPPED / "gridwatch-int8.onnx").is_file(),
                                reason="shared COCO model or shipped weights missing")


def listing(weights: Path, capsys) -> dict:
    capsys.readouterr()
    assert main(["models", "list", "--weights-dir", str(weights), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def audited(server: RunningService, action: str) -> list:
    from sqlalchemy import select

    from serving.store.models import AuditEntry

    with server.service.db.sessions() as session:
        return session.scalars(select(AuditEntry).where(AuditEntry.action == action).order_by(AuditEntry.id)).all()


def test_promote_keeps_the_old_model_and_rollback_goes_live(tmp_path, capsys):
    weights = tmp_path / "weights"
    weights.mkdir()
    shutil.copyfile(COCO_INT8, weights / "gridwatch-int8.onnx")  # in service before any history
    candidate = tmp_path / "runs" / "export" / "candidate"
    candidate.mkdir(parents=True)
    for name in ("gridwatch-int8.onnx", "gridwatch.json", "gridwatch.md"):
        shutil.copyfile(SHIPPED / name, candidate / name)
    shipped_version = json.loads((SHIPPED / "gridwatch.json").read_text(encoding="utf-8"))["model_version"]

    settings = Settings(data_dir=tmp_path / "data", model=weights / "gridwatch-int8.onnx", port=pick_port(),
                        model_watch_s=0.2, admin_key="gw_test_admin_key_history_01")
    server = RunningService(settings)
    try:
        first = server.service.detector.version
        assert main(["models", "promote", str(candidate), "--reason", "pilot on the east district",
                     "--weights-dir", str(weights)]) == 0
        wait_for(lambda: server.service.detector.version == shipped_version, timeout=30)
        # the forced promotion is in the service's audit log: who, why, which version
        wait_for(lambda: audited(server, "model.promote"))
        promoted = audited(server, "model.promote")[0]
        assert promoted.target == f"model:{shipped_version}" and promoted.actor_kind == "cli"
        assert promoted.after["reason"] == "forced: pilot on the east district"
        assert promoted.after["version"] == shipped_version and promoted.actor == promoted.actor_id != ""
        # the card served says how the model came into service; the export folder's card is untouched
        served_card = json.loads((weights / "gridwatch.json").read_text(encoding="utf-8"))
        assert served_card["forced_promotion"]["reason"] == "pilot on the east district"
        assert served_card["forced_promotion"]["by"] == promoted.actor
        assert served_card["decision"] == json.loads((SHIPPED / "gridwatch.json").read_text(encoding="utf-8"))["decision"]
        served_md = (weights / "gridwatch.md").read_text(encoding="utf-8")
        assert "## Put in service by hand" in served_md and "pilot on the east district" in served_md
        assert (candidate / "gridwatch.json").read_bytes() == (SHIPPED / "gridwatch.json").read_bytes()

        state = listing(weights, capsys)
        assert state["current"] == shipped_version
        kept = {m["version"]: m for m in state["models"]}
        assert len(kept) == 2 and shipped_version in kept
        # a file without gridwatch metadata is kept under its name and hash
        found = next(v for v in kept if v != shipped_version)
        assert found.startswith("gridwatch-int8-")
        assert kept[shipped_version]["how"] == "forced"
        assert kept[shipped_version]["reason"] == "pilot on the east district"
        assert kept[shipped_version]["headline"].startswith("real val mAP50 ")
        assert kept[found]["how"] == "found in weights/"
        # the replaced model's files are kept, byte for byte
        old = weights / "history" / found / "gridwatch-int8.onnx"
        assert old.read_bytes() == COCO_INT8.read_bytes()
        assert main(["models", "list", "--weights-dir", str(weights)]) == 0
        text = capsys.readouterr().out
        assert "pilot on the east district" in text and "headline AP" in text and "data hash" in text

        # rollback with no version: the model before the current one, taken live
        assert main(["models", "rollback", "--weights-dir", str(weights), "--reason", "misses bins at night"]) == 0
        wait_for(lambda: server.service.detector.version == first, timeout=30)
        assert (weights / "gridwatch-int8.onnx").read_bytes() == COCO_INT8.read_bytes()
        assert not (weights / "gridwatch.json").exists()  # the card of the model no longer served is gone
        state = listing(weights, capsys)
        assert state["current"] == found
        assert [(e["action"], e["version"]) for e in state["events"]] == [
            ("promote", shipped_version), ("rollback", found)]
        assert state["events"][-1]["reason"] == "rollback: misses bins at night"
        wait_for(lambda: audited(server, "model.rollback"))
        rolled = audited(server, "model.rollback")[0]
        assert (rolled.target, rolled.after["reason"]) == (f"model:{found}", "rollback: misses bins at night")
        assert rolled.before == {"version": shipped_version}
        assert len(audited(server, "model.promote")) == 1  # each history event audited once

        # nothing older: a clear refusal; by version: forward again
        assert main(["models", "rollback", "--weights-dir", str(weights)]) == 2
        assert "oldest" in capsys.readouterr().err
        assert main(["models", "rollback", shipped_version, "--weights-dir", str(weights)]) == 0
        wait_for(lambda: server.service.detector.version == shipped_version, timeout=30)
        assert main(["models", "rollback", "nope", "--weights-dir", str(weights)]) == 2
        assert "no kept model 'nope'" in capsys.readouterr().err

        # forced into service again after a rollback: the served card names the latest reason,
        # and the kept copy still rolls back (its record vouches for the rewritten cards)
        assert main(["models", "rollback", "--weights-dir", str(weights)]) == 0
        wait_for(lambda: server.service.detector.version == first, timeout=30)
        assert main(["models", "promote", str(candidate), "--reason", "second pilot, west district",
                     "--weights-dir", str(weights)]) == 0
        wait_for(lambda: server.service.detector.version == shipped_version, timeout=30)
        served_card = json.loads((weights / "gridwatch.json").read_text(encoding="utf-8"))
        assert served_card["forced_promotion"]["reason"] == "second pilot, west district"
        served_md = (weights / "gridwatch.md").read_text(encoding="utf-8")
        assert "second pilot, west district" in served_md and "pilot on the east district" not in served_md
        assert listing(weights, capsys)["events"][-1]["reason"] == "forced: second pilot, west district"
        assert main(["models", "rollback", "--weights-dir", str(weights)]) == 0
        assert main(["models", "rollback", shipped_version, "--weights-dir", str(weights)]) == 0
        assert json.loads((weights / "gridwatch.json").read_text(encoding="utf-8"))["forced_promotion"]["reason"] \
            == "second pilot, west district"
    finally:
        server.stop()


def test_a_promotion_made_while_no_service_runs_is_audited_when_one_starts(tmp_path, capsys):
    weights = tmp_path / "weights"
    weights.mkdir()
    shutil.copyfile(COCO_INT8, weights / "gridwatch-int8.onnx")
    candidate = tmp_path / "candidate"
    candidate.mkdir()
    shutil.copyfile(SHIPPED / "gridwatch-int8.onnx", candidate / "gridwatch-int8.onnx")
    assert main(["models", "promote", str(candidate), "--reason", "night shift model",
                 "--weights-dir", str(weights)]) == 0
    # a line that is not an event (an edit by hand) is skipped, not fatal
    with (weights / "history" / "events.jsonl").open("a", encoding="utf-8") as fh:
        fh.write("not json\n")
    settings = Settings(data_dir=tmp_path / "data", model=weights / "gridwatch-int8.onnx", port=pick_port(),
                        model_watch_s=0, admin_key="gw_test_admin_key_history_02")
    for _ in range(2):  # a restart does not audit the same event again
        server = RunningService(settings)
        try:
            rows = audited(server, "model.promote")
        finally:
            server.stop()
        assert len(rows) == 1
        assert rows[0].after["reason"] == "forced: night shift model" and rows[0].actor_kind == "cli"


def test_rollback_walks_back_in_the_order_models_were_last_put_in_service(tmp_path, capsys):
    """A kept model forced into service again counts from then: rolling back from it returns to the
    model it replaced, not to the one before its first promotion."""
    weights = tmp_path / "weights"
    weights.mkdir()
    shutil.copyfile(COCO_INT8, weights / "gridwatch-int8.onnx")  # A: found in weights/
    shipped, other = tmp_path / "shipped", tmp_path / "other"
    for folder, model in ((shipped, SHIPPED / "gridwatch-int8.onnx"), (other, COCO_INT8.with_name("coco-yolo11n-320-int8.onnx"))):
        folder.mkdir()
        shutil.copyfile(model, folder / "gridwatch-int8.onnx")

    def promote(folder: Path, reason: str) -> str:
        assert main(["models", "promote", str(folder), "--reason", reason, "--weights-dir", str(weights)]) == 0
        return listing(weights, capsys)["current"]

    b = promote(shipped, "pilot")
    assert main(["models", "rollback", "--weights-dir", str(weights)]) == 0
    a = listing(weights, capsys)["current"]
    c = promote(other, "night model")
    assert promote(shipped, "pilot again") == b
    kept = {m["version"]: m for m in listing(weights, capsys)["models"]}
    assert kept[b]["reason"] == "pilot again" and kept[b]["promoted_at"] > kept[c]["promoted_at"]
    assert len({a, b, c}) == 3
    for back_to in (c, a):
        assert main(["models", "rollback", "--weights-dir", str(weights)]) == 0
        assert listing(weights, capsys)["current"] == back_to
    assert main(["models", "rollback", "--weights-dir", str(weights)]) == 2
    assert "oldest" in capsys.readouterr().err


def test_a_promotion_never_leaves_weights_mixed(tmp_path, capsys):
    weights = tmp_path / "weights"
    weights.mkdir()
    for name in ("gridwatch-int8.onnx", "gridwatch-fp32.onnx"):
        shutil.copyfile(SHIPPED / name, weights / name)
    fp32_only = tmp_path / "fp32-only"
    fp32_only.mkdir()
    shutil.copyfile(COCO_INT8, fp32_only / "gridwatch-fp32.onnx")
    before = {p.name: p.read_bytes() for p in weights.iterdir()}
    assert main(["models", "promote", str(fp32_only), "--reason", "x", "--weights-dir", str(weights)]) == 2
    assert "gridwatch-int8.onnx" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in weights.iterdir() if p.is_file()} == before
    assert main(["models", "promote", str(fp32_only), "--reason", " ", "--weights-dir", str(weights)]) == 2


@pytest.mark.skipif(not DATASETS.is_dir(), reason="no shared datasets")
def test_export_writes_a_run_folder_with_a_card_and_never_weights(tmp_path, capsys, monkeypatch):
    pt = bootstrapped_pt(tmp_path / "start.pt", n_images=4)
    weights = tmp_path / "weights"
    weights.mkdir()
    shutil.copyfile(SHIPPED / "gridwatch-int8.onnx", weights / "gridwatch-int8.onnx")
    served = (weights / "gridwatch-int8.onnx").read_bytes()
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    (work / "calib").symlink_to(DATASETS / "garbage_overflow_cn" / "images")

    # relative --out and --calib, with the int8 step (which works in a temporary folder)
    assert main(["export", "--weights", str(pt), "--imgsz", "64", "--out", "exports/one", "--calib", "calib",
                 "--weights-dir", str(weights)]) == 0
    out = capsys.readouterr().out
    one = work / "exports" / "one"
    for name in ("gridwatch-fp32.onnx", "gridwatch-int8.onnx", "gridwatch.md", "gridwatch.json",
                 "gridwatch-int8.json"):
        assert (one / name).is_file(), name
    card = json.loads((one / "gridwatch.json").read_text(encoding="utf-8"))
    assert {f["name"] for f in card["files"]} == {"gridwatch-fp32.onnx", "gridwatch-int8.onnx"}
    assert "exporting" in out and "model card:" in out

    # no --out: a run folder, never weights/
    assert main(["export", "--weights", str(pt), "--imgsz", "64", "--no-int8", "--weights-dir", str(weights)]) == 0
    runs = list((work / "runs" / "export").iterdir())
    assert len(runs) == 1 and (runs[0] / "gridwatch-fp32.onnx").is_file() and (runs[0] / "gridwatch.md").is_file()
    capsys.readouterr()
    for target in (weights, weights / "history" / "x"):
        assert main(["export", "--weights", str(pt), "--imgsz", "64", "--no-int8", "--out", str(target),
                     "--weights-dir", str(weights)]) == 2
        assert "served model's folder" in capsys.readouterr().err
    assert sorted(p.name for p in weights.iterdir()) == ["gridwatch-int8.onnx"]
    assert (weights / "gridwatch-int8.onnx").read_bytes() == served


def test_int8_warning_says_which_target_failed():
    from training.export.export import SpeedComparison
    from training.export.export_run import int8_misses
    from training.promotion.model_card import Int8Check

    def check(delta):
        return Int8Check(calibration_images=64, excluded_nodes=[], map50_fp32=0.5, map50_int8=0.5 + delta / 100,
                         map50_delta_points=delta, within_1_5_points=delta >= -1.5)

    fast = SpeedComparison(threads=2, hw="256x448", fp32_ms=10, int8_ms=4.8, ratio=2.09, meets_1_5x=True)
    slow = SpeedComparison(threads=2, hw="256x448", fp32_ms=10, int8_ms=8, ratio=1.25, meets_1_5x=False)
    assert int8_misses(check(+2.58), fast) == []  # better and faster: no warning (issue #27)
    assert int8_misses(check(-2.0), fast) == ["accuracy: int8 loses 2.00 AP50 points to fp32 (target: at most 1.5)"]
    assert int8_misses(check(0.0), slow) == ["speed: int8 is 1.25x fp32 (target: at least 1.5x)"]


def test_a_model_that_does_not_load_is_never_promoted(tmp_path, capsys):
    weights = tmp_path / "weights"
    weights.mkdir()
    shutil.copyfile(COCO_INT8, weights / "gridwatch-int8.onnx")
    served = (weights / "gridwatch-int8.onnx").read_bytes()
    candidate = tmp_path / "candidate"
    candidate.mkdir()
    (candidate / "gridwatch-int8.onnx").write_bytes(served[: len(served) // 3])  # a copy cut short
    capsys.readouterr()
    assert main(["models", "promote", str(candidate), "--reason", "test", "--weights-dir", str(weights)]) != 0
    assert "nothing was promoted" in capsys.readouterr().err
    assert (weights / "gridwatch-int8.onnx").read_bytes() == served
    assert sorted(p.name for p in weights.iterdir()) == ["gridwatch-int8.onnx"]  # no history entry either
    assert main(["models", "list", "--weights-dir", str(tmp_path / "wieghts")]) == 2  # a typo is not "no models"
