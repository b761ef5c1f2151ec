"""Issue #28, item 4 in Debian's Chromium, keyboard only: a muck_truck_uncovered case shows
what the load stage said (in words, with its score) on the queue and the case page; the
reviewer says what the load really was (T, then its number, shown in the help), confirms, and
the label is stored with the decision."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from serving.store.models import Case
from tests.support.service import event_json, push, wait_for
from tests.support.web import add_user, sign_in, tab_to

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


def kind_number(server, violation: str) -> tuple[str, bool]:
    """What the C menu takes for `violation`: its number, and whether Enter must follow (more
    than ten kinds: a number that a longer one could still start with)."""
    kinds = [v.id for v in server.service.taxonomy.violations]
    n = kinds.index(violation) + 1
    return str(n), len(kinds) > 10 and n * 10 <= len(kinds)


def correct_to(page, server, violation: str) -> None:
    digits, enter = kind_number(server, violation)
    page.keyboard.press("c")
    page.keyboard.type(digits)
    if enter:
        page.keyboard.press("Enter")


def test_a_correction_carries_the_load_only_to_a_truck_load_kind(run_service, dataset_images, chromium) -> None:
    """A bin case that really is an uncovered muck truck: T 3, then C to muck_truck_uncovered
    sends the load with the correction; a truck case corrected to another kind does not."""
    server = run_service(review_undo_s=0.3)
    with server.client(server.key("camera")) as camera:
        bin_case = push(camera, event_json("bin-1"), dataset_images[0]).json()["case_number"]
        truck = push(camera, event_json("truck-1", camera="cam-road", start_s=60, end_s=300,
                                        violation="muck_truck_uncovered", matter_code="37020208011", zone="road",
                                        zone_type="roadway"), dataset_images[1]).json()["case_number"]
    add_user(server, "alice")
    page = chromium.new_context(viewport={"width": 1366, "height": 768}, **ZH).new_page()
    sign_in(page, server.url, "alice")
    page.wait_for_selector(f'#review[data-shown="{bin_case}"]', timeout=10_000)
    assert page.is_hidden("#load-block")  # not a truck load case: nothing said until T
    page.keyboard.press("t")
    assert page.is_visible("#menu") and "苫盖" in page.inner_text("#menu")
    page.keyboard.press("3")
    page.wait_for_selector('#review[data-load="tarp"]')
    assert page.is_visible("#load-block") and page.inner_text("#load-review") == "苫盖"
    assert "更正" in page.inner_text("#load-stage")  # it goes with a correction to a truck load kind
    correct_to(page, server, "muck_truck_uncovered")
    page.wait_for_selector(f'#review[data-shown="{truck}"]', timeout=10_000)
    page.keyboard.press("t")
    page.keyboard.press("1")
    page.wait_for_selector('#review[data-load="open"]')
    correct_to(page, server, "bin_overflow")  # no load decision there: the load is not sent (else a 422)
    wait_for(lambda: page.evaluate("() => window.gwReview.sent") == 2, timeout=15)
    with server.service.db.sessions() as session:
        cases = {c.case_number: c for c in session.scalars(select(Case))}
    assert (cases[bin_case].review_status, cases[bin_case].violation, cases[bin_case].review_load) == \
        ("corrected", "muck_truck_uncovered", "tarp")
    assert (cases[truck].review_status, cases[truck].violation, cases[truck].review_load) == \
        ("corrected", "bin_overflow", None)
    page.context.close()


def test_history_redecide_changes_or_keeps_the_load(run_service, dataset_images, chromium) -> None:
    """My history's re-decide dialog: a load field on a truck load case's row only, on the
    case's load now; changed there it is stored, left as it is it is kept."""
    from serving.cases.review import Decision

    server = run_service()
    with server.client(server.key("camera")) as camera:
        truck = push(camera, event_json("truck-1", camera="cam-road", violation="muck_truck_uncovered",
                                        matter_code="37020208011", zone="road", zone_type="roadway"),
                     dataset_images[0]).json()["case_number"]
        bin_case = push(camera, event_json("bin-1", start_s=60, end_s=300), dataset_images[1]).json()["case_number"]
    server.service.cases.decide(truck, Decision("confirm", version=0, load_label="tarp"), reviewer="dora")
    server.service.cases.review(bin_case, "confirm", reviewer="dora", version=0)
    add_user(server, "dora")
    page = chromium.new_context(viewport={"width": 1366, "height": 768}, **ZH).new_page()
    sign_in(page, server.url, "dora")
    page.goto(f"{server.url}/review/history")
    tab_to(page, f'button.redecide-open[data-case="{bin_case}"]')
    page.keyboard.press("Enter")
    page.wait_for_selector("#redecide-dialog[open]")
    assert page.is_hidden("#redecide-load-field")
    page.keyboard.press("Escape")
    page.wait_for_selector("#redecide-dialog:not([open])", state="attached")

    def redecide(change_load: bool, why: str) -> None:
        """Reject (from confirm) changing the load, or confirm leaving it as it is."""
        tab_to(page, f'button.redecide-open[data-case="{truck}"]')
        page.keyboard.press("Enter")
        page.wait_for_selector("#redecide-dialog[open]")
        assert page.is_visible("#redecide-load-field")
        if change_load:
            page.keyboard.press("ArrowDown")  # confirm -> reject
            tab_to(page, "#redecide-load", limit=5)
            page.keyboard.press("ArrowDown")  # tarp -> cannot tell
        tab_to(page, "#redecide-why", limit=5)
        page.keyboard.type(why)
        with page.expect_navigation():
            page.keyboard.press("Enter")

    assert page.locator(f'button.redecide-open[data-case="{truck}"]').first.get_attribute("data-load") == "tarp"
    redecide(True, "看不清货箱")
    case = server.service.cases.get(truck)
    with server.service.db.sessions() as session:
        load = session.scalars(select(Case.review_load).where(Case.case_number == truck)).one()
    assert (case.review_status, load) == ("rejected", "cannot_tell")
    tab_to(page, f'button.redecide-open[data-case="{truck}"]')
    page.keyboard.press("Enter")
    page.wait_for_selector("#redecide-dialog[open]")
    assert page.input_value("#redecide-load") == "cannot_tell"  # the dialog opens on the load now
    page.keyboard.press("Escape")
    page.wait_for_selector("#redecide-dialog:not([open])", state="attached")
    redecide(False, "再看一遍：确属违规")  # back to confirm, the load field left as it is: kept
    with server.service.db.sessions() as session:
        status, load = session.execute(select(Case.review_status, Case.review_load)
                                       .where(Case.case_number == truck)).one()
    assert (status, load) == ("confirmed", "cannot_tell")
    page.context.close()


