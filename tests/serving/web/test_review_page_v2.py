"""Review page v2 (issue #29) in Debian's Chromium: audit trails in words (no escape codes),
an honest empty queue that gives its leases back, filters kept across the language switch,
camera-local times, no English left in the Chinese pages, a frame fitted to the screen with a
close-up that fills its panel, two-digit kind choices, labels that do not overlap; and,
keyboard only, zoom and pan, the event's frames, counts, duplicates in one action, re-mapped
keys and the 综合评价 with its CSV."""

from __future__ import annotations

import re
import time
from datetime import datetime, timezone
from urllib.parse import parse_qs, urlparse

import httpx
import pytest
from sqlalchemy import select

from tests.support.service import event_json, push, wait_for
from tests.support.web import add_user, http_sign_in, queue_cases, sign_in

pytestmark = pytest.mark.slow

ZH = {"locale": "zh-CN", "timezone_id": "Asia/Shanghai"}
LATIN_WORD = re.compile(r"\b[a-z]{3,}\b")  # an English word (ids like cam-000 and GW... are not lower-case words)


# Another tab in front, the screen locked (headless Chromium's own page is never hidden).
HIDE_OR_SHOW = """state => { Object.defineProperty(document, 'visibilityState', {value: state, configurable: true});
                             document.dispatchEvent(new Event('visibilitychange')); }"""


def shown(page, case_number: str) -> None:
    page.wait_for_selector(f'#review[data-shown="{case_number}"]', timeout=10_000)


def decide(server, number: str, action: str, **kwargs) -> None:
    """A decision straight through the service (tests that look at what it left behind)."""
    server.service.cases.review(number, action, reviewer=kwargs.pop("reviewer", "alice"), **kwargs)


def english_words(text: str) -> list[str]:
    return [w for w in LATIN_WORD.findall(text) if w not in {"gridwatch", "alice"}]  # brand and user names


# -- defect 1: Chinese shown as escape codes ------------------------------------------------------------
def test_audit_shows_changed_fields_in_words(run_service, dataset_images, chromium) -> None:
    server = run_service()
    (number,) = queue_cases(server, dataset_images, 1)
    add_user(server, "alice")
    add_user(server, "root", role="admin")
    note = "垃圾满溢，请尽快处理 · улица Ленина"
    decide(server, number, "reject", reason="false_alarm", note=note)
    page = chromium.new_context(viewport={"width": 1366, "height": 768}, **ZH).new_page()
    sign_in(page, server.url, "alice")
    for url in (f"/review/cases/{number}", "/review/history"):
        page.goto(server.url + url)
        text = page.inner_text("#audit")
        assert "\\u" not in text and note in text, url
        assert "驳回" in text and "误报" in text and "review.reject" not in text  # action and reason in words
        assert "boxes" not in text and "matter_code" not in text  # fields that did not change are not listed
    page.context.close()
    admin = chromium.new_context(**ZH).new_page()
    sign_in(admin, server.url, "root")
    admin.goto(f"{server.url}/admin/audit")
    row = admin.locator('#audit tr[data-action="review.reject"]')
    assert "\\u" not in row.inner_text() and note in row.inner_text() and "待审" in row.inner_text()
    admin.context.close()


# -- defect 4: the empty queue ---------------------------------------------------------------------------
def test_empty_queue_shows_no_decided_case(run_service, dataset_images, chromium) -> None:
    server = run_service(review_undo_s=0.5)
    (number,) = queue_cases(server, dataset_images, 1)
    add_user(server, "alice")
    page = chromium.new_context(**ZH).new_page()
    sign_in(page, server.url, "alice")
    shown(page, number)
    assert page.is_visible("#case-details")
    page.keyboard.press("y")
    page.wait_for_selector('#review[data-state="empty"] #empty:not([hidden])')
    assert page.is_hidden("#case-details")  # not the case just decided beside "没有待审案件"
    page.context.close()


