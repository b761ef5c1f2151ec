"""Model card (one record -> JSON + Markdown), champion/challenger, and a torch-free CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from detector.files import REPO_ROOT
from training.data.dataset_manifest import ImageCounts, LabelCounts
from training.export.export import SpeedComparison
from training.evaluation.metrics import ClassMetrics, EvalResult
from training.promotion.model_card import (FileEntry, ForcedPromotion, Int8Check, ModelCard, Promotion,
                                           coverage_weaknesses, mark_forced_promotion, render_markdown,
                                           source_credits, training_instances, write_card)
from training.promotion.promote import decide, decide_loop, install


def _metrics(ap50_95: float = 0.5, instances: int = 5) -> ClassMetrics:
    return ClassMetrics(ap50=ap50_95 + 0.2, ap50_95=ap50_95, precision=0.8, recall=0.7, instances=instances)


def _result(ap50_95: float, classes=("garbage_bin", "push_cart")) -> EvalResult:
    per = {c: _metrics(ap50_95) for c in classes}
    return EvalResult(classes=per, map50=ap50_95 + 0.2, map50_95=ap50_95)


def test_challenger_promoted_only_if_not_worse():
    assert decide(_result(0.5), None).promote
    assert decide(_result(0.5), _result(0.5)).promote  # equal is not worse
    worse = decide(_result(0.49), _result(0.5))
    assert not worse.promote and "0.4900" in worse.summary() and "0.5000" in worse.summary()
    assert "KEEP CHAMPION" in worse.summary()
    with pytest.raises(ValueError, match="same split"):
        decide(_result(0.5), _result(0.5, classes=("garbage_bin",)))


def test_retrain_promotes_only_if_not_worse_on_base_and_better_on_review():
    def verdict(base: tuple[float, float], review: tuple[float, float]):
        return decide_loop(_result(base[0]), _result(base[1]), _result(review[0]), _result(review[1]))

    assert verdict((0.5, 0.5), (0.61, 0.6)).promote  # equal on base, better on review
    assert not verdict((0.5, 0.5), (0.6, 0.6)).promote  # equal on review is not better
    assert not verdict((0.49, 0.5), (0.9, 0.6)).promote  # worse on base, whatever the review says
    summary = verdict((0.5, 0.4), (0.55, 0.6)).summary()
    assert "challenger 0.5500, champion 0.6000 -> fails" in summary and summary.endswith("decision: KEEP CHAMPION")


def test_classes_with_a_handful_of_val_boxes_do_not_decide():
    def result(bin_ap: float, chair_ap: float) -> EvalResult:
        per = {"bin_overflow": ClassMetrics(ap50=0.9, ap50_95=bin_ap, precision=0.8, recall=0.8, instances=400),
               "chair": ClassMetrics(ap50=0.9, ap50_95=chair_ap, precision=1.0, recall=1.0, instances=1)}
        return EvalResult(classes=per, map50=0.9, map50_95=(bin_ap + chair_ap) / 2)

    # The single chair box flips from hit to miss: the plain mean would favour the champion.
    decision = decide(result(0.62, 0.0), result(0.60, 0.9))
    assert decision.promote and decision.challenger_score == pytest.approx(0.62)
    assert decision.metric == "mAP50-95 over bin_overflow"
    assert not decide(result(0.58, 0.9), result(0.60, 0.0)).promote


def test_classes_that_fell_are_named_with_the_rules_that_use_them(tmp_path):
    def result(truck_ap50: float, bin_ap50: float) -> EvalResult:
        per = {"bin_overflow": ClassMetrics(ap50=bin_ap50, ap50_95=0.6, precision=0.8, recall=0.8, instances=400),
               "truck": ClassMetrics(ap50=truck_ap50, ap50_95=0.5, precision=0.5, recall=0.6, instances=16)}
        return EvalResult(classes=per, map50=0.7, map50_95=0.55)

    # truck (16 boxes) is not in the metric, yet its 12-point fall is named; bin_overflow's 4 are not
    decision = decide(result(0.576, 0.86), result(0.701, 0.90))
    assert decision.promote and decision.metric == "mAP50-95 over bin_overflow"
    assert [(d.name, d.instances) for d in decision.drops] == [("truck", 16)]
    assert "truck 0.701 -> 0.576 (16 val boxes)" in decision.summary()
    assert not decide(result(0.70, 0.90), result(0.701, 0.90)).drops

    card = _card(decision=Promotion.of(decision))
    assert card.decision.fell[0].rules == ["muck_truck_uncovered"]  # from the taxonomy
    md_path, json_path = write_card(card, tmp_path)
    assert "| truck | 16 | 0.701 | 0.576 | muck_truck_uncovered |" in md_path.read_text()
    assert json.loads(json_path.read_text())["decision"]["fell"][0]["name"] == "truck"
    quiet = json.loads(write_card(_card(decision=Promotion.of(decide(result(0.7, 0.9), result(0.7, 0.9)))),
                                  tmp_path)[1].read_text())
    assert "fell" not in quiet["decision"]  # as cards before the field


def test_install_replaces_files_and_leaves_no_staging(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "m.onnx").write_bytes(b"new")
    (src / "m.md").write_text("card")
    dst = tmp_path / "weights"
    dst.mkdir()
    (dst / "m.onnx").write_bytes(b"old")
    installed = install({"m.onnx": src / "m.onnx", "m.md": src / "m.md"}, dst)
    assert [p.name for p in installed] == ["m.onnx", "m.md"]  # the card last
    assert (dst / "m.onnx").read_bytes() == b"new"
    assert sorted(p.name for p in dst.iterdir()) == ["m.md", "m.onnx"]


def _card(**fields) -> ModelCard:
    """A card with every field filled in; `fields` replace some."""
    values = dict(
        name="gridwatch", model_version="v1", taxonomy_version="2026.1", dataset_hash="0" * 16,
        created="2026-11-25T00:00:00+00:00", imgsz=416, train_imgsz=None,
        classes=["garbage_bin", "push_cart"], train_instances={},
        sources=source_credits(["garbage_overflow_cn", "thela_india"]),
        credits=["garbage_overflow_cn: CC BY 4.0 credit"],
        metrics={"real_val": {"gridwatch-int8.onnx": _result(0.5).to_dict()},
                 "synthetic_val": {"gridwatch-fp32.onnx": _result(0.3, ("flyer",)).to_dict()}},
        int8=Int8Check(calibration_images=64, excluded_nodes=[], map50_fp32=0.7, map50_int8=0.69,
                       map50_delta_points=-1.0, within_1_5_points=True),
        speed=SpeedComparison(threads=2, hw="416x416", fp32_ms=20.0, int8_ms=12.0, ratio=1.67, meets_1_5x=True),
        training={"epochs": 50},
        files=[FileEntry(name="gridwatch-int8.onnx", sha256="ab" * 32, bytes=10)],
        weaknesses=["w1"],
    )
    return ModelCard(**{**values, **fields})


def test_card_json_and_markdown_come_from_one_card(tmp_path):
    card = _card()
    md_path, json_path = write_card(card, tmp_path)
    assert ModelCard.model_validate(json.loads(json_path.read_text())) == card
    md = md_path.read_text()
    assert md == render_markdown(card)
    garbage = next(s for s in card.sources if s.name == "garbage_overflow_cn")
    assert garbage.licence == "CC BY 4.0" and "公开数据集111" in garbage.attribution
    for text in ("CC BY 4.0", "公开数据集111", "real_val", "synthetic_val", "flyer", "| push_cart | 5 | 0.700",
                 "1.67x", "ab" * 32, "- w1"):
        assert text in md, text


def test_a_forced_promotion_is_written_into_every_card_and_keeps_hand_edits(tmp_path):
    card = _card(decision=Promotion.of(decide(_result(0.4), _result(0.5))).model_dump())
    write_card(card, tmp_path)
    write_card(card, tmp_path, stem="gridwatch-int8")
    (tmp_path / "gridwatch-int8.md").write_text(render_markdown(card) + "\nA note added by hand.\n")
    (tmp_path / "calibration.json").write_text('{"images": 64}')  # not a card: left alone
    forced = ForcedPromotion(by="li.wei", at="2026-12-06T21:15:51+00:00", reason="trucks found on the ring road")

    assert mark_forced_promotion(tmp_path, forced) == [
        "gridwatch-int8.json", "gridwatch-int8.md", "gridwatch.json", "gridwatch.md"]
    for stem in ("gridwatch", "gridwatch-int8"):
        written = json.loads((tmp_path / f"{stem}.json").read_text())
        assert written["forced_promotion"] == forced.model_dump()
        assert written["decision"]["promote"] is False  # champion/challenger's verdict stays as it was
    marked = card.model_copy(update={"forced_promotion": forced})
    assert (tmp_path / "gridwatch.md").read_text() == render_markdown(marked)
    assert "## Put in service by hand" in render_markdown(marked) and "not promoted" in render_markdown(marked)
    edited = (tmp_path / "gridwatch-int8.md").read_text()
    assert "A note added by hand." in edited and edited.rstrip().endswith("trucks found on the ring road")
    assert (tmp_path / "calibration.json").read_text() == '{"images": 64}'
    # forced again: the hand-edited card's record is replaced where it stands, not added twice
    again = ForcedPromotion(by="li.wei", at="2026-12-07T09:00:00+00:00", reason="second pilot, west district")
    mark_forced_promotion(tmp_path, again)
    edited = (tmp_path / "gridwatch-int8.md").read_text()
    assert edited.count("## Put in service by hand") == 1 and "A note added by hand." in edited
    assert "second pilot, west district" in edited and "ring road" not in edited


def test_retrain_card_counts_review_data_by_camera_and_class(tmp_path):
    decision = decide_loop(_result(0.5), _result(0.4), _result(0.7), _result(0.6))
    review = {"cam-east": {"bin_overflow": {"human train": 3, "negative val": 1}},
              "cam-north": {"garbage_bin": {"pseudo val": 2}}}
    card = _card(decision=Promotion.of(decision).model_dump(), review_data=review)
    md_path, json_path = write_card(card, tmp_path)
    written = json.loads(json_path.read_text())
    assert written["review_data"] == review
    assert written["decision"]["review_challenger"] == 0.7 and written["decision"]["review_champion"] == 0.6
    md = md_path.read_text()
    assert "| cam-east | bin_overflow | 3 | 0 | 0 | 0 | 0 | 1 |" in md
    assert "| cam-north | garbage_bin | 0 | 0 | 0 | 2 | 0 | 0 |" in md
    assert "review val split (must be better): this model 0.7000, the default 0.6000: promoted" in md


def test_card_json_keeps_the_shipped_field_names(tmp_path):
    _, json_path = write_card(_card(), tmp_path)
    shipped = json.loads((REPO_ROOT / "weights" / "gridwatch.json").read_text(encoding="utf-8"))
    written = json.loads(json_path.read_text())
    # the shipped names in their order, no notes, no summary, no measurement made after training
    # (`gridwatch models card`) and no forced promotion (`gridwatch models promote`); fields added
    # since may follow
    measured_since = ("place_folds", "teacher_check", "forced_promotion")
    assert [k for k in written if k in shipped] == [k for k in shipped if k not in ("summary", *measured_since)]
    assert set(written) - set(shipped) <= {"pseudo_label_audit"}
    for part in ("int8", "speed"):  # the shipped names first, in their order; new ones after them
        assert list(written[part])[: len(shipped[part])] == list(shipped[part])
    assert list(written["sources"][0]) == list(shipped["sources"][0])
    assert list(written["files"][0]) == list(shipped["files"][0])
    notes = json.loads(write_card(_card(summary="why", decision=shipped["decision"]), tmp_path)[1].read_text())
    assert [k for k in notes if k in shipped] == [k for k in shipped if k not in measured_since]
    assert list(notes["decision"]) == list(shipped["decision"])


def test_card_says_which_teacher_boxes_the_audit_dropped(tmp_path):
    card = _card(pseudo_label_audit={"truck~push_cart": 2, "bicycle~push_cart": 9, "person~window_ad": 3})
    md = write_card(card, tmp_path)[0].read_text()
    rows = [line for line in md.splitlines() if line.startswith("| ") and line.count("|") == 4]
    assert rows.index("| bicycle | push_cart | 9 |") < rows.index("| person | window_ad | 3 |") \
        < rows.index("| truck | push_cart | 2 |")  # most dropped first
    assert "Teacher boxes dropped" not in render_markdown(_card())  # nothing dropped, nothing said


def test_card_names_classes_the_data_cannot_support():
    counts = LabelCounts(
        human={"train": {"garbage_bin": 120}, "val": {"garbage_bin": 20}},
        pseudo={"train": {"chair": 3}, "val": {}},
        images={"train": ImageCounts(real=50, synthetic=0)},
    )
    instances = training_instances(counts, ["garbage_bin", "chair", "dining table"])
    assert instances == {"garbage_bin": {"human": 120, "pseudo": 0}, "chair": {"human": 0, "pseudo": 3},
                         "dining table": {"human": 0, "pseudo": 0}}
    real_val = EvalResult(classes={"garbage_bin": _metrics(instances=400), "chair": _metrics(instances=1)},
                          map50=0.5, map50_95=0.3)
    never, few = coverage_weaknesses(instances, real_val)
    assert "dining table" in never and "garbage_bin" not in never and "chair" not in never
    assert "chair (1)" in few and "garbage_bin" not in few
    assert coverage_weaknesses({"garbage_bin": {"human": 5}}, EvalResult(classes={}, map50=0, map50_95=0)) == []

    md = render_markdown(_card(name="m", model_version="v", train_instances=instances))
    assert "| class | human | pseudo |" in md and "| dining table | 0 | 0 |" in md


def test_cli_help_and_training_commands_do_not_import_torch():
    code = ("import sys; from serving.cli import build_parser; p = build_parser(); "
            "p.parse_args(['eval', '--model', 'm.onnx', '--data', 'd']); "
            "p.parse_args(['train', '--data', 'd.yaml']); p.parse_args(['export', '--weights', 'b.pt']); "
            "assert 'torch' not in sys.modules and 'ultralytics' not in sys.modules, 'heavy import at top'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_lr0_without_an_optimizer_is_refused_before_training(tmp_path):
    # Ultralytics would silently replace it when it picks the optimizer itself.
    proc = subprocess.run([sys.executable, "-m", "serving.cli", "train", "--data", str(tmp_path / "d.yaml"),
                           "--lr0", "0.01"], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 2 and "--optimizer" in proc.stderr
    assert not (tmp_path / "runs").exists()
