"""`gridwatch dataset import`: a labelling tool's export, as the tool wrote it, into a source definition.

    EXPORT (folder, zip, or the annotation file) -> detect the layout -> read it once
      -> classes with box counts, mapped / dropped / unknown, suggestions -> DEF.yaml

The definition's `path` is absolute, so `gridwatch dataset build --sources DEF.yaml` finds
the data from any working folder. A zip is unpacked once beside itself (`NAME.zip` ->
`NAME/`) and the definition points at the unpacked folder.

Layouts recognised (what each tool writes, with or without a zip around it):
  CVAT for images 1.1      annotations.xml + images/
  CVAT COCO 1.0            annotations/instances_<subset>.json + images/[<subset>/]
  CVAT Pascal VOC 1.1      Annotations/*.xml + JPEGImages/ (+ ImageSets/, labelmap.txt)
  CVAT Ultralytics YOLO    data.yaml + images/<subset>/ + labels/<subset>/
  CVAT YOLO 1.1 (Darknet)  obj.names + obj_train_data/ (images and .txt side by side)
  Label Studio JSON        the JSON task list; images from --images (Label Studio's upload folder)
  Label Studio COCO        result.json (file_name images/<hash>-<name>.jpg) + images/
  Label Studio YOLO        classes.txt + images/ + labels/ (+ notes.json), no data.yaml
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import zipfile
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from detector import load_taxonomy
from detector.files import is_image
from training.data.sources import DEFINITIONS_DIR, Source, gridwatch_classes

FORMATS = ("auto", "yolo", "coco", "voc", "labelstudio", "cvat")
MARKER = "# written by `gridwatch dataset import`"
UNPACKED = ".gridwatch-import.json"  # in a folder unpacked from a zip: which zip, so a rerun reuses it
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
MAX_UNPACKED_BYTES = 50 << 30  # a zip that claims more than this is refused, not filled into the disk

# Names a labelling project is likely to use for gridwatch's classes, beside the class names
# themselves and the taxonomy's Chinese violation names. Keys are compared normalised
# (lower case, spaces, dashes and underscores removed).
SYNONYMS: dict[str, str] = {
    "bin": "garbage_bin", "trashbin": "garbage_bin", "trashcan": "garbage_bin", "dustbin": "garbage_bin",
    "wastebin": "garbage_bin", "垃圾桶": "garbage_bin", "垃圾箱": "garbage_bin", "垃圾站": "garbage_bin",
    "overflow": "bin_overflow", "overflowingbin": "bin_overflow", "满溢": "bin_overflow",
    "垃圾满溢": "bin_overflow", "垃圾桶满溢": "bin_overflow",
    "garbage": "garbage_pile", "trash": "garbage_pile", "litter": "garbage_pile", "rubbish": "garbage_pile",
    "暴露垃圾": "garbage_pile", "垃圾": "garbage_pile", "垃圾堆": "garbage_pile", "遗撒": "garbage_pile",
    "cart": "push_cart", "pushcart": "push_cart", "vendorcart": "push_cart", "thela": "push_cart",
    "推车": "push_cart", "手推车": "push_cart", "流动摊贩": "push_cart", "游商": "push_cart",
    "sign": "shop_sign", "signboard": "shop_sign", "shopsign": "shop_sign", "招牌": "shop_sign",
    "牌匾": "shop_sign", "店招": "shop_sign", "户外广告": "shop_sign",
    "windowad": "window_ad", "窗贴": "window_ad", "橱窗广告": "window_ad",
    "poster": "flyer", "flyer": "flyer", "小广告": "flyer", "非法小广告": "flyer", "传单": "flyer",
    "横幅": "banner", "标语": "banner", "条幅": "banner",
    "pedestrian": "person", "people": "person", "行人": "person", "人": "person",
    "bike": "bicycle", "自行车": "bicycle", "单车": "bicycle",
    "汽车": "car", "轿车": "car", "小汽车": "car",
    "motorbike": "motorcycle", "scooter": "motorcycle", "摩托车": "motorcycle", "电动车": "motorcycle",
    "公交车": "bus", "大巴": "bus",
    "lorry": "truck", "卡车": "truck", "货车": "truck", "渣土车": "truck",
    "parasol": "umbrella", "伞": "umbrella", "遮阳伞": "umbrella",
    "长椅": "bench", "椅子": "chair", "table": "dining table", "桌子": "dining table", "餐桌": "dining table",
}


class DatasetImportError(ValueError):
    """The export cannot be imported; the message says what was found and what to pass."""


@dataclass(frozen=True)
class Layout:
    """Where the export's parts are, as a source definition says it."""

    tool: str  # "CVAT for images 1.1", ...: printed so the trainer sees what was recognised
    format: str  # one of training.data.importers.READERS
    root: Path  # the source's `path`
    options: dict[str, Any]


