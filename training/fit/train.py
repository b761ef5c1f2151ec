"""`gridwatch train`: fine-tune with Ultralytics, then judge the result as it will be served.

After training, best.pt is exported (fp32 + int8), both ONNX files are evaluated on the
dataset's val split through the served runtime, a model card is written into the run
folder, and the fp32 export meets the current default in weights/ on that same split
(champion/challenger). `--promote` installs it only when it is not worse. With review
sources (`gridwatch retrain`) the val split is judged in two parts, base and review.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from detector.files import REPO_ROOT
from detector.runtime import DEFAULT_SCORE_THRESHOLD
from training.data.dataset_manifest import read_label_counts, read_sources
from training.evaluation.evaluate import (EvalSet, PlaceFolds, eval_set_from_images, evaluate, evaluate_place_folds,
                                         image_split_places, onnx_predictor, tiled_held_out)
from training.export.export import (ExportResult, calibration_images, camera_input_hw, compare_speed, export,
                                   load_checkpoint, read_checkpoint_args)
from training.export.export_run import int8_misses
from training.export.row_graft import GraftError, graft_score_rows
from training.evaluation.metrics import EvalResult
from training.evaluation.teacher_check import TeacherCheck, compare_to_teachers
from training.promotion.model_card import (ModelCard, ReviewCounts, card_json, int8_check, render_markdown, run_card,
                                          source_credits, splice_measured_sections, write_card)
from training.offline import ultralytics_offline
from training.data.places import PLACES_FILE
from training.promotion.model_history import promote as promote_model
from training.promotion.promote import decide, decide_loop, guard_loop, guard_rule_classes, rule_classes
from training.data.pseudo_labels import COCO_TEACHER
from training.evaluation.review_judging import human_review_split
from training.fit.sampling import run_sampling
from training.fit.trainer import graft_refit_rows, gridwatch_trainer, run_refit_classes
from training.data.sources import Source
from training.data.yolo_format import DataYaml, read_data_yaml

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


def data_config(data: Path) -> DataYaml:
    if not data.is_file():
        raise TrainError(f"dataset file not found: {data} (build one with `gridwatch dataset build`)")
    config = read_data_yaml(data)
    for split in ("train", "val"):
        if split not in config.splits:
            raise TrainError(f"{data}: missing '{split}'")
    return config


def split_dir(data: DataYaml, split: str) -> Path:
    folder = data.split_dir(split)
    if not folder.is_dir():
        raise TrainError(f"{data.file}: {split} folder {folder} does not exist")
    return folder


def bootstrap_start(cache_dir: Path, calibration_dir: Path | None, count: int = 32) -> Path:
    """The COCO-pretrained start (training/fit/bootstrap.py), built once and cached."""
    target = cache_dir / "yolov8n-coco-bootstrap.pt"
    if target.is_file():
        return target
    import cv2

    from training.fit.bootstrap import bootstrap

    if not COCO_TEACHER.is_file():
        raise TrainError(f"no pretrained start: {COCO_TEACHER} is missing; pass --model yolov8n.yaml to train from scratch")
    images = []
    if calibration_dir is not None:
        images = [im for p in calibration_images(calibration_dir, count) if (im := cv2.imread(str(p))) is not None]
    return bootstrap(COCO_TEACHER, target, images)


def with_activation(start: Path, activation: str, out_dir: Path) -> Path:
    """A copy of `start` whose convolutions use `activation`, its weights kept
    (training.fit.bootstrap.convert_activation)."""
    import torch

    from training.fit.bootstrap import ACTIVATIONS, convert_activation

    if activation not in ACTIVATIONS:
        raise TrainError(f"unknown activation {activation!r}; choose one of {', '.join(ACTIVATIONS)}")
    checkpoint = load_checkpoint(start)
    model = checkpoint.get("ema") or checkpoint.get("model")
    if model is None:
        raise TrainError(f"{start}: no model in this checkpoint")
    convert_activation(model, activation)
    checkpoint.update(model=model, ema=None, optimizer=None, epoch=-1)
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"{Path(start).stem}-{activation}.pt"
    torch.save(checkpoint, out)
    return out


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
    repeat_threshold: float | None = None,
    activation: str | None = None,
    refit_classes: Sequence[str] = (),
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
        # A finished run's last.pt is stripped (epoch -1, no optimizer); Ultralytics would then
        # fall back to its default dataset and try to download it.
        if load_checkpoint(last).get("epoch", -1) < 0:
            raise TrainError(f"{run_dir}: training is finished, nothing to resume "
                             "(use --finish for the after-training steps)")
        refit_classes = run_refit_classes(run_dir)
        start = read_checkpoint_args(last).get("model")
        try:
            # the same trainer again, with the sampling the run started with
            sampling = run_sampling(run_dir).get("repeat_factor_sampling", {})
            YOLO(str(last)).train(resume=True, trainer=gridwatch_trainer(sampling.get("threshold"), seed,
                                                                         refit_classes=refit_classes))
        except AssertionError as exc:  # Ultralytics' way of saying the run already finished
            raise TrainError(f"{run_dir}: {str(exc).splitlines()[0]} (use --finish for the after-training steps)") from None
        return trained(run_dir, start, refit_classes)
    data = Path(data).resolve()
    config = data_config(data)
    if model is None:
        model = bootstrap_start(project / ".bootstrap", split_dir(config, "train"))
    if activation:
        model = with_activation(Path(model), activation, run_dir / "start")
    if refit_classes and not str(model).endswith(".pt"):
        raise TrainError(f"--refit-classes teaches a trained model: --model must be a .pt, not {model}")
    if unknown := sorted(set(refit_classes) - set(config.names.values())):
        raise TrainError(f"--refit-classes: {', '.join(unknown)} not among the dataset's classes "
                         f"({', '.join(config.names.values())})")
    device = device or default_device()
    YOLO(str(model)).train(
        trainer=gridwatch_trainer(repeat_threshold, seed, refit_classes=refit_classes), data=str(data),
        epochs=epochs, imgsz=imgsz, batch=batch, device=device, project=str(project), name=name, exist_ok=True,
        fraction=fraction, workers=workers, plots=plots, seed=seed, deterministic=False, verbose=True,
        **(extra or {}),
    )
    return trained(run_dir, model, refit_classes)


def trained(run_dir: Path, start: str | Path | None, refit_classes: Sequence[str]) -> TrainResult:
    """The finished run; after a class refit its weights files hold the start model in full
    precision with only the refit rows learnt (training.fit.trainer.graft_refit_rows)."""
    best = run_dir / "weights" / "best.pt"
    if not best.is_file():
        raise TrainError(f"training finished without {best}")
    if refit_classes:
        for weights in (best, run_dir / "weights" / "last.pt"):
            if weights.is_file():
                graft_refit_rows(Path(start), weights, refit_classes)
    return TrainResult(run_dir=run_dir, best=best)


def class_refit(run_dir: Path) -> dict:
    """Which classes' score rows the run trained, for the card ({} when it trained the whole model)."""
    classes = run_refit_classes(run_dir)
    return {"class_refit": classes} if classes else {}


