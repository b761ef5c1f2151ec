"""The labelling queue over HTTP, as the review page uses it: list, lease the next item (one
reviewer at a time), save boxes with detector classes (no case is made), skip; bad input is
a clear 4xx and changes nothing."""

from __future__ import annotations

import httpx
from sqlalchemy import func, select

from tests.support.labelling import queue_samples
from tests.support.web import add_user, http_sign_in


def csrf(http: httpx.Client) -> dict[str, str]:
    return {"X-CSRF-Token": http.cookies["gw_csrf"]}


def test_list_lease_save_and_skip(run_service, db_url, dataset_images) -> None:
    from serving.store.models import AuditEntry, Case, LabellingItem

    server = run_service(db_url, review_lease_s=60)  # the COCO seed model: its classes are the labels
    ids = queue_samples(server, dataset_images, 3)
    add_user(server, "alice")
    add_user(server, "bob")
    with httpx.Client(base_url=server.url) as alice, httpx.Client(base_url=server.url) as bob, \
            httpx.Client(base_url=server.url) as stranger:
        http_sign_in(alice, "alice")
        http_sign_in(bob, "bob")
        assert stranger.get("/review/labelling/items").status_code in (303, 307)  # to /login
        listed = alice.get("/review/labelling/items", params={"status": "pending"}).json()["items"]
        assert [i["id"] for i in listed] == ids
        first = listed[0]
        assert first["reasons"] == ["score_band"] and first["camera"] == "cam-lab" and first["boxes"] is None
        assert first["model_version"] == server.service.detector.version
        assert alice.get(first["image_url"]).headers["content-type"] == "image/png"

        # Leases: alice gets the oldest, bob the next; neither gets the other's.
        got = alice.post("/review/labelling/next", json={}, headers=csrf(alice)).json()
        assert got["item"]["id"] == ids[0] and "fire hydrant" in got["classes"]
        assert bob.post("/review/labelling/next", json={}, headers=csrf(bob)).json()["item"]["id"] == ids[1]
        assert bob.post("/review/labelling/next", json={"skip": [ids[1]]}, headers=csrf(bob)).json()["item"]["id"] \
            == ids[2]
        assert alice.post("/review/labelling/next", json={"skip": [ids[0]]}, headers=csrf(alice)).json()["item"] \
            is None
        assert alice.post("/review/labelling/leases", json={"items": ids}, headers=csrf(alice)).json() == {"renewed": 1}

        # Bad input: clear 4xx, nothing stored.
        w, h = first["width"], first["height"]
        save = f"/review/labelling/{ids[0]}/save"
        assert alice.post(save, json={"boxes": []}).status_code == 403  # no CSRF token
        unknown = alice.post(save, json={"boxes": [{"class_name": "unicorn", "box": [1, 1, 9, 9]}]}, headers=csrf(alice))
        assert unknown.status_code == 422 and "unicorn" in unknown.json()["detail"]
        outside = alice.post(save, json={"boxes": [{"class_name": "person", "box": [0, 0, w + 50, 10]}]},
                             headers=csrf(alice))
        assert outside.status_code == 422 and "outside" in outside.json()["detail"]
        below = alice.post(save, json={"boxes": [{"class_name": "person", "box": [0, 0, 10, h + 1]}]},
                           headers=csrf(alice))
        assert below.status_code == 422
        for bad in ([{"class_name": "person", "box": [50, 50, 10, 10]}], [{"class_name": "person"}],
                    [{"class_name": "person", "box": [1, 2, 3]}], "boxes"):
            assert alice.post(save, json={"boxes": bad}, headers=csrf(alice)).status_code == 422
        assert alice.post("/review/labelling/999999/save", json={"boxes": []}, headers=csrf(alice)).status_code == 404
        assert alice.post("/review/labelling/x/save", json={"boxes": []}, headers=csrf(alice)).status_code == 422
        # bob may not save alice's item while she holds it
        taken = bob.post(save, json={"boxes": []}, headers=csrf(bob))
        assert taken.status_code == 409

        boxes = [{"class_name": "fire hydrant", "box": [10, 20, 200, 300]},
                 {"class_name": "car", "box": [220.04, 30, 400, 330]}]
        saved = alice.post(save, json={"boxes": boxes}, headers=csrf(alice))
        assert saved.status_code == 200, saved.text
        assert saved.json() == {"id": ids[0], "status": "labelled", "boxes": [
            {"class_name": "fire hydrant", "box": [10.0, 20.0, 200.0, 300.0]},
            {"class_name": "car", "box": [220.0, 30.0, 400.0, 330.0]}]}
        assert alice.post(save, json={"boxes": []}, headers=csrf(alice)).status_code == 409  # done already
        skipped = bob.post(f"/review/labelling/{ids[1]}/skip", headers=csrf(bob))
        assert skipped.json() == {"id": ids[1], "status": "skipped"}
        assert [i["id"] for i in alice.get("/review/labelling/items?status=labelled").json()["items"]] == [ids[0]]
        assert alice.get("/review/labelling/items?status=nonsense").status_code == 422
        # An empty frame is a label too: nothing of the model's classes in it.
        bob.post("/review/labelling/next", json={}, headers=csrf(bob))
        assert bob.post(f"/review/labelling/{ids[2]}/save", json={"boxes": []}, headers=csrf(bob)).status_code == 200

    add_user(server, "root", "admin")
    with httpx.Client(base_url=server.url) as root:
        http_sign_in(root, "root")
        assert "daily_budget_per_camera=20" in root.get("/admin").text  # the settings admins see

    with server.service.db.sessions() as session:
        rows = {r.id: r for r in session.scalars(select(LabellingItem))}
        audit = session.scalars(select(AuditEntry).where(AuditEntry.action.like("labelling.%"))
                                .order_by(AuditEntry.id)).all()
        assert session.scalar(select(func.count()).select_from(Case)) == 0  # labelling makes no case
    assert rows[ids[0]].labelled_by == "alice" and rows[ids[0]].leased_by == "" and rows[ids[0]].labelled_at
    assert rows[ids[1]].status == "skipped" and rows[ids[1]].boxes is None
    assert rows[ids[2]].status == "labelled" and rows[ids[2]].boxes == []
    assert [(a.actor, a.action, a.target) for a in audit] == [
        ("alice", "labelling.save", f"labelling:{ids[0]}"), ("bob", "labelling.skip", f"labelling:{ids[1]}"),
        ("bob", "labelling.save", f"labelling:{ids[2]}")]