@dataclass
class ClassRow:
    name: str
    boxes: int
    images: int
    target: str | None = None  # gridwatch class when mapped
    status: str = "unknown"  # mapped | dropped | unknown
    how: str = ""  # "--map", "same name"
    suggestion: str | None = None


@dataclass
class ImportResult:
    layout: Layout
    definition: Path
    images: int
    images_found: int
    missing: list[str]
    classes: list[ClassRow]
    problems: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- unpacking


def unpack(archive: Path, log: Callable[[str], None] = print) -> Path:
    """The zip unpacked beside itself (`X.zip` -> `X/`), once: a rerun on the same zip reuses it."""
    target = archive.with_suffix("")
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    marker = target / UNPACKED
    if target.exists():
        try:
            if json.loads(marker.read_text(encoding="utf-8")).get("sha256") == digest:
                return target
        except (OSError, ValueError):
            pass
        raise DatasetImportError(f"{archive}: cannot unpack into {target}: it exists and was not unpacked from this zip "
                           f"(import that folder instead, or move it away)")
    try:
        with zipfile.ZipFile(archive) as zf:
            members = zf.infolist()
            if sum(m.file_size for m in members) > MAX_UNPACKED_BYTES:
                raise DatasetImportError(f"{archive}: unpacks to more than {MAX_UNPACKED_BYTES >> 30} GiB")
            for m in members:
                parts = Path(m.filename).parts
                if m.filename.startswith(("/", "\\")) or ".." in parts or (m.external_attr >> 16) & 0o170000 == 0o120000:
                    raise DatasetImportError(f"{archive}: unsafe member {m.filename!r} (absolute, '..' or a link)")
            staging = target.with_name(f".{target.name}.unpacking")
            shutil.rmtree(staging, ignore_errors=True)
            zf.extractall(staging)
    except zipfile.BadZipFile as exc:
        raise DatasetImportError(f"{archive}: not a readable zip ({exc})") from None
    (staging / UNPACKED).write_text(json.dumps({"zip": str(archive.resolve()), "sha256": digest}))
    staging.rename(target)
    log(f"unpacked {archive} -> {target}")
    return target


# ---------------------------------------------------------------- detecting the layout


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None


def _xml_root_tag(path: Path) -> str | None:
    import xml.etree.ElementTree as ET

    try:
        for _, element in ET.iterparse(path, events=("start",)):
            return element.tag
    except (OSError, ET.ParseError):
        return None
    return None


def _is_coco(data: Any) -> bool:
    return isinstance(data, dict) and isinstance(data.get("images"), list) and isinstance(data.get("categories"), list)


def _is_label_studio(data: Any) -> bool:
    return isinstance(data, list) and all(isinstance(t, dict) and "data" in t for t in data[:5])


def _names_file(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _images_folder(folder: Path, given: Path | None) -> Path:
    if given is not None:
        return given.resolve()
    for candidate in (folder / "images", folder):
        if candidate.is_dir() and any(is_image(p) for p in candidate.rglob("*")):
            return candidate
    return folder


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root)) or "."
    except ValueError:
        return str(path)  # elsewhere (--images): absolute