def test_closed_page_releases_its_leases_and_others_are_counted(run_service, dataset_images, chromium) -> None:
    from serving.store.models import Case

    server = run_service(review_lease_s=300)
    numbers = queue_cases(server, dataset_images, 2)
    add_user(server, "alice")
    add_user(server, "bob")
    alice = chromium.new_context(**ZH).new_page()
    sign_in(alice, server.url, "alice")
    shown(alice, numbers[0])

    def held_by(name: str) -> set[str]:
        with server.service.db.sessions() as session:
            return set(session.scalars(select(Case.case_number).where(Case.leased_by == name)))

    wait_for(lambda: held_by("alice") == set(numbers), timeout=10)
    bob = chromium.new_context(**ZH).new_page()
    sign_in(bob, server.url, "bob")
    bob.wait_for_selector('#review[data-state="empty"]')
    bob.wait_for_selector('#review[data-leased-to-others="2"]')
    assert "另有 2 件正由他人审核" in bob.inner_text("#empty")
    alice.goto("about:blank")  # the tab is closed or navigated away: no 5-minute wait for the leases
    wait_for(lambda: not held_by("alice"), timeout=10)
    bob.wait_for_selector('#review[data-state="case"]', timeout=20_000)  # the empty page asks again
    alice.context.close()
    bob.context.close()


def test_hidden_page_gives_leases_back_and_takes_them_again(run_service, dataset_images, chromium) -> None:
    from serving.store.models import Case

    # A 3 s lease: the page renews every second, so a renewal that ran while hidden would show.
    server = run_service(review_lease_s=3)
    numbers = queue_cases(server, dataset_images, 2)
    add_user(server, "alice")
    page = chromium.new_context(**ZH).new_page()
    sign_in(page, server.url, "alice")
    shown(page, numbers[0])

    def held() -> set[str]:
        with server.service.db.sessions() as session:
            return set(session.scalars(select(Case.case_number).where(Case.leased_by == "alice")))

    wait_for(lambda: held() == set(numbers), timeout=10)
    page.evaluate(HIDE_OR_SHOW, "hidden")
    wait_for(lambda: not held(), timeout=10)
    time.sleep(2.5)  # renewals and the first renew after load (1.5 s) must not take them back
    assert not held()
    page.evaluate(HIDE_OR_SHOW, "visible")
    wait_for(lambda: held() == set(numbers), timeout=10)
    shown(page, numbers[0])
    page.context.close()


def test_an_empty_page_leases_nothing_while_hidden_and_asks_again_when_shown(run_service, dataset_images,
                                                                            chromium) -> None:
    from serving.store.models import Case

    server = run_service()
    add_user(server, "alice")
    context = chromium.new_context(**ZH)
    context.clock.install()  # time runs as usual; fast_forward fires the empty queue's 15 s recheck now
    page = context.new_page()
    sign_in(page, server.url, "alice")
    page.wait_for_selector('#review[data-state="empty"]')
    page.evaluate(HIDE_OR_SHOW, "hidden")
    (number,) = queue_cases(server, dataset_images, 1)
    page.clock.fast_forward(16_000)
    page.wait_for_timeout(1000)
    with server.service.db.sessions() as session:
        assert session.scalar(select(Case.leased_by).where(Case.case_number == number)) == ""
    page.evaluate(HIDE_OR_SHOW, "visible")
    shown(page, number)  # the recheck that found the page hidden is not lost
    context.close()


