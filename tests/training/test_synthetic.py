"""Synthetic flyers and banners: the boxes lie inside the image and cover what was drawn."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from tests.support.shared_data import DATASETS
from training.data.sources import load_source
from training.data.synthetic import SyntheticError, compose, load_fonts, render_banner, render_flyer


@pytest.fixture(scope="module")
def fonts():
    try:
        return load_fonts()
    except SyntheticError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def backgrounds():
    if not DATASETS.is_dir():
        pytest.skip(f"no shared datasets at {DATASETS}")
    picked = []
    for name in ("facade_signs_spb", "garbage_overflow_cn"):
        samples = load_source(name, DATASETS).samples()
        picked += samples[:: max(1, len(samples) // 6)][:6]
    return picked


def test_missing_fonts_fail_with_the_package_to_install(tmp_path):
    with pytest.raises(SyntheticError, match="fonts-noto-cjk"):
        load_fonts(tmp_path)


def test_rendered_ads_have_ink_on_them(fonts):
    rng = np.random.default_rng(3)
    for _ in range(10):
        for ad in (render_flyer(rng, fonts), render_banner(rng, fonts)):
            assert ad.ndim == 3 and ad.shape[2] == 4
            opaque = ad[..., 3] > 0
            assert opaque.mean() > 0.05
            # Text is drawn: ink on paper or cloth varies in colour; a sprayed number is
            # one colour but shaped like its glyphs, with the wall showing between them.
            assert ad[..., :3][opaque].std() > 20 or opaque.mean() < 0.8


def test_boxes_lie_inside_the_image_and_cover_the_ad(fonts, backgrounds):
    kinds = set()
    for seed, sample in enumerate(backgrounds):
        rng = np.random.default_rng(seed)
        background = cv2.imread(str(sample.image))
        image, ads = compose(background, sample.boxes, rng, fonts)
        H, W = background.shape[:2]
        changed = np.any(image != background, axis=2)
        if not ads:
            assert not changed.any()
            continue
        inside_any = np.zeros_like(changed)
        for ad in ads:
            kinds.add(ad.kind)
            x1, y1, x2, y2 = ad.box
            assert 0 <= x1 < x2 <= W and 0 <= y1 < y2 <= H, ad
            # Warping anti-aliases at most one pixel beyond the corners.
            xi1, yi1 = max(int(np.floor(x1)) - 1, 0), max(int(np.floor(y1)) - 1, 0)
            xi2, yi2 = int(np.ceil(x2)) + 1, int(np.ceil(y2)) + 1
            inside_any[yi1:yi2, xi1:xi2] = True
            # The box is not loose: a good share of it was painted.
            assert changed[yi1:yi2, xi1:xi2].mean() > 0.25, ad
            # Nothing labelled was painted over.
            for b in sample.boxes:
                ix = min(x2, b[2]) - max(x1, b[0])
                iy = min(y2, b[3]) - max(y1, b[1])
                assert ix <= 0 or iy <= 0, (ad, b)
        outside = changed & ~inside_any
        assert not outside.any(), f"{outside.sum()} changed pixels outside every box ({sample.image.name})"
    assert kinds == {"flyer", "banner"}
