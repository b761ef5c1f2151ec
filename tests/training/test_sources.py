"""Source definitions: every one loads, points at real data, and maps only onto gridwatch classes."""

from __future__ import annotations

import pytest

from detector import load_taxonomy
from tests.support.shared_data import DATASETS
from training.data.sources import SourceError, all_sources, gridwatch_classes, load_source


def test_gridwatch_classes_come_from_the_taxonomy_in_order():
    classes = list(gridwatch_classes())
    assert classes == load_taxonomy().all_detector_classes
    assert classes[:8] == ["garbage_bin", "bin_overflow", "garbage_pile", "push_cart",
                           "shop_sign", "window_ad", "flyer", "banner"]


def test_every_source_in_shared_has_a_definition_that_loads():
    sources = {s.name: s for s in all_sources(DATASETS)}
    on_disk = {p.name for p in DATASETS.iterdir() if p.is_dir()} if DATASETS.is_dir() else set()
    assert on_disk <= set(sources), f"undefined sources: {on_disk - set(sources)}"
    assert {"garbage_overflow_cn", "facade_signs_spb", "thela_india"} <= set(sources)
    known = set(gridwatch_classes())
    for s in sources.values():
        assert s.licence and s.attribution and s.format in ("yolo", "coco", "voc", "labelstudio", "cvat")
        assert {v for v in s.class_map.values() if v is not None} <= known, s.name
        assert s.path.is_absolute()


@pytest.mark.skipif(not DATASETS.is_dir(), reason=f"no shared datasets at {DATASETS}")
def test_every_class_in_the_data_is_mapped_or_dropped_on_purpose():
    for s in all_sources(DATASETS):
        samples = s.samples()
        assert samples, s.name
        assert not [u for x in samples for u in x.unknown], s.name
        assert all(x.size for x in samples)
        assert sum(len(x.classes) for x in samples) > 0


def test_the_agreed_mappings():
    garbage = load_source("garbage_overflow_cn", DATASETS).class_map
    assert garbage == {"garbage": "garbage_pile", "garbage_bin": "garbage_bin", "overflow": "bin_overflow"}
    facade = load_source("facade_signs_spb", DATASETS).class_map
    assert facade["signboard"] == facade["cantilever"] == "shop_sign" and facade["win_ad"] == "window_ad"
    assert facade["window"] is facade["arch"] is facade["door"] is None
    thela = load_source("thela_india", DATASETS).class_map
    assert thela["thela"] == "push_cart" and thela["rickshaw"] is None
    assert "CC BY 4.0" in load_source("garbage_overflow_cn", DATASETS).licence


def test_bad_definitions_are_refused_with_the_reason(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\npath: x\nformat: yolo\nlicence: CC0\nattribution: me\nclasses: {a: sofa}\n")
    with pytest.raises(SourceError, match="sofa"):
        load_source(str(bad), tmp_path)
    bad.write_text("name: x\npath: x\nformat: kitti\nlicence: CC0\nattribution: me\nclasses: {a: car}\n")
    with pytest.raises(SourceError, match="kitti"):
        load_source(str(bad), tmp_path)
    bad.write_text("name: x\npath: x\nformat: coco\nlicence: CC0\nattribution: me\nclasses: {a: car}\n")
    with pytest.raises(SourceError, match="annotations"):
        load_source(str(bad), tmp_path)
    with pytest.raises(SourceError, match="no source named"):
        load_source("nowhere")
