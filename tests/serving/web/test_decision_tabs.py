"""Decisions in a real browser (Debian's Chromium through Playwright), issue #29 items 3 and
12: two tabs of one reviewer on one case send two decisions, the second gets the 409 and the
page says so and goes on; Z takes back decisions already sent (the page's undo stack);
a decided case is re-decided from its page with a reason."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from tests.support.service import wait_for
from tests.support.web import add_user, queue_cases, sign_in

pytestmark = pytest.mark.slow


def shown(page, case_number: str) -> None:
    page.wait_for_selector(f'#review[data-shown="{case_number}"]', timeout=10_000)


def test_two_tabs_one_case_the_second_decision_is_refused(run_service, dataset_images, chromium) -> None:
    from serving.store.models import AuditEntry, Case, OutboxMessage

    server = run_service(review_undo_s=0.3)
    numbers = queue_cases(server, dataset_images, 3)
    add_user(server, "alice")
    context = chromium.new_context(viewport={"width": 1366, "height": 768}, locale="en-US")
    first = context.new_page()
    sign_in(first, server.url, "alice")
    second = context.new_page()  # the same session in another tab
    second.goto(f"{server.url}/review")
    shown(first, numbers[0])
    shown(second, numbers[0])  # the lease is alice's, so both tabs hold the same case
    first.keyboard.press("y")
    wait_for(lambda: first.evaluate("() => window.gwReview.sent") == 1, timeout=15)
    second.keyboard.press("n")
    second.keyboard.press("1")  # reject as a false alarm, 74 ms or 7 s later: too late either way
    second.wait_for_selector(f'#review[data-conflict="{numbers[0]}"]', timeout=10_000)
    assert "Already decided" in second.inner_text("#toast") and numbers[0] in second.inner_text("#toast")
    assert second.evaluate("() => window.gwReview.failed") == 1
    assert second.evaluate("() => document.getElementById('review').dataset.shown") != numbers[0]  # moved on
    context.close()
    with server.service.db.sessions() as session:
        case = session.scalars(select(Case).where(Case.case_number == numbers[0])).one()
        decisions = session.scalars(select(AuditEntry.action).where(AuditEntry.target == f"case:{numbers[0]}")).all()
        events = session.scalars(select(OutboxMessage.event).where(OutboxMessage.case_id == case.id)).all()
    assert case.review_status == "confirmed" and decisions == ["review.confirm"]
    assert events == ["case.reported"]  # no retraction followed the report


def test_z_takes_back_decisions_already_sent(run_service, dataset_images, chromium) -> None:
    from serving.store.models import AuditEntry, Case

    server = run_service(review_undo_s=0.2)
    numbers = queue_cases(server, dataset_images, 4)
    add_user(server, "bob")
    page = chromium.new_context(locale="en-US").new_page()
    sign_in(page, server.url, "bob")
    for i, number in enumerate(numbers[:3]):
        shown(page, number)
        page.keyboard.press("y")
        wait_for(lambda i=i: page.evaluate("() => window.gwReview.sent") == i + 1, timeout=15)
    # Past the 4 s window of the page: each Z takes back one sent decision, newest first.
    page.keyboard.press("z")
    shown(page, numbers[2])
    page.keyboard.press("z")
    shown(page, numbers[1])
    with server.service.db.sessions() as session:
        status = dict(session.execute(select(Case.case_number, Case.review_status)).all())
        undos = session.scalars(select(AuditEntry.target).where(AuditEntry.action == "review.undo")).all()
    assert [status[n] for n in numbers[:3]] == ["confirmed", "pending", "pending"]
    assert sorted(undos) == sorted(f"case:{n}" for n in numbers[1:3])
    # The case taken back is decided again like any other (on its new version).
    page.keyboard.press("n")
    page.keyboard.press("1")
    wait_for(lambda: page.evaluate("() => window.gwReview.sent") == 4, timeout=15)
    assert page.evaluate("() => window.gwReview.failed") == 0
    assert server.service.cases.get(numbers[1]).review_status == "rejected"
    page.context.close()


def test_correcting_to_the_same_kind_is_refused_on_the_page(run_service, dataset_images, chromium) -> None:
    server = run_service(review_undo_s=0.2)
    numbers = queue_cases(server, dataset_images, 2)  # bin_overflow, the first kind of the menu
    add_user(server, "cai")
    page = chromium.new_context(locale="zh-CN").new_page()
    sign_in(page, server.url, "cai")
    shown(page, numbers[0])
    page.keyboard.press("c")
    page.keyboard.press("1")
    page.wait_for_function("() => document.getElementById('toast').textContent.includes('案件已是该类型')")
    assert page.evaluate("() => document.getElementById('review').dataset.shown") == numbers[0]  # still here
    page.keyboard.press("c")
    page.keyboard.press("2")
    shown(page, numbers[1])
    wait_for(lambda: page.evaluate("() => window.gwReview.sent") == 1, timeout=15)
    assert server.service.cases.get(numbers[0]).violation == "exposed_garbage"
    page.context.close()


def test_redecide_from_the_case_page(run_service, dataset_images, chromium) -> None:
    from serving.audit import entries

    server = run_service()
    (number,) = queue_cases(server, dataset_images, 1)
    server.service.cases.review(number, "confirm", reviewer="dora", version=0)
    add_user(server, "dora")
    page = chromium.new_context(locale="en-US").new_page()
    sign_in(page, server.url, "dora")
    page.goto(f"{server.url}/review/history")
    page.click(f'#audit a[href="/review/cases/{number}"]')  # My history links each case to its page
    page.wait_for_selector("#redecide")
    page.focus("#redecide-action")
    page.keyboard.press("ArrowDown")  # confirm -> reject
    page.keyboard.press("Tab")
    page.keyboard.press("ArrowDown")  # the first reason: false alarm
    page.focus("#redecide-why")
    page.keyboard.type("a shadow on the pavement")
    with page.expect_navigation():
        page.keyboard.press("Enter")
    assert page.get_attribute("#review-status", "data-status") == "rejected"
    (latest, *_) = entries(server.service.db, target=f"case:{number}")
    assert latest.action == "review.redecide" and latest.after["why"] == "a shadow on the pavement"
    assert latest.after["reason"] == "false_alarm"
    # A stale form (someone re-decided meanwhile) is told so, not applied.
    server.service.cases.redecide(number, "confirm", reviewer="erin", why="it is garbage",
                                  version=server.service.cases.get(number).version)
    page.focus("#redecide-why")
    page.keyboard.type("again")
    page.keyboard.press("Enter")
    page.wait_for_selector('#redecide-result[data-status="409"]')
    assert "erin" in page.inner_text("#redecide-result")
    page.context.close()
