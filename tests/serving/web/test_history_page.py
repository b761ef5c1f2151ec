"""My history in Debian's Chromium, keyboard only (issue #29 item 12): each decision row has
its own re-decide button that opens the re-decide form, which asks why before anything is
sent; the filter's times are typed as yyyy-mm-dd or yyyy-mm-dd HH:MM whatever the browser's
language (a datetime-local field showed mm/dd/yyyy in the Chinese page), and a time the page
cannot read is named on the page in its language, never a 500 or a raw validation dump."""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import httpx
import pytest

from tests.support.web import add_user, http_sign_in, queue_cases, sign_in, tab_to

pytestmark = pytest.mark.slow

ZH = {"locale": "zh-CN", "timezone_id": "Asia/Shanghai"}


def test_history_rows_redecide_with_a_required_reason(run_service, dataset_images, chromium) -> None:
    from serving.audit import entries

    server = run_service()
    first, second = queue_cases(server, dataset_images, 2)
    for number in (first, second):
        server.service.cases.review(number, "confirm", reviewer="dora", version=0)
    add_user(server, "dora")
    page = chromium.new_context(viewport={"width": 1366, "height": 768}, **ZH).new_page()
    sign_in(page, server.url, "dora")
    page.goto(f"{server.url}/review/history")
    assert page.locator("button.redecide-open").count() == 2
    assert page.is_hidden("#redecide-dialog")
    tab_to(page, f'button.redecide-open[data-case="{second}"]')
    page.keyboard.press("Enter")
    page.wait_for_selector("#redecide-dialog[open]")
    assert page.inner_text("#redecide-case") == second
    assert page.evaluate("() => document.activeElement.id") == "redecide-action"
    page.keyboard.press("ArrowDown")  # confirm -> reject
    page.keyboard.press("Tab")
    page.keyboard.press("ArrowDown")  # the first reason: false alarm
    tab_to(page, "#redecide-why", limit=5)
    page.keyboard.press("Enter")  # no reason given: refused on the page, nothing sent
    page.wait_for_selector('#redecide-result[data-status="422"]')
    assert page.inner_text("#redecide-result") == "请填写更改原因。"
    assert entries(server.service.db, target=f"case:{second}")[0].action == "review.confirm"
    page.keyboard.type("误报：路面阴影")
    with page.expect_navigation():
        page.keyboard.press("Enter")
    (latest, *_) = entries(server.service.db, target=f"case:{second}")
    assert latest.action == "review.redecide" and latest.actor == "dora"
    assert latest.after["why"] == "误报：路面阴影" and latest.after["reason"] == "false_alarm"
    assert server.service.cases.get(second).review_status == "rejected"
    assert server.service.cases.get(first).review_status == "confirmed"  # the other row's case is untouched
    # Escape closes the form, and the focus goes back to the row's button.
    tab_to(page, f'button.redecide-open[data-case="{first}"]')
    page.keyboard.press("Enter")
    page.wait_for_selector("#redecide-dialog[open]")
    page.keyboard.press("Escape")
    page.wait_for_selector("#redecide-dialog:not([open])", state="attached")
    assert page.evaluate("() => document.activeElement.dataset.case") == first
    page.context.close()


def test_history_filter_takes_typed_local_times_and_names_a_bad_one(run_service, dataset_images, chromium) -> None:
    server = run_service()
    (number,) = queue_cases(server, dataset_images, 1)
    server.service.cases.review(number, "confirm", reviewer="dora", version=0)
    add_user(server, "dora")
    today = datetime.now(ZoneInfo("Asia/Shanghai")).date()
    page = chromium.new_context(viewport={"width": 1366, "height": 768}, **ZH).new_page()
    sign_in(page, server.url, "dora")
    page.goto(f"{server.url}/review/history")
    # Plain text fields: the Chinese page shows what was typed, not the browser's mm/dd/yyyy.
    assert page.get_attribute("#filter-since", "type") is None and page.get_attribute("#filter-until", "type") is None
    assert page.get_attribute("#filter-since", "placeholder") == "yyyy-mm-dd HH:MM"

    def filtered(since: str = "", until: str = "") -> None:
        page.fill("#filter-since", "")
        page.fill("#filter-until", "")
        page.focus("#filter-since")
        page.keyboard.type(since)
        page.focus("#filter-until")
        page.keyboard.type(until)
        with page.expect_navigation():
            page.keyboard.press("Enter")

    filtered(since=today.isoformat(), until=today.isoformat())  # a day alone: that whole local day
    assert page.locator('#audit tr[data-action="review.confirm"]').count() == 1
    assert page.input_value("#filter-since") == today.isoformat()
    filtered(since=f"{today + timedelta(days=1)} 00:00")
    assert page.locator('#audit tr[data-action="review.confirm"]').count() == 0
    filtered(until=(today - timedelta(days=1)).isoformat())
    assert page.locator('#audit tr[data-action="review.confirm"]').count() == 0
    for bad, field in ((f"{today:%m/%d/%Y}", "#filter-since"), (f"{today} 25:00", "#filter-until")):
        if field == "#filter-since":
            filtered(since=bad)
        else:
            filtered(until=bad)
        error = page.inner_text("#filter-error")
        assert bad in error and "yyyy-mm-dd HH:MM" in error and "不是有效的时间" in error
        assert ("从" if field == "#filter-since" else "至") in error
        assert page.get_attribute(field, "aria-invalid") == "true"
        assert page.input_value(field) == bad  # what was typed stays, to be mended
    page.context.close()
    # Without a browser: a 422 with the message, never a 500; the admin's audit CSV too.
    add_user(server, "root", role="admin")
    with httpx.Client(base_url=server.url) as http:
        http_sign_in(http, "dora")
        answer = http.get("/review/history", params={"since": "2026-02-30"})
        assert answer.status_code == 422 and "2026-02-30" in answer.text
        assert http.get("/review/history", params={"since": "2026-11-23T08:00"}).status_code == 200
    with httpx.Client(base_url=server.url) as http:
        http_sign_in(http, "root")
        assert http.get("/admin/audit", params={"until": "tomorrow", "format": "csv"}).status_code == 422
        assert http.get("/admin/audit", params={"until": "tomorrow"}).status_code == 422
