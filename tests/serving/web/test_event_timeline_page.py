"""Issue #29 item 11 in Debian's Chromium, keyboard only: the frames kept across an event's
life (opened with its best frame, a later update, the closing) are shown on the review queue
and the case page as a strip in camera time order, each with its moment and camera-local time
in the page's language; ←/→ step through them, the boxes shown on the best frame only."""

from __future__ import annotations

import pytest

from tests.support.service import event_json, push
from tests.support.web import add_user, sign_in

pytestmark = pytest.mark.slow

ZH = {"locale": "zh-CN", "timezone_id": "Asia/Shanghai"}


def an_event_over_time(server, dataset_images) -> str:
    """Opened at 17:01:30 (Asia/Shanghai) with its best frame, still there at 17:06:40 (a
    lower score: not better), gone at 17:11:40."""
    with server.client(server.key("camera")) as http:
        number = push(http, event_json(event_id="ev-t", end_s=90, score=0.8), dataset_images[0]).json()["case_number"]
        push(http, event_json(event_id="ev-t", type="updated", end_s=400, score=0.6),
             dataset_images[1]).raise_for_status()
        push(http, event_json(event_id="ev-t", type="closed", end_s=700, score=0.6),
             dataset_images[2]).raise_for_status()
    return number


def test_queue_strip_steps_through_the_event_in_time_order(run_service, dataset_images, chromium) -> None:
    server = run_service()
    number = an_event_over_time(server, dataset_images)
    add_user(server, "alice")
    page = chromium.new_context(viewport={"width": 1366, "height": 768}, **ZH).new_page()
    sign_in(page, server.url, "alice")
    page.wait_for_selector(f'#review[data-shown="{number}"]', timeout=10_000)
    assert page.is_visible("#frames-block")
    captions = page.locator("#frames figcaption").all_inner_texts()
    assert [c.split("\n")[0] for c in captions] == ["开始 · 最佳", "更新", "结束"]
    assert [c.split("\n")[1] for c in captions] == ["17:01:30", "17:06:40", "17:11:40"]
    best = page.get_attribute("#evidence", "src")
    assert page.get_attribute("#frames figure.selected", "data-index") == "0"  # the best frame, with its boxes
    assert "开始 · 最佳 · 2026-11-23 17:01:30 UTC+08:00" in page.inner_text("#frame-now")  # the whole time, its zone
    page.keyboard.press("ArrowRight")
    page.wait_for_selector('#review[data-frame="1"][data-moment="update"]')
    assert page.get_attribute("#evidence", "src") != best and page.is_hidden("#overlay")
    assert "更新 · 2026-11-23 17:06:40 UTC+08:00" in page.inner_text("#frame-now")
    assert "第 2 / 3 帧" in page.inner_text("#frame-now")
    page.keyboard.press("ArrowRight")
    page.wait_for_selector('#review[data-frame="2"][data-moment="closed"]')
    page.keyboard.press("ArrowRight")  # the last frame stays
    assert page.get_attribute("#review", "data-frame") == "2"
    page.keyboard.press("ArrowLeft")
    page.keyboard.press("ArrowLeft")
    page.wait_for_selector('#review[data-frame="0"]')
    assert page.get_attribute("#evidence", "src") == best and page.is_visible("#overlay")
    # The frames of the timeline are served like the photo (a masked copy where people were found).
    urls = page.eval_on_selector_all("#frames img", "imgs => imgs.map(i => i.naturalWidth)")
    assert all(w > 0 for w in urls)
    page.context.close()
    # In English, the same moments in English.
    page = chromium.new_context(viewport={"width": 1366, "height": 768}, locale="en-US",
                                timezone_id="Asia/Shanghai").new_page()
    sign_in(page, server.url, "alice")
    page.goto(f"{server.url}/review?lang=en")
    page.wait_for_selector(f'#review[data-shown="{number}"]', timeout=10_000)
    assert [c.split("\n")[0] for c in page.locator("#frames figcaption").all_inner_texts()] == [
        "opened · best", "update", "closed"]
    page.context.close()


def test_case_page_strip_steps_with_arrow_keys(run_service, dataset_images, chromium) -> None:
    server = run_service()
    number = an_event_over_time(server, dataset_images)
    add_user(server, "alice")
    page = chromium.new_context(viewport={"width": 1920, "height": 1080}, **ZH).new_page()
    sign_in(page, server.url, "alice")
    page.goto(f"{server.url}/review/cases/{number}")
    captions = page.locator("#frames figcaption").all_inner_texts()
    assert captions == ["开始 · 最佳\n2026-11-23 17:01:30 UTC+08:00", "更新\n2026-11-23 17:06:40 UTC+08:00",
                        "结束\n2026-11-23 17:11:40 UTC+08:00"]
    photo = page.get_attribute("#case-frame", "src")
    page.wait_for_selector('body[data-boxes="1"]')
    page.keyboard.press("ArrowRight")
    page.wait_for_selector('body[data-frame="1"][data-moment="update"]')
    assert page.get_attribute("#case-frame", "src") != photo and page.is_hidden("#case-overlay")
    assert "更新" in page.inner_text("#frame-now") and "第 2 / 3 帧" in page.inner_text("#frame-now")
    page.keyboard.press("ArrowRight")
    page.wait_for_selector('body[data-frame="2"][data-moment="closed"]')
    page.keyboard.press("ArrowLeft")
    page.keyboard.press("ArrowLeft")
    page.wait_for_selector('body[data-frame="0"]')
    assert page.get_attribute("#case-frame", "src") == photo and page.is_visible("#case-overlay")
    page.context.close()