def test_release_needs_the_csrf_token_and_only_frees_your_own(run_service, dataset_images) -> None:
    from serving.store.models import Case

    server = run_service()
    (number,) = queue_cases(server, dataset_images, 1)
    add_user(server, "alice")
    add_user(server, "bob")
    with httpx.Client(base_url=server.url) as alice, httpx.Client(base_url=server.url) as bob:
        http_sign_in(alice, "alice")
        http_sign_in(bob, "bob")
        alice.post("/review/next", json={}, headers={"X-CSRF-Token": alice.cookies["gw_csrf"]}).raise_for_status()
        assert bob.post("/review/leases/release", data={"cases": [number]}).status_code == 403
        freed = bob.post("/review/leases/release", data={"cases": [number], "csrf_token": bob.cookies["gw_csrf"]})
        assert freed.json() == {"released": 0}
        too_many = alice.post("/review/leases/release",
                              data={"cases": [f"GW{i}" for i in range(51)], "csrf_token": alice.cookies["gw_csrf"]})
        assert too_many.status_code == 422
        freed = alice.post("/review/leases/release", data={"cases": [number], "csrf_token": alice.cookies["gw_csrf"]})
        assert freed.json() == {"released": 1}
    with server.service.db.sessions() as session:
        assert session.scalar(select(Case.leased_by).where(Case.case_number == number)) == ""


# -- defect 5: the language switch keeps the filters --------------------------------------------------------
def test_language_switch_keeps_the_filters(run_service, dataset_images, chromium) -> None:
    server = run_service()
    queue_cases(server, dataset_images, 2)
    add_user(server, "alice")
    page = chromium.new_context(locale="en-US").new_page()
    sign_in(page, server.url, "alice")
    page.goto(f"{server.url}/review?camera=cam-001&order=score&min_score=0.5")
    page.click("#lang-switch")
    page.wait_for_url(re.compile(r"lang=zh-CN"))
    query = parse_qs(urlparse(page.url).query)
    assert query == {"camera": ["cam-001"], "order": ["score"], "min_score": ["0.5"], "lang": ["zh-CN"]}
    assert page.input_value("select[name=camera]") == "cam-001"
    page.wait_for_selector("#review[data-shown]")
    assert page.inner_text("#camera") == "cam-001"
    page.context.close()


# -- defect 6: times in the camera's local time, with its zone -----------------------------------------------
def test_times_are_the_cameras_local_time(run_service, dataset_images, chromium) -> None:
    server = run_service()
    numbers = queue_cases(server, dataset_images, 2)  # first seen 2026-11-23 09:00 UTC
    add_user(server, "alice")
    decide(server, numbers[1], "confirm")
    page = chromium.new_context(**ZH).new_page()
    sign_in(page, server.url, "alice")
    shown(page, numbers[0])
    assert page.inner_text("#first-seen") == "2026-11-23 17:00:00 UTC+08:00"  # Asia/Shanghai
    assert page.locator("#timeline li").first.inner_text().startswith("2026-11-23 17:04:00 UTC+08:00")
    page.goto(f"{server.url}/review/cases/{numbers[1]}")
    assert page.inner_text("#first-seen") == "2026-11-23 17:01:00 UTC+08:00"
    assert "UTC+08:00" in page.inner_text("#audit") and "UTC+08:00" in page.inner_text("#timeline")
    page.goto(f"{server.url}/review/history")
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC\+08:00", page.inner_text("#audit"))
    page.context.close()


def test_date_filters_are_local_days(run_service, dataset_images, chromium) -> None:
    server = run_service()
    with server.client(server.key("camera")) as http:
        # 23:00 UTC on the 23rd: 07:00 on the 24th in Shanghai, the day a reviewer there filters by.
        late = push(http, event_json(event_id="late", start_s=14 * 3600, end_s=14 * 3600 + 90),
                    dataset_images[0]).json()["case_number"]
    add_user(server, "alice")
    page = chromium.new_context(**ZH).new_page()
    sign_in(page, server.url, "alice")
    page.goto(f"{server.url}/review?since=2026-11-24&until=2026-11-24")
    shown(page, late)
    page.goto(f"{server.url}/review?since=2026-11-23&until=2026-11-23")
    page.wait_for_selector('#review[data-state="empty"]')
    page.context.close()