def detect(export: Path, fmt: str = "auto", images: Path | None = None) -> Layout:
    """The layout of an unpacked export (a folder, or the annotation file itself)."""
    export = Path(export).resolve()
    if export.is_file():
        folder = export.parent
        data = _json(export) if export.suffix.lower() == ".json" else None
        if _is_label_studio(data) and fmt in ("auto", "labelstudio"):
            im = _images_folder(folder, images)
            return Layout("Label Studio JSON", "labelstudio", folder,
                          {"annotations": export.name, "images": _relative(im, folder)})
        if _is_coco(data) and fmt in ("auto", "coco"):
            im = _images_folder(folder, images)
            return Layout("COCO JSON", "coco", folder, {"annotations": export.name, "images": _relative(im, folder)})
        if export.suffix.lower() == ".xml" and _xml_root_tag(export) == "annotations" and fmt in ("auto", "cvat"):
            im = _images_folder(folder, images)
            return Layout("CVAT for images 1.1", "cvat", folder,
                          {"annotations": export.name, "images": _relative(im, folder)})
        raise DatasetImportError(f"{export}: not an annotation file gridwatch reads (a Label Studio JSON task list, a COCO "
                           "JSON, a CVAT for images XML) or a zip; pass the export's folder or zip")
    if not export.is_dir():
        raise DatasetImportError(f"{export}: no such file or folder")
    # A zip with one folder at its top (how many tools and people zip): look inside it.
    entries = [p for p in export.iterdir() if p.name != UNPACKED and not p.name.startswith(".")]
    if len(entries) == 1 and entries[0].is_dir() and entries[0].name not in ("images", "Annotations", "annotations"):
        return detect(entries[0], fmt, images)
    found = [layout for layout in _candidates(export, images) if fmt in ("auto", layout.format)]
    if not found:
        seen = ", ".join(sorted(p.name + ("/" if p.is_dir() else "") for p in entries)[:12]) or "nothing"
        wanted = "" if fmt == "auto" else f" in {fmt} format"
        raise DatasetImportError(
            f"{export}: no labelling-tool export found{wanted} (holds {seen}). Expected one of: annotations.xml "
            "(CVAT for images), annotations/instances_*.json (CVAT COCO), Annotations/ (Pascal VOC), data.yaml or "
            "classes.txt or obj.names with images and labels (YOLO), a COCO result.json, a Label Studio JSON export")
    return found[0]


def _candidates(folder: Path, images: Path | None) -> list[Layout]:
    out: list[Layout] = []
    xml = folder / "annotations.xml"
    if xml.is_file() and _xml_root_tag(xml) == "annotations":
        out.append(Layout("CVAT for images 1.1", "cvat", folder,
                          {"annotations": xml.name, "images": _relative(_images_folder(folder, images), folder)}))
    coco_files = sorted((folder / "annotations").glob("instances_*.json")) if (folder / "annotations").is_dir() else []
    if coco_files:
        out.append(Layout("CVAT COCO 1.0", "coco", folder,
                          {"annotations": [_relative(p, folder) for p in coco_files],
                           "images": _relative(images.resolve() if images else folder / "images", folder)}))
    if (folder / "Annotations").is_dir() and any((folder / "Annotations").glob("*.xml")):
        im = images.resolve() if images else next(
            (folder / n for n in ("JPEGImages", "images") if (folder / n).is_dir()), folder / "JPEGImages")
        out.append(Layout("Pascal VOC (CVAT Pascal VOC 1.1)", "voc", folder,
                          {"annotations": "Annotations", "images": _relative(im, folder)}))
    if (folder / "data.yaml").is_file() and (folder / "images").is_dir():
        out.append(Layout("Ultralytics YOLO (CVAT Ultralytics YOLO)", "yolo", folder, {}))
    elif (folder / "classes.txt").is_file() and (folder / "images").is_dir():
        tool = "Label Studio YOLO" if (folder / "notes.json").is_file() else "YOLO with classes.txt"
        out.append(Layout(tool, "yolo", folder, {"names": _names_file(folder / "classes.txt")}))
    if (folder / "obj.names").is_file():
        data_dir = next((p for p in sorted(folder.glob("obj_*_data")) if p.is_dir()), None)
        if data_dir is not None:
            out.append(Layout("CVAT YOLO 1.1 (Darknet)", "yolo", folder,
                              {"names": _names_file(folder / "obj.names"), "images": data_dir.name,
                               "labels": data_dir.name}))
    for path in sorted(folder.glob("*.json")):
        data = _json(path)
        if _is_coco(data):
            tool = "Label Studio COCO" if path.name == "result.json" else "COCO JSON"
            out.append(Layout(tool, "coco", folder, {"annotations": path.name,
                                                     "images": _relative(_images_folder(folder, images), folder)}))
        elif _is_label_studio(data):
            out.append(Layout("Label Studio JSON", "labelstudio", folder,
                              {"annotations": path.name,
                               "images": _relative(_images_folder(folder, images), folder)}))
    return out


# ---------------------------------------------------------------- classes and suggestions


def _normal(name: str) -> str:
    return re.sub(r"[\s_\-]+", "", name.strip().lower())


