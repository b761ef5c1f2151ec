"""Labelling mode on the review page, in Debian's Chromium: L switches to the frames the
model was unsure about, the model's boxes are there to fix, a box is added, moved, resized
and given a class with the keyboard alone, Y saves it (no case is made), Z takes a save back
within the undo time, S skips a frame."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from tests.support.labelling import queue_samples
from tests.support.web import add_user, sign_in

pytestmark = pytest.mark.slow


def test_label_a_frame_with_the_keyboard(run_service, dataset_images, chromium, tmp_path) -> None:
    from serving.store.models import Case, LabellingItem

    import cv2

    server = run_service(review_undo_s=1.5)
    # Photos in which the (COCO seed) model found at least two things: boxes to fix.
    found = (p for p in dataset_images[:60] if len(server.service.detector.detect([cv2.imread(str(p))])[0]) >= 2)
    busy = [image for image, _ in zip(found, range(2))]
    assert len(busy) == 2
    ids = queue_samples(server, busy, 2)
    first = server.service.labelling.get(ids[0])
    add_user(server, "lena")
    page = chromium.new_context(viewport={"width": 1400, "height": 900}, locale="en-US").new_page()
    sign_in(page, server.url, "lena")
    page.wait_for_selector('#review[data-state="empty"]')  # no cases to review
    assert page.is_hidden("#labelling-details")
    page.keyboard.press("l")
    page.wait_for_selector(f'#review[data-label-shown="{ids[0]}"]')
    assert page.get_attribute("#labelling-toggle", "aria-pressed") == "true"
    assert page.is_visible("#labelling-details") and page.is_hidden("#case-details")
    # The model's detections are the starting boxes, each with its class written on it.
    model_boxes = len(first.detections)
    assert page.locator("#overlay rect").count() == model_boxes
    assert page.locator("#overlay text").all_text_contents() == [d["class_name"] for d in first.detections]
    assert "score near the threshold" in page.inner_text("#labelling-reasons")

    # Add a box (A: in the middle of the frame), move it right, grow it down, make it a
    # "person" (C then 1: the model's first class), then delete the model's first box.
    for key in ("a", "ArrowRight", "Shift+ArrowDown", "c"):
        page.keyboard.press(key)
    page.wait_for_selector("#menu:not([hidden])")
    page.keyboard.press("1")
    page.wait_for_selector("#overlay text.selected")
    assert page.text_content("#overlay text.selected") == "person"
    page.screenshot(path=str(tmp_path / "labelling.png"))
    added = page.evaluate("() => [...document.querySelectorAll('#overlay rect')].at(-1).getAttribute('x')")
    assert float(added) > first.width * 0.4  # moved right of where A put it
    page.keyboard.press("Tab")  # from the new (last) box round to the first
    page.keyboard.press("x")
    assert page.locator("#overlay rect").count() == model_boxes
    page.keyboard.press("y")
    page.wait_for_selector(f'#review[data-label-shown="{ids[1]}"]')
    # Z within the undo time: the frame is back as it was left, nothing was sent.
    page.keyboard.press("z")
    page.wait_for_selector(f'#review[data-label-shown="{ids[0]}"]')
    assert page.locator("#overlay rect").count() == model_boxes
    assert "person" in page.locator("#overlay text").all_text_contents()  # the class given before the save
    page.wait_for_timeout(2000)  # past the undo time: still nothing sent
    assert page.evaluate("() => window.gwReview.labelled") == 0
    assert server.service.labelling.get(ids[0]).status == "pending"
    page.keyboard.press("y")
    page.wait_for_selector(f'#review[data-label-shown="{ids[1]}"]')
    page.wait_for_function("() => window.gwReview.labelled === 1")
    page.keyboard.press("s")  # not worth labelling
    page.wait_for_selector('#review[data-state="empty"] #labelling-empty:not([hidden])')
    page.wait_for_function("() => window.gwReview.labelled === 2")
    assert page.evaluate("() => window.gwReview.failed") == 0
    page.click("#labelling-toggle")  # and back to the cases
    page.wait_for_selector('#review[data-mode="review"]')
    assert page.is_hidden("#labelling-details")  # the queue is empty: no case details either (issue #29)
    assert page.is_hidden("#case-details")
    page.context.close()

    with server.service.db.sessions() as session:
        saved, skipped = (session.get(LabellingItem, i) for i in ids)
        assert session.scalar(select(func.count()).select_from(Case)) == 0
    assert saved.status == "labelled" and saved.labelled_by == "lena" and saved.leased_by == ""
    assert skipped.status == "skipped"
    # The model's boxes but its first, and the new one, a person, moved right and grown down.
    kept = [{"class_name": d["class_name"], "box": d["box"]} for d in first.detections[1:]]
    assert saved.boxes[:-1] == kept
    new = saved.boxes[-1]
    w, h = first.width, first.height
    assert new["class_name"] == "person"
    assert new["box"][0] > w * 0.4 and new["box"][1] == pytest.approx(h * 0.4, abs=0.1)
    assert new["box"][3] > h * 0.6 and new["box"][2] - new["box"][0] == pytest.approx(w * 0.2, abs=0.2)