def existing_run(project: str | Path, name: str | None) -> TrainResult:
    """A finished run folder, for the after-training steps alone (`--finish`)."""
    if not name:
        raise TrainError("--finish needs --name (the run folder under --project)")
    run_dir = Path(project).resolve() / name
    best = run_dir / "weights" / "best.pt"
    if not best.is_file():
        raise TrainError(f"no finished run at {run_dir}: {best} does not exist")
    return TrainResult(run_dir=run_dir, best=best)


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


def split_sources(eval_set: EvalSet, sources: Sequence[str]) -> tuple[EvalSet, EvalSet]:
    """(images of other sources, images of `sources`): a built dataset names each image
    `source__file` (training/data/dataset_build.py)."""
    prefixes = tuple(f"{s}__" for s in sources)
    mine = [im for im in eval_set.images if Path(im.path).name.startswith(prefixes)] if prefixes else []
    mk = lambda images: EvalSet(root=eval_set.root, source=eval_set.source, images=images, dropped_labels=0)  # noqa: E731
    return mk([im for im in eval_set.images if im not in mine]), mk(mine)


def val_set(data: DataYaml) -> EvalSet:
    """The dataset's val split; a built dataset is in gridwatch classes already."""
    folder = data.file.parent
    return eval_set_from_images(split_dir(data, "val"), data.names, {n: n for n in data.names.values()},
                                root=folder, source=folder.name)


