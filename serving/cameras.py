"""Camera configuration: the YAML file that says what each camera watches, where, and when.

    cameras = load_cameras("cameras.yaml", taxonomy=load_taxonomy())

Every error names the camera and the field (`camera 'cam-001', field zones.1.polygon: ...`),
so a city editing a file of 300 cameras finds the line. Relative `source:` and `grid_map:`
paths are resolved against the YAML file's folder.

Beyond the issue's example, a camera entry may carry: `start:` (clock of a file without a
recorded start, with offset), `decode: auto|keyframes|all`, `close_after:` (grace seconds
before an event closes; default max(30, 3 samples)), `update_every:` (heartbeat of an open
event), `read_timeout:`, `homography:` (3x3, normalised image -> lon/lat, picks the grid per
event from `grid_map`). A rule may carry `classes:` (detector classes instead of the
taxonomy's), `scene_change: true` (fires on a new persistent patch, see serving.scene),
`after_classes: [truck]` + `after_within:` (only after one of those passed), and
`auto_confirm_score:` (median score from which an event needs no review; default: always).
A schedule window is `{days: mon-fri | [sat, sun] | fri-mon, from: "HH:MM", to: "HH:MM", tz}`;
`to` before `from` runs overnight; no schedule means always.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, time
from functools import cached_property
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from detector.taxonomy import read_yaml_file

GRID_CODE = re.compile(r"^[0-9A-Z]{15}$")
DIVISION_CODE = re.compile(r"^[0-9]{6}$")
DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
LIVE_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://")


class CameraConfigError(ValueError):
    """A camera file is malformed; the message names the camera and the field."""


class Location(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    lat: float | None = Field(None, ge=-90, le=90)
    lon: float | None = Field(None, ge=-180, le=180)
    address: str = Field("", max_length=256)  # case systems take <= 256 chars


class Zone(BaseModel):
    """A named polygon in normalised image coordinates (0..1, x right, y down)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    type: str = Field(min_length=1)  # sidewalk, roadway, wall, shopfront, bin_area, permitted_market, ...
    polygon: tuple[tuple[float, float], ...]

    @field_validator("polygon")
    @classmethod
    def _valid_polygon(cls, value: tuple[tuple[float, float], ...]) -> tuple[tuple[float, float], ...]:
        if len(value) < 3:
            raise ValueError(f"a polygon needs at least 3 points, got {len(value)}")
        for x, y in value:
            if not (0 <= x <= 1 and 0 <= y <= 1):
                raise ValueError(f"point ({x}, {y}) is outside 0..1: coordinates are fractions of the frame")
        return value


