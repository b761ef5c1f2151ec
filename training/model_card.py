"""The model card: one dict, written as JSON (for machines) and Markdown (for people)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from training.evaluate import FEW_INSTANCES

# Fallback credits when the dataset definitions (training/sources.py) are not available.
KNOWN_SOURCES: dict[str, dict[str, str]] = {
    "garbage_overflow_cn": {
        "licence": "CC BY 4.0",
        "attribution": 'Roboflow Universe project "公开数据集111", v2, via '
        "github.com/ATANU0023/garbage_detection_dataset",
    },
    "facade_signs_spb": {
        "licence": "CC0 1.0",
        "attribution": "github.com/Urban-Research-Lab/building-facades-advertising-dataset",
    },
    "thela_india": {
        "licence": "MIT (per the repository; photo origin not stated, research data)",
        "attribution": "github.com/vsh9705/indian-road-obstacle-detection-dataset",
    },
}

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


def training_instances(counts: dict[str, Any], classes: list[str]) -> dict[str, dict[str, int]]:
    """class -> {label kind: train-split boxes}, from a built dataset's manifest `counts`
    ({"human"|"pseudo"|"synthetic": {split: {class: n}}, "images": ...})."""
    kinds = [k for k in counts if k != "images"]
    return {c: {k: int(counts[k].get("train", {}).get(c, 0)) for k in kinds} for c in classes}


def coverage_weaknesses(instances: dict[str, dict[str, int]], real_val: dict[str, Any] | None) -> list[str]:
    """What the data itself says the model cannot be trusted on."""
    out = []
    never = [c for c, kinds in instances.items() if not any(kinds.values())]
    if never:
        out.append(f"No training boxes at all for {', '.join(never)}: the model has never seen one and "
                   "will not find it.")
    if real_val:
        few = [f"{c} ({m['instances']})" for c, m in real_val.get("classes", {}).items()
               if m["instances"] < FEW_INSTANCES]
        if few:
            out.append(f"Fewer than {FEW_INSTANCES} real val boxes, so their AP is noise: {', '.join(few)}.")
    return out


def source_entries(names: list[str]) -> list[dict[str, str]]:
    try:
        from training.sources import load_source
    except ImportError:
        load_source = None
    entries = []
    for name in names:
        entry = {"name": name, **KNOWN_SOURCES.get(name, {"licence": "unknown", "attribution": "unknown"})}
        if load_source is not None:
            try:
                src = load_source(name)
                entry["licence"] = str(src.licence)
                entry["attribution"] = str(src.attribution)
            except Exception:  # a definition missing is not a reason to lose the card
                pass
        entries.append(entry)
    return entries


def _metrics_table(metrics: dict[str, Any]) -> list[str]:
    lines = ["| class | instances | AP50 | AP50-95 | P@op | R@op |", "|---|---|---|---|---|---|"]
    for name, m in metrics.get("classes", {}).items():
        lines.append(
            f"| {name} | {m['instances']} | {m['ap50']:.3f} | {m['ap50_95']:.3f} | "
            f"{m['precision']:.3f} | {m['recall']:.3f} |"
        )
    lines.append(f"| **all** | | **{metrics.get('map50', 0):.3f}** | **{metrics.get('map50_95', 0):.3f}** | | |")
    return lines


def _trained_at(card: dict[str, Any]) -> str:
    trained = card.get("train_imgsz")
    return f" (trained at {trained} px)" if trained and trained != card.get("imgsz") else ""


def render_markdown(card: dict[str, Any]) -> str:
    out = [f"# {card['name']} — model card", ""]
    out += [f"Version `{card['model_version']}`, taxonomy {card.get('taxonomy_version', '?')}, "
            f"created {card.get('created', '?')}. Input {card.get('imgsz', '?')} px{_trained_at(card)}. "
            f"Served at score threshold {card.get('score_threshold', 0.25)}.", ""]
    if card.get("summary"):
        out += [card["summary"], ""]
    out += ["## Classes", "", ", ".join(f"`{c}`" for c in card.get("classes", [])), ""]
    out += ["## Training data", "", "| source | licence | attribution |", "|---|---|---|"]
    for s in card.get("sources", []):
        out.append(f"| {s['name']} | {s['licence']} | {s['attribution']} |")
    out.append("")
    for credit in card.get("credits", []):
        out += [f"> {credit}", ""]
    for note in card.get("data_notes", []):
        out.append(f"- {note}")
    out.append("")
    if card.get("train_instances"):
        kinds = sorted({k for per_kind in card["train_instances"].values() for k in per_kind})
        out += ["Boxes per class in the train split, by where the label came from:", "",
                "| class | " + " | ".join(kinds) + " |", "|---" * (len(kinds) + 1) + "|"]
        for name, per_kind in card["train_instances"].items():
            out.append(f"| {name} | " + " | ".join(str(per_kind.get(k, 0)) for k in kinds) + " |")
        out.append("")
    out += ["## Metrics", "",
            "Measured with `gridwatch eval` (AP from scores >= 0.001, COCO 101-point; precision and "
            "recall at the served threshold, IoU 0.5).", ""]
    for split, by_file in card.get("metrics", {}).items():
        for file, metrics in by_file.items():
            out += [f"### {split}: {file}", ""] + _metrics_table(metrics) + [""]
    if card.get("int8"):
        q = card["int8"]
        out += ["## Int8", "",
                f"Static QDQ U8S8 (uint8 activations, int8 per-channel weights), percentile calibration on "
                f"{q.get('calibration_images', '?')} real training images, head post-processing (DFL, sigmoid, "
                f"concat) in fp32. mAP50 fp32 {q.get('map50_fp32', 0):.3f} vs int8 "
                f"{q.get('map50_int8', 0):.3f} (delta {q.get('map50_delta_points', 0):+.2f} points).", ""]
    if card.get("speed"):
        s = card["speed"]
        out += ["## Speed", "",
                f"Bare ONNX Runtime session, {s.get('threads', 2)} threads, {s.get('hw', '?')}: fp32 "
                f"{s.get('fp32_ms', 0):.1f} ms, int8 {s.get('int8_ms', 0):.1f} ms "
                f"({s.get('ratio', 0):.2f}x).", ""]
    if card.get("decision"):
        d = card["decision"]
        champion = "none shipped" if d.get("champion") is None else f"{d['champion']:.4f}"
        out += ["## Champion/challenger", "",
                f"{d.get('metric', 'mAP50-95')} on the same real val split: this model {d.get('challenger', 0):.4f}, "
                f"the default it was compared with {champion}: "
                f"{'promoted' if d.get('promote') else 'not promoted'}.", ""]
    out += ["## Training arguments", "", "```json", json.dumps(card.get("training", {}), indent=2), "```", ""]
    out += ["## Files", "", "| file | sha256 | bytes |", "|---|---|---|"]
    for f in card.get("files", []):
        out.append(f"| {f['name']} | `{f['sha256']}` | {f['bytes']} |")
    out += ["", "## Known weaknesses", ""] + [f"- {w}" for w in card.get("weaknesses", [])]
    out += ["", f"Licence: {card.get('licence', 'AGPL-3.0')}.", ""]
    return "\n".join(out)


def write_card(card: dict[str, Any], out_dir: str | Path, stem: str = "gridwatch") -> tuple[Path, Path]:
    """Write `{stem}.json` and `{stem}.md` from the same dict."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / f"{stem}.json", out / f"{stem}.md"
    json_path.write_text(json.dumps(card, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    md_path.write_text(render_markdown(card), encoding="utf-8")
    return md_path, json_path
