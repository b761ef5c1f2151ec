"""The review page in a real browser (Debian's Chromium through Playwright): a reviewer
clears a queue of real cases with the keyboard alone, and what was pressed is what the
database, the audit log and the outbox hold; two reviewers never get the same case."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from tests.support.service import wait_for
from tests.support.web import PASSWORD, add_user, queue_cases, sign_in

pytestmark = pytest.mark.slow


def shown(page, case_number: str) -> None:
    """The case's image is on screen (its boxes drawn), not just its number."""
    page.wait_for_selector(f'#review[data-shown="{case_number}"]', timeout=10_000)


def test_keyboard_only_queue(run_service, dataset_images, chromium, tmp_path) -> None:
    from serving.store.models import AuditEntry, Case, OutboxMessage

    server = run_service(review_undo_s=1.5)
    numbers = queue_cases(server, dataset_images, 12)
    add_user(server, "alice")
    context = chromium.new_context(viewport={"width": 1400, "height": 900}, locale="en-US")
    page = context.new_page()
    sign_in(page, server.url, "alice")
    shown(page, numbers[0])
    page.screenshot(path=str(tmp_path / "queue.png"))

    expected: dict[str, dict] = {}

    def press(*keys: str) -> None:
        for key in keys:
            page.keyboard.press(key)

    press("y")  # confirm
    expected[numbers[0]] = {"review_status": "confirmed", "violation": "bin_overflow"}
    shown(page, numbers[1])
    press("n", "1")  # reject: false alarm
    expected[numbers[1]] = {"review_status": "rejected", "reason": "false_alarm"}
    shown(page, numbers[2])
    press("c", "2")  # the second kind in the taxonomy
    expected[numbers[2]] = {"review_status": "corrected", "violation": "exposed_garbage"}
    shown(page, numbers[3])
    original = page.evaluate("() => document.querySelector('#overlay rect').getAttribute('x')")
    press("b", "ArrowRight", "ArrowRight", "Shift+ArrowDown")  # box mode: move right twice, grow down
    page.wait_for_selector("#overlay rect.selected")
    page.screenshot(path=str(tmp_path / "box-mode.png"))
    assert page.evaluate("() => document.querySelector('#overlay rect').getAttribute('x')") != original
    press("y")
    expected[numbers[3]] = {"review_status": "confirmed", "boxes": True}
    shown(page, numbers[4])
    press("y", "z")  # confirm, then take it back
    shown(page, numbers[4])
    press("n", "4")  # bad image
    expected[numbers[4]] = {"review_status": "rejected", "reason": "bad_image"}
    shown(page, numbers[5])
    press("j")  # skip ahead, then come back
    shown(page, numbers[6])
    press("k")
    shown(page, numbers[5])
    for number, following in zip(numbers[5:], numbers[6:] + [None]):
        press("y")
        expected[number] = {"review_status": "confirmed"}
        if following:
            shown(page, following)
    page.wait_for_selector('#review[data-state="empty"]')
    wait_for(lambda: page.evaluate("() => window.gwReview.sent") == 12, timeout=15)
    assert page.evaluate("() => window.gwReview.failed") == 0
    timings = page.evaluate("() => window.gwReview.timings")
    assert len(timings) >= 10
    # The case's own page shows its audit trail: the undone confirm never happened.
    page.goto(f"{server.url}/review/cases/{numbers[4]}")
    assert page.inner_text("#review-status") == "rejected"
    rows = page.locator("#audit tbody tr")
    assert [rows.nth(i).get_attribute("data-action") for i in range(rows.count())] == ["review.reject"]
    context.close()

    with server.service.db.sessions() as session:
        cases = {c.case_number: c for c in session.scalars(select(Case))}
        audit = session.scalars(select(AuditEntry).where(AuditEntry.action.like("review.%"))).all()
        outbox = session.scalars(select(OutboxMessage)).all()
    for number, want in expected.items():
        case = cases[number]
        assert case.review_status == want["review_status"], number
        assert case.reviewed_by == "alice" and case.leased_by == ""
        assert case.review_reason == want.get("reason", "")
        if "violation" in want:
            assert case.violation == want["violation"]
        assert (case.review_boxes is not None) == want.get("boxes", False), number
    moved = cases[numbers[3]].review_boxes[0]
    assert moved[0] > cases[numbers[3]].box[0] and moved[3] > cases[numbers[3]].box[3]
    # One audit entry per decision that was sent: the undone confirm left none.
    by_case = {e.target.removeprefix("case:"): e for e in audit}
    assert len(audit) == 12 and set(by_case) == set(numbers)
    assert all(e.actor == "alice" and e.before["review_status"] == "pending" for e in audit)
    assert by_case[numbers[4]].action == "review.reject" and by_case[numbers[4]].after["reason"] == "bad_image"
    assert by_case[numbers[2]].after["violation"] == "exposed_garbage"
    # The outbox: a report for each confirmed or corrected case, nothing for rejected ones.
    reported = {json.loads(m.payload)["case"]["case_number"]: json.loads(m.payload) for m in outbox}
    assert set(reported) == {n for n, w in expected.items() if w["review_status"] != "rejected"}
    assert all(body["event"] == "case.reported" for body in reported.values())
    assert reported[numbers[2]]["case"]["violation"] == "exposed_garbage"


