"""Camera configuration: the YAML file that says what each camera watches, where, and when.

    cameras = load_cameras("cameras.yaml", taxonomy=load_taxonomy())

Every error names the camera and the field (`camera 'cam-001', field zones.1.polygon: ...`),
so a city editing a file of 300 cameras finds the line. Relative `source:` and `grid_map:`
paths are resolved against the YAML file's folder.

Beyond the issue's example, a camera entry may carry: `start:` (clock of a file without a
recorded start, with offset; without it the file's, or a folder's first image's, modification
time, so a replay after a restart makes the same event ids), `decode: auto|keyframes|all`, `close_after:` (grace seconds
before an event closes; default max(30, 3 samples)), `update_every:` (heartbeat of an open
event), `read_timeout:`, `homography:` (3x3, normalised image -> lon/lat, picks the grid per
event from `grid_map`). A rule may carry `classes:` (detector classes instead of the
taxonomy's), `scene_change: true` (fires on a new persistent patch, see serving.pipeline.scene),
`after_classes: [truck]` + `after_within:` (only after one of those passed), and
`auto_confirm_score:` (an extra, per-camera bar: below this median score an event is marked
`needs_review` even where settings' `auto_confirm` would send it; default: none, the setting decides).
`tiled_static_checks:` (default true) runs a static check tiled at full resolution every
`tiled_check_every:` seconds (default 300), `tile_size:` in frame pixels (default: the model's input size); `loop: true` plays a file
source again and again, its clock running on.
A schedule window is `{days: mon-fri | [sat, sun] | fri-mon, from: "HH:MM", to: "HH:MM", tz}`;
`to` before `from` runs overnight; no schedule means always.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from detector.files import validation_problems
from detector.taxonomy import read_yaml_file
from serving.cameras.credentials import CredentialError, expand, references
from serving.cameras.geometry import GRID_CODE, GridMap, resolve_grid
from serving.cameras.schedules import ScheduleWindow, in_schedule
from serving.events import CAMERA_ID, Location, division_problem

DIVISION_CODE = re.compile(r"^[0-9]{6}$")

# Every interval of a camera is at most a day (dwells a week): a larger one, an infinity or a
# NaN would pass "> 0" and then overflow the frame clock, stopping the pipeline for every camera.
DAY_S = 86400.0
Seconds = Annotated[float, Field(gt=0, le=DAY_S, allow_inf_nan=False)]
# A recording's clock: frame times are start + n * sample_every and must stay datetimes.
EARLIEST_START, LATEST_START = datetime(1970, 1, 1, tzinfo=timezone.utc), datetime(2200, 1, 1, tzinfo=timezone.utc)
LIVE_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://")


class CameraConfigError(ValueError):
    """A camera file is malformed; the message names the camera and the field."""


class Zone(BaseModel):
    """A named polygon in normalised image coordinates (0..1, x right, y down)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

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

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    violation: str
    zone_types: tuple[str, ...] = Field(min_length=1)
    min_score: float | None = Field(None, ge=0, le=1)  # default: the taxonomy's
    dwell: float | None = Field(None, ge=0, le=7 * DAY_S, allow_inf_nan=False)  # seconds; default: the taxonomy's
    classes: tuple[str, ...] | None = None  # detector classes; default: the taxonomy's
    # Scene-change rules fire on a new persistent patch rather than on a detector class.
    scene_change: bool = False
    # For spillage: only a patch that appears within `after_within` s of one of these passing.
    after_classes: tuple[str, ...] = ()
    after_within: Seconds = 120
    # Below this median score an event needs human review, whatever settings.auto_confirm says;
    # None: settings.auto_confirm alone decides (see serving.cases.policy).
    auto_confirm_score: float | None = Field(None, ge=0, le=1)