def test_a_camera_schedule_names_its_zone() -> None:
    from serving.cameras.schedules import ScheduleWindow
    from serving.web.localtime import CameraZones

    class Camera:
        schedule = (ScheduleWindow.model_validate({"from": "07:00", "to": "22:00", "tz": "Asia/Urumqi"}),)

    zones = CameraZones({"cam-xj": Camera()}, "Asia/Shanghai")
    when = datetime(2026, 11, 23, 9, 0, tzinfo=timezone.utc)
    assert zones.show(when, "cam-xj") == "2026-11-23 15:00:00 UTC+06:00"
    assert zones.show(when, "cam-unknown") == "2026-11-23 17:00:00 UTC+08:00"


def test_cases_per_day_count_local_days(run_service, dataset_images) -> None:
    from zoneinfo import ZoneInfo

    from serving.web.dashboard import dashboard_data

    server = run_service()
    with server.client(server.key("camera")) as http:
        # 23:00 UTC on the 23rd is 07:00 on the 24th in Shanghai.
        push(http, event_json(event_id="late", start_s=14 * 3600, end_s=14 * 3600 + 90), dataset_images[0]).raise_for_status()
    per_day = dashboard_data(server.service.db, {}, {}, ZoneInfo("Asia/Shanghai"))["per_day"]
    assert per_day["days"] == ["2026-11-24"]


# -- defect 7: no English in the Chinese pages ----------------------------------------------------------------
def test_no_english_left_in_chinese_pages(run_service, dataset_images, chromium) -> None:
    server = run_service()
    numbers = queue_cases(server, dataset_images, 3)
    add_user(server, "alice")
    decide(server, numbers[2], "confirm")
    page = chromium.new_context(viewport={"width": 1920, "height": 1080}, **ZH).new_page()
    sign_in(page, server.url, "alice")
    shown(page, numbers[0])
    assert page.inner_text("#kind-name") == "垃圾站（箱）满溢"
    timeline = page.inner_text("#timeline")
    assert "首次发现" in timeline and not english_words(timeline)
    page.keyboard.press("c")
    assert not english_words(page.inner_text("#menu"))
    page.keyboard.press("Escape")
    page.goto(f"{server.url}/review/cases/{numbers[2]}")
    assert not english_words(page.inner_text("#audit")) and "确认" in page.inner_text("#audit")
    page.goto(f"{server.url}/dashboard")
    page.wait_for_selector("body[data-loaded] #per-day canvas")
    for selector in ("#per-day", "#precision-violation"):
        text = page.inner_text(selector)
        assert "垃圾站（箱）满溢" in text and "bin_overflow" not in text, selector
        assert not english_words(text), selector
    axis = page.evaluate("() => [...document.querySelectorAll('#per-day .u-legend th, #per-day .u-legend td')].map(e => e.textContent).join(' ')")
    assert not re.search(r"\d(am|pm)\b", axis)
    page.context.close()


def test_camera_state_in_chinese(run_service, chromium) -> None:
    server = run_service()
    add_user(server, "alice")
    page = chromium.new_context(**ZH).new_page()
    sign_in(page, server.url, "alice")
    page.goto(f"{server.url}/dashboard")
    states = page.evaluate("() => JSON.parse(document.getElementById('dashboard').dataset.states)")
    assert states["finished"] == "已播放完毕" and all(not english_words(v) for v in states.values())
    page.context.close()


