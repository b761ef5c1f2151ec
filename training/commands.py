"""`gridwatch train`, `gridwatch retrain`, `gridwatch eval`, `gridwatch export`.

Only argparse at import time: torch and Ultralytics load inside the command that needs them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from serving.commands.numbers import IMGSZ, THREADS, real, whole
from training.fit.sampling import DEFAULT_THRESHOLD as REPEAT_THRESHOLD

# Ultralytics' optimizer names (ultralytics/engine/trainer.py build_optimizer).
OPTIMIZERS = ("auto", "SGD", "MuSGD", "Adam", "Adamax", "AdamW", "NAdam", "RAdam", "RMSprop")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train", help="fine-tune the detector on a built dataset (CPU or GPU)")
    p.add_argument("--data", type=Path, help="data.yaml of a built dataset (gridwatch dataset build)")
    p.add_argument("--model", help="start .pt or architecture .yaml (default: YOLOv8n rebuilt from the COCO ONNX)")
    add_run_options(p, epochs=50, project="runs/train", imgsz=None,
                    imgsz_help="training input size (default 416); with --finish, the input size of the exported "
                    "model (default: the training size)",
                    time_help="training budget in hours; overrides --epochs (Ultralytics re-plans the epochs to "
                    "fit): a GPU lent for minutes trains to its limit and still returns best.pt",
                    repeat_help="repeat-factor sampling (LVIS): images of classes and sources held by fewer than "
                    f"this fraction of train images are drawn more often (alone: {REPEAT_THRESHOLD}; default: off, "
                    "every image once per epoch)")
    p.add_argument("--resume", action="store_true", help="continue --project/--name from its last.pt")
    p.add_argument("--finish", action="store_true",
                   help="skip training: export, evaluate, card and champion/challenger for --project/--name")
    p.add_argument("--fraction", type=float, default=1.0, help="train on this fraction of the train split")
    p.add_argument("--activation", choices=("silu", "relu"),
                   help="convert the start model's activations before training (relu: faster int8 on CPU, "
                        "needs a fine-tune to recover accuracy; default: keep the start's)")
    p.add_argument("--distill", type=Path, metavar="TEACHER",
                   help="feature distillation from this .pt (Ultralytics' distill_model): the neck features the "
                        "teacher's detection head reads are taught to the student, e.g. the SiLU default "
                        "teaching its ReLU conversion")
    p.add_argument("--close-mosaic", type=whole(0), help="last epochs trained without mosaic augmentation")
    p.add_argument("--warmup-epochs", type=float, help="epochs of learning-rate warm-up (Ultralytics' default 3)")
    p.add_argument("--freeze", type=whole(0), metavar="N",
                   help="keep the first N layers as they are (10: YOLOv8's backbone), so a short fine-tune "
                        "on new data moves only the neck and head and cannot unlearn what the backbone knows")
    add_refit_classes(p)
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="auto",
                   help="auto lets Ultralytics pick (AdamW on short runs) and set its own learning rate")
    p.add_argument("--lr0", type=float, help="initial learning rate; needs an explicit --optimizer")
    p.add_argument("--no-int8", dest="int8", action="store_false", help="export fp32 only after training")
    p.add_argument("--int8-from", type=Path, metavar="INT8_ONNX",
                   help="after a class refit (--refit-classes): graft the refit rows into this int8 file, the one "
                        "of the model the refit started from, instead of calibrating a new one, so every other "
                        "class keeps its int8 weights and calibration byte for byte")
    p.add_argument("--card-notes", type=Path,
                   help="Markdown file whose text opens the model card (the run's history, comparisons)")
    p.add_argument("--promote", action="store_true",
                   help="install the result in weights/ if it is not worse than the current default")
    add_weights_dir(p, "where the current default lives (weights/)")
    add_force_reason(p)
    p.set_defaults(func=run_train)

    p = subparsers.add_parser(
        "retrain", help="fine-tune the current default on the base sources plus reviewed frames; promote if better",
        description="Build one dataset from the base sources (datasets/*.yaml) and each --review folder "
        "(`gridwatch review export`; its frames split train/val by camera and day), fine-tune from the "
        "current default model in weights/, evaluate challenger and champion on the same base real val "
        "split and the same review val split, and promote into weights/ only if the challenger is not "
        "worse on the base split and better on the review split.")
    p.add_argument("--review", action="append", default=[], type=Path, metavar="DIR",
                   help="a review export folder (repeatable)")
    add_run_options(p, epochs=10, project="runs/retrain", imgsz=None,
                    imgsz_help="training input size (the export uses it too; default: the served model's, 416 if "
                               "it has none); with --refit-classes it must be the served int8 file's, whose "
                               "calibration the refit rows are grafted into",
                    time_help="training budget in hours; overrides --epochs (Ultralytics re-plans the epochs to fit)",
                    repeat_help=f"repeat-factor sampling as for `gridwatch train` (alone: {REPEAT_THRESHOLD}; "
                    "default: off)")
    add_weights_dir(p, "where the current default lives and a promotion goes (weights/)")
    p.add_argument("--sources", help="comma-separated base sources (default: all in datasets/)")
    p.add_argument("--root", type=Path, help="datasets root the base sources are relative to (../shared/datasets)")
    p.add_argument("--limit", type=whole(1), metavar="N", help="first N images of each base source (quick runs)")
    p.add_argument("--val-fraction", type=float, default=0.15)
    p.add_argument("--image-size", type=IMGSZ, default=640, help="re-encode dataset images larger than this (max side)")
    p.add_argument("--synthetic", type=whole(0), default=600, metavar="N",
                   help="synthetic flyer/banner images (default 600, as the shipped model: they are its only flyers)")
    p.add_argument("--crops", type=whole(0), default=0, metavar="TILE",
                   help="native-resolution train crops of small signs, ads, flyers and banners (as `gridwatch "
                        "dataset build --crops`)")
    add_refit_classes(p)
    p.add_argument("--pseudo-labels", action=argparse.BooleanOptionalAction, default=True,
                   help="COCO-teacher boxes for the context classes on the base sources (default: on)")
    p.add_argument("--cache-dir", type=Path, help="teacher output cache (default: runs/cache/teacher)")
    add_force_reason(p)
    p.set_defaults(func=run_retrain)

    p = subparsers.add_parser("average", help="average checkpoints of one lineage into a new run's best.pt")
    p.add_argument("--weights", required=True, nargs="+", type=Path, help="two or more .pt checkpoints")
    p.add_argument("--shares", nargs="+", type=float, help="one weight per checkpoint (default: equal)")
    p.add_argument("--project", type=Path, default=Path("runs/train"))
    p.add_argument("--name", required=True, help="run folder to create under --project; finish it with "
                                                 "`gridwatch train --finish --name NAME`")
    p.set_defaults(func=run_average)

    p = subparsers.add_parser("eval", help="per-class AP of a model (ONNX as served, or .pt) on a labelled folder")
    p.add_argument("--model", required=True, type=Path, help="model .onnx (served runtime) or .pt")
    p.add_argument("--data", required=True, type=Path, help="folder with images/, labels/, data.yaml")
    p.add_argument("--source", help="dataset definition whose class mapping applies (default: folder name)")
    p.add_argument("--json", action="store_true", help="print one JSON object and nothing else on stdout")
    p.add_argument("--imgsz", type=IMGSZ, help="input size for a .pt model; for an ONNX model exported with dynamic height and width, another longest side (a static one refuses)")
    p.add_argument("--plots", type=Path, help="write PR_curve.png and confusion_matrix.png here")
    p.add_argument("--score-threshold", type=real(0, 1), default=None,
                   help="operating threshold for precision/recall (default: the model's, else 0.25)")
    p.add_argument("--threads", type=THREADS, default=None)
    p.add_argument("--tiles", nargs="?", const=0, type=whole(64), metavar="SIZE",
                   help="ONNX only: also evaluate tiled as the static checks run (tiles of SIZE px over the "
                        "frame's pyramid, default the model's input; a build's images from their larger source "
                        "files) and report both ways")
    p.add_argument("--split", choices=("train", "val", "test"),
                   help="the data.yaml split to score (default: val, else test, else train; the report names it)")
    p.add_argument("--save-errors", type=Path, metavar="DIR",
                   help="write each image's false positives and misses at the operating threshold, worst first: "
                        "DIR/errors.json and the images drawn with them")
    p.add_argument("--place-folds", type=whole(2), metavar="K",
                   help="also per-class AP50 on K folds of whole places (the folder's places.json, written by "
                        "`gridwatch dataset build --split-by place`, else perceptual-hash clusters): mean, min "
                        "and max over the folds, beside the figure over all images; on a build split by image, "
                        "the images of places its train split holds are left out of the folds and the rest is "
                        "scored as 'held out'")
    p.set_defaults(func=run_eval)

    p = subparsers.add_parser("export", help="export a trained .pt to fp32 and static-quantized int8 ONNX")
    p.add_argument("--weights", required=True, type=Path, help="trained Ultralytics .pt (best.pt)")
    p.add_argument("--imgsz", type=IMGSZ, help="input size (default: the training imgsz)")
    p.add_argument("--out", type=Path, help="output folder (default: runs/export/NAME-TIME; never the served "
                   "model's folder: `gridwatch models promote` puts a model in service)")
    add_weights_dir(p, "the served model's folder, to compare with and never write to (default: weights/)")
    p.add_argument("--calib", type=Path, help="folder of real images for int8 calibration (32+)")
    p.add_argument("--int8", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--name", default="gridwatch", help="file stem: NAME-fp32.onnx, NAME-int8.onnx")
    p.add_argument("--version", help="gridwatch_model_version (default: stem-date-sha)")
    p.add_argument("--static", action="store_true",
                   help="fixed 1x3xIMGSZxIMGSZ input (default: batch, height and width free, so each frame "
                        "runs at its own letterboxed shape)")
    p.add_argument("--for-ultralytics", action="store_true",
                   help="an int8 file Ultralytics can run too: float RGB input and decoded output; default: for "
                        "gridwatch's detector alone, taking the BGR pixels and ending at the head's per-level "
                        "convolutions (about 0.9 ms faster per 1080p frame)")
    p.set_defaults(func=run_export)

    from training.second_stage.commands import add_parser as add_second_stage  # argparse only, like this module

    add_second_stage(subparsers)


# -- options and checks the training commands share (model_commands.py too) -----------------------
def add_run_options(p: argparse.ArgumentParser, *, epochs: int, project: str, imgsz: int | None, imgsz_help: str,
                    time_help: str, repeat_help: str) -> None:
    """A training run's options, as `train` and `retrain` both take them."""
    p.add_argument("--epochs", type=whole(1), default=epochs)
    p.add_argument("--time", type=real(0, low_open=True), metavar="HOURS", help=time_help)
    p.add_argument("--imgsz", type=IMGSZ, default=imgsz, help=imgsz_help)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--device", help="cpu or a CUDA index such as 0 (default: GPU when present)")
    p.add_argument("--workers", type=whole(0), default=2)
    p.add_argument("--project", type=Path, default=Path(project))
    p.add_argument("--name", help="run folder name under --project (default: timestamped)")
    p.add_argument("--cache", choices=("ram", "disk"), help="cache decoded training images (ram: fastest on CPU)")
    p.add_argument("--repeat-threshold", type=float, metavar="T", nargs="?", const=REPEAT_THRESHOLD, help=repeat_help)
    p.add_argument("--no-plots", dest="plots", action="store_false", help="skip Ultralytics' training plots")


