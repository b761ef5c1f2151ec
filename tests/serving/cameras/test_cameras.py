"""Camera configuration: the issue's example loads; every mistake names camera and field."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import yaml

from detector import load_taxonomy
from serving.cameras import CameraConfigError, load_cameras, parse_cameras, parse_days, resolve_grid
from tests.support.streams import EXAMPLE_YAML


@pytest.fixture
def example(tmp_path: Path) -> Path:
    (tmp_path / "recordings").mkdir()
    (tmp_path / "recordings" / "cam-001.mp4").write_bytes(b"")  # existence is all the loader checks
    path = tmp_path / "cameras.yaml"
    path.write_text(EXAMPLE_YAML, encoding="utf-8")
    return path


def _entry(**changes) -> dict:
    entry = yaml.safe_load(EXAMPLE_YAML)["cameras"][0]
    entry.update(changes)
    return entry


def _load(tmp_path: Path, *entries: dict):
    (tmp_path / "recordings").mkdir(exist_ok=True)
    (tmp_path / "recordings" / "cam-001.mp4").touch()
    return parse_cameras({"cameras": list(entries)}, tmp_path, "cams.yaml", taxonomy=load_taxonomy())


def test_issue_example_loads_as_written(example: Path) -> None:
    config = load_cameras(example, taxonomy=load_taxonomy())
    (cam,) = config.cameras
    assert cam.id == "cam-001"
    assert cam.source == str(example.parent / "recordings" / "cam-001.mp4")  # relative to the file
    assert cam.division == "370202" and cam.grid == "370202001001001"
    assert cam.location.address == "Zhongshan Rd 1, Shinan" and cam.location.lat == pytest.approx(36.0671)
    assert cam.sample_every == 2.0 and cam.static_check_every == 60
    assert [(z.name, z.type) for z in cam.zones] == [("east-sidewalk", "sidewalk"), ("bins", "bin_area")]
    assert [(r.violation, r.zone_types, r.min_score, r.dwell) for r in cam.rules] == [
        ("bin_overflow", ("bin_area", "sidewalk"), 0.4, 60),
        ("street_stall", ("sidewalk",), 0.5, 180),
    ]
    assert not cam.is_live


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"division": 370202}, "camera 'cam-001', field division"),
        ({"division": "37020"}, "6-digit"),
        ({"grid": "3702020010010"}, "field grid: "),
        ({"zones": [{"name": "a", "type": "sidewalk", "polygon": [[0, 0], [1.5, 0], [1, 1]]}]}, "field zones.0.polygon"),
        ({"zones": [{"name": "a", "type": "sidewalk", "polygon": [[0, 0], [1, 1]]}]}, "at least 3 points"),
        ({"schedule": [{"days": "mon-sun", "from": "07:00", "to": "22:00", "tz": "Mars/Olympus"}]}, "field schedule.0.tz"),
        ({"schedule": [{"days": "mon-funday", "from": "07:00", "to": "22:00"}]}, "field schedule.0.days"),
        ({"sample_every": 0}, "field sample_every"),
        ({"rules": [{"violation": "bin_overflow", "zone_types": ["roadway"]}]}, "match no zone"),
        ({"rules": [{"violation": "bin_overflowing", "zone_types": ["sidewalk"]}]}, "field rules.0.violation: unknown violation"),
        ({"source": "recordings/missing.mp4"}, "field source: no such file"),
        ({"grid": None}, "either grid"),
        ({"colour": "red"}, "field colour"),
        # Accepted once, these overflowed the frame clock and stopped the pipeline for every camera.
        ({"sample_every": 1e308}, "field sample_every: Input should be less than or equal to 86400"),
        ({"sample_every": float("inf")}, "field sample_every: Input should be a finite number"),
        ({"tiled_check_every": float("nan")}, "field tiled_check_every: Input should be a finite number"),
        ({"start": "9999-12-31T23:59:59+14:00"}, "field start: Value error, must be between 1970 and 2200"),
        ({"homography": [[1, 0, 0], [0, 1, 0], [0, 0, float("inf")]]}, "field homography.2.2"),
        ({"rules": [{"violation": "bin_overflow", "zone_types": ["sidewalk"], "dwell": float("inf")}]},
         "field rules.0.dwell"),
        ({"grid": "370202001001001\n"}, "field grid: "),  # re's "$" matches before a final newline
        ({"source": "recordings/cam-001.mp4\x00"}, "field source: must not contain NUL characters"),
        ({"zones": [{"name": "a\x00", "type": "sidewalk", "polygon": [[0, 0], [1, 0], [1, 1]]}]},
         "field zones.0.name: must not contain NUL"),
    ],
)
def test_errors_name_camera_and_field(tmp_path: Path, changes: dict, expected: str) -> None:
    with pytest.raises(CameraConfigError) as err:
        _load(tmp_path, _entry(**changes))
    assert "cam-001" in str(err.value)
    assert expected in str(err.value)
    # Only what is wrong: not also the camera list's length, counted without the failed entry.
    assert "at least 1 item" not in str(err.value)


def test_second_camera_error_names_that_camera(tmp_path: Path) -> None:
    with pytest.raises(CameraConfigError, match=r"camera 'cam-002', field sample_every"):
        _load(tmp_path, _entry(), _entry(id="cam-002", sample_every=-1))


def test_duplicate_ids_rejected(tmp_path: Path) -> None:
    with pytest.raises(CameraConfigError, match="unique.*cam-001"):
        _load(tmp_path, _entry(), _entry())


def test_unreadable_yaml_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("cameras: [\n", encoding="utf-8")
    with pytest.raises(CameraConfigError, match="not valid YAML"):
        load_cameras(path)
    path.write_text("- just a list\n", encoding="utf-8")
    with pytest.raises(CameraConfigError, match="'cameras:' list"):
        load_cameras(path)


def test_live_sources_need_no_file(tmp_path: Path) -> None:
    config = _load(tmp_path, _entry(source="rtsp://10.0.0.7:554/sub"), _entry(id="b", source="http://x/mjpg"))
    assert all(c.is_live for c in config.cameras)
    assert config.cameras[0].source == "rtsp://10.0.0.7:554/sub"


def test_grid_map_picks_the_grid_from_the_camera_point(tmp_path: Path) -> None:
    def square(code: str, lon0: float) -> dict:
        ring = [[lon0, 36.0], [lon0 + 0.1, 36.0], [lon0 + 0.1, 36.1], [lon0, 36.1], [lon0, 36.0]]
        return {"type": "Feature", "properties": {"code": code}, "geometry": {"type": "Polygon", "coordinates": [ring]}}

    (tmp_path / "grids.geojson").write_text(json.dumps(
        {"type": "FeatureCollection", "features": [square("370202001001001", 120.2), square("370202001001002", 120.3)]}
    ))
    config = _load(tmp_path, _entry(grid=None, grid_map="grids.geojson"))
    assert resolve_grid(config.cameras[0]) == "370202001001002"  # lon 120.3826
    with pytest.raises(CameraConfigError, match="field grid_map: location .* is in no polygon"):
        _load(tmp_path, _entry(grid=None, grid_map="grids.geojson", location={"lat": 10.0, "lon": 10.0}))


def test_days_parsing() -> None:
    assert parse_days("mon-sun") == frozenset(range(7))
    assert parse_days("mon-fri") == frozenset(range(5))
    assert parse_days("fri-mon") == frozenset({4, 5, 6, 0})
    assert parse_days(["sat", "sun"]) == frozenset({5, 6})
    assert parse_days("tue,thu") == frozenset({1, 3})


def test_schedule_windows_in_their_time_zone(tmp_path: Path) -> None:
    cam = _load(tmp_path, _entry())
    cam = cam.cameras[0]
    sh = ZoneInfo("Asia/Shanghai")
    assert cam.in_schedule(datetime(2026, 5, 1, 7, 0, tzinfo=sh))
    assert cam.in_schedule(datetime(2026, 5, 1, 21, 59, tzinfo=sh))
    assert not cam.in_schedule(datetime(2026, 5, 1, 22, 0, tzinfo=sh))
    assert not cam.in_schedule(datetime(2026, 5, 1, 6, 59, tzinfo=sh))
    # 23:30 UTC is 07:30 next morning in Shanghai
    assert cam.in_schedule(datetime(2026, 4, 30, 23, 30, tzinfo=timezone.utc))
    assert not cam.in_schedule(datetime(2026, 5, 1, 15, 0, tzinfo=timezone.utc))  # 23:00 local


def test_overnight_and_weekday_windows(tmp_path: Path) -> None:
    night = {"days": "fri", "from": "22:00", "to": "06:00", "tz": "Asia/Shanghai"}
    cam = _load(tmp_path, _entry(schedule=[night])).cameras[0]
    sh = ZoneInfo("Asia/Shanghai")
    assert cam.in_schedule(datetime(2026, 5, 1, 23, 0, tzinfo=sh))  # Friday night
    assert cam.in_schedule(datetime(2026, 5, 2, 5, 0, tzinfo=sh))  # into Saturday morning
    assert not cam.in_schedule(datetime(2026, 5, 2, 23, 0, tzinfo=sh))  # Saturday night
    assert not cam.in_schedule(datetime(2026, 5, 1, 5, 0, tzinfo=sh))  # Friday early morning


def test_no_schedule_means_always(tmp_path: Path) -> None:
    cam = _load(tmp_path, _entry(schedule=[])).cameras[0]
    assert cam.in_schedule(datetime(2026, 5, 1, 3, 0, tzinfo=timezone.utc))


def test_start_must_carry_a_time_zone(tmp_path: Path) -> None:
    with pytest.raises(CameraConfigError, match="field start: .*time zone"):
        _load(tmp_path, _entry(start="2026-05-01T08:00:00"))
    cam = _load(tmp_path, _entry(start="2026-05-01T08:00:00+08:00")).cameras[0]
    assert cam.start == datetime(2026, 5, 1, 0, 0, tzinfo=timezone.utc)


def test_homography_picks_the_grid_where_the_object_stands(tmp_path: Path) -> None:
    from serving.cameras import GridPicker

    def square(code: str, lon0: float) -> dict:
        ring = [[lon0, 36.0], [lon0 + 0.001, 36.0], [lon0 + 0.001, 36.001], [lon0, 36.001], [lon0, 36.0]]
        return {"type": "Feature", "properties": {"code": code}, "geometry": {"type": "Polygon", "coordinates": [ring]}}

    (tmp_path / "grids.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": [
        square("370202001001001", 120.000), square("370202001001002", 120.001)]}))
    # Image x 0..1 spans lon 120.000..120.002; image y 0..1 spans lat 36.001..36.000.
    h = [[0.002, 0, 120.0], [0, -0.001, 36.001], [0, 0, 1]]
    config = _load(tmp_path, _entry(grid=None, grid_map="grids.geojson", homography=h,
                                    location={"lat": 36.0005, "lon": 120.0005}))
    picker = GridPicker(config.cameras[0])
    assert picker.grid_at(0.2, 0.9) == "370202001001001"
    assert picker.grid_at(0.8, 0.9) == "370202001001002"
    assert picker.grid_at(5.0, 0.9) == "370202001001001"  # off the map: the camera's own grid
    with pytest.raises(CameraConfigError, match="homography .*grid_map"):
        _load(tmp_path, _entry(homography=h))
    with pytest.raises(CameraConfigError, match="field homography: .*singular"):
        _load(tmp_path, _entry(grid_map="grids.geojson", homography=[[0, 0, 0], [0, 0, 0], [0, 0, 1]]))