class Rule(BaseModel):
    """Which violation fires for what, where, for how long."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    violation: str
    zone_types: tuple[str, ...] = Field(min_length=1)
    min_score: float | None = Field(None, ge=0, le=1)  # default: the taxonomy's
    dwell: float | None = Field(None, ge=0)  # seconds; default: the taxonomy's
    classes: tuple[str, ...] | None = None  # detector classes; default: the taxonomy's
    # Scene-change rules fire on a new persistent patch rather than on a detector class.
    scene_change: bool = False
    # For spillage: only a patch that appears within `after_within` s of one of these passing.
    after_classes: tuple[str, ...] = ()
    after_within: float = Field(120, gt=0)
    # Median score at or above which an event needs no human review; None: always review.
    auto_confirm_score: float | None = Field(None, ge=0, le=1)


class ScheduleWindow(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    days: str | tuple[str, ...] = "mon-sun"
    start: time = Field(alias="from")
    end: time = Field(alias="to")
    tz: str = "UTC"

    @field_validator("start", "end", mode="before")
    @classmethod
    def _hh_mm(cls, value: Any) -> Any:
        if isinstance(value, int):  # YAML 1.1 reads unquoted 07:00 as sexagesimal minutes
            return time(value // 60 % 24, value % 60)
        if isinstance(value, str) and value.strip() in ("24:00", "24:00:00"):
            return time(23, 59, 59, 999999)
        return value

    @field_validator("tz")
    @classmethod
    def _known_tz(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r} (use an IANA name like Asia/Shanghai)") from None
        return value

    @field_validator("days")
    @classmethod
    def _valid_days(cls, value: str | tuple[str, ...]) -> str | tuple[str, ...]:
        parse_days(value)
        return value

    @cached_property
    def weekdays(self) -> frozenset[int]:
        return parse_days(self.days)

    @cached_property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.tz)


def parse_days(value: str | tuple[str, ...] | list[str]) -> frozenset[int]:
    """'mon-fri', 'sat,sun', ['mon', 'wed'], 'fri-mon' (wraps) -> weekday numbers (mon=0)."""
    parts = value.split(",") if isinstance(value, str) else list(value)
    days: set[int] = set()
    for part in parts:
        part = str(part).strip().lower()[:7]
        if "-" in part:
            a, b = (p.strip()[:3] for p in part.split("-", 1))
            if a not in DAY_NAMES or b not in DAY_NAMES:
                raise ValueError(f"unknown day range {part!r}; use e.g. mon-fri")
            i, j = DAY_NAMES.index(a), DAY_NAMES.index(b)
            days.update((i + k) % 7 for k in range((j - i) % 7 + 1))
        elif part[:3] in DAY_NAMES:
            days.add(DAY_NAMES.index(part[:3]))
        else:
            raise ValueError(f"unknown day {part!r}; use mon..sun")
    return frozenset(days)


class Camera(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1, pattern=r"^[A-Za-z0-9._-]+$")
    source: str = Field(min_length=1)
    division: str
    grid: str | None = None
    grid_map: Path | None = None
    # 3x3 matrix from normalised image points (x, y, 1) to (lon, lat, 1): with a grid_map, each
    # event's grid is picked by where the object stands, not where the camera is.
    homography: tuple[tuple[float, float, float], tuple[float, float, float], tuple[float, float, float]] | None = None
    location: Location = Location()
    sample_every: float = Field(2.0, gt=0)
    static_check_every: float = Field(60, gt=0)
    zones: tuple[Zone, ...] = ()
    rules: tuple[Rule, ...] = ()
    schedule: tuple[ScheduleWindow, ...] = ()  # empty: always on
    start: datetime | None = None  # clock of a file source without a recorded start time
    # Decoding: "auto" decodes only the keyframes it needs while they come often enough,
    # "keyframes" always, "all" every frame (cameras whose rules need motion).
    decode: Literal["auto", "keyframes", "all"] = "auto"
    close_after: float | None = Field(None, gt=0)  # grace before closing; default max(30, 3 samples)
    update_every: float = Field(300, gt=0)  # re-send an open event at least this often
    read_timeout: float = Field(10, gt=0)  # seconds without a packet before reconnecting

    @field_validator("division")
    @classmethod
    def _division(cls, value: str) -> str:
        if not DIVISION_CODE.match(str(value)):
            raise ValueError(f"must be a 6-digit administrative division as a quoted string, got {value!r}")
        return str(value)

    @field_validator("grid")
    @classmethod
    def _grid(cls, value: str | None) -> str | None:
        if value is not None and not GRID_CODE.match(value):
            raise ValueError(f"must be a 15-character grid code (0-9, A-Z), got {value!r}")
        return value

    @field_validator("homography")
    @classmethod
    def _invertible(cls, value):
        if value is not None and abs(float(np.linalg.det(np.asarray(value, np.float64)))) < 1e-12:
            raise ValueError("the homography matrix is singular")
        return value

    @field_validator("start")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("needs a time zone offset, e.g. 2026-05-01T08:00:00+08:00")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Camera:
        if self.grid is None and self.grid_map is None:
            raise ValueError("give either grid (15-char code) or grid_map (GeoJSON file)")
        if self.homography is not None and self.grid_map is None:
            raise ValueError("homography is used to pick grids from grid_map: give grid_map too")
        names = [z.name for z in self.zones]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"zone names must be unique, repeated: {dupes}")
        zone_types = {z.type for z in self.zones}
        for i, rule in enumerate(self.rules):
            missing = [t for t in rule.zone_types if t not in zone_types]
            if missing:
                raise ValueError(
                    f"rules.{i} ({rule.violation}): zone_types {missing} match no zone of this camera "
                    f"(zone types here: {sorted(zone_types) or 'none'})"
                )
        return self

    @property
    def is_live(self) -> bool:
        return self.source.lower().startswith(LIVE_SCHEMES)

    @property
    def is_folder(self) -> bool:
        return not self.is_live and Path(self.source).is_dir()

    @property
    def grace_s(self) -> float:
        return self.close_after if self.close_after is not None else max(30.0, 3 * self.sample_every)

    def in_schedule(self, when: datetime) -> bool:
        """True when `when` (timezone-aware) falls in one of the windows; no windows: always."""
        if not self.schedule:
            return True
        for window in self.schedule:
            local = when.astimezone(window.zone)
            t = local.time()
            if window.start <= window.end:
                if local.weekday() in window.weekdays and window.start <= t < window.end:
                    return True
            else:  # overnight window, e.g. 22:00-06:00: the day is the day it started
                if local.weekday() in window.weekdays and t >= window.start:
                    return True
                if (local.weekday() - 1) % 7 in window.weekdays and t < window.end:
                    return True
        return False


class CamerasConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    cameras: tuple[Camera, ...] = Field(min_length=1)
    settings: dict[str, Any] = {}  # read by serving.settings.load_settings, ignored here

    @model_validator(mode="after")
    def _unique_ids(self) -> CamerasConfig:
        ids = [c.id for c in self.cameras]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"camera ids must be unique, repeated: {dupes}")
        return self


# --- grid maps -----------------------------------------------------------------------------


class GridMap:
    """GeoJSON polygons whose properties carry a 15-char grid `code` (or `grid`)."""

    def __init__(self, features: list[tuple[str, list[list[tuple[float, float]]]]]) -> None:
        self.features = features  # (code, rings of (lon, lat)); first ring outer, rest holes

    @classmethod
    def load(cls, path: Path) -> GridMap:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot read GeoJSON {path}: {exc}") from None
        features = []
        for i, feature in enumerate(data.get("features", []) if isinstance(data, dict) else []):
            props = feature.get("properties") or {}
            code = props.get("code") or props.get("grid")
            if not isinstance(code, str) or not GRID_CODE.match(code):
                raise ValueError(f"{path}: features.{i}.properties.code must be a 15-char grid code, got {code!r}")
            geometry = feature.get("geometry") or {}
            kind, coords = geometry.get("type"), geometry.get("coordinates")
            polygons = [coords] if kind == "Polygon" else coords if kind == "MultiPolygon" else None
            if not polygons:
                raise ValueError(f"{path}: features.{i}.geometry must be a Polygon or MultiPolygon")
            for polygon in polygons:
                features.append((code, [[(float(p[0]), float(p[1])) for p in ring] for ring in polygon]))
        if not features:
            raise ValueError(f"{path}: no grid polygons (expected a FeatureCollection)")
        return cls(features)

    def code_at(self, lon: float, lat: float) -> str | None:
        for code, rings in self.features:
            if _inside(rings[0], lon, lat) and not any(_inside(h, lon, lat) for h in rings[1:]):
                return code
        return None


def _inside(ring: list[tuple[float, float]], x: float, y: float) -> bool:
    inside = False
    n = len(ring)
    for i in range(n):
        (x1, y1), (x2, y2) = ring[i], ring[(i + 1) % n]
        if (y1 > y) != (y2 > y) and x < (x2 - x1) * (y - y1) / (y2 - y1) + x1:
            inside = not inside
    return inside


def resolve_grid(camera: Camera) -> str:
    """The camera's grid code: given directly, or looked up from its point in the grid map."""
    if camera.grid:
        return camera.grid
    assert camera.grid_map is not None
    if camera.location.lat is None or camera.location.lon is None:
        raise ValueError("grid_map needs location.lat and location.lon to pick the grid")
    code = GridMap.load(camera.grid_map).code_at(camera.location.lon, camera.location.lat)
    if code is None:
        raise ValueError(
            f"location ({camera.location.lat}, {camera.location.lon}) is in no polygon of {camera.grid_map}"
        )
    return code


