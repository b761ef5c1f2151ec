"""In the browser: a re-checked case shows the place before and after side by side, and the
dashboard counts re-check outcomes and draws the thresholds' history."""

from __future__ import annotations

import cv2

from serving.cases.recheck import Look
from serving.evidence import EvidenceFrame
from tests.support.web import add_user, queue_cases, sign_in


def test_before_and_after_side_by_side_and_threshold_history(run_service, dataset_images, chromium) -> None:
    server = run_service(thresholds={"min_reviews": 1}, recheck={"delay_s": 0, "poll_s": 3600})
    numbers = queue_cases(server, dataset_images, 3)
    with server.client(server.key("reviewer")) as reviewer:
        assert reviewer.post(f"/v1/cases/{numbers[0]}/review", json={"action": "confirm"}).status_code == 200
        assert reviewer.post(f"/v1/cases/{numbers[2]}/review", json={"action": "confirm"}).status_code == 200
    server.service.cases.review(numbers[1], "reject", reviewer="test", reason="false_alarm")
    with server.client(server.key("case_system")) as system:
        for status in ("dispatched", "handled"):
            assert system.post(f"/v1/cases/{numbers[2]}/status", json={"status": status}).status_code == 200
    # The look itself is tested end to end in tests/serving/cases/test_recheck.py; here a real
    # photo of another place stands for the camera's after frame.
    (planned,) = server.service.cases.rechecks_of(numbers[2])
    case = server.service.cases.get(numbers[2])
    after = EvidenceFrame(box=tuple(case.box), label="gone", image=cv2.imread(str(dataset_images[5])))
    assert server.service.cases.finish_recheck(planned.id, Look(False), after, "test-1") == "verified"

    add_user(server, "dora")
    page = chromium.new_context(viewport={"width": 1300, "height": 900}).new_page()
    sign_in(page, server.url, "dora")
    page.goto(f"{server.url}/review/cases/{numbers[2]}")
    for selector in ("#recheck-before", "#recheck-after"):
        page.wait_for_function(f"document.querySelector('{selector}').naturalWidth > 0")
    before, after_box = (page.locator(s).bounding_box() for s in ("#recheck-before", "#recheck-after"))
    assert before["x"] + before["width"] <= after_box["x"] and abs(before["y"] - after_box["y"]) < 2  # side by side
    assert page.get_attribute("#recheck", "data-state") == "verified"
    assert page.get_attribute("#case-status", "data-status") == "closed"
    # What the look saw reads in the page's language, not as the English stored for the API.
    assert page.inner_text("#recheck-detail") == " · nothing of the violation's classes at the case's place"
    page.context.add_cookies([{"name": "lang", "value": "zh-CN", "url": server.url}])
    page.reload()
    assert page.inner_text("#recheck-detail") == " · 案件位置未发现该类违规目标"
    assert page.inner_text("#recheck-state") == "已消除，核查结案"
    page.context.clear_cookies(name="lang")
    page.reload()

    page.goto(f"{server.url}/dashboard")
    page.wait_for_selector("body[data-loaded] #threshold-history canvas")
    assert page.inner_text("#r-verified") == "1" and page.inner_text("#r-reopened") == "0"
    rows = page.locator("#thresholds tr").all_inner_texts()
    # One review per camera: a confirmation at 0.50 holds 0.90 at 0.50; a false alarm never
    # does, so the ceiling (0.95).
    assert [r.split("\t") for r in rows] == [["cam-000", "Overflowing bin", "1 / 0", "0.50", "0.50"],
                                            ["cam-001", "Overflowing bin", "0 / 1", "0.95", "0.95"],
                                            ["cam-002", "Overflowing bin", "1 / 0", "0.56", "0.56"]]
    page.context.close()