def known_names() -> dict[str, str]:
    """Normalised name -> gridwatch class: the class names, the taxonomy's Chinese and English
    names of one-class violations, and SYNONYMS."""
    classes = gridwatch_classes()
    table = {_normal(k): v for k, v in SYNONYMS.items() if v in classes}
    for violation in load_taxonomy().violations:
        if len(violation.detector_classes) == 1:
            for name in (getattr(violation, "name_zh", None), getattr(violation, "name_en", None)):
                if name:
                    table.setdefault(_normal(name), violation.detector_classes[0])
    table.update({_normal(c): c for c in classes})
    return table


def suggest(label: str, table: Mapping[str, str] | None = None) -> str | None:
    """The gridwatch class a source label most likely means, or None."""
    table = table if table is not None else known_names()
    key = _normal(label)
    if key in table:
        return table[key]
    # Chinese labels often carry a qualifier (垃圾桶满溢, 路边小广告): the longest known name inside.
    inside = [k for k in table if len(k) >= 2 and not k.isascii() and k in key]
    return table[max(inside, key=len)] if inside else None


def parse_maps(pairs: Sequence[str]) -> dict[str, str | None]:
    """`SRC=DST` flags; DST empty or `null` drops SRC on purpose."""
    classes = set(gridwatch_classes())
    out: dict[str, str | None] = {}
    for pair in pairs:
        if "=" not in pair:
            raise DatasetImportError(f"--map {pair!r}: expected SRC=DST (DST a gridwatch class, or empty to drop)")
        src, dst = (s.strip() for s in pair.split("=", 1))
        if not src:
            raise DatasetImportError(f"--map {pair!r}: empty source class")
        target = None if dst in ("", "null", "none", "drop") else dst
        if target is not None and target not in classes:
            raise DatasetImportError(f"--map {pair!r}: {target!r} is not a gridwatch class; known: {', '.join(sorted(classes))}")
        out[src] = target
    return out


# ---------------------------------------------------------------- the import


def _definition_text(name: str, layout: Layout, licence: str, attribution: str, class_map: dict[str, str | None],
                     rows: list[ClassRow], export: Path) -> str:
    content = {
        "name": name,
        "path": str(layout.root),  # absolute: the build finds it from any working folder
        "format": layout.format,
        "licence": licence,
        "attribution": attribution,
        "notes": f"{layout.tool} export imported from {export} on {datetime.now(timezone.utc):%Y-%m-%d}.",
    }
    if layout.options:
        content["options"] = layout.options
    content["classes"] = class_map
    text = MARKER + f" from {layout.tool}\n" + yaml.safe_dump(content, allow_unicode=True, sort_keys=False)
    unknown = [r for r in rows if r.status == "unknown"]
    if unknown:
        text += ("# Not mapped (the build drops and reports these boxes); add them under `classes:` "
                 "or import again with --map SRC=DST:\n")
        for r in unknown:
            hint = f" -> suggested {r.suggestion}" if r.suggestion else ""
            text += f"#   {json.dumps(r.name, ensure_ascii=False)}: {r.boxes} boxes{hint}\n"
    return text