def evaluate_onnx(model: Path, eval_set: EvalSet, threshold: float = DEFAULT_SCORE_THRESHOLD) -> EvalResult:
    predict, _ = onnx_predictor(model)
    return evaluate(predict, eval_set, threshold)


PLACE_FOLDS = 5  # folds of whole places the card reports, fewer when the val split has fewer places


def evaluate_by_place(model: Path, eval_set: EvalSet, places_file: Path,
                      tiled: Path | None = None) -> tuple[EvalResult, PlaceFolds | None]:
    """The model on the real val split and on folds of whole places, from the same predictions.

    A build split by place names them in its places.json. A build split by image has none: places
    are found by perceptual hash over its train and val images, and the val images of places the
    model trained on are left out of the folds (PlaceFolds.held_out). `tiled`: a model file (the
    served one) also scored tiled on the held-out images (PlaceFolds.tiled)."""
    dataset_dir = places_file.parent
    seen = None
    if places_file.is_file():
        places = json.loads(places_file.read_text(encoding="utf-8"))
        groups = {im.path: places.get(im.path.name, f"image:{im.path.name}") for im in eval_set.images}
        # how the build grouped each source (its report.json), for the card
        grouping = build_report(dataset_dir).get("places") or [f"places from {places_file.name}"]
    elif (image_split := image_split_places(eval_set, dataset_dir)) is not None:
        groups, seen, grouping = image_split
    else:
        return evaluate_onnx(model, eval_set), None
    k = min(PLACE_FOLDS, len({place for path, place in groups.items() if seen is None or path not in seen}))
    if k < 2:
        return evaluate_onnx(model, eval_set), None
    predict, _ = onnx_predictor(model)
    whole, folds = evaluate_place_folds(predict, eval_set, k, places=groups, grouping=grouping, seen=seen)
    if tiled is not None:
        folds = dataclasses.replace(folds, tiled=tiled_held_out(tiled, eval_set, seen))
    return whole, folds


def against_teachers(served: Path, real: EvalSet, log) -> TeacherCheck | None:
    """The served file against the COCO teacher files on the real val images, logged (None: no teacher here)."""
    teachers = compare_to_teachers(served, [im.path for im in real.images])
    if teachers is not None:
        log(f"{served.name} against the COCO teacher on the real val split:\n" + "\n".join(teachers.lines()))
    return teachers


def build_report(dataset_dir: Path) -> dict:
    """The dataset build's report.json ({} for a dataset made by hand)."""
    path = dataset_dir / "report.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _lineage(checkpoint: dict) -> dict:
    """How an averaged checkpoint (`gridwatch average`) was made, for the card."""
    if not checkpoint.get("averaged_from"):
        return {}
    return {"averaged_from": checkpoint["averaged_from"], "average_shares": checkpoint.get("average_shares")}


def graft_int8(base: Path, refit: Path, classes: Sequence[str], exported: ExportResult, log) -> Path:  # noqa: ANN001
    """The refit's int8 file: `base` with the refit rows grafted, its calibration kept."""
    import re

    from detector.model import open_session

    _, info = open_session(base, threads=1)
    if str(info.metadata.get("imgsz")) != exported.metadata.get("imgsz"):
        raise TrainError(f"--int8-from {base} was exported at {info.metadata.get('imgsz')} px, this run at "
                         f"{exported.metadata.get('imgsz')}: pass --imgsz to match")
    try:
        out = graft_score_rows(base, refit, classes, exported.fp32.with_name(f"{STEM}-int8.onnx"), exported.metadata)
    except GraftError as exc:
        raise TrainError(f"--int8-from: {exc}") from None
    counted = re.search(r"(\d+) images", info.metadata.get("gridwatch_calibration", ""))
    exported.calibration_images = int(counted.group(1)) if counted else 0
    log(f"int8: the score rows of {', '.join(classes)} grafted into {base} (its calibration kept) -> {out}")
    return out


