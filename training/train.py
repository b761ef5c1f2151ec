"""`gridwatch train`: fine-tune with Ultralytics, then judge the result as it will be served.

After training, best.pt is exported (fp32 + int8), both ONNX files are evaluated on the
dataset's val split through the served runtime, a model card is written into the run
folder, and the fp32 export meets the current default in weights/ on that same split
(champion/challenger). `--promote` installs it only when it is not worse.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from training.evaluate import (
    AP_SCORE_THRESHOLD,
    DEFAULT_OPERATING_THRESHOLD,
    EvalResult,
    EvalSet,
    eval_set_from_images,
    evaluate,
    onnx_predictor,
)
from training.offline import ultralytics_offline

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = REPO_ROOT.parent / "shared"
TEACHER_ONNX = SHARED_DIR / "weights" / "coco-yolov8n-int8.onnx"
WEIGHTS_DIR = REPO_ROOT / "weights"
STEM = "gridwatch"


class TrainError(ValueError):
    """Training input is missing or inconsistent; the message says what to pass."""


@dataclass
class TrainResult:
    run_dir: Path
    best: Path


def default_device() -> str:
    import torch

    return "0" if torch.cuda.is_available() else "cpu"


def _data_config(data: Path) -> dict:
    import yaml

    if not data.is_file():
        raise TrainError(f"dataset file not found: {data} (build one with `gridwatch dataset build`)")
    cfg = yaml.safe_load(data.read_text(encoding="utf-8")) or {}
    for key in ("train", "val", "names"):
        if key not in cfg:
            raise TrainError(f"{data}: missing '{key}'")
    return cfg


def split_dir(data: Path, split: str) -> Path:
    cfg = _data_config(data)
    root = data.parent / str(cfg.get("path") or ".")
    folder = root / str(cfg[split])
    if not folder.is_dir():
        raise TrainError(f"{data}: {split} folder {folder} does not exist")
    return folder


def bootstrap_start(cache_dir: Path, calibration_dir: Path | None, count: int = 32) -> Path:
    """The COCO-pretrained start (training/bootstrap.py), built once and cached."""
    target = cache_dir / "yolov8n-coco-bootstrap.pt"
    if target.is_file():
        return target
    import cv2

    from training.bootstrap import bootstrap

    if not TEACHER_ONNX.is_file():
        raise TrainError(f"no pretrained start: {TEACHER_ONNX} is missing; pass --model yolov8n.yaml to train from scratch")
    images = []
    if calibration_dir is not None:
        from training.export import image_paths

        paths = image_paths(calibration_dir)
        picks = np.linspace(0, len(paths) - 1, min(count, len(paths))).astype(int) if paths else []
        images = [im for i in picks if (im := cv2.imread(str(paths[i]))) is not None]
    return bootstrap(TEACHER_ONNX, target, images)


def train(
    data: str | Path,
    model: str | Path | None = None,
    *,
    epochs: int = 50,
    imgsz: int = 416,
    batch: int = 16,
    device: str | None = None,
    project: str | Path = "runs/train",
    name: str | None = None,
    resume: bool = False,
    fraction: float = 1.0,
    workers: int = 2,
    plots: bool = True,
    seed: int = 0,
    extra: dict | None = None,
) -> TrainResult:
    YOLO = ultralytics_offline()
    project = Path(project).resolve()
    name = name or f"{STEM}-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}"
    run_dir = project / name
    if resume:
        last = run_dir / "weights" / "last.pt"
        if not last.is_file():
            raise TrainError(f"nothing to resume: {last} does not exist (check --project and --name)")
        from training.export import load_checkpoint

        # A finished run's last.pt is stripped (epoch -1, no optimizer); Ultralytics would then
        # fall back to its default dataset and try to download it.
        if load_checkpoint(last).get("epoch", -1) < 0:
            raise TrainError(f"{run_dir}: training is finished, nothing to resume "
                             "(use --finish for the after-training steps)")
        try:
            YOLO(str(last)).train(resume=True)
        except AssertionError as exc:  # Ultralytics' way of saying the run already finished
            raise TrainError(f"{run_dir}: {str(exc).splitlines()[0]} (use --finish for the after-training steps)") from None
        return TrainResult(run_dir=run_dir, best=run_dir / "weights" / "best.pt")
    data = Path(data).resolve()
    _data_config(data)
    if model is None:
        model = bootstrap_start(project / ".bootstrap", split_dir(data, "train"))
    device = device or default_device()
    YOLO(str(model)).train(
        data=str(data), epochs=epochs, imgsz=imgsz, batch=batch, device=device,
        project=str(project), name=name, exist_ok=True, fraction=fraction,
        workers=workers, plots=plots, seed=seed, deterministic=False, verbose=True,
        **(extra or {}),
    )
    best = run_dir / "weights" / "best.pt"
    if not best.is_file():
        raise TrainError(f"training finished without {best}")
    return TrainResult(run_dir=run_dir, best=best)


def existing_run(project: str | Path, name: str | None) -> TrainResult:
    """A finished run folder, for the after-training steps alone (`--finish`)."""
    if not name:
        raise TrainError("--finish needs --name (the run folder under --project)")
    run_dir = Path(project).resolve() / name
    best = run_dir / "weights" / "best.pt"
    if not best.is_file():
        raise TrainError(f"no finished run at {run_dir}: {best} does not exist")
    return TrainResult(run_dir=run_dir, best=best)


def ultralytics_predictor(weights: str | Path, imgsz: int):
    """A .pt model behind the same Predictor signature as the served ONNX runtime."""
    YOLO = ultralytics_offline()
    from detector.detections import Detections

    model = YOLO(str(weights))
    names = {int(k): v for k, v in model.names.items()}

    def predict(frame: np.ndarray) -> Detections:
        r = model.predict(frame, imgsz=imgsz, conf=AP_SCORE_THRESHOLD, iou=0.7, max_det=300, verbose=False)[0]
        b = r.boxes
        return Detections(
            xyxy=b.xyxy.cpu().numpy().astype(np.float32),
            scores=b.conf.cpu().numpy().astype(np.float32),
            class_ids=b.cls.cpu().numpy().astype(np.int64),
            names=names,
        )

    return predict


# ---------------------------------------------------------------- after training


def split_synthetic(eval_set: EvalSet) -> tuple[EvalSet, EvalSet | None]:
    """Real and synthetic val images apart: the card reports them separately.

    The dataset build names generated images with 'synthetic' in their file name or folder.
    """
    synth = [im for im in eval_set.images if "synthetic" in str(im.path).lower()]
    if not synth:
        return eval_set, None
    real = [im for im in eval_set.images if im not in synth]
    mk = lambda images: EvalSet(root=eval_set.root, source=eval_set.source, images=images, dropped_labels=0)  # noqa: E731
    return mk(real), mk(synth)


def val_set(data: Path) -> EvalSet:
    """The dataset's val split; a built dataset is in gridwatch classes already."""
    cfg = _data_config(data)
    names = cfg["names"] if isinstance(cfg["names"], dict) else dict(enumerate(cfg["names"]))
    names = {int(k): str(v) for k, v in names.items()}
    return eval_set_from_images(
        split_dir(data, "val"), names, {n: n for n in names.values()}, root=data.parent, source=data.parent.name
    )