def add_weights_dir(p: argparse.ArgumentParser, help: str = "the served model's folder (default: weights/)") -> None:
    p.add_argument("--weights-dir", type=Path, default=None, help=help)


def add_force_reason(p: argparse.ArgumentParser) -> None:
    p.add_argument("--force-reason", metavar="TEXT",
                   help="promote even though a class that a violation rule uses fell by more than 5 AP50 points "
                        "(the reason goes on the model card and the log)")


def add_refit_classes(p: argparse.ArgumentParser) -> None:
    p.add_argument("--refit-classes", metavar="CLASS[,CLASS]",
                   help="train only the detection head's score rows of these classes (e.g. truck,bus); every "
                        "other weight is frozen and every other class scores exactly as before, so teaching "
                        "one class cannot cost the others")


def weights_dir(args: argparse.Namespace) -> Path:
    """--weights-dir, else the served model's folder (weights/)."""
    from training.fit.train import WEIGHTS_DIR

    return args.weights_dir or WEIGHTS_DIR


def blank_reason(value: str | None, flag: str, why: str) -> str | None:
    """The error for a reason option given but empty (a promotion outside the rules says why)."""
    return f"{flag} needs a reason: {why}" if value is not None and not value.strip() else None


def fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2



def ultralytics_options(args: argparse.Namespace) -> dict:
    """The `train` options Ultralytics takes as they are, those given."""
    given = {"cache": args.cache, "close_mosaic": args.close_mosaic, "time": args.time,
             "warmup_epochs": args.warmup_epochs, "freeze": args.freeze, "optimizer": args.optimizer, "lr0": args.lr0,
             "distill_model": args.distill and str(args.distill.resolve())}
    return {k: v for k, v in given.items() if v is not None}