# -- defect 8: the frame fitted to the screen, the close-up magnified -------------------------------------------
def test_frame_fills_the_stage_and_closeup_fills_its_panel(run_service, dataset_images, chromium) -> None:
    server = run_service()
    with server.client(server.key("camera")) as http:
        # A small box on a real photo: its crop is a few dozen pixels, to be shown large.
        response = push(http, event_json(event_id="small", box=(100, 100, 160, 190)), dataset_images[0])
        number = response.json()["case_number"]
    add_user(server, "alice")
    for width, height in ((1920, 1080), (1366, 768)):
        page = chromium.new_context(viewport={"width": width, "height": height}, **ZH).new_page()
        sign_in(page, server.url, "alice")
        shown(page, number)
        frame = page.evaluate("""() => { const i = document.getElementById('evidence'), s = document.getElementById('stage');
            return {w: i.clientWidth, h: i.clientHeight, nw: i.naturalWidth, nh: i.naturalHeight,
                    sw: s.clientWidth, sh: s.clientHeight}; }""")
        # Fitted: one side meets the stage's, the other fits inside it (scaled up if the stage is bigger).
        assert abs(frame["w"] - frame["sw"]) <= 1 or abs(frame["h"] - frame["sh"]) <= 1, frame
        assert frame["w"] <= frame["sw"] + 1 and frame["h"] <= frame["sh"] + 1
        assert abs(frame["w"] / frame["h"] - frame["nw"] / frame["nh"]) < 0.02
        assert frame["sh"] >= height * 0.7  # the stage takes the screen, not a fixed 78vh of it
        crop = page.evaluate("""() => { const c = document.getElementById('crop');
            return {w: c.clientWidth, h: c.clientHeight, nw: c.naturalWidth, nh: c.naturalHeight,
                    panel: document.getElementById('case-details').clientWidth}; }""")
        assert crop["w"] >= crop["panel"] - 40 and crop["h"] > 180, crop  # fills the panel, not capped at 180 px
        assert crop["w"] > crop["nw"]  # magnified
        page.context.close()


# -- defect 9: more than ten kinds; labels that do not overlap -----------------------------------------------------
def city_taxonomy(tmp_path):
    extra = "\n".join(f"""  - id: city_kind_{i}
    name_zh: 城市事项{i}
    name_en: City matter {i}
    category: environment
    matter_code: "0900{i}"
    detector_classes: [garbage_pile]
    min_score: 0.4
    dwell_s: 60""" for i in range(1, 4))
    path = tmp_path / "city-taxonomy.yaml"
    path.write_text(f"violations:\n{extra}\n", encoding="utf-8")
    return path


def test_kind_menu_takes_two_digit_numbers(run_service, dataset_images, chromium, tmp_path) -> None:
    from serving.store.models import Case

    server = run_service(taxonomy_file=city_taxonomy(tmp_path), review_undo_s=0.3)
    numbers = queue_cases(server, dataset_images, 3)
    kinds = [v.id for v in server.service.taxonomy.violations]
    assert len(kinds) == 13
    add_user(server, "alice")
    page = chromium.new_context(**ZH).new_page()
    sign_in(page, server.url, "alice")
    shown(page, numbers[0])
    page.keyboard.press("c")
    assert page.locator("#menu kbd").all_text_contents()[-1] == "13"
    page.keyboard.press("1")
    page.keyboard.press("2")  # 12: no kind has 12x, so it is taken at once
    shown(page, numbers[1])
    page.keyboard.press("c")
    page.keyboard.press("1")
    assert page.get_attribute("#menu", "data-typed") == "1"  # 1, 10, 11, 12 or 13: it waits for more
    assert page.is_visible("#menu") and page.get_attribute("#review", "data-shown") == numbers[1]
    page.keyboard.press("1")
    shown(page, numbers[2])
    page.keyboard.press("c")
    for key in ("1", "0"):
        page.keyboard.press(key)
    page.wait_for_selector('#review[data-state="empty"]')

    def final() -> dict[str, str]:
        with server.service.db.sessions() as session:
            return dict(session.execute(select(Case.case_number, Case.violation)).all())

    wait_for(lambda: final() == {numbers[0]: kinds[11], numbers[1]: kinds[10], numbers[2]: kinds[9]}, timeout=10)
    page.context.close()


