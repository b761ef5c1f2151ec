"""The model card: one typed record, written as JSON (for machines) and Markdown (for people).

Licence and attribution of the training data come from the dataset definitions
(datasets/*.yaml) and nowhere else.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from detector.files import sha256_file
from detector.runtime import DEFAULT_SCORE_THRESHOLD
from detector.taxonomy import load_taxonomy
from training.data.dataset_manifest import LabelCounts, ManifestSource
from training.export.export import ExportResult, SpeedComparison
from training.evaluation.metrics import AP_SCORE_THRESHOLD, FEW_INSTANCES, EvalResult
from training.promotion.promote import DROP_POINTS, Decision, LoopDecision
from training.data.sources import Source, load_source

INT8_MAX_MAP50_LOSS_POINTS = 1.5

DEFAULT_WEAKNESSES = [
    "Trained on public images of Chinese, Russian and Indian streets; other cities' bins, carts and "
    "signs may look different. Judge it on your own cameras before relying on it.",
    "garbage_overflow_cn images were stretched to 640x640 by their exporter: the model has seen "
    "distorted aspect ratios for bins and garbage.",
    "flyer and banner are learnt from synthetic composites only; expect weaker recall on real ones.",
    "Context classes (person, car, umbrella, chair, table, ...) are learnt from pseudo-labels of a "
    "COCO YOLOv8n teacher, so they inherit its misses.",
    "Nothing in the data says whether a sign, stall or bin is legal: the model finds objects, "
    "reviewers decide violations.",
]
DATA_NOTES = [
    "Context classes are pseudo-labels from ../shared/weights/coco-yolov8n-int8.onnx.",
    "flyer and banner examples are synthetic; synthetic val images are reported separately.",
]
LICENCE = "AGPL-3.0 (Ultralytics YOLOv8 architecture and COCO weights)"

EvalJson = dict[str, Any]  # a `gridwatch eval --json` object (EvalResult.to_dict())


class SourceCredit(BaseModel):
    name: str
    licence: str
    attribution: str


class Int8Check(BaseModel):
    calibration_images: int
    excluded_nodes: list[str]
    map50_fp32: float
    map50_int8: float
    map50_delta_points: float
    within_1_5_points: bool
    # "levels+pixels": for gridwatch's detector alone (training.export.export.quantize_int8);
    # "ultralytics": decoded output and float input, as Ultralytics exports (older cards: absent).
    graph_form: str = "ultralytics"
    # the file's own account of its quantisation (its gridwatch_calibration metadata), e.g.
    # "percentile 99.999, 64 images; 13 concats share one scale" (older cards: absent)
    calibration: str = ""


class FileEntry(BaseModel):
    name: str
    sha256: str
    bytes: int


class ClassFell(BaseModel):
    """A class whose AP50 fell by more than DROP_POINTS against the default, with the rules it feeds."""

    name: str
    instances: int
    champion_ap50: float
    challenger_ap50: float
    rules: list[str]  # violation ids whose detector classes include it


class Promotion(BaseModel):
    promote: bool
    challenger: float
    champion: float | None  # None: no default was shipped
    metric: str
    # `gridwatch retrain` also judges on the review val split (must be better there)
    review_challenger: float | None = None
    review_champion: float | None = None
    review_metric: str | None = None
    fell: list[ClassFell] = []  # on the base split; older cards: absent
    # Classes of `fell` a violation rule uses: they block the promotion (training.promotion.promote
    # guard_rule_classes) unless a person forced it with a reason. Older cards: absent.
    blocked_by: list[str] = []
    forced_reason: str | None = None

    @classmethod
    def of(cls, decision: Decision | LoopDecision) -> Promotion:
        base = decision.base if isinstance(decision, LoopDecision) else decision
        taxonomy = load_taxonomy()
        fell = [ClassFell(name=d.name, instances=d.instances, champion_ap50=round(d.champion_ap50, 4),
                          challenger_ap50=round(d.challenger_ap50, 4),
                          rules=[v.id for v in (*taxonomy.violations, *taxonomy.pending) if d.name in v.detector_classes])
                for d in base.drops]
        promotion = cls(promote=decision.promote, challenger=base.challenger_score, champion=base.champion_score,
                        metric=base.metric, fell=fell, blocked_by=[d.name for d in base.blocked_by],
                        forced_reason=base.forced_reason)
        if isinstance(decision, LoopDecision):
            promotion.review_challenger = decision.review.challenger_score
            promotion.review_champion = decision.review.champion_score
            promotion.review_metric = decision.review.metric
        return promotion


# camera -> class -> "human train", "pseudo val", "negative train", ... -> boxes
ReviewCounts = dict[str, dict[str, dict[str, int]]]


class ForcedPromotion(BaseModel):
    """A person put this model in service past champion/challenger (`gridwatch models promote`);
    `decision` above it still says what champion/challenger decided."""

    by: str
    at: str
    reason: str


class ModelCard(BaseModel):
    name: str
    model_version: str
    taxonomy_version: str
    dataset_hash: str
    created: str
    imgsz: int
    train_imgsz: int | None
    score_threshold: float = DEFAULT_SCORE_THRESHOLD
    classes: list[str]
    train_instances: dict[str, dict[str, int]]  # class -> label kind -> train-split boxes
    sources: list[SourceCredit]
    credits: list[str]
    data_notes: list[str] = DATA_NOTES
    # "teacher class~human class" -> teacher boxes dropped because a human label says the object is
    # something else (training/data/pseudo_labels.py CONFLICTS), from the dataset build's report
    pseudo_label_audit: dict[str, int] = {}
    metrics: dict[str, dict[str, EvalJson]]  # split ("real_val", "synthetic_val") -> model file -> metrics
    int8: Int8Check | None
    speed: SpeedComparison | None
    training: dict[str, Any]
    files: list[FileEntry]
    weaknesses: list[str]
    licence: str = LICENCE
    summary: str | None = None  # the trainer's notes (Markdown) that open the card
    decision: Promotion | None = None
    review_data: ReviewCounts | None = None  # the city's review frames in the dataset (`gridwatch retrain`)
    # the fp32 file on K folds of whole places of the real val split (training.evaluation.evaluate.PlaceFolds
    # to_dict), when the dataset was built `--split-by place`; older cards and image splits: absent
    place_folds: dict[str, Any] | None = None
    # the served file against the COCO teacher files on the real val images, context classes
    # (training.evaluation.teacher_check.TeacherCheck to_dict); absent where no teacher was at hand
    teacher_check: dict[str, Any] | None = None
    forced_promotion: ForcedPromotion | None = None


def source_credits(names: list[str], defined: Sequence[Source | ManifestSource] = ()) -> list[SourceCredit]:
    """Each named source's licence and attribution from its definition: datasets/NAME.yaml, or
    one of `defined` (sources defined elsewhere, such as a review export's source.yaml, or as a
    built dataset's manifest recorded them)."""
    given = {s.name: s for s in defined}
    credits = []
    for name in names:
        source = given.get(name) or load_source(name)
        credits.append(SourceCredit(name=name, licence=source.licence, attribution=source.attribution))
    return credits


def cc_by_credits(sources: list[SourceCredit]) -> list[str]:
    """CC BY asks for credit wherever the work is used: the card carries it."""
    return [
        f"{s.name}: {s.attribution}" + ("" if s.licence in s.attribution else f" Licensed {s.licence}.")
        for s in sources if "CC BY" in s.licence
    ]


def training_instances(counts: LabelCounts, classes: list[str]) -> dict[str, dict[str, int]]:
    """class -> {label kind: train-split boxes}, from a built dataset's manifest counts."""
    kinds = counts.by_kind()
    return {c: {kind: int(per_split.get("train", {}).get(c, 0)) for kind, per_split in kinds.items()} for c in classes}


def coverage_weaknesses(instances: dict[str, dict[str, int]], real_val: EvalResult | None) -> list[str]:
    """What the data itself says the model cannot be trusted on."""
    out = []
    never = [c for c, kinds in instances.items() if not any(kinds.values())]
    if never:
        out.append(f"No training boxes at all for {', '.join(never)}: the model has never seen one and "
                   "will not find it.")
    if real_val is not None:
        few = [f"{c} ({m.instances})" for c, m in real_val.classes.items() if m.instances < FEW_INSTANCES]
        if few:
            out.append(f"Fewer than {FEW_INSTANCES} real val boxes, so their AP is noise: {', '.join(few)}.")
    return out


def int8_check(exported: ExportResult, fp32: EvalResult, int8: EvalResult) -> Int8Check:
    from detector.model import open_session

    delta = round(100 * (int8.map50 - fp32.map50), 2)
    _, info = open_session(exported.int8, threads=1)
    return Int8Check(
        graph_form="levels+pixels" if (info.head, info.input_dtype) == ("levels", "uint8") else
        "levels" if info.head == "levels" else "ultralytics",
        calibration_images=exported.calibration_images,
        excluded_nodes=exported.excluded_nodes,
        map50_fp32=fp32.map50,
        map50_int8=int8.map50,
        map50_delta_points=delta,
        within_1_5_points=delta >= -INT8_MAX_MAP50_LOSS_POINTS,  # a loss is the target; a gain never misses it
        calibration=info.metadata.get("gridwatch_calibration", ""),
    )


def run_card(
    name: str,
    exported: ExportResult,
    *,
    sources: list[SourceCredit],
    counts: LabelCounts | None,
    metrics: dict[str, dict[str, EvalJson]],
    real_val: EvalResult | None,
    int8: Int8Check | None,
    speed: SpeedComparison | None,
    training: dict[str, Any],
    files: list[Path],
    decision: Decision | LoopDecision | None,
    summary: str | None,
    pseudo_label_audit: dict[str, int] | None = None,
    review_data: ReviewCounts | None = None,
    place_folds: dict[str, Any] | None = None,
    teacher_check: dict[str, Any] | None = None,
) -> ModelCard:
    """The card of an exported run: `real_val` is the fp32 file's metrics on the real val split,
    `counts` the dataset manifest's (None: not a `gridwatch dataset build` dataset)."""
    instances = training_instances(counts, exported.classes) if counts is not None else {}
    return ModelCard(
        name=name,
        model_version=exported.metadata["gridwatch_model_version"],
        taxonomy_version=exported.metadata["gridwatch_taxonomy_version"],
        dataset_hash=exported.metadata["gridwatch_dataset_hash"],
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        imgsz=exported.imgsz,
        train_imgsz=exported.train_args.get("imgsz"),
        classes=exported.classes,
        train_instances=instances,
        sources=sources,
        credits=cc_by_credits(sources),
        metrics=metrics,
        int8=int8,
        speed=speed,
        training=training,
        files=[FileEntry(name=f.name, sha256=sha256_file(f), bytes=f.stat().st_size) for f in files],
        weaknesses=DEFAULT_WEAKNESSES + coverage_weaknesses(instances, real_val),
        summary=summary,
        pseudo_label_audit=pseudo_label_audit or {},
        decision=Promotion.of(decision) if decision is not None else None,  # None: `gridwatch export` alone
        review_data=review_data,
        place_folds=place_folds,
        teacher_check=teacher_check,
    )


# ---------------------------------------------------------------- Markdown


# the sections `gridwatch models card` measures again into a written card
PLACE_FOLDS_TITLE, TEACHER_TITLE = "## Held out by place", "## Against the COCO teacher"


def _metrics_table(metrics: EvalJson) -> list[str]:
    lines = ["| class | instances | AP50 | AP50-95 | P@op | R@op |", "|---|---|---|---|---|---|"]
    for name, m in metrics["classes"].items():
        lines.append(
            f"| {name} | {m['instances']} | {m['ap50']:.3f} | {m['ap50_95']:.3f} | "
            f"{m['precision']:.3f} | {m['recall']:.3f} |"
        )
    lines.append(f"| **all** | | **{metrics['map50']:.3f}** | **{metrics['map50_95']:.3f}** | | |")
    return lines


REVIEW_COLUMNS = [f"{kind} {split}" for kind in ("human", "pseudo", "negative") for split in ("train", "val")]


def _review_table(counts: ReviewCounts) -> list[str]:
    lines = ["The city's reviewed frames (`gridwatch review export`), boxes by camera and class: human labels "
             "from review decisions, pseudo-labels of the model that saw the frame, and hard negatives (the "
             "reviewer said the class is absent there), in the train and val splits:", "",
             "| camera | class | " + " | ".join(REVIEW_COLUMNS) + " |", "|---" * (len(REVIEW_COLUMNS) + 2) + "|"]
    for camera, by_class in counts.items():
        for name, cells in by_class.items():
            lines.append(f"| {camera} | {name} | " + " | ".join(str(cells.get(c, 0)) for c in REVIEW_COLUMNS) + " |")
    return lines + [""]


def render_markdown(card: ModelCard) -> str:
    trained_at = f" (trained at {card.train_imgsz} px)" if card.train_imgsz and card.train_imgsz != card.imgsz else ""
    out = [f"# {card.name} — model card", ""]
    out += [f"Version `{card.model_version}`, taxonomy {card.taxonomy_version}, "
            f"created {card.created}. Input {card.imgsz} px{trained_at}. "
            f"Served at score threshold {card.score_threshold}.", ""]
    if card.summary:
        out += [card.summary, ""]
    out += ["## Classes", "", ", ".join(f"`{c}`" for c in card.classes), ""]
    out += ["## Training data", "", "| source | licence | attribution |", "|---|---|---|"]
    for s in card.sources:
        out.append(f"| {s.name} | {s.licence} | {s.attribution} |")
    out.append("")
    for credit in card.credits:
        out += [f"> {credit}", ""]
    for note in card.data_notes:
        out.append(f"- {note}")
    out.append("")
    if card.review_data:
        out += _review_table(card.review_data)
    if card.train_instances:
        kinds = sorted({k for per_kind in card.train_instances.values() for k in per_kind})
        out += ["Boxes per class in the train split, by where the label came from:", "",
                "| class | " + " | ".join(kinds) + " |", "|---" * (len(kinds) + 1) + "|"]
        for name, per_kind in card.train_instances.items():
            out.append(f"| {name} | " + " | ".join(str(per_kind.get(k, 0)) for k in kinds) + " |")
        out.append("")
    if card.pseudo_label_audit:
        out += ["Teacher boxes dropped because they sat on a human-labelled object of another kind "
                "(a push cart the teacher called a truck teaches the wrong thing):", "",
                "| teacher said | human label | boxes dropped |", "|---|---|---|"]
        for pair, n in sorted(card.pseudo_label_audit.items(), key=lambda kv: -kv[1]):
            teacher, human = pair.split("~", 1)
            out.append(f"| {teacher} | {human} | {n} |")
        out.append("")
    out += ["## Metrics", "",
            f"Measured with `gridwatch eval` (AP from scores >= {AP_SCORE_THRESHOLD}, COCO 101-point; precision and "
            "recall at the served threshold, IoU 0.5).", ""]
    for split, by_file in card.metrics.items():
        for file, metrics in by_file.items():
            out += [f"### {split}: {file}", ""] + _metrics_table(metrics) + [""]
    out += _synthetic_only(card)
    out += _place_folds(card)
    out += _teacher_check(card)
    if card.int8:
        q = card.int8
        out += ["## Int8", "",
                f"Static QDQ U8S8 (uint8 activations, int8 per-channel weights), percentile calibration on "
                f"{q.calibration_images} real training images, head post-processing (DFL, sigmoid, "
                f"concat) in fp32. mAP50 fp32 {q.map50_fp32:.3f} vs int8 "
                f"{q.map50_int8:.3f} (delta {q.map50_delta_points:+.2f} points)."
                + (f" Calibration: {q.calibration}." if q.calibration else ""), ""]
        if q.graph_form != "ultralytics":
            out += ["The int8 file is for gridwatch's detector alone: its graph ends at the detection head's "
                    "per-level convolutions, which the detector decodes"
                    + (", and it takes the letterboxed BGR pixels" if q.graph_form == "levels+pixels" else "")
                    + ". Ultralytics runs the fp32 file; `gridwatch export --for-ultralytics` writes an int8 "
                    "file it can run.", ""]
    if card.speed:
        s = card.speed
        out += ["## Speed", "",
                f"Bare ONNX Runtime session, {s.threads} threads, {s.hw} input (what a 1080p camera frame runs at): fp32 "
                f"{s.fp32_ms:.1f} ms, int8 {s.int8_ms:.1f} ms ({s.ratio:.2f}x).", ""]
    if card.decision:
        d = card.decision
        champion = "none shipped" if d.champion is None else f"{d.champion:.4f}"
        out += ["## Champion/challenger", "",
                f"{d.metric} on the same real val split: this model {d.challenger:.4f}, "
                f"the default it was compared with {champion}"]
        if d.review_metric is not None:
            review_champion = "none shipped" if d.review_champion is None else f"{d.review_champion:.4f}"
            out[-1] += (f"; {d.review_metric} on the review val split (must be better): this model "
                        f"{d.review_challenger:.4f}, the default {review_champion}")
        out[-1] += f": {'promoted' if d.promote else 'not promoted'}."
        out.append("")
        if d.fell:
            out += [f"Classes whose AP50 fell by more than {DROP_POINTS:g} points against that default (those with "
                    f"fewer than {FEW_INSTANCES} val boxes are too noisy for the metric above, but the rules that "
                    "use them see the change):", "",
                    "| class | val boxes | default | this model | rules that use it |", "|---|---|---|---|---|"]
            out += [f"| {f.name} | {f.instances} | {f.champion_ap50:.3f} | {f.challenger_ap50:.3f} | "
                    f"{', '.join(f.rules) or 'none'} |" for f in d.fell]
            out.append("")
        if d.blocked_by and d.forced_reason is not None:
            out += [f"**Promoted by force** although rule classes fell ({', '.join(d.blocked_by)}); the reason "
                    f"given: {d.forced_reason}", ""]
        elif d.blocked_by:
            out += [f"**Blocked**: rule classes fell by more than {DROP_POINTS:g} AP50 points "
                    f"({', '.join(d.blocked_by)}); only `--force-reason TEXT` promotes such a model.", ""]
    if card.forced_promotion:
        out += _forced_promotion(card.forced_promotion)
    out += ["## Training arguments", "", "```json", json.dumps(card.training, indent=2), "```", ""]
    out += ["## Files", "", "| file | sha256 | bytes |", "|---|---|---|"]
    for f in card.files:
        out.append(f"| {f.name} | `{f.sha256}` | {f.bytes} |")
    out += ["", "## Known weaknesses", ""] + [f"- {w}" for w in card.weaknesses]
    out += ["", f"Licence: {card.licence}.", ""]
    return "\n".join(out)


SYNTHETIC_ONLY = ("flyer", "banner")  # no real labelled image of either exists in the sources


def _synthetic_only(card: ModelCard) -> list[str]:
    """Say it where the figures are: flyer and banner AP comes from synthetic composites alone."""
    real = {c for by_file in card.metrics.get("real_val", {}).values() for c, m in by_file.get("classes", {}).items()
            if m.get("instances")}
    named = [c for c in SYNTHETIC_ONLY if c in card.classes and c not in real]
    if not named:
        return []
    return [f"**{' and '.join(named)}: figures from synthetic images only.** No real labelled image of "
            f"{'either' if len(named) > 1 else 'it'} exists in the training sources, so the synthetic_val "
            "figures say how well the model finds our own composites, not real flyers or banners; the "
            "labelling mode asks reviewers first for frames where the wall scene-change rule fired, to "
            "gather real ones.", ""]


FORCED_TITLE = "## Put in service by hand"


def _forced_promotion(forced: ForcedPromotion) -> list[str]:
    return [FORCED_TITLE, "",
            f"`gridwatch models promote` put this model in service on {forced.at} (by {forced.by}), not "
            f"champion/challenger. The reason given: {forced.reason}", ""]


def mark_forced_promotion(folder: Path, forced: ForcedPromotion) -> list[str]:
    """Record a forced promotion in every model card in `folder` (NAME.json and its NAME.md), so
    the card served says how the model came into service. Returns the card files rewritten."""
    rewritten = []
    for json_path in sorted(folder.glob("*.json")):
        try:
            card = ModelCard.model_validate_json(json_path.read_text(encoding="utf-8"))
        except ValueError:
            continue  # not a model card
        marked = card.model_copy(update={"forced_promotion": forced})
        json_path.write_text(card_json(marked), encoding="utf-8")
        rewritten.append(json_path.name)
        md_path = json_path.with_suffix(".md")
        if md_path.is_file():
            markdown = md_path.read_text(encoding="utf-8")
            old, new = render_markdown(card), render_markdown(marked)
            # a card edited by hand after it was written keeps its text: a record already there is
            # replaced where it stands (a second forced promotion), else the record goes at its end
            if markdown != old:
                new = _splice_section(markdown.rstrip("\n") + "\n", FORCED_TITLE, _forced_promotion(forced), ())
            md_path.write_text(new, encoding="utf-8")
            rewritten.append(md_path.name)
    return rewritten


def _place_folds(card: ModelCard) -> list[str]:
    if not card.place_folds:
        return []
    folds = card.place_folds
    held = folds.get("held_out")
    real = next(iter(card.metrics.get("real_val", {}).values()), None)
    out = [PLACE_FOLDS_TITLE, ""]
    if held is None:
        out += [f"The real val split holds whole places (`gridwatch dataset build --split-by place`); AP50 of the "
                f"fp32 file on {folds['k']} folds of its {folds['groups']} places, beside the figure over all of it:", ""]
    else:
        out += [f"The dataset was split by image, so places were found over its train and val images together. "
                f"{held['seen_place_images']} real val images share a place with a train image and are left out "
                f"here; AP50 of the fp32 file on the other {held['images']} (held out by place: mAP50 "
                f"{held['map50']:.3f}), and on {folds['k']} folds of their {folds['groups']} places, beside the "
                f"figure over all of val:", ""]
    out += [f"- {line}" for line in folds.get("grouping", [])] + [""]
    tiled = folds.get("tiled")
    if tiled:
        out += [f"Column \"{tiled['model']} tiled\": the served file on the same {tiled['images']} held-out images, "
                "tiled as the static checks run on a camera's full frame (tiles of its input size plus the whole "
                f"frame), {tiled['source_files']} of them read from their larger source file rather than the "
                "build's 640 px copy; the tiled goals (window_ad) are judged on it.", ""]
    header = "| class | AP50 real val | " + ("AP50 held out (boxes) | " if held else "") + \
        (f"{tiled['model']} tiled | " if tiled else "") + "fold mean | fold min | fold max | folds |"
    out += [header, "|---" * (header.count("|") - 1) + "|"]
    for name, f in folds["classes"].items():
        whole = f"{real['classes'][name]['ap50']:.3f}" if real is not None and name in real.get("classes", {}) else ""
        kept = ""
        if held:
            h = held["classes"].get(name)
            kept = f"{h['ap50']:.3f} ({h['instances']}) | " if h else "| "
        if tiled:
            t = tiled["classes"].get(name)
            kept += f"{t['ap50']:.3f} | " if t else "| "
        out.append(f"| {name} | {whole} | {kept}{f['mean_ap50']:.3f} | {f['min_ap50']:.3f} | {f['max_ap50']:.3f} | "
                   f"{f['folds']} |")
    return out + [""]


def _teacher_check(card: ModelCard) -> list[str]:
    if not card.teacher_check:
        return []
    check = card.teacher_check
    teachers = list(check["counts"])
    out = [TEACHER_TITLE, "",
           f"The context classes have no human labels: they were learnt from a COCO teacher's boxes. Of the boxes "
           f"each teacher file finds at >= {check['score']} on the {check['images']} real val images, those "
           f"`{check['model']}` finds too (same class, >= {check['score']}, IoU >= {check['iou']}, one to one), "
           "and how many boxes of the class it finds in all. The goal (issue #28) is every box the teacher finds.", ""]
    header = "| class | " + " | ".join(f"{t}: found of teacher's" for t in teachers) + " | this model's boxes |"
    out += [header, "|---" * (header.count("|") - 1) + "|"]
    for name in check["counts"][teachers[0]]:
        cells = []
        for t in teachers:
            c = check["counts"][t][name]
            cells.append(f"{c['found']} of {c['teacher']} ({c['found'] / c['teacher']:.0%})" if c["teacher"] else "0 of 0")
        out.append(f"| {name} | " + " | ".join(cells) + f" | {check['counts'][teachers[0]][name]['ours']} |")
    return out + [""]


def splice_measured_sections(markdown: str, card: ModelCard) -> str:
    """`markdown` (a card as written, perhaps with notes added by hand since) with the sections that
    `gridwatch models card` measures again put in from `card`: each replaces its own section (or
    removes it, where the card no longer has the figure), or goes where render_markdown puts it
    (before "## Int8"), so nothing else of the text changes."""
    after = ("## Int8", "## Speed", "## Files")  # what render_markdown writes after both
    for title, section, before in ((PLACE_FOLDS_TITLE, _place_folds(card), (TEACHER_TITLE, *after)),
                                   (TEACHER_TITLE, _teacher_check(card), after)):
        markdown = _splice_section(markdown, title, section, before)
    return markdown


def _splice_section(markdown: str, title: str, section: list[str], before: Sequence[str]) -> str:
    """`markdown` with the section headed `title` replaced by `section` (removed if it is empty), or
    `section` put before the first of the headings `before` (at the end if none is there)."""
    lines = markdown.split("\n")
    if title in lines:
        start = lines.index(title)
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    elif section:
        start = end = next((i for i, line in enumerate(lines) if line in before), len(lines))
    else:
        return markdown
    return "\n".join(lines[:start] + section + lines[end:])


def card_json(card: ModelCard) -> str:
    # A card without notes has no `summary` key at all, as cards always had; a `gridwatch train`
    # card has no review keys.
    exclude = {k for k in ("summary", "review_data", "place_folds", "teacher_check", "forced_promotion")
               if getattr(card, k) is None}
    content = card.model_dump(mode="json", exclude=exclude or None)
    if content.get("decision"):
        # keys that say nothing are left out, as cards before them had none
        content["decision"] = {k: v for k, v in content["decision"].items()
                               if not (k.startswith("review_") and content["decision"]["review_metric"] is None)
                               and not (k in ("fell", "blocked_by", "forced_reason") and not v)}
    return json.dumps(content, indent=2, ensure_ascii=False) + "\n"


def write_card(card: ModelCard, out_dir: str | Path, stem: str = "gridwatch") -> tuple[Path, Path]:
    """Write `{stem}.json` and `{stem}.md` from the same card."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / f"{stem}.json", out / f"{stem}.md"
    json_path.write_text(card_json(card), encoding="utf-8")
    md_path.write_text(render_markdown(card), encoding="utf-8")
    return md_path, json_path