def class_list(value: str | None) -> list[str]:
    return [c.strip() for c in value.split(",") if c.strip()] if value else []


def refit_classes_error(value: str | None) -> str | None:
    """Checked before any dataset is built or epoch trained: a typo must not cost an hour."""
    if value is None:
        return None
    from detector.taxonomy import load_taxonomy

    classes = class_list(value)
    if not classes:
        return "--refit-classes needs at least one class name"
    known = load_taxonomy().all_detector_classes
    unknown = [c for c in classes if c not in known]
    return f"--refit-classes: {', '.join(unknown)} not a detector class ({', '.join(known)})" if unknown else None


def run_train(args: argparse.Namespace) -> int:
    from training.fit.train import TrainError, existing_run, finish_run, train

    if not (args.resume or args.finish) and args.data is None:
        return fail("--data is required (unless --resume or --finish)")
    if args.lr0 is not None and args.optimizer == "auto":
        # Ultralytics silently replaces lr0 when it picks the optimizer itself.
        return fail("--lr0 has no effect with --optimizer auto; name the optimizer, e.g. --optimizer SGD")
    if args.refit_classes is not None and (args.freeze is not None or args.activation or args.distill):
        return fail("--refit-classes trains the score rows alone: it cannot be combined with --freeze, "
                    "--activation or --distill")
    if error := refit_classes_error(args.refit_classes):
        return fail(error)
    if args.int8_from is not None and not args.int8_from.is_file():
        return fail(f"--int8-from: no int8 file at {args.int8_from}")
    if args.distill is not None and not args.distill.is_file():
        return fail(f"--distill: no teacher checkpoint at {args.distill}")
    if error := blank_reason(args.force_reason, "--force-reason", "say why the fall is acceptable"):
        return fail(error)
    try:  # read now: a typo must not surface only after hours of training
        notes = args.card_notes.read_text(encoding="utf-8") if args.card_notes else None
    except (OSError, UnicodeDecodeError) as exc:
        return fail(f"--card-notes: {exc}")
    try:
        if args.finish:
            result = existing_run(args.project, args.name)
        else:
            result = train(
                args.data, args.model, epochs=args.epochs, imgsz=args.imgsz or 416, batch=args.batch,
                device=args.device, project=args.project, name=args.name, resume=args.resume,
                fraction=args.fraction, workers=args.workers, plots=args.plots,
                repeat_threshold=args.repeat_threshold, activation=args.activation,
                refit_classes=class_list(args.refit_classes), extra=ultralytics_options(args),
            )
        data = args.data
        if data is None:  # the data is what the run was started with
            from training.export.export import read_checkpoint_args

            data = Path(read_checkpoint_args(result.best)["data"])
        finish_run(result, data, promote=args.promote, weights_dir=weights_dir(args),
                   int8=args.int8, notes=notes, imgsz=args.imgsz if args.finish else None,
                   force_reason=args.force_reason, int8_from=args.int8_from)
    except (TrainError, ValueError, FileNotFoundError) as exc:
        return fail(str(exc))
    return 0