def test_two_reviewers_never_share_a_case(run_service, db_url, dataset_images, chromium) -> None:
    from serving.store.models import Case

    server = run_service(db_url)
    queue_cases(server, dataset_images, 6)
    pages = []
    for name in ("alice", "bob"):
        add_user(server, name)
        page = chromium.new_context().new_page()
        sign_in(page, server.url, name)
        page.wait_for_selector("#review[data-shown]")
        pages.append(page)
    on_screen = [p.evaluate("() => document.getElementById('review').dataset.shown") for p in pages]
    assert on_screen[0] != on_screen[1]
    with server.service.db.sessions() as session:
        leases = session.execute(select(Case.case_number, Case.leased_by).where(Case.leased_by != "")).all()
    held = {name: {n for n, holder in leases if holder == name} for name in ("alice", "bob")}
    assert held["alice"] and held["bob"] and not held["alice"] & held["bob"]
    # Both decide at once, then each goes on with cases the other does not hold.
    for page in pages:
        page.keyboard.press("y")
    for page, before in zip(pages, on_screen):
        page.wait_for_function("before => document.getElementById('review').dataset.shown !== before", arg=before)
    after = [p.evaluate("() => document.getElementById('review').dataset.shown") for p in pages]
    assert after[0] != after[1]
    for page in pages:
        page.context.close()


def test_dashboard_draws_from_json(run_service, dataset_images, chromium, tmp_path) -> None:
    server = run_service(retention={"keep_days": {"rejected": 30}})
    queue_cases(server, dataset_images, 3)
    add_user(server, "carol")
    page = chromium.new_context(viewport={"width": 1300, "height": 900}, locale="zh-CN").new_page()
    sign_in(page, server.url, "carol")
    page.goto(f"{server.url}/dashboard")
    page.wait_for_selector("body[data-loaded] #per-day canvas")
    assert page.inner_text("#backlog") == "3"
    assert "每日案件数" in page.inner_text("main")  # the browser asked for Chinese
    # Evidence on disk and the retention schedule (issue #30 item 4), as /metrics has them.
    assert "证据存储" in page.inner_text("#evidence-store")
    assert int(page.inner_text("#e-files")) >= 9  # original, annotated copy and crop per case
    assert page.inner_text("#e-bytes").endswith("MiB") and "UTC+08:00" in page.inner_text("#e-last")
    assert "UTC+08:00" in page.inner_text("#e-next")  # rejected cases' evidence is kept 30 days
    page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)


def test_guards_in_the_browser(run_service, chromium) -> None:
    server = run_service()
    add_user(server, "rita")
    page = chromium.new_context(locale="en-US").new_page()
    for _ in range(5):
        page.goto(f"{server.url}/login")
        page.fill("input[name=username]", "rita")
        page.fill("input[name=password]", "not the password")
        with page.expect_response(f"{server.url}/login") as answer:
            page.press("input[name=password]", "Enter")
        assert answer.value.status == 401
    page.goto(f"{server.url}/login")
    page.fill("input[name=username]", "rita")
    page.fill("input[name=password]", PASSWORD)
    with page.expect_response(f"{server.url}/login") as answer:
        page.press("input[name=password]", "Enter")
    assert answer.value.status == 429  # even with the right password
    assert "Too many" in page.inner_text(".error")
    other = run_service()  # this address is blocked here for a while; another service has its own limiter
    add_user(other, "rita")
    sign_in(page, other.url, "rita")
    assert page.goto(f"{other.url}/admin").status == 403
    assert page.goto(f"{other.url}/admin/audit").status == 403
    # A state-changing request from the page without its CSRF token.
    status = page.evaluate("""() => fetch('/review/next', {method: 'POST', headers: {'Content-Type': 'application/json'},
                                                         body: '{}'}).then(r => r.status)""")
    assert status == 403
    page.context.close()