def test_labelling_labels_do_not_overlap(run_service, dataset_images, chromium) -> None:
    import cv2
    import numpy as np

    from detector.runtime import Detections
    from serving.pipeline.uncertainty import LabellingSample

    server = run_service()
    image = cv2.imread(str(dataset_images[0]))
    h, w = image.shape[:2]
    # A busy frame: six boxes whose top-left corners nearly coincide, as on a crowded pavement.
    boxes = np.array([[w * 0.2 + 6 * i, h * 0.3 + 4 * i, w * 0.5 + 6 * i, h * 0.8] for i in range(6)], np.float32)
    names = server.service.detector.info.names
    seen = Detections(xyxy=boxes, scores=np.full(6, 0.6, np.float32), class_ids=np.arange(6) % 3, names=names)
    server.service.on_sample(LabellingSample(camera="cam-lab", taken_at=datetime(2026, 11, 24, 2, tzinfo=timezone.utc),
                                             reasons=("score_band",), image=image, detections=seen,
                                             model_version=server.service.detector.version))
    add_user(server, "lena")
    page = chromium.new_context(viewport={"width": 1366, "height": 768}, **ZH).new_page()
    sign_in(page, server.url, "lena")
    page.keyboard.press("l")
    page.wait_for_selector("#review[data-label-shown]")
    texts = page.locator("#overlay text")
    assert texts.count() == 6
    assert "行人" in texts.all_text_contents()  # the class written in Chinese
    rects = page.evaluate("() => [...document.querySelectorAll('#overlay text')].map(t => { const b = t.getBoundingClientRect(); return [b.left, b.top, b.right, b.bottom]; })")
    for i, a in enumerate(rects):
        for b in rects[i + 1:]:
            assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1], (a, b)
    page.context.close()


# -- 10: zoom and pan, keyboard only ---------------------------------------------------------------------
def test_zoom_and_pan_with_the_keyboard(run_service, dataset_images, chromium) -> None:
    server = run_service()
    (number,) = queue_cases(server, dataset_images, 1)
    add_user(server, "alice")
    page = chromium.new_context(viewport={"width": 1366, "height": 768}, **ZH).new_page()
    sign_in(page, server.url, "alice")
    shown(page, number)
    fitted = page.evaluate("() => document.getElementById('evidence').getBoundingClientRect().width")
    page.keyboard.press("+")
    page.keyboard.press("+")
    page.wait_for_selector('#review[data-zoom="1.56"]')
    zoomed = page.evaluate("() => document.getElementById('evidence').getBoundingClientRect()")
    assert zoomed["width"] > fitted * 1.5
    page.keyboard.press("Shift+ArrowLeft")  # pan: the frame moves right, showing its left side
    moved = page.evaluate("() => document.getElementById('evidence').getBoundingClientRect()")
    assert moved["x"] > zoomed["x"] + 30
    page.keyboard.press("-")
    page.wait_for_selector('#review[data-zoom="1.25"]')
    page.keyboard.press("0")  # back to the frame fitted to the screen
    page.wait_for_selector('#review[data-zoom="1.00"]')
    assert abs(page.evaluate("() => document.getElementById('evidence').getBoundingClientRect().width") - fitted) < 1
    # The boxes stay on the image at any zoom: the overlay is transformed with it.
    page.keyboard.press("+")
    box = page.evaluate("() => [document.getElementById('overlay').getBoundingClientRect(), document.getElementById('evidence').getBoundingClientRect()].map(r => [r.x, r.y, r.width, r.height])")
    assert all(abs(a - b) < 1 for a, b in zip(*box))
    page.context.close()