def run_retrain(args: argparse.Namespace) -> int:
    from training.data_commands import _sources
    from training.data.dataset_build import BuildError
    from training.promotion.retrain import RetrainOptions, retrain
    from training.data.sources import SourceError
    from training.fit.train import TrainError

    if error := blank_reason(args.force_reason, "--force-reason", "say why the fall is acceptable"):
        return fail(error)
    if error := refit_classes_error(args.refit_classes):
        return fail(error)
    try:
        card = retrain(RetrainOptions(
            reviews=args.review, epochs=args.epochs, hours=args.time, imgsz=args.imgsz, batch=args.batch,
            device=args.device, workers=args.workers, plots=args.plots, weights_dir=args.weights_dir,
            project=args.project, name=args.name,
            sources=_sources(args.sources, args.root) if (args.sources or args.root) else None,
            limit=args.limit, val_fraction=args.val_fraction, image_size=args.image_size, synthetic=args.synthetic,
            crops=args.crops, repeat_threshold=args.repeat_threshold, refit_classes=class_list(args.refit_classes),
            pseudo_labels=args.pseudo_labels, teacher_cache=args.cache_dir,
            extra={"cache": args.cache} if args.cache else {}, force_reason=args.force_reason,
        ), log=lambda line: print(line, flush=True))
    except (TrainError, BuildError, SourceError, ValueError, FileNotFoundError) as exc:
        return fail(str(exc))
    print(f"retrain: {'promoted' if card.decision.promote else 'not promoted'} ({card.model_version})")
    return 0


