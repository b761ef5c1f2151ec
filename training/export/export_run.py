"""`gridwatch export`: a trained .pt into a run folder of its own, with a model card; never into weights/.

    best.pt -> runs/export/NAME-TIME/{NAME-fp32.onnx, NAME-int8.onnx, NAME.md, NAME.json, ...}

Only a promotion replaces the served model: champion/challenger (`gridwatch train --promote`,
`gridwatch retrain`) or a person's forced one (`gridwatch models promote DIR --reason ...`),
both of which keep the model they replace (training/promotion/model_history.py). Every path is made
absolute first: the int8 step works in a temporary folder, and a relative `--out` would be
looked for there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from training.export.export import ExportError, ExportResult, SpeedComparison, read_checkpoint_args
from training.promotion.model_card import INT8_MAX_MAP50_LOSS_POINTS, Int8Check

DEFAULT_PROJECT = Path("runs/export")


@dataclass
class ExportRun:
    exported: ExportResult
    out: Path
    card: Path


def int8_misses(check: Int8Check, speed: SpeedComparison | None) -> list[str]:
    """Which of int8's targets it missed, each in words: a loss of more than 1.5 AP50 points
    against fp32 (a gain is no miss), or less than 1.5x fp32's speed."""
    misses = []
    if check.map50_delta_points < -INT8_MAX_MAP50_LOSS_POINTS:
        misses.append(f"accuracy: int8 loses {-check.map50_delta_points:.2f} AP50 points to fp32 "
                      f"(target: at most {INT8_MAX_MAP50_LOSS_POINTS})")
    if speed is not None and not speed.meets_1_5x:
        misses.append(f"speed: int8 is {speed.ratio:.2f}x fp32 (target: at least 1.5x)")
    return misses


def refuse_served_folder(out: Path, weights_dir: Path) -> None:
    served = Path(weights_dir).resolve()
    if out == served or served in out.parents:
        raise ExportError(f"--out {out} is the served model's folder: export writes to a run folder; put a model in "
                          "service by promotion (`gridwatch train --finish --promote`, or `gridwatch models promote "
                          "DIR --reason ...`), which keeps the model it replaces")


def export_run(
    weights: Path,
    out: Path | None = None,
    *,
    weights_dir: Path,
    stem: str = "gridwatch",
    log: Callable[[str], None] = print,
    **options,
) -> ExportRun:
    """Export into `out` (default runs/export/STEM-TIME), evaluate on the checkpoint's own val
    split when it is here, compare with the served model there, and write the card."""
    from training.export.export import camera_input_hw, compare_speed, export
    from training.promotion.model_card import int8_check, run_card, write_card

    weights = Path(weights).resolve()
    if not weights.is_file():
        raise ExportError(f"weights not found: {weights}")
    out = Path(out or DEFAULT_PROJECT / f"{stem}-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}").resolve()
    refuse_served_folder(out, weights_dir)
    if options.get("calib") is not None:
        options["calib"] = Path(options["calib"]).resolve()
    log(f"exporting {weights} -> {out}" + (" (fp32, then int8 calibration)" if options.get("int8", True) else ""))
    exported = export(weights, out, stem=stem, log=log, **options)
    log(f"fp32: {exported.fp32}")
    if exported.int8:
        log(f"int8: {exported.int8} (calibrated on {exported.calibration_images} images)")

    data = _data_of(weights)
    metrics, real_eval, check, speed, decision, sources, counts = {}, None, None, None, None, [], None
    if exported.int8:
        log("timing fp32 and int8 sessions ...")
        speed = compare_speed(exported.fp32, exported.int8, camera_input_hw(exported.int8))
    if data is not None:
        from training.data.dataset_manifest import read_label_counts, read_sources
        from training.promotion.model_card import source_credits
        from training.promotion.promote import decide
        from training.fit.train import evaluate_onnx, split_synthetic, val_set

        real, _ = split_synthetic(val_set(data))
        log(f"evaluating fp32 on the val split of {data.file} ({len(real.images)} images) ...")
        real_eval = evaluate_onnx(exported.fp32, real)
        metrics["real_val"] = {exported.fp32.name: real_eval.to_dict()}
        log(real_eval.table())
        if exported.int8:
            log("evaluating int8 on the same split ...")
            int8_eval = evaluate_onnx(exported.int8, real)
            metrics["real_val"][exported.int8.name] = int8_eval.to_dict()
            check = int8_check(exported, real_eval, int8_eval)
        champion = Path(weights_dir) / f"{stem}-fp32.onnx"
        if champion.is_file():
            champion_eval = evaluate_onnx(champion, real)
            try:
                decision = decide(real_eval, champion_eval)
                log(decision.summary() + "\n(export alone promotes nothing)")
            except ValueError as exc:  # another class list: not comparable on this split
                log(f"not compared with the served model: {exc}")
        manifest = data.file.parent / "manifest.json"
        try:
            sources = source_credits(data.sources, read_sources(manifest))
        except ValueError as exc:
            log(f"sources not credited on the card: {exc}")
        counts = read_label_counts(manifest) if manifest.is_file() else None
    else:
        log("no val split to evaluate on (the checkpoint's data.yaml is not here): the card has no metrics")
    if speed is not None:
        log(f"session ms at 2 threads: fp32 {speed.fp32_ms:.1f}, int8 {speed.int8_ms:.1f} ({speed.ratio:.2f}x)")
    if check is not None:
        log(f"int8 vs fp32: mAP50 {check.map50_delta_points:+.2f} points")
        for miss in int8_misses(check, speed):
            log(f"WARNING: int8 misses its target on {miss}")
    files = [exported.fp32] + ([exported.int8] if exported.int8 else [])
    card = run_card(stem, exported, sources=sources, counts=counts, metrics=metrics, real_val=real_eval, int8=check,
                    speed=speed, training={**exported.train_args, "weights": str(weights)}, files=files,
                    decision=decision, summary=None)
    md, _ = write_card(card, out, stem)
    for f in files:
        write_card(card, out, f.stem)
    log(f"model card: {md}")
    log(f"version: {exported.metadata['gridwatch_model_version']}, dataset hash: "
        f"{exported.metadata['gridwatch_dataset_hash']}")
    return ExportRun(exported=exported, out=out, card=md)


def _data_of(weights: Path):
    from training.data.yolo_format import YoloFormatError, read_data_yaml

    data = read_checkpoint_args(weights).get("data")
    if not data or not Path(data).is_file():
        return None
    try:
        config = read_data_yaml(Path(data))
    except YoloFormatError:
        return None
    folder = config.split_dir("val")
    return config if folder is not None and folder.is_dir() else None