class Camera(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    id: str = Field(pattern=CAMERA_ID)
    source: str = Field(min_length=1)
    division: str
    grid: str | None = None
    grid_map: Path | None = None
    # 3x3 matrix from normalised image points (x, y, 1) to (lon, lat, 1): with a grid_map, each
    # event's grid is picked by where the object stands, not where the camera is.
    homography: tuple[tuple[float, float, float], tuple[float, float, float], tuple[float, float, float]] | None = None
    location: Location = Location()
    sample_every: Seconds = 2.0
    static_check_every: Seconds = 60
    # Every `tiled_check_every` seconds the static check runs tiled at full resolution (see
    # detector.tiling): one inference per tile, so less often than the plain re-check (a 1080p
    # frame is 35 inferences at 448 px, over its pyramid's levels). tile_size in frame pixels,
    # default the model's input.
    tiled_static_checks: bool = True
    tiled_check_every: Seconds = 300
    loop: bool = False  # a file source plays again when it ends, its clock running on
    tile_size: int | None = Field(None, ge=64)
    zones: tuple[Zone, ...] = ()
    rules: tuple[Rule, ...] = ()
    schedule: tuple[ScheduleWindow, ...] = ()  # empty: always on
    start: datetime | None = None  # clock of a file source without a recorded start time
    # Decoding: "auto" decodes only the keyframes it needs while they come often enough,
    # "keyframes" always, "all" every frame (cameras whose rules need motion).
    decode: Literal["auto", "keyframes", "all"] = "auto"
    close_after: Seconds | None = None  # grace before closing; default max(30, 3 samples)
    update_every: Seconds = 300  # re-send an open event at least this often
    read_timeout: Seconds = 10  # seconds without a packet before reconnecting
    # The source as written, where `source` has its `${NAME}` references filled in (see
    # serving.cameras.credentials): what is shown and stored; None when it had none.
    _configured_source: str | None = PrivateAttr(None)

    @field_validator("division")
    @classmethod
    def _division(cls, value: str) -> str:
        if not DIVISION_CODE.fullmatch(str(value)):
            raise ValueError(f"must be a 6-digit administrative division as a quoted string, got {value!r}")
        return str(value)

    @field_validator("grid")
    @classmethod
    def _grid(cls, value: str | None) -> str | None:
        if value is not None and not GRID_CODE.fullmatch(value):
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
        if value is not None and not EARLIEST_START <= value < LATEST_START:
            raise ValueError(f"must be between {EARLIEST_START.year} and {LATEST_START.year}, got {value.isoformat()}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Camera:
        if self.grid is None and self.grid_map is None:
            raise ValueError("give either grid (15-char code) or grid_map (GeoJSON file)")
        if self.homography is not None and self.grid_map is None:
            raise ValueError("homography is used to pick grids from grid_map: give grid_map too")
        problem = division_problem(self.division, self.grid)
        if problem:
            raise ValueError(problem)
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
    def configured_source(self) -> str:
        """The source as configured: references, not the secrets they name."""
        return self._configured_source or self.source

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
        return in_schedule(self.schedule, when)


class CamerasConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    cameras: tuple[Camera, ...] = Field(min_length=1)
    settings: dict[str, Any] = {}  # read by serving.settings.load_settings, ignored here

    @model_validator(mode="after")
    def _unique_ids(self) -> CamerasConfig:
        ids = [c.id for c in self.cameras]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"camera ids must be unique, repeated: {dupes}")
        return self


# --- loading -------------------------------------------------------------------------------


def _where(entries: list[Any], loc: tuple[Any, ...]) -> str:
    if len(loc) >= 2 and loc[0] == "cameras" and isinstance(loc[1], int):
        entry = entries[loc[1]] if loc[1] < len(entries) else None
        name = f"camera {entry['id']!r}" if isinstance(entry, dict) and entry.get("id") else f"cameras[{loc[1]}]"
        rest = ".".join(map(str, loc[2:]))
        return f"{name}, field {rest}" if rest else name
    return f"field {'.'.join(map(str, loc)) or '(top level)'}"


def _nul_paths(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Where a NUL character stands in a config entry's keys or strings."""
    if isinstance(value, str):
        return [path] if "\x00" in value else []
    if isinstance(value, dict):
        return [found for key, item in value.items()
                for found in ([(*path, key)] if isinstance(key, str) and "\x00" in key else [])
                + _nul_paths(item, (*path, key))]
    if isinstance(value, list | tuple):
        return [found for i, item in enumerate(value) for found in _nul_paths(item, (*path, i))]
    return []


def outside_roots(source: str, roots: tuple[Path, ...]) -> bool:
    """A resolved file source that lies under none of `roots` (symlinks followed)."""
    path = Path(source).resolve()
    return not any(path.is_relative_to(root.resolve()) for root in roots)


def parse_cameras(data: Any, base_dir: Path, source: str = "<config>", taxonomy: Any = None,
                  media_roots: tuple[Path, ...] | None = None) -> CamerasConfig:
    """`media_roots`: where file sources may be (cameras from the API, so an API key cannot
    name any host file); None: anywhere (the operator's own config file)."""
    if not isinstance(data, dict) or not isinstance(data.get("cameras"), list):
        raise CameraConfigError(f"{source}: expected a mapping with a 'cameras:' list")
    entries: list[Any] = data["cameras"]
    with_nul = [f"{_where(entries, ('cameras', i, *path))}: must not contain NUL characters"
                for i, entry in enumerate(entries) for path in _nul_paths(entry)]
    if with_nul:  # no path or URL holds one, and PostgreSQL cannot store one
        raise CameraConfigError(f"{source}: " + "; ".join(with_nul))
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
        raise CameraConfigError(f"{source}: {validation_problems(exc, lambda loc: _where(entries, loc))}") from None
    problems = []
    cameras = []
    for camera in config.cameras:
        try:
            camera = with_credentials(camera)
        except CredentialError as exc:
            problems.append(f"camera {camera.id!r}, field source: {exc}")
        cameras.append(camera)
        if camera.grid_map is not None and media_roots is not None and outside_roots(str(camera.grid_map), media_roots):
            # Checked before the file is opened: an API key must not make the service read any host file.
            problems.append(f"camera {camera.id!r}, field grid_map: a grid map must be under a media root "
                            f"({', '.join(map(str, media_roots))}; setting media_roots)")
            continue
        if not camera.is_live and media_roots is not None and outside_roots(camera.source, media_roots):
            problems.append(f"camera {camera.id!r}, field source: a file source must be under a media root "
                            f"({', '.join(map(str, media_roots))}; setting media_roots)")
        elif not camera.is_live and not Path(camera.source).exists():
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
                    # why_unknown: also says when the kind exists but waits for its matter code
                    problems.append(f"camera {camera.id!r}, field rules.{i}.violation: "
                                    f"{taxonomy.why_unknown(rule.violation)}")
                elif not (rule.scene_change or rule.classes or taxonomy[rule.violation].detector_classes):
                    # e.g. goods_piled_on_sidewalk: no detector class, so without scene change it never fires
                    problems.append(f"camera {camera.id!r}, field rules.{i}: violation {rule.violation!r} has no "
                                    "detector classes; its rule needs scene_change: true (a new persistent patch "
                                    "in the zone) or classes")
    if problems:
        raise CameraConfigError(f"{source}: " + "; ".join(problems))
    return config.model_copy(update={"cameras": tuple(cameras)})


def with_credentials(camera: Camera) -> Camera:
    """The camera with its source's `${NAME}` references filled in from the environment
    (the written form kept as `configured_source`); CredentialError says what is wrong."""
    if not references(camera.source):
        return camera
    opened = camera.model_copy(update={"source": expand(camera.source)})
    opened._configured_source = camera.source
    return opened


def load_cameras(path: str | Path, taxonomy: Any = None) -> CamerasConfig:
    """Read and validate a cameras YAML file; `taxonomy` (detector.Taxonomy) checks rule names."""
    path = Path(path)
    data = read_yaml_file(path, CameraConfigError, "camera file")
    return parse_cameras(data, path.resolve().parent, str(path), taxonomy)