def test_the_page_copes_with_the_load_action_left_without_a_key(run_service, dataset_images, chromium) -> None:
    """A city whose own keys took T and both of load's fallbacks: the page starts, its help says
    the load has no key, and T is the city's confirm."""
    server = run_service(review_hotkeys={"confirm": "t", "reject": "g", "note": "w"}, review_undo_s=0.3)
    with server.client(server.key("camera")) as camera:
        number = push(camera, event_json("truck-1", camera="cam-road", violation="muck_truck_uncovered",
                                         matter_code="37020208011", zone="road", zone_type="roadway"),
                      dataset_images[0]).json()["case_number"]
    add_user(server, "alice")
    page = chromium.new_context(viewport={"width": 1366, "height": 768}, **ZH).new_page()
    sign_in(page, server.url, "alice")
    page.wait_for_selector(f'#review[data-shown="{number}"]', timeout=10_000)
    assert "无快捷键" in page.inner_text("#load-block h3")
    page.keyboard.press("?")
    load_row = page.locator("#help tr", has_text="渣土车案件").inner_text()
    assert "无快捷键" in load_row
    page.keyboard.press("Escape")
    page.keyboard.press("t")  # the city's confirm, not the load menu
    assert page.is_hidden("#menu")
    wait_for(lambda: page.evaluate("() => window.gwReview.sent") == 1, timeout=15)
    with server.service.db.sessions() as session:
        case = session.scalars(select(Case).where(Case.case_number == number)).one()
    assert (case.review_status, case.review_load) == ("confirmed", None)
    page.context.close()