def import_export(
    export: Path,
    name: str,
    out: Path,
    *,
    fmt: str = "auto",
    maps: Sequence[str] = (),
    licence: str | None = None,
    attribution: str | None = None,
    images: Path | None = None,
    log: Callable[[str], None] = print,
) -> ImportResult:
    from training.data.importers import AnnotationError

    if fmt not in FORMATS:
        raise DatasetImportError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if not NAME_RE.fullmatch(name):
        raise DatasetImportError(f"--name {name!r}: letters, digits, '_', '-' and '.' only (it prefixes the built files)")
    if (DEFINITIONS_DIR / f"{name}.yaml").is_file():
        raise DatasetImportError(f"--name {name!r} is a built-in source (datasets/{name}.yaml); choose another name")
    out = Path(out).resolve()
    if out.suffix not in (".yaml", ".yml"):
        raise DatasetImportError(f"--out {out}: a source definition is a .yaml file")
    if out.exists() and not out.read_text(encoding="utf-8", errors="replace").startswith(MARKER):
        raise DatasetImportError(f"--out {out} exists and was not written by `gridwatch dataset import`: not overwriting it")
    if images is not None and not Path(images).is_dir():
        raise DatasetImportError(f"--images {images}: not a folder")
    explicit = parse_maps(maps)

    export = Path(export)
    if not export.exists():
        raise DatasetImportError(f"{export}: no such file or folder")
    if export.is_file() and export.suffix.lower() == ".zip":
        export_dir = unpack(export, log)
        layout = detect(export_dir, fmt, images)
    else:
        layout = detect(export, fmt, images)
    log(f"found: {layout.tool} ({layout.format}) at {layout.root}")

    probe = Source(name=name, path=layout.root, format=layout.format, licence="-", attribution="-",
                   class_map={}, options=dict(layout.options))
    try:
        samples = probe.read()
    except (AnnotationError, ValueError, OSError) as exc:
        raise DatasetImportError(f"{layout.tool} at {layout.root}: {exc}") from None
    if not samples:
        raise DatasetImportError(f"{layout.tool} at {layout.root}: lists no images")
    missing = [str(s.image) for s in samples if not s.image.is_file()]
    found = len(samples) - len(missing)
    log(f"images: {len(samples)} listed, {found} found" + (f", {len(missing)} missing" if missing else ""))
    for path in missing[:10]:
        log(f"  missing: {path}")
    if len(missing) > 10:
        log(f"  ... and {len(missing) - 10} more missing")
    if not found:
        hint = " (pass --images DIR: the folder Label Studio uploaded them to)" if layout.format == "labelstudio" else ""
        raise DatasetImportError(f"none of the {len(samples)} images the export lists is there{hint}; first: {missing[0]}")

    boxes, per_image = Counter(), Counter()
    for s in samples:
        boxes.update(s.labels)
        per_image.update(set(s.labels))
    unused = sorted(set(explicit) - set(boxes))
    if unused:
        raise DatasetImportError(f"--map names classes the export does not have: {', '.join(unused)}; "
                           f"it has: {', '.join(sorted(boxes)) or 'no boxes at all'}")
    table = known_names()
    classes = set(gridwatch_classes())
    rows, class_map = [], {}
    for label in sorted(boxes, key=lambda k: (-boxes[k], k)):
        row = ClassRow(label, boxes[label], per_image[label])
        if label in explicit:
            row.target, row.how = explicit[label], "--map"
            row.status = "dropped" if row.target is None else "mapped"
        elif label in classes:
            row.target, row.status, row.how = label, "mapped", "same name"
        else:
            row.suggestion = suggest(label, table)
        if row.status != "unknown":
            class_map[label] = row.target
        rows.append(row)

    problems = [f"{s.image.name}: {p}" for s in samples for p in s.problems]
    for line in class_table(rows):
        log(line)
    for p in problems[:20]:
        log(f"  problem: {p}")
    if len(problems) > 20:
        log(f"  ... and {len(problems) - 20} more problems (the build names them all)")
    hints = [r for r in rows if r.status == "unknown" and r.suggestion]
    if hints:
        log("suggested: " + " ".join(f"--map {_quote(r.name)}={_quote(r.suggestion)}" for r in hints))
    if not any(t is not None for t in class_map.values()):
        raise DatasetImportError("no class is mapped to a gridwatch class: import again with --map SRC=DST "
                           f"(gridwatch classes: {', '.join(gridwatch_classes())})")

    text = _definition_text(name, layout, licence or "own labels (not for redistribution)",
                            attribution or f"{name}: labelled in-house with {layout.tool.split(' (')[0]}",
                            class_map, rows, export.resolve())
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    log(f"wrote {out}; next: gridwatch dataset build --sources {out}  (add base sources: --sources "
        f"garbage_overflow_cn,{out})")
    return ImportResult(layout, out, len(samples), found, missing, rows, problems)


def _quote(text: str) -> str:
    return text if re.fullmatch(r"[\w.\-]+", text) else "'" + text.replace("'", "'\\''") + "'"


def class_table(rows: list[ClassRow]) -> list[str]:
    width = max([len(r.name) for r in rows] + [5]) + 2
    lines = [f"{'class':<{width}}{'boxes':>7}{'images':>8}  status"]
    for r in rows:
        if r.status == "mapped":
            what = f"mapped -> {r.target} ({r.how})"
        elif r.status == "dropped":
            what = "dropped (--map)"
        else:
            what = "unknown" + (f"; suggest --map {_quote(r.name)}={_quote(r.suggestion)}" if r.suggestion else
                                "; the build drops it: --map it, or --map it= to drop on purpose")
        lines.append(f"{r.name:<{width}}{r.boxes:>7}{r.images:>8}  {what}")
    return lines
