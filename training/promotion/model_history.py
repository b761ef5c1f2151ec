"""The served model's history: every promotion keeps the model it replaced, so it can come back.

    weights/gridwatch-*.onnx, gridwatch*.md/json         the model served now
    weights/history/<version>/                          each model ever promoted, its files and cards
    weights/history/<version>/promotion.json            when, who and why, its data hash and headline AP
    weights/history/events.jsonl                        every promotion and rollback, in order

`weights/history/` is git-ignored: models are megabytes each and belong to the site, not the
repository. A promotion or rollback replaces the files in weights/ one rename each (the card
last), so the running service's model watcher (serving/live_model.py) takes the new file live
as it takes any promotion.
"""

from __future__ import annotations

import getpass
import json
import re
import shutil
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from pydantic import BaseModel

from detector.files import sha256_file
from training.promotion.model_card import ForcedPromotion, mark_forced_promotion
from training.promotion.promote import install

STEM = "gridwatch"
HISTORY = "history"
EVENTS = "events.jsonl"
ENTRY = "promotion.json"
FORCED = "forced"  # `how` of a promotion a person made past champion/challenger
SAFE_VERSION = re.compile(r"[^A-Za-z0-9._-]+")


class HistoryError(ValueError):
    """A promotion or rollback cannot be done; the message says why and what to pass."""


class Promotion(BaseModel):
    """One model as it was put in service."""

    version: str
    promoted_at: str
    promoted_by: str
    how: str  # "champion/challenger", "forced", "found in weights/" (there before history was kept)
    reason: str
    dataset_hash: str
    headline: str  # "real val mAP50 0.612 (fp32)", or "unknown" without a card
    map50: float | None = None
    files: dict[str, str]  # name -> sha256


class Event(BaseModel):
    at: str
    action: str  # promote | rollback
    version: str
    replaced: str | None
    by: str
    reason: str


def actor() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no user name in a bare container
        return "unknown"


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def model_files(folder: Path, stem: str = STEM) -> dict[str, Path]:
    """The served model's files in a folder: NAME-fp32/int8.onnx and their cards."""
    return {p.name: p for p in sorted(Path(folder).glob(f"{stem}*")) if p.is_file()
            and p.suffix in (".onnx", ".md", ".json") and p.name.startswith((f"{stem}-", f"{stem}."))}


def describe(files: dict[str, Path]) -> tuple[str, str, str, float | None]:
    """(version, dataset hash, headline, mAP50) from the card, else the ONNX metadata."""
    card = files.get(f"{STEM}.json")
    if card is not None:
        try:
            data = json.loads(card.read_text(encoding="utf-8"))
            real = data.get("metrics", {}).get("real_val", {})
            fp32 = real.get(f"{STEM}-fp32.onnx") or next(iter(real.values()), None)
            map50 = float(fp32["map50"]) if fp32 else None
            headline = f"real val mAP50 {map50:.3f}" if map50 is not None else "no metrics on the card"
            return str(data["model_version"]), str(data.get("dataset_hash", "unknown")), headline, map50
        except (OSError, ValueError, KeyError, TypeError):
            pass
    onnx_files = [p for n, p in files.items() if n.endswith(".onnx")]
    if not onnx_files:
        raise HistoryError(f"no {STEM}-*.onnx model file among {', '.join(files) or 'no files'}")
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(onnx_files[0]), load_external_data=False).metadata_props}
    version = meta.get("gridwatch_model_version") or f"{onnx_files[0].stem}-{sha256_file(onnx_files[0])[:8]}"
    return version, meta.get("gridwatch_dataset_hash", "unknown"), "unknown (no card)", None


def _folder(weights_dir: Path, version: str) -> Path:
    return Path(weights_dir) / HISTORY / SAFE_VERSION.sub("_", version)