def run_average(args: argparse.Namespace) -> int:
    from training.fit.average import average_checkpoints
    from training.export.export import ExportError

    out = args.project / args.name / "weights" / "best.pt"
    if out.exists():  # it may be one of the checkpoints averaged: a run is never written over
        return fail(f"{out} exists: give the average a new --name")
    try:
        average_checkpoints(args.weights, out, args.shares)
    except ExportError as exc:
        return fail(str(exc))
    print(f"averaged {len(args.weights)} checkpoints -> {out}")
    print(f"next: gridwatch train --finish --project {args.project} --name {args.name} --promote")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    import json

    from detector.model import DetectorError
    from detector.runtime import DEFAULT_SCORE_THRESHOLD
    from training.evaluation.eval_plots import write_plots
    from training.evaluation.evaluate import (
        EvalError,
        evaluate,
        evaluate_place_folds,
        image_split_places,
        load_eval_set,
        onnx_predictor,
        operating_threshold_of,
        source_originals,
        tiled_predictor,
        ultralytics_predictor,
    )

    from training.evaluation.eval_audit import Recorder, image_errors, save_errors, training_overlap

    say = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731 - stdout may be --json
    if args.save_errors is not None and args.place_folds is not None:
        return fail("--save-errors and --place-folds: one at a time")
    if args.plots is not None:
        try:  # asked before an evaluation of minutes, not after it
            import matplotlib  # noqa: F401
        except ImportError:
            return fail("--plots needs matplotlib: pip install 'gridwatch[train]'")
    try:
        eval_set = load_eval_set(args.data, args.source, args.split)
        say(f"scoring the {eval_set.split} split of {args.data} ({len(eval_set.images)} images)")
        overlap = training_overlap(args.model, eval_set)
        if overlap is not None:
            say(overlap.warning())
        if args.model.suffix == ".pt":
            from training.export.export import read_checkpoint_args

            imgsz = args.imgsz or int(read_checkpoint_args(args.model).get("imgsz") or 640)
            predict = ultralytics_predictor(args.model, imgsz)
            threshold = DEFAULT_SCORE_THRESHOLD
        else:
            predict, metadata = onnx_predictor(args.model, threads=args.threads, imgsz=args.imgsz)
            threshold = operating_threshold_of(metadata)
            labelled = sorted({c for image in eval_set.images for c in image.classes})
            if labelled and not set(labelled) & set(predict.names.values()):
                # Every AP would read 0 with nothing to say why.
                return fail(f"none of the folder's classes ({', '.join(labelled[:8])}) is one of the model's: a "
                            "source folder needs --source NAME, whose datasets/NAME.yaml maps its classes")
        if args.score_threshold is not None:
            threshold = args.score_threshold
        folds = None
        if args.place_folds is not None:
            # on a build split by image, the images of places its train split holds are left out, as on the card
            image_split = image_split_places(eval_set, Path(args.data))
            result, folds = evaluate_place_folds(
                predict, eval_set, args.place_folds, threshold,
                **(dict(zip(("places", "seen", "grouping"), image_split)) if image_split else {}))
        else:
            recorder = Recorder(predict, len(eval_set.images), say, keep=args.save_errors is not None)
            result = evaluate(recorder, eval_set, threshold)
            if args.save_errors is not None:
                errors = save_errors(image_errors(eval_set, recorder.found, threshold), args.save_errors,
                                     eval_set.split)
                say(f"errors, worst first: {errors}")
        tiled = None
        if args.tiles is not None:
            if args.model.suffix == ".pt":
                return fail("--tiles evaluates the served runtime: give the .onnx model")
            originals = source_originals(eval_set)
            tiled = evaluate(tiled_predictor(predict, args.tiles or None), eval_set, threshold, originals.files)
    except (EvalError, DetectorError, FileNotFoundError) as exc:
        return fail(str(exc))
    if args.plots:
        written = write_plots(result, args.plots)
        if not args.json:
            print("plots: " + ", ".join(map(str, written)))
    if args.json:
        answer = (result.to_dict() if tiled is None
                  else {"whole_frame": result.to_dict(), "tiled": tiled.to_dict(),
                        "tiled_source_files": len(originals.files), "tiled_sources_unavailable": originals.unavailable})
        answer = {**answer, "split": eval_set.split}  # which split these numbers are of
        if folds is not None:  # an extra key: the plain object's fields stay where they were
            answer = {**answer, "place_folds": folds.to_dict()}
        print(json.dumps(answer))
    else:
        if eval_set.dropped_labels:
            print(f"{eval_set.dropped_labels} labels of classes the '{eval_set.source}' mapping drops")
        print(f"split: {eval_set.split} of {args.data}" + (" (NOT held out: see the warning)" if overlap else ""))
        if tiled is not None:
            print("whole frame:")
        print(result.table())
        if tiled is not None:
            print(f"\ntiled as the static checks run (tiles of {args.tiles or max(predict.input_size)} px over the "
                  f"frame's pyramid, plus the whole frame; {originals.line(len(eval_set.images))}):")
            print(tiled.table())
        if folds is not None:
            print(f"\nheld out by place: AP50 on {folds.k} folds of whole places ({folds.groups} places)")
            if folds.held_out is not None:
                print(f"  {folds.seen_place_images} images share a place with a train image and are left out; "
                      f"the other {folds.held_out.images}: mAP50 {folds.held_out.map50:.3f} (column 'held out')")
            for line in folds.grouping:
                print(f"  {line}")
            print(folds.table(result))
    return 0


def run_export(args: argparse.Namespace) -> int:
    from training.export.export import ExportError
    from training.export.export_run import export_run

    try:
        export_run(args.weights, args.out, weights_dir=weights_dir(args), stem=args.name,
                   imgsz=args.imgsz, calib=args.calib, int8=args.int8, model_version=args.version,
                   dynamic=not args.static, int8_for_ultralytics=args.for_ultralytics,
                   log=lambda line: print(line, flush=True))
    except (ExportError, FileNotFoundError) as exc:
        return fail(str(exc))
    return 0