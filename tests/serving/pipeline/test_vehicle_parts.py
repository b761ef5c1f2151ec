"""Part of a vehicle is not a violation (issue #28, item 3: "no violation class on a frame that
holds only a truck"). On road cameras the model reads a truck's red cab as a garbage bin and its
cargo bed as a window ad; a rule whose taxonomy entry names `not_part_of: [truck, bus]` does not
count a box lying inside one of those, and active learning asks a labeller about the frame."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import numpy as np

from detector import Detections, load_taxonomy
from detector.boxes import part_of
from serving.cameras import Camera
from serving.pipeline import Pipeline
from serving.pipeline.uncertainty import DailyBudget, UncertaintySampler
from serving.streams.readers import Frame
from tests.support.streams import whole_frame_check

T0 = datetime(2026, 5, 1, 2, 0, tzinfo=timezone.utc)
NAMES = {0: "truck", 1: "bin_overflow", 2: "window_ad", 3: "push_cart"}
TRUCK = (100, 80, 500, 330)
CAB = (400, 120, 490, 250)  # the red cab, read as an overflowing bin
CARGO = (120, 100, 380, 220)  # the cargo bed, read as a window ad
CART = (140, 200, 260, 320)  # a cart standing in front of the truck
KERB_BIN = (540, 200, 620, 330)  # a real overflowing bin beside the road, outside the truck


def test_part_of_needs_the_box_inside_and_smaller_than_the_whole() -> None:
    truck = np.array([TRUCK], np.float32)
    assert part_of(np.array(CAB), truck) and part_of(np.array(CARGO), truck)
    assert not part_of(np.array(KERB_BIN), truck)
    assert not part_of(np.array((450, 200, 560, 330)), truck)  # half outside: beside the truck, not on it
    assert not part_of(np.array((105, 85, 495, 325)), truck)  # the whole truck named twice: no part of it
    assert not part_of(np.array(CAB), np.zeros((0, 4), np.float32))


class _Scripted:
    """A detector that sees the same boxes in every frame."""

    info = type("Info", (), {"version": "fake-1", "names": NAMES})()

    def __init__(self, *boxes: tuple[str, tuple[int, int, int, int], float]) -> None:
        inverse = {name: i for i, name in NAMES.items()}
        self.found = Detections(xyxy=np.array([b for _, b, _ in boxes], np.float32).reshape(-1, 4),
                                scores=np.array([s for _, _, s in boxes], np.float32),
                                class_ids=np.array([inverse[n] for n, _, _ in boxes], np.int64), names=NAMES)

    def detect(self, images):
        return [self.found for _ in images]

    def tiled_check(self, image, tile=None):  # the static checks of sign rules
        return whole_frame_check(self.detect, image)


def _camera() -> Camera:
    everywhere = [[0, 0], [1, 0], [1, 1], [0, 1]]
    return Camera.model_validate({
        "id": "cam-road", "source": "rtsp://unused", "division": "370202", "grid": "370202001001001",
        "zones": [{"name": "street", "type": "sidewalk", "polygon": everywhere}],
        "rules": [{"violation": v, "zone_types": ["sidewalk"]}
                  for v in ("bin_overflow", "illegal_sign", "mobile_vendor")]})


def _replay(detector: _Scripted, seconds: int = 400) -> tuple[list, list]:
    samples: list = []
    sampler = UncertaintySampler(band=0.0, budget=DailyBudget(per_camera=100, tz=ZoneInfo("Asia/Shanghai")))
    pipeline = Pipeline([_camera()], detector, load_taxonomy(), motion_gating=False,
                        sampler=sampler, on_sample=samples.append)
    frame = np.full((360, 640, 3), 90, np.uint8)
    events = []
    for s in range(0, seconds, 10):
        events += pipeline.process([Frame("cam-road", T0 + timedelta(seconds=s), frame, 0)])
    return [e for e in events if e.type == "opened"], samples


def test_a_truck_alone_opens_nothing_and_its_frames_go_to_labelling() -> None:
    opened, samples = _replay(_Scripted(("truck", TRUCK, 0.6), ("bin_overflow", CAB, 0.8), ("window_ad", CARGO, 0.7)))
    assert opened == []
    assert samples and all("vehicle_part" in s.reasons for s in samples)
    # The same boxes without the truck are what the rules open cases on.
    opened, samples = _replay(_Scripted(("bin_overflow", CAB, 0.8), ("window_ad", CARGO, 0.7)))
    assert sorted(e.violation for e in opened) == ["bin_overflow", "illegal_sign"]
    assert not any("vehicle_part" in s.reasons for s in samples)


def test_a_vehicle_the_model_is_unsure_of_vetoes_nothing() -> None:
    # A real overflowing bin in front of a parked truck the shipped model scores 0.38 (val image
    # garbage_overflow_cn 000899): the truck's box holds the bin, and the bin is still filed.
    opened, _ = _replay(_Scripted(("truck", TRUCK, 0.38), ("bin_overflow", CAB, 0.8)))
    assert [e.violation for e in opened] == ["bin_overflow"]


def test_what_stands_beside_or_in_front_of_a_truck_still_counts() -> None:
    # A vendor's cart in front of a parked truck: carts are not in not_part_of (the teacher
    # called some carts trucks). A real bin at the kerb lies outside the truck.
    opened, _ = _replay(_Scripted(("truck", TRUCK, 0.6), ("push_cart", CART, 0.8), ("bin_overflow", KERB_BIN, 0.8)))
    assert sorted(e.violation for e in opened) == ["bin_overflow", "mobile_vendor"]


def test_a_city_can_change_what_a_violation_is_never_part_of(tmp_path) -> None:
    taxonomy = load_taxonomy()
    assert taxonomy["bin_overflow"].not_part_of == ("truck", "bus")
    assert taxonomy["mobile_vendor"].not_part_of == ()
    city = tmp_path / "city.yaml"
    city.write_text("violations: [{id: bin_overflow, not_part_of: []}]\n", encoding="utf-8")
    assert load_taxonomy(city)["bin_overflow"].not_part_of == ()