def _keep(weights_dir: Path, files: dict[str, Path], *, by: str, how: str, reason: str,
          at: str | None = None) -> Promotion:
    """Copy the files into history/<version>/ (once per version) with their promotion record; a
    forced promotion is also written into the model's cards there. A version kept already (put in
    service again after a rollback) gets the record of this promotion, so that a rollback walks
    back in the order models were last put in service."""
    version, data_hash, headline, map50 = describe(files)
    folder = _folder(weights_dir, version)
    entry = folder / ENTRY
    at = at or now()
    if entry.is_file():
        kept = Promotion.model_validate_json(entry.read_text(encoding="utf-8"))
        rewritten = mark_forced_promotion(folder, ForcedPromotion(by=by, at=at, reason=reason)) if how == FORCED else []
        # the record vouches for the cards as they are now: a rollback checks every kept file's hash
        hashes = {name: sha256_file(folder / name) for name in rewritten if name in kept.files}
        again = kept.model_copy(update={"promoted_at": at, "promoted_by": by, "how": how, "reason": reason,
                                        "files": kept.files | hashes})
        entry.write_text(again.model_dump_json(indent=1), encoding="utf-8")
        return again
    staging = folder.with_name(f".{folder.name}.incoming")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for name, path in files.items():
        shutil.copyfile(path, staging / name)
    if how == FORCED:
        mark_forced_promotion(staging, ForcedPromotion(by=by, at=at, reason=reason))
    record = Promotion(version=version, promoted_at=at, promoted_by=by, how=how, reason=reason,
                       dataset_hash=data_hash, headline=headline, map50=map50,
                       files={name: sha256_file(staging / name) for name in files})
    (staging / ENTRY).write_text(record.model_dump_json(indent=1), encoding="utf-8")
    shutil.rmtree(folder, ignore_errors=True)
    staging.rename(folder)
    return record


def _keep_served(weights_dir: Path) -> str | None:
    """The version in weights/ now, kept in the history first if it is not there yet (a model
    shipped or installed before history was kept: dated by its file)."""
    served = current(weights_dir)
    if served is not None:
        return served.version
    files = model_files(weights_dir)
    onnx_files = [p for n, p in files.items() if n.endswith(".onnx")]
    if not onnx_files:
        return None
    at = datetime.fromtimestamp(min(p.stat().st_mtime for p in onnx_files), timezone.utc)
    return _keep(weights_dir, files, by="unknown", how="found in weights/",
                 reason="in service before gridwatch kept a history",
                 at=at.isoformat(timespec="microseconds")).version


def _event(weights_dir: Path, event: Event) -> None:
    path = Path(weights_dir) / HISTORY / EVENTS
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as fh:
        fh.write(event.model_dump_json() + "\n")


def current(weights_dir: Path) -> Promotion | None:
    """The history entry of the model in weights/ now (matched by file hashes), or None."""
    served = {n: sha256_file(p) for n, p in model_files(weights_dir).items() if n.endswith(".onnx")}
    if not served:
        return None
    for entry in entries(weights_dir):
        if all(entry.files.get(n) == h for n, h in served.items()):
            return entry
    return None


def entries(weights_dir: Path) -> list[Promotion]:
    """Every kept model, oldest promotion first."""
    root = Path(weights_dir) / HISTORY
    found = []
    for entry in sorted(root.glob(f"*/{ENTRY}")) if root.is_dir() else []:
        try:
            found.append(Promotion.model_validate_json(entry.read_text(encoding="utf-8")))
        except ValueError:
            continue
    return sorted(found, key=lambda e: e.promoted_at)