class GridPicker:
    """The grid of an event: by the object's ground point through the camera's homography
    when it has one (and the point falls in a grid), else the camera's own grid."""

    def __init__(self, camera: Camera) -> None:
        self.default: str | None = camera.grid
        self.map = GridMap.load(camera.grid_map) if camera.grid_map is not None else None
        self.homography = np.asarray(camera.homography, np.float64) if camera.homography is not None else None
        if self.default is None:
            try:
                self.default = resolve_grid(camera)
            except ValueError:
                if self.homography is None:
                    raise

    def ground_to_lonlat(self, x: float, y: float) -> tuple[float, float] | None:
        if self.homography is None:
            return None
        lon, lat, w = self.homography @ np.array([x, y, 1.0])
        return (float(lon / w), float(lat / w)) if abs(w) > 1e-12 else None

    def grid_at(self, x: float, y: float) -> str:
        """(x, y): normalised image point where the object stands."""
        lonlat = self.ground_to_lonlat(x, y)
        if lonlat is not None and self.map is not None:
            code = self.map.code_at(*lonlat)
            if code is not None:
                return code
        if self.default is None:
            raise ValueError(f"ground point ({x:.3f}, {y:.3f}) is in no grid and the camera has none")
        return self.default


# --- loading -------------------------------------------------------------------------------


