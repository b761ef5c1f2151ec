"""Where an event is on the city's grid: GeoJSON grid maps, and the grid of an object's
ground point through a camera's homography."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from serving.events import GRID_PATTERN

if TYPE_CHECKING:
    from serving.cameras.schema import Camera

GRID_CODE = re.compile(GRID_PATTERN)
# A city's grid map is a few MB at most; a bigger file is not one, and is not read whole.
GRID_MAP_MAX_BYTES = 16 * 1024 * 1024


class GridMap:
    """GeoJSON polygons whose properties carry a 15-char grid `code` (or `grid`)."""

    def __init__(self, features: list[tuple[str, list[list[tuple[float, float]]]]]) -> None:
        self.features = features  # (code, rings of (lon, lat)); first ring outer, rest holes

    @classmethod
    def load(cls, path: Path) -> GridMap:
        """Errors name the file and the feature, never a value from it: a path that is not a
        grid map (any host file) must not be read back through the error."""
        try:
            with path.open("rb") as f:  # no more than the limit is read, whatever the file's size
                raw = f.read(GRID_MAP_MAX_BYTES + 1)
        except OSError as exc:
            raise ValueError(f"cannot read GeoJSON {path}: {exc.strerror or type(exc).__name__}") from None
        if len(raw) > GRID_MAP_MAX_BYTES:
            raise ValueError(f"{path} is over the {GRID_MAP_MAX_BYTES}-byte limit of a grid map")
        try:
            data = json.loads(raw.decode("utf-8"))
        except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
            raise ValueError(f"{path} is not a GeoJSON file (not UTF-8 JSON)") from None
        features = []
        for i, feature in enumerate(data.get("features", []) if isinstance(data, dict) else []):
            feature = feature if isinstance(feature, dict) else {}
            props = feature.get("properties") if isinstance(feature.get("properties"), dict) else {}
            code = props.get("code") or props.get("grid")
            if not isinstance(code, str) or not GRID_CODE.fullmatch(code):
                raise ValueError(f"{path}: features.{i}.properties.code must be a 15-char grid code")
            geometry = feature.get("geometry") if isinstance(feature.get("geometry"), dict) else {}
            kind, coords = geometry.get("type"), geometry.get("coordinates")
            polygons = [coords] if kind == "Polygon" else coords if kind == "MultiPolygon" else None
            if not polygons:
                raise ValueError(f"{path}: features.{i}.geometry must be a Polygon or MultiPolygon")
            try:
                for polygon in polygons:
                    features.append((code, [[(float(p[0]), float(p[1])) for p in ring] for ring in polygon]))
            except (TypeError, ValueError, IndexError, KeyError):
                raise ValueError(f"{path}: features.{i}.geometry.coordinates must be rings of [lon, lat] numbers") from None
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