def finish_run(
    result: TrainResult,
    data: str | Path,
    *,
    promote: bool = False,
    weights_dir: Path = WEIGHTS_DIR,
    int8: bool = True,
    notes: str | None = None,
    imgsz: int | None = None,
    review_sources: Sequence[Source] = (),
    review_data: ReviewCounts | None = None,
    force_reason: str | None = None,
    int8_from: Path | None = None,
    log=print,
) -> ModelCard:
    """Export, evaluate, card, champion/challenger. Returns the card.

    `notes` (Markdown) opens the card: what only the trainer knows, such as why this run exists.
    `imgsz` exports for another input size than the run trained at (default: the same).
    `review_sources` (`gridwatch retrain`): the val images of these sources are the review
    split, judged apart from the rest (the base real val split); `review_data` goes on the card.
    `force_reason`: promote even though a class a violation rule uses fell (training.promotion.promote
    guard_rule_classes); the reason goes on the card.
    `int8_from`: for a class refit, the int8 file of the model it was refit from; the refit rows are
    grafted into it (training/export/row_graft.py) instead of calibrating a new one.
    """
    dataset = data_config(Path(data).resolve())
    # The build's manifest records each source's licence and attribution: a source given by its
    # definition's path (`gridwatch dataset import`) has no datasets/NAME.yaml to look up later.
    recorded = read_sources(dataset.file.parent / "manifest.json")
    sources = source_credits(dataset.sources, [*recorded, *review_sources])  # a missing definition fails now, not after the export
    out = result.run_dir / "export"
    grafted = run_refit_classes(result.run_dir) if int8_from else []
    if int8_from and not grafted:
        raise TrainError("--int8-from grafts a class refit's rows into an int8 file: this run trained the whole model")
    exported = export(result.best, out, imgsz=imgsz, calib=split_dir(dataset, "train"), int8=int8 and not grafted,
                      stem=STEM, log=log)
    if int8 and grafted:
        exported.int8 = graft_int8(Path(int8_from), result.best, grafted, exported, log)
    real, synthetic = split_synthetic(val_set(dataset))
    real, review = split_sources(real, [s.name for s in review_sources])

    fp32_eval, place_folds = evaluate_by_place(exported.fp32, real, dataset.file.parent / PLACES_FILE,
                                               tiled=exported.int8 or exported.fp32)
    metrics = {"real_val": {exported.fp32.name: fp32_eval.to_dict()}}
    log(f"fp32 export on the real val split ({fp32_eval.images} images):\n{fp32_eval.table()}")
    quantised, speed = None, None
    if exported.int8 is not None:
        int8_eval = evaluate_onnx(exported.int8, real)
        metrics["real_val"][exported.int8.name] = int8_eval.to_dict()
        log(f"int8 export on the real val split:\n{int8_eval.table()}")
        quantised = int8_check(exported, fp32_eval, int8_eval)
        speed = compare_speed(exported.fp32, exported.int8, camera_input_hw(exported.int8))
        log(f"int8 vs fp32: mAP50 {quantised.map50_delta_points:+.2f} points, session "
            f"{speed.fp32_ms:.1f} -> {speed.int8_ms:.1f} ms ({speed.ratio:.2f}x)")
        for miss in int8_misses(quantised, speed):
            log(f"WARNING: int8 misses its target on {miss}; see the card")
    teachers = against_teachers(exported.int8 or exported.fp32, real, log)
    if synthetic is not None:
        metrics["synthetic_val"] = {exported.fp32.name: evaluate_onnx(exported.fp32, synthetic).to_dict()}

    champion_path = weights_dir / f"{STEM}-fp32.onnx"
    champion = evaluate_onnx(champion_path, real) if champion_path.is_file() else None
    if review_sources:
        # Judged on what people decided only: the frames' pseudo-labels are the champion's own boxes.
        judged = human_review_split(review, review_sources)
        log(judged.summary())
        review_eval = judged.evaluate(exported.fp32)
        review_champion = judged.evaluate(champion_path) if champion_path.is_file() else None
        metrics["review_val"] = {exported.fp32.name: review_eval.to_dict()}
        if review_champion is not None:
            metrics["review_val"][f"champion {champion_path.name}"] = review_champion.to_dict()
        log(f"fp32 export on the review val split ({review_eval.images} images):\n{review_eval.table()}")
        decision = guard_loop(decide_loop(fp32_eval, champion, review_eval, review_champion), rule_classes(),
                              force_reason)
    else:
        decision = guard_rule_classes(decide(fp32_eval, champion), rule_classes(), force_reason)
    log(decision.summary())

    manifest = dataset.file.parent / "manifest.json"  # written by `gridwatch dataset build`
    files = [exported.fp32] + ([exported.int8] if exported.int8 else [])
    card = run_card(
        STEM, exported, sources=sources, counts=read_label_counts(manifest) if manifest.is_file() else None,
        metrics=metrics, real_val=fp32_eval, int8=quantised, speed=speed,
        training={**exported.train_args, "run_dir": str(result.run_dir), **_lineage(load_checkpoint(result.best)),
                  **run_sampling(result.run_dir), **class_refit(result.run_dir)},
        files=files, decision=decision, summary=notes.strip() if notes else None,
        pseudo_label_audit=build_report(dataset.file.parent).get("pseudo_suppressed"), review_data=review_data,
        place_folds=place_folds.to_dict() if place_folds is not None else None,
        teacher_check=teachers.to_dict() if teachers is not None else None,
    )
    md, js = write_card(card, out, STEM)
    # The same card again under each model file's own name, so whoever holds one file finds its card.
    cards = [md, js] + [path for f in files for path in write_card(card, out, f.stem)]
    log(f"model card: {md}")
    if promote and decision.promote:
        # The model it replaces is kept in weights/history/ (`gridwatch models list`, `rollback`).
        installed = promote_model({f.name: f for f in files} | {c.name: c for c in cards}, weights_dir,
                                  how="champion/challenger", reason="; ".join(decision.summary().splitlines()),
                                  log=log)
        log("installed: " + ", ".join(str(p) for p in installed))
    elif promote:
        log("not promoted: the current default stays")
    else:
        log("not promoted (pass --promote to install a challenger that is not worse)")
    return card