def evaluate_onnx(model: Path, eval_set: EvalSet, threshold: float = DEFAULT_OPERATING_THRESHOLD) -> EvalResult:
    predict, _ = onnx_predictor(model)
    return evaluate(predict, eval_set, threshold)


def _lineage(checkpoint: dict) -> dict:
    """How an averaged checkpoint (`gridwatch average`) was made, for the card."""
    if not checkpoint.get("averaged_from"):
        return {}
    return {"averaged_from": checkpoint["averaged_from"], "average_shares": checkpoint.get("average_shares")}


def finish_run(
    result: TrainResult,
    data: str | Path,
    *,
    promote: bool = False,
    weights_dir: Path = WEIGHTS_DIR,
    int8: bool = True,
    notes: str | None = None,
    imgsz: int | None = None,
    log=print,
) -> dict:
    """Export, evaluate, card, champion/challenger. Returns the card dict.

    `notes` (Markdown) opens the card: what only the trainer knows, such as why this run exists.
    `imgsz` exports for another input size than the run trained at (default: the same).
    """
    from training.export import compare_speed, export, load_checkpoint, sha256_file
    from training.model_card import (DEFAULT_WEAKNESSES, coverage_weaknesses, source_entries,
                                     training_instances, write_card)
    from training.promote import decide, install

    data = Path(data).resolve()
    out = result.run_dir / "export"
    exported = export(result.best, out, imgsz=imgsz, calib=split_dir(data, "train"), int8=int8, stem=STEM)
    real, synthetic = split_synthetic(val_set(data))

    metrics: dict[str, dict] = {"real_val": {}}
    fp32_eval = evaluate_onnx(exported.fp32, real)
    metrics["real_val"][exported.fp32.name] = fp32_eval.to_dict()
    log(f"fp32 export on the real val split ({fp32_eval.images} images):\n{fp32_eval.table()}")
    card_int8, speed = None, None
    if exported.int8 is not None:
        int8_eval = evaluate_onnx(exported.int8, real)
        metrics["real_val"][exported.int8.name] = int8_eval.to_dict()
        log(f"int8 export on the real val split:\n{int8_eval.table()}")
        card_int8 = {
            "calibration_images": exported.calibration_images,
            "excluded_nodes": exported.excluded_nodes,
            "map50_fp32": fp32_eval.map50,
            "map50_int8": int8_eval.map50,
            "map50_delta_points": round(100 * (int8_eval.map50 - fp32_eval.map50), 2),
        }
        card_int8["within_1_5_points"] = abs(card_int8["map50_delta_points"]) <= 1.5
        hw = json.loads(exported.metadata.get("imgsz", "[416, 416]"))
        speed = compare_speed(exported.fp32, exported.int8, (int(hw[0]), int(hw[1])))
        log(f"int8 vs fp32: mAP50 {card_int8['map50_delta_points']:+.2f} points, session "
            f"{speed['fp32_ms']:.1f} -> {speed['int8_ms']:.1f} ms ({speed['ratio']:.2f}x)")
        if not card_int8["within_1_5_points"] or not speed["meets_1_5x"]:
            log("WARNING: int8 misses its targets (within 1.5 AP50 points, >= 1.5x faster); see the card")
    if synthetic is not None:
        metrics["synthetic_val"] = {exported.fp32.name: evaluate_onnx(exported.fp32, synthetic).to_dict()}

    cfg = _data_config(data)
    source_names = cfg.get("sources") or []
    if isinstance(source_names, dict):
        source_names = list(source_names)
    classes = [v for _, v in sorted(_names(exported.metadata).items())]
    manifest = data.parent / "manifest.json"  # written by `gridwatch dataset build`
    instances = (training_instances(json.loads(manifest.read_text(encoding="utf-8")).get("counts", {}), classes)
                 if manifest.is_file() else {})
    train_args = json.loads(exported.metadata.get("gridwatch_train_args", "{}"))
    files = [exported.fp32] + ([exported.int8] if exported.int8 else [])
    card = {
        "name": STEM,
        "model_version": exported.metadata["gridwatch_model_version"],
        "taxonomy_version": exported.metadata["gridwatch_taxonomy_version"],
        "dataset_hash": exported.metadata["gridwatch_dataset_hash"],
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "imgsz": json.loads(exported.metadata.get("imgsz", "[0]"))[0],
        "train_imgsz": train_args.get("imgsz"),
        "score_threshold": DEFAULT_OPERATING_THRESHOLD,
        "classes": classes,
        "train_instances": instances,
        "sources": source_entries([str(s) for s in source_names]),
        "credits": [
            f"{s['name']}: {s['attribution']}" + ("" if s["licence"] in s["attribution"] else f" Licensed {s['licence']}.")
            for s in source_entries([str(s) for s in source_names]) if "CC BY" in s["licence"]
        ],
        "data_notes": [
            "Context classes are pseudo-labels from ../shared/weights/coco-yolov8n-int8.onnx.",
            "flyer and banner examples are synthetic; synthetic val images are reported separately.",
        ],
        "metrics": metrics,
        "int8": card_int8,
        "speed": speed,
        "training": {**train_args, "run_dir": str(result.run_dir), **_lineage(load_checkpoint(result.best))},
        "files": [{"name": f.name, "sha256": sha256_file(f), "bytes": f.stat().st_size} for f in files],
        "weaknesses": DEFAULT_WEAKNESSES + coverage_weaknesses(instances, fp32_eval.to_dict()),
        "licence": "AGPL-3.0 (Ultralytics YOLOv8 architecture and COCO weights)",
    }
    if notes:
        card["summary"] = notes.strip()
    champion_path = weights_dir / f"{STEM}-fp32.onnx"
    champion = evaluate_onnx(champion_path, real) if champion_path.is_file() else None
    decision = decide(fp32_eval, champion)
    log(decision.summary())
    card["decision"] = {"promote": decision.promote, "challenger": decision.challenger_score,
                        "champion": decision.champion_score, "metric": decision.metric}
    md, js = write_card(card, out, STEM)
    # The same card again under each model file's own name, so whoever holds one file finds its card.
    cards = [md, js] + [path for f in files for path in write_card(card, out, f.stem)]
    log(f"model card: {md}")
    if promote and decision.promote:
        installed = install({f.name: f for f in files} | {c.name: c for c in cards}, weights_dir)
        log("installed: " + ", ".join(str(p) for p in installed))
    elif promote:
        log("not promoted: the current default stays")
    else:
        log("not promoted (pass --promote to install a challenger that is not worse)")
    return card


def _names(metadata: dict[str, str]) -> dict[int, str]:
    import ast

    raw = ast.literal_eval(metadata.get("names", "{}"))
    return {int(k): str(v) for k, v in (raw.items() if isinstance(raw, dict) else enumerate(raw))}