# -- 11: the event over time, the duplicate's original, the same place ------------------------------------------
def test_event_frames_duplicate_and_same_place(run_service, dataset_images, chromium) -> None:
    server = run_service()
    with server.client(server.key("camera")) as http:
        first = push(http, event_json(event_id="ev-a", score=0.5), dataset_images[0]).json()["case_number"]
        # The same event, a better frame later: a second frame of its life.
        push(http, event_json(event_id="ev-a", type="updated", end_s=300, score=0.9), dataset_images[1]).raise_for_status()
        later = push(http, event_json(event_id="ev-b", start_s=4000, end_s=4200, score=0.7, box=(110, 100, 300, 310),
                                      zone="bins-east"),
                     dataset_images[2]).json()["case_number"]
    assert later != first
    add_user(server, "alice")
    page = chromium.new_context(viewport={"width": 1366, "height": 768}, **ZH).new_page()
    sign_in(page, server.url, "alice")
    shown(page, first)
    assert page.locator("#frames img").count() == 2 and page.is_visible("#frames-block")
    best = page.get_attribute("#evidence", "src")
    page.keyboard.press("ArrowLeft")  # the earlier frame
    page.wait_for_selector('#review[data-frame="0"]')
    assert page.get_attribute("#evidence", "src") != best and page.is_hidden("#overlay")
    page.keyboard.press("ArrowRight")
    page.wait_for_selector('#review[data-frame="1"]')
    assert page.get_attribute("#evidence", "src") == best and page.is_visible("#overlay")
    assert later in page.inner_text("#related")  # the same place, the days around it
    page.context.close()
    decide(server, later, "reject", reason="duplicate")
    page = chromium.new_context(**ZH).new_page()
    sign_in(page, server.url, "alice")
    page.goto(f"{server.url}/review/cases/{later}")
    assert first in page.inner_text("#duplicate-of") and page.locator("#duplicate-of img").count() == 1
    assert first in page.inner_text("#nearby")
    page.context.close()


# -- 13: counts, duplicates in one action, the city's keys ----------------------------------------------------
def test_counts_duplicates_and_remapped_keys(run_service, dataset_images, chromium) -> None:
    from serving.store.models import Case

    # "=" is also + without Shift, which zooms in by default: a city's own map takes it over.
    server = run_service(review_hotkeys={"confirm": "q", "duplicates": "="}, review_undo_s=0.3)
    with server.client(server.key("camera")) as http:
        numbers = [push(http, event_json(event_id=f"d{i}", start_s=60 * i, end_s=60 * i + 200, zone=f"zone-{i}",
                                         box=(100 + 4 * i, 100, 300, 300)), dataset_images[i]).json()["case_number"]
                   for i in range(3)]
        other = push(http, event_json(event_id="elsewhere", camera="cam-009", start_s=500, end_s=700),
                     dataset_images[3]).json()["case_number"]
    add_user(server, "alice")
    page = chromium.new_context(viewport={"width": 1366, "height": 768}, **ZH).new_page()
    sign_in(page, server.url, "alice")
    shown(page, numbers[0])
    page.wait_for_selector('#review[data-pending="4"][data-mine-today="0"]')
    page.keyboard.press("y")  # not confirm any more: the city moved it to Q
    page.keyboard.press("=")  # the two later cases of this camera, kind and place: duplicates of this one
    wait_for(lambda: page.evaluate("() => window.gwReview.duplicates") == 2, timeout=10)
    assert page.get_attribute("#review", "data-shown") == numbers[0]
    page.keyboard.press("q")
    shown(page, other)  # the duplicates left the queue
    page.wait_for_selector('#review[data-mine-today="3"]', timeout=10_000)
    page.keyboard.press("?")  # the help lists the city's keys
    assert "Q" in page.inner_text("#help") and "=" in page.inner_text("#help")

    def status() -> dict[str, tuple[str, str, str]]:
        with server.service.db.sessions() as session:
            return {n: (s, r, note) for n, s, r, note in session.execute(
                select(Case.case_number, Case.review_status, Case.review_reason, Case.review_note))}

    wait_for(lambda: status()[numbers[0]][0] == "confirmed", timeout=10)
    now = status()
    assert now[numbers[1]][:2] == now[numbers[2]][:2] == ("rejected", "duplicate")
    assert numbers[0] in now[numbers[1]][2]
    assert now[other][0] == "pending"
    page.context.close()


