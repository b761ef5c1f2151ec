"""The violation taxonomy: what each violation kind is called, coded and evidenced by.

Codes live in YAML, not code, so a city can correct or extend them with its own file.
"""

from __future__ import annotations

import os
import re
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from detector.files import validation_problems

DEFAULT_TAXONOMY = Path(__file__).with_name("taxonomy.yaml")
_ID = re.compile(r"^[a-z][a-z0-9_]*$")


class TaxonomyError(ValueError):
    """A taxonomy file is malformed; the message names the entry and field."""


def _digits(n: int):
    pattern = re.compile(rf"^[0-9]{{{n}}}$")

    def check(value: str | None) -> str | None:
        if value is not None and not pattern.fullmatch(value):
            raise ValueError(f"must be {n} digits as a quoted string, got {value!r}")
        return value

    return check


class Violation(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    name_zh: str
    name_en: str
    category: str = "other"
    # 5-digit class, GB/T 47678.5-2026. null: a kind the code transcriptions this file comes from do
    # not list; it waits in Taxonomy.pending until a city's file gives the code (never a guessed one).
    matter_code: str | None
    alt_matter_codes: tuple[str, ...] = ()
    legacy_code: str | None = None  # 4-digit, CJ/T 214-2007
    alt_legacy_codes: tuple[str, ...] = ()
    detector_classes: tuple[str, ...] = ()
    scene_change: str | None = None  # zone type where a new persistent patch is a candidate
    # A second stage on the crop that decides the violation (detector.second_stage), e.g.
    # load_decision for trucks: until one is trained for the city, every case goes to review.
    second_stage: str | None = None
    # Detector classes this violation's objects are never a part of: a box lying inside one of
    # theirs is that object's part (a truck's red cab is not a bin, its cargo bed not a window ad,
    # a bus's body ad not an illegal sign), and the rule does not count it.
    not_part_of: tuple[str, ...] = ()
    min_score: float = Field(0.4, ge=0, le=1)
    dwell_s: float = Field(60, ge=0)
    review_note: str | None = None

    _check_matter = field_validator("matter_code")(_digits(5))
    _check_legacy = field_validator("legacy_code")(_digits(4))

    @field_validator("id")
    @classmethod
    def _snake_case(cls, value: str) -> str:
        if not _ID.fullmatch(value):
            raise ValueError(f"must be snake_case (a-z, 0-9, _), got {value!r}")
        return value

    @field_validator("alt_matter_codes", "alt_legacy_codes")
    @classmethod
    def _alt_codes(cls, values: tuple[str, ...], info) -> tuple[str, ...]:
        check = _digits(5 if info.field_name == "alt_matter_codes" else 4)
        for v in values:
            check(v)
        return values

    def full_matter_code(self, division: str) -> str:
        """The 11-digit code a platform receives: 6-digit division + 5-digit class."""
        if self.matter_code is None:
            raise ValueError(f"violation {self.id!r} has no matter code yet; set matter_code in the taxonomy_file")
        if not re.fullmatch(r"[0-9]{6}", division):
            raise ValueError(f"administrative division must be 6 digits, got {division!r}")
        return division + self.matter_code


class Taxonomy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: str
    detector_classes: dict[str, tuple[str, ...]] = {}
    violations: tuple[Violation, ...]  # every one with its matter code: cases can be filed
    # Kinds defined but without a matter code (matter_code: null): nothing files them until a
    # city's taxonomy_file gives the code its platform uses.
    pending: tuple[Violation, ...] = ()

    @cached_property
    def by_id(self) -> dict[str, Violation]:
        return {v.id: v for v in self.violations}

    def __getitem__(self, violation_id: str) -> Violation:
        try:
            return self.by_id[violation_id]
        except KeyError:
            raise KeyError(self.why_unknown(violation_id)) from None

    def why_unknown(self, violation_id: str) -> str:
        """What to tell someone who names a violation this taxonomy cannot file."""
        if any(v.id == violation_id for v in self.pending):
            return (f"violation {violation_id!r} has no matter code yet (the code transcriptions behind the built-in "
                    "taxonomy do not list it): give it `matter_code` (and `legacy_code`) as your platform files it, "
                    f"in a city taxonomy file (setting taxonomy_file): violations: [{{id: {violation_id}, "
                    "matter_code: \"NNNNN\"}]")
        return f"unknown violation {violation_id!r}; known: {sorted(self.by_id)}"

    def __contains__(self, violation_id: object) -> bool:
        return violation_id in self.by_id

    @property
    def all_detector_classes(self) -> list[str]:
        return [c for group in self.detector_classes.values() for c in group]


def read_yaml_file(path: Path, error: type[Exception], what: str) -> Any:
    """A YAML file's content, or `error` naming the file and what is wrong with it."""
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise error(f"{path}: cannot read {what}: {exc}") from None
    except UnicodeDecodeError as exc:
        raise error(f"{path}: {what} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except yaml.YAMLError as exc:
        raise error(f"{path}: not valid YAML: {exc}") from None


def _read_yaml(path: Path) -> dict[str, Any]:
    data = read_yaml_file(path, TaxonomyError, "taxonomy file")
    if not isinstance(data, dict):
        raise TaxonomyError(f"{path}: expected a mapping with 'violations', got {type(data).__name__}")
    return data


def _entry_label(entries: list[Any], index: int) -> str:
    entry = entries[index] if index < len(entries) else None
    if isinstance(entry, dict) and "id" in entry:
        return f"violation {entry['id']!r}"
    return f"violations[{index}]"


def _validated(data: dict[str, Any], source: str) -> Taxonomy:
    entries = data.get("violations")
    if not isinstance(entries, list):
        raise TaxonomyError(f"{source}: 'violations' must be a list")
    try:
        taxonomy = Taxonomy.model_validate(data)
    except ValidationError as exc:
        def where(loc: tuple) -> str:
            if loc[:1] == ("violations",) and len(loc) > 1 and isinstance(loc[1], int):
                return f"{_entry_label(entries, loc[1])}, field {'.'.join(map(str, loc[2:])) or '(entry)'}"
            return f"field {'.'.join(map(str, loc))}"

        raise TaxonomyError(f"{source}: {validation_problems(exc, where)}") from None
    seen: set[str] = set()
    for v in taxonomy.violations:
        if v.id in seen:
            raise TaxonomyError(f"{source}: violation {v.id!r} is defined twice")
        seen.add(v.id)
    pending = tuple(v for v in taxonomy.violations if v.matter_code is None)
    if pending:
        taxonomy = Taxonomy(version=taxonomy.version, detector_classes=taxonomy.detector_classes,
                            violations=tuple(v for v in taxonomy.violations if v.matter_code is not None),
                            pending=pending)
    return taxonomy


def load_taxonomy(override: str | os.PathLike[str] | None = None) -> Taxonomy:
    """The built-in taxonomy, with a city's file merged over it by violation id.

    In the override, an entry whose id exists replaces the given fields of that entry;
    a new id adds a violation kind (and must then be complete).
    """
    base = _read_yaml(DEFAULT_TAXONOMY)
    if override is None:
        return _validated(base, str(DEFAULT_TAXONOMY))
    path = Path(override)
    city = _read_yaml(path)
    entries = city.get("violations", [])
    if not isinstance(entries, list):
        raise TaxonomyError(f"{path}: 'violations' must be a list")
    merged = {v["id"]: dict(v) for v in base["violations"]}
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("id"), str):
            raise TaxonomyError(f"{path}: violations[{i}], field id: each entry needs a string 'id'")
        merged.setdefault(entry["id"], {}).update(entry)
    data = {
        "version": str(city.get("version", f"{base['version']}+{path.stem}")),
        "detector_classes": {**base.get("detector_classes", {}), **city.get("detector_classes", {})},
        "violations": list(merged.values()),
    }
    return _validated(data, str(path))
