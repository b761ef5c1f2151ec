"""Issue #28, item 4 in Debian's Chromium, keyboard only: a muck_truck_uncovered case shows
what the load stage said (in words, with its score) on the queue and the case page; the
reviewer says what the load really was (T, then its number, shown in the help), confirms, and
the label is stored with the decision."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from serving.store.models import Case
from tests.support.service import event_json, push, wait_for
from tests.support.web import add_user, sign_in

pytestmark = pytest.mark.slow

ZH = {"locale": "zh-CN", "timezone_id": "Asia/Shanghai"}


def test_reviewer_says_the_load_with_the_keyboard(run_service, dataset_images, chromium) -> None:
    server = run_service(review_undo_s=0.5)
    with server.client(server.key("camera")) as camera:
        number = push(camera, event_json("truck-1", camera="cam-road", violation="muck_truck_uncovered",
                                         matter_code="37020208011", zone="road", zone_type="roadway",
                                         stage_label="cannot_tell", stage_score=0.55),
                      dataset_images[0]).json()["case_number"]
    add_user(server, "alice")
    page = chromium.new_context(viewport={"width": 1366, "height": 768}, **ZH).new_page()
    sign_in(page, server.url, "alice")
    page.wait_for_selector(f'#review[data-shown="{number}"]', timeout=10_000)
    assert page.is_visible("#load-block")
    assert page.inner_text("#load-stage") == "无法判断 0.55"
    assert page.inner_text("#load-review") == "尚未标注"
    assert "无法判断 0.55" in page.inner_text("#timeline")
    page.keyboard.press("?")  # the help names the load key and its choices
    help_text = page.inner_text("#help")
    assert "T 1-5" in help_text.replace("\t", " ") and "1 货箱敞开, 2 网罩, 3 苫盖, 4 无法判断, 5 已覆盖" in help_text
    page.keyboard.press("Escape")
    page.keyboard.press("t")
    assert page.is_visible("#menu") and "苫盖" in page.inner_text("#menu")
    page.keyboard.press("3")
    page.wait_for_selector('#review[data-load="tarp"]')
    assert page.is_hidden("#menu") and page.inner_text("#load-review") == "苫盖"
    page.keyboard.press("y")
    wait_for(lambda: page.evaluate("() => window.gwReview.sent") == 1, timeout=15)
    with server.service.db.sessions() as session:
        case = session.scalars(select(Case).where(Case.case_number == number)).one()
    assert (case.review_status, case.review_load, case.reviewed_by) == ("confirmed", "tarp", "alice")
    # The case page: the model's label and the reviewer's, and each sighting's label.
    page.goto(f"{server.url}/review/cases/{number}")
    assert page.inner_text("#load-stage") == "无法判断 0.55"
    assert page.inner_text("#load-review") == "苫盖"
    assert "无法判断 0.55" in page.inner_text("#timeline")
    assert page.input_value("#redecide-load") == "tarp"  # a re-decision there keeps or changes it
    page.context.close()