def events(weights_dir: Path) -> list[Event]:
    path = Path(weights_dir) / HISTORY / EVENTS
    if not path.is_file():
        return []
    return [Event.model_validate_json(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _check_loads(path: Path) -> None:
    """HistoryError unless ONNX Runtime can load the file: a truncated or foreign file put in
    service would stop `gridwatch serve` at its next start."""
    import onnxruntime as ort

    try:
        ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - ONNX Runtime raises several private exception types
        raise HistoryError(f"{path}: ONNX Runtime cannot load it ({type(exc).__name__}); nothing was promoted") from None


def promote(files: dict[str, Path], weights_dir: Path, *, how: str, reason: str, by: str | None = None,
            log: Callable[[str], None] = print) -> list[Path]:
    """Put `files` (name in weights/ -> file) in service, keeping the model they replace."""
    weights_dir = Path(weights_dir)
    by = by or actor()
    for name, path in files.items():
        if name.endswith(".onnx"):
            _check_loads(path)
    lacking = [n for n in model_files(weights_dir) if n.endswith(".onnx") and n not in files]
    if lacking:
        raise HistoryError(f"the new model has no {', '.join(lacking)}: promoting it would leave weights/ mixed "
                           "(export it with int8, or move the old file away on purpose)")
    replaced = _keep_served(weights_dir)
    record = _keep(weights_dir, files, by=by, how=how, reason=reason)
    # installed from the history copy: the cards there say how the model came into service
    installed = install({name: _folder(weights_dir, record.version) / name for name in files}, weights_dir)
    _event(weights_dir, Event(at=now(), action="promote", version=record.version, replaced=replaced, by=by,
                              reason=f"{how}: {reason}"))
    log(f"promoted {record.version} ({how}, by {by}: {reason})"
        + (f"; {replaced} kept in {_folder(weights_dir, replaced)}" if replaced else ""))
    return installed


def rollback(weights_dir: Path, version: str | None = None, *, reason: str = "rollback", by: str | None = None,
             log: Callable[[str], None] = print) -> Promotion:
    """Put a kept model back in service: VERSION, or the one promoted before the current one."""
    weights_dir = Path(weights_dir)
    by = by or actor()
    kept = entries(weights_dir)
    if not kept:
        raise HistoryError(f"no model history in {weights_dir / HISTORY}: nothing was promoted with history kept")
    now_serving = current(weights_dir)
    if version is None:
        if now_serving is None:
            raise HistoryError("the model in weights/ is not in the history: name the VERSION to roll back to")
        older = [e for e in kept if e.promoted_at < now_serving.promoted_at and e.version != now_serving.version]
        if not older:
            raise HistoryError(f"{now_serving.version} is the oldest model kept: nothing to roll back to")
        target = older[-1]
    else:
        target = next((e for e in kept if e.version == version), None)
        if target is None:
            raise HistoryError(f"no kept model {version!r}; kept: {', '.join(e.version for e in kept)}")
    if now_serving is not None and target.version == now_serving.version:
        raise HistoryError(f"{target.version} is the model in service already")
    folder = _folder(weights_dir, target.version)
    files = {name: folder / name for name in target.files}
    broken = [n for n, h in target.files.items() if not files[n].is_file() or sha256_file(files[n]) != h]
    if broken:
        raise HistoryError(f"{folder}: files missing or changed since they were kept: {', '.join(broken)}")
    lacking = [n for n in model_files(weights_dir) if n.endswith(".onnx") and n not in files]
    if lacking:
        raise HistoryError(f"{target.version} has no {', '.join(lacking)}: rolling back would leave weights/ mixed")
    _keep_served(weights_dir)
    install(files, weights_dir)
    # card files of the current model the old one has no copy of would describe the wrong model
    for name in set(model_files(weights_dir)) - set(files):
        (weights_dir / name).unlink()
    _event(weights_dir, Event(at=now(), action="rollback", version=target.version,
                              replaced=now_serving.version if now_serving else None, by=by,
                              reason=reason if reason.startswith("rollback") else f"rollback: {reason}"))
    log(f"rolled back to {target.version} (by {by}: {reason}); the running service takes it live "
        "(model_watch_s), or POST /v1/models/reload")
    return target


def table(weights_dir: Path) -> list[str]:
    kept = entries(weights_dir)
    if not kept:
        return [f"no model history in {Path(weights_dir) / HISTORY}"]
    serving = current(weights_dir)
    rows = [("", "version", "when (UTC)", "data hash", "headline AP", "by", "why")]
    last = {e.version: e for e in events(weights_dir)}  # the latest promotion or rollback of each version
    for e in kept:
        event = last.get(e.version)
        by, why = (event.by, event.reason) if event else (e.promoted_by, f"{e.how}: {e.reason}")
        when = event.at if event else e.promoted_at
        rows.append(("*" if serving and serving.version == e.version else "", e.version, when[:19].replace("T", " "),
                     e.dataset_hash[:12], e.headline, by, why))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r[:-1], widths)) + "  " + r[-1] for r in rows]
    return lines + ["* in service now"]
