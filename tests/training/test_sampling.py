"""Repeat-factor sampling: the LVIS arithmetic, the expansion, and what a built dataset feeds it."""

from __future__ import annotations

import math

import numpy as np
import pytest

from training.fit.sampling import (RepeatedDataset, TrainImage, expanded_indices, repeat_factors, report_lines,
                               sampling_report, train_images)


def image(source: str, *classes: str) -> TrainImage:
    return TrainImage(source=source, human_classes=frozenset(classes))


def test_factors_follow_the_lvis_formula_over_classes_and_sources():
    # 10 images: 7 garbage (bins in all), 2 facades (one with a window ad), 1 push cart.
    images = [image("garbage", "garbage_bin")] * 7 + [image("facade", "shop_sign", "window_ad"),
                                                       image("facade", "shop_sign"), image("thela", "push_cart")]
    factors = repeat_factors(images, threshold=0.25)
    # garbage_bin in 7/10 and its source in 7/10: both above t, factor 1.
    assert factors[:7] == pytest.approx([1.0] * 7)
    # window_ad in 1/10: sqrt(0.25/0.1); it beats shop_sign and source:facade (2/10: sqrt(1.25)).
    assert factors[7] == pytest.approx(math.sqrt(2.5))
    assert factors[8] == pytest.approx(math.sqrt(1.25))
    assert factors[9] == pytest.approx(math.sqrt(2.5))  # push_cart and source:thela both 1/10


def test_a_source_counts_even_where_its_class_is_absent():
    images = [image("garbage", "garbage_bin")] * 9 + [image("facade")]  # a facade with no labelled sign
    assert repeat_factors(images, 0.25)[9] == pytest.approx(math.sqrt(2.5))


def test_threshold_zero_is_plain_sampling():
    assert repeat_factors([image("a", "x"), image("b")], 0).tolist() == [1.0, 1.0]


def test_expansion_repeats_whole_factors_and_rounds_fractions_stochastically():
    whole = expanded_indices(np.array([1.0, 3.0, 2.0]))
    assert np.bincount(whole).tolist() == [1, 3, 2]
    many = expanded_indices(np.full(4000, 1.5), seed=7)
    draws = np.bincount(many, minlength=4000)
    assert set(draws.tolist()) == {1, 2}
    assert abs(len(many) / 4000 - 1.5) < 0.05
    assert np.array_equal(many, expanded_indices(np.full(4000, 1.5), seed=7))  # one run, one list


def test_train_images_take_source_and_pseudo_classes_from_the_manifest(tmp_path):
    from training.data.dataset_manifest import (BuildSettings, DatasetManifest, LabelCounts, RealImage,
                                           write_manifest)

    names = {0: "push_cart", 1: "person", 2: "car"}
    manifest = DatasetManifest(
        classes=list(names.values()), sources=[], counts=LabelCounts(), dataset_hash="0",
        options=BuildSettings(val_fraction=0.15, pseudo_labels=True, pseudo_score=0.4, teacher=None, synthetic=0,
                              imgsz=640, limit=None, seed=0, near_duplicate_distance=6),
        images=[RealImage(file="train/a.jpg", source="thela_india", original="x", split="train", sha256="0",
                          phash="0" * 16, cluster=0, boxes=3, pseudo_labelled_classes=["person", "car"],
                          pseudo_boxes=2)],
    )
    write_manifest(manifest, tmp_path / "manifest.json")
    images = train_images(["/d/images/train/a.jpg", "/d/images/train/b.jpg"],
                          [np.array([[0], [1], [2]]), np.array([[1]])], names, tmp_path / "manifest.json")
    assert images[0] == image("thela_india", "push_cart")  # people and cars are the teacher's
    assert images[1] == image("unknown", "person")  # not in the manifest: a hand-made image


def test_repeated_dataset_reads_through_the_index_list_and_keeps_the_rest():
    class Base:
        labels = ["l0", "l1"]

        def __getitem__(self, i):
            return f"item{i}"

    dataset = RepeatedDataset(Base(), np.array([0, 1, 1]))
    assert len(dataset) == 3
    assert [dataset[i] for i in range(3)] == ["item0", "item1", "item1"]
    assert dataset.labels == ["l0", "l1"]


def test_summary_counts_draws_per_category():
    images = [image("garbage", "garbage_bin")] * 3 + [image("thela", "push_cart")]
    factors = repeat_factors(images, 0.5)  # push_cart and thela: sqrt(0.5/0.25) = 1.41
    report = sampling_report(images, factors, np.array([0, 1, 2, 3, 3]), 0.5)
    assert report["categories"]["push_cart"] == {"images": 1, "mean_factor": 1.414, "draws": 2}
    assert report["categories"]["source:garbage"] == {"images": 3, "mean_factor": 1.0, "draws": 3}
    lines = report_lines(report)
    assert lines[0] == "repeat-factor sampling (t=0.5): 4 train images -> 5 draws per epoch"
    assert list(report["categories"])[:2] == ["source:garbage", "source:thela"]  # sources first


def test_best_epoch_is_judged_on_the_labelled_classes(tmp_path):
    from training.data.dataset_manifest import (BuildSettings, DatasetManifest, LabelCounts, write_manifest)
    from training.fit.trainer import labelled_fitness, labelled_val_classes

    manifest = DatasetManifest(
        classes=["push_cart", "person", "flyer"], sources=[], dataset_hash="0", images=[],
        counts=LabelCounts(human={"train": {"push_cart": 9}, "val": {"push_cart": 3}},
                           pseudo={"val": {"person": 40}}, synthetic={"val": {"flyer": 2}}),
        options=BuildSettings(val_fraction=0.15, pseudo_labels=True, pseudo_score=0.4, teacher=None, synthetic=2,
                              imgsz=640, limit=None, seed=0, near_duplicate_distance=6),
    )
    write_manifest(manifest, tmp_path / "manifest.json")
    labelled = labelled_val_classes(tmp_path / "manifest.json")
    assert labelled == {"push_cart", "flyer"}  # people are the teacher's
    assert labelled_val_classes(tmp_path / "none.json") is None
    names = {0: "push_cart", 1: "person", 2: "flyer"}
    all_ap = np.array([[0.2] * 10, [0.9] * 10, [0.4] * 10])  # rows in ap_class_index order
    assert labelled_fitness(all_ap, np.array([0, 1, 2]), names, labelled) == pytest.approx(0.3)
    assert labelled_fitness(all_ap[1:2], np.array([1]), names, labelled) is None  # none scored: Ultralytics' own