def _where(entries: list[Any], loc: tuple[Any, ...]) -> str:
    if len(loc) >= 2 and loc[0] == "cameras" and isinstance(loc[1], int):
        entry = entries[loc[1]] if loc[1] < len(entries) else None
        name = f"camera {entry['id']!r}" if isinstance(entry, dict) and entry.get("id") else f"cameras[{loc[1]}]"
        rest = ".".join(map(str, loc[2:]))
        return f"{name}, field {rest}" if rest else name
    return f"field {'.'.join(map(str, loc)) or '(top level)'}"


def parse_cameras(data: Any, base_dir: Path, source: str = "<config>", taxonomy: Any = None) -> CamerasConfig:
    if not isinstance(data, dict) or not isinstance(data.get("cameras"), list):
        raise CameraConfigError(f"{source}: expected a mapping with a 'cameras:' list")
    entries: list[Any] = data["cameras"]
    resolved = []
    for entry in entries:
        if isinstance(entry, dict):
            entry = dict(entry)
            src = entry.get("source")
            if isinstance(src, str) and not src.lower().startswith(LIVE_SCHEMES):
                entry["source"] = str((base_dir / Path(src).expanduser()).resolve())
            if isinstance(entry.get("grid_map"), str):
                entry["grid_map"] = str((base_dir / entry["grid_map"]).resolve())
        resolved.append(entry)
    try:
        config = CamerasConfig.model_validate({**data, "cameras": resolved})
    except ValidationError as exc:
        problems = [f"{_where(entries, tuple(e['loc']))}: {e['msg']}" for e in exc.errors()]
        raise CameraConfigError(f"{source}: " + "; ".join(problems)) from None
    problems = []
    for camera in config.cameras:
        if not camera.is_live and not Path(camera.source).exists():
            problems.append(f"camera {camera.id!r}, field source: no such file or folder: {camera.source}")
        if camera.grid is None and camera.homography is None:
            try:
                resolve_grid(camera)
            except ValueError as exc:
                problems.append(f"camera {camera.id!r}, field grid_map: {exc}")
        elif camera.grid_map is not None:
            try:
                GridMap.load(camera.grid_map)
            except ValueError as exc:
                problems.append(f"camera {camera.id!r}, field grid_map: {exc}")
        if taxonomy is not None:
            for i, rule in enumerate(camera.rules):
                if rule.violation not in taxonomy:
                    problems.append(
                        f"camera {camera.id!r}, field rules.{i}.violation: unknown violation "
                        f"{rule.violation!r}; known: {sorted(taxonomy.by_id)}"
                    )
    if problems:
        raise CameraConfigError(f"{source}: " + "; ".join(problems))
    return config


def load_cameras(path: str | Path, taxonomy: Any = None) -> CamerasConfig:
    """Read and validate a cameras YAML file; `taxonomy` (detector.Taxonomy) checks rule names."""
    path = Path(path)
    data = read_yaml_file(path, CameraConfigError, "camera file")
    return parse_cameras(data, path.resolve().parent, str(path), taxonomy)