def measure_served(data: str | Path, weights_dir: Path = WEIGHTS_DIR, log=print) -> ModelCard:
    """The served model measured again on a built dataset's real val split, held out by place and
    against the COCO teacher, into its cards (`gridwatch models card`). Only those two sections
    change: the rest of each card, notes written since its training included, stays as it is."""
    card_file = weights_dir / f"{STEM}.json"
    if not card_file.is_file():
        raise FileNotFoundError(f"{card_file}: no model card to measure into")
    card = ModelCard.model_validate(json.loads(card_file.read_text(encoding="utf-8")))
    dataset = data_config(Path(data).resolve())
    real, _ = split_synthetic(val_set(dataset))
    fp32, int8 = weights_dir / f"{STEM}-fp32.onnx", weights_dir / f"{STEM}-int8.onnx"
    carded = card.metrics.get("real_val", {}).get(fp32.name, {}).get("map50")
    whole, folds = evaluate_by_place(fp32, real, dataset.file.parent / PLACES_FILE,
                                     tiled=int8 if int8.is_file() else fp32)
    if carded is not None and abs(whole.map50 - carded) > 0.005:
        log(f"WARNING: {fp32.name} reads mAP50 {whole.map50:.3f} on this val split, the card {carded:.3f}: "
            "the card's real_val tables were measured on another split")
    if folds is not None:
        log(f"{fp32.name} held out by place" + (f" ('tiled': {folds.tiled.model} tiled on the same images)"
                                                 if folds.tiled else "") + f":\n{folds.table(whole)}")
    teachers = against_teachers(int8 if int8.is_file() else fp32, real, log)
    card = card.model_copy(update={"place_folds": folds.to_dict() if folds is not None else None,
                                   "teacher_check": teachers.to_dict() if teachers is not None else None})
    for stem in [STEM] + [Path(f.name).stem for f in card.files]:
        md = weights_dir / f"{stem}.md"
        (weights_dir / f"{stem}.json").write_text(card_json(card), encoding="utf-8")
        text = md.read_text(encoding="utf-8") if md.is_file() else render_markdown(card)
        md.write_text(splice_measured_sections(text, card), encoding="utf-8")
    return card
