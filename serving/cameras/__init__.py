"""Cameras: what each one watches (schema), when (schedules), where on the grid (geometry),
and which ones this service runs (registry)."""

from serving.cameras.geometry import GridMap, GridPicker, resolve_grid
from serving.cameras.schema import (
    LIVE_SCHEMES,
    Camera,
    CameraConfigError,
    CamerasConfig,
    Rule,
    Zone,
    load_cameras,
    parse_cameras,
)
from serving.cameras.schedules import ScheduleWindow, parse_days
from serving.events import Location

__all__ = [
    "LIVE_SCHEMES",
    "Camera",
    "CameraConfigError",
    "CamerasConfig",
    "GridMap",
    "GridPicker",
    "Location",
    "Rule",
    "ScheduleWindow",
    "Zone",
    "load_cameras",
    "parse_cameras",
    "parse_days",
    "resolve_grid",
]