def test_a_bad_hotkey_map_is_refused() -> None:
    from serving.settings import Settings

    with pytest.raises(ValueError, match="both on"):
        Settings(review_hotkeys={"confirm": "n"})
    with pytest.raises(ValueError, match="unknown"):
        Settings(review_hotkeys={"launch": "q"})
    with pytest.raises(ValueError, match="kept for"):
        Settings(review_hotkeys={"confirm": "1"})


# -- 14: 综合评价 ---------------------------------------------------------------------------------------------
def test_evaluation_by_grid_and_division_with_csv(run_service, dataset_images, chromium) -> None:
    server = run_service()
    with server.client(server.key("camera")) as http:
        numbers = [push(http, event_json(event_id=f"g{i}", camera=f"cam-{i}", start_s=60 * i, end_s=60 * i + 90,
                                         grid="370202001001001" if i < 3 else "370203002001001",
                                         matter_code="37020206042" if i < 3 else "37020306042"),
                        dataset_images[i]) for i in range(4)]
    assert [n.status_code for n in numbers] == [200] * 4, [n.text for n in numbers]
    numbers = [n.json()["case_number"] for n in numbers]
    decide(server, numbers[0], "confirm")
    decide(server, numbers[1], "reject", reason="false_alarm")
    decide(server, numbers[2], "reject", reason="duplicate")
    decide(server, numbers[3], "confirm", reviewer="bob")
    with server.client(server.key("case_system")) as http:
        http.post(f"/v1/cases/{numbers[0]}/status", json={"status": "handled"}).raise_for_status()
    add_user(server, "alice")
    page = chromium.new_context(viewport={"width": 1366, "height": 768}, **ZH).new_page()
    sign_in(page, server.url, "alice")
    page.goto(f"{server.url}/dashboard")
    page.wait_for_selector("body[data-evaluated]")
    # Decisions made today (whatever day their cases are from), per reviewer.
    assert {r.split("\t")[0] for r in page.locator("#eval-reviewers tr").all_inner_texts()} == {"alice", "bob"}
    # Keyboard only: into the date fields, type, Enter.
    page.focus("#evaluation-form input[name=since]")
    page.keyboard.type("2026-11-23")
    page.keyboard.press("Tab")
    page.keyboard.type("2026-11-23")
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r"since=2026-11-23"))
    page.wait_for_selector("body[data-evaluated]")
    rows = {r.split("\t")[0]: r.split("\t") for r in page.locator("#eval-grids tr").all_inner_texts()}
    assert rows["370202001001001"][1:4] == ["3", "1", "50.0%"]  # found, confirmed, false alarms of decided
    assert rows["370202001001001"][4] == "1"  # handled within the deadline
    assert [r.split("\t")[0] for r in page.locator("#eval-divisions tr").all_inner_texts()] == ["370202", "370203"]
    assert page.locator("#eval-reviewers tr").count() == 0  # nobody decided anything on 2026-11-23
    href = page.get_attribute("#evaluation-csv", "href")
    assert "since=2026-11-23" in href
    csv = page.evaluate("h => fetch(h).then(r => r.arrayBuffer()).then(b => [...new Uint8Array(b)].slice(0, 3))", href)
    assert csv == [0xEF, 0xBB, 0xBF]  # the UTF-8 byte-order mark
    text = page.evaluate("h => fetch(h).then(r => r.text())", href)
    assert "发现案件数" in text and "370203002001001" in text
    # Another day: nothing found.
    empty = page.evaluate("() => fetch('/dashboard/evaluation?since=2026-12-01&until=2026-12-02').then(r => r.json())")
    assert empty["grids"] == []
    bad = page.evaluate("() => fetch('/dashboard/evaluation?since=2026-12-03&until=2026-12-02').then(r => r.status)")
    assert bad == 422
    page.context.close()
