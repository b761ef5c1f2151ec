"""Issue #28, item 4 (the load decision) on cases: what the load stage said of each truck
sighting is stored with the case's event record and carried, only when set, where the case's
sightings are listed; the reviewer's own load label is stored with the decision, audited, and
refused (422) where it is unknown or the case has no load decision."""

from __future__ import annotations

import httpx
from sqlalchemy import select

from serving.store.models import AuditEntry, Case, CaseEvent
from tests.support.service import event_json, push
from tests.support.web import add_user, http_sign_in


def truck_event(event_id: str, **extra) -> dict:
    return event_json(event_id, violation="muck_truck_uncovered", matter_code="37020208011", zone="road",
                      zone_type="roadway", **extra)


def claim(http: httpx.Client, **where) -> dict | None:
    answer = http.post("/review/next", json=where, headers={"X-CSRF-Token": http.cookies["gw_csrf"]})
    answer.raise_for_status()
    return answer.json()["case"]


def test_stage_label_is_stored_with_the_sighting_and_listed_when_set(run_service, dataset_images) -> None:
    server = run_service()
    with server.client(server.key("camera")) as camera:
        truck = push(camera, truck_event("t1", camera="cam-road", end_s=30, stage_label="cannot_tell",
                                         stage_score=0.6123), dataset_images[0]).json()["case_number"]
        push(camera, truck_event("t1", camera="cam-road", type="updated", end_s=60, stage_label="open",
                                 stage_score=0.9), dataset_images[1]).raise_for_status()
        bins = push(camera, event_json("b1", camera="cam-bins"), dataset_images[2]).json()["case_number"]
    with server.service.db.sessions() as session:
        stored = session.execute(select(CaseEvent.event_type, CaseEvent.stage_label, CaseEvent.stage_score)
                                 .join(Case, Case.id == CaseEvent.case_id).where(Case.case_number == truck)
                                 .order_by(CaseEvent.id)).all()
        bin_events = session.execute(select(CaseEvent.stage_label, CaseEvent.stage_score)
                                     .join(Case, Case.id == CaseEvent.case_id)
                                     .where(Case.case_number == bins)).all()
    assert [tuple(r) for r in stored] == [("opened", "cannot_tell", 0.6123), ("updated", "open", 0.9)]
    assert [tuple(r) for r in bin_events] == [(None, None)]
    with server.client(server.key("reviewer")) as http:  # the API's case JSON: as it always was
        assert "stage_label" not in http.get(f"/v1/cases/{bins}").text
    add_user(server, "alice")
    with httpx.Client(base_url=server.url) as alice:
        http_sign_in(alice, "alice")
        seen = claim(alice, camera="cam-road")
        assert seen["case_number"] == truck
        assert [(o["type"], o.get("stage_label"), o.get("stage_score")) for o in seen["timeline"]] == [
            ("opened", "cannot_tell", 0.6123), ("updated", "open", 0.9)]
        # The latest sighting's label, in words with its score; the reviewer has not said yet.
        assert seen["load"]["stage_label"] == "open" and seen["load"]["text"] == "load open 0.90"
        assert seen["load"]["review_load"] is None
        assert [c["id"] for c in seen["load"]["choices"]] == ["open", "mesh", "tarp", "cannot_tell", "covered"]
        other = claim(alice, camera="cam-bins")
        assert other["load"] is None
        assert all("stage_label" not in o and "stage_score" not in o for o in other["timeline"])


def test_without_a_classifier_the_truck_says_why_it_is_in_review(run_service, dataset_images) -> None:
    server = run_service()
    with server.client(server.key("camera")) as camera:
        truck = push(camera, truck_event("t2", camera="cam-road"), dataset_images[0]).json()["case_number"]
    add_user(server, "alice")
    with httpx.Client(base_url=server.url, cookies={"lang": "zh-CN"}) as alice:
        http_sign_in(alice, "alice")
        seen = claim(alice)
    assert seen["case_number"] == truck
    assert seen["load"]["stage_label"] is None and seen["load"]["text"] == "未训练货箱分类器：转人工审核"
    assert "stage_label" not in seen["timeline"][0]


def test_reviewer_load_label_is_stored_with_the_decision_and_audited(run_service, dataset_images) -> None:
    server = run_service()
    with server.client(server.key("camera")) as camera:
        truck = push(camera, truck_event("t3", camera="cam-road"), dataset_images[0]).json()["case_number"]
        bins = push(camera, event_json("b3", camera="cam-bins"), dataset_images[1]).json()["case_number"]
    with server.client(server.key("reviewer")) as http:
        unknown = http.post(f"/v1/cases/{truck}/review", json={"action": "confirm", "load_label": "banana"})
        assert unknown.status_code == 422 and "load_label" in unknown.json()["detail"]
        not_a_truck = http.post(f"/v1/cases/{bins}/review", json={"action": "confirm", "load_label": "open"})
        assert not_a_truck.status_code == 422 and "load" in not_a_truck.json()["detail"]
        assert http.get(f"/v1/cases/{bins}").json()["review_status"] == "pending"  # nothing half-done
        done = http.post(f"/v1/cases/{truck}/review", json={"action": "reject", "reason": "not_here",
                                                            "load_label": "tarp"})
        assert done.status_code == 200, done.text
        version = done.json()["version"]
        # A re-decision changing only the load is a change (audited with its reason).
        again = http.post(f"/v1/cases/{truck}/redecide", json={"action": "reject", "reason": "not_here",
                                                               "load_label": "mesh", "version": version,
                                                               "why": "looked again: a mesh"})
        assert again.status_code == 200, again.text
        # A re-decision that does not name the load (the history page's form) keeps it.
        kept = http.post(f"/v1/cases/{truck}/redecide", json={"action": "confirm", "version": again.json()["version"],
                                                              "why": "it is a violation after all"})
        assert kept.status_code == 200, kept.text
    with server.service.db.sessions() as session:
        case = session.scalars(select(Case).where(Case.case_number == truck)).one()
        trail = session.scalars(select(AuditEntry).where(AuditEntry.target == f"case:{truck}")
                                .order_by(AuditEntry.id)).all()
    assert case.review_load == "mesh" and case.review_status == "confirmed"
    assert [(e.action, e.before["load"], e.after["load"]) for e in trail if e.action.startswith("review.")] == [
        ("review.reject", None, "tarp"), ("review.redecide", "tarp", "mesh"), ("review.redecide", "mesh", "mesh")]


def test_a_trained_stage_without_a_label_says_so_and_other_violations_have_no_load_view() -> None:
    from detector import load_taxonomy
    from serving.web.audit_view import AuditWords
    from serving.web.i18n import labels
    from serving.web.queue import load_view

    taxonomy = load_taxonomy()
    words = AuditWords(labels("en"), taxonomy, "en")
    truck = Case(violation="muck_truck_uncovered", review_load="cannot_tell")
    unlabelled = [CaseEvent(event_type="opened", stage_label=None, stage_score=None)]
    view = load_view(truck, unlabelled, taxonomy, words, {"load_decision"})
    assert view.text == "the load classifier gave no label: sent to review"
    assert view.review_load == "cannot_tell" and view.review_text == "cannot tell"
    assert load_view(truck, unlabelled, taxonomy, words, ()).text == "no load classifier trained: sent to review"
    assert load_view(Case(violation="bin_overflow"), unlabelled, taxonomy, words, {"load_decision"}) is None
