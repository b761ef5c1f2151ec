"""Thresholds that hold a precision: the arithmetic by hand, then reviews moving a camera x
violation's thresholds (history, audit log), and the rules and the case policy using them."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from detector.taxonomy import load_taxonomy
from serving.cameras import parse_cameras
from serving.cases import CasePolicy, CaseService
from serving.cases.thresholds import Decision, ThresholdBook, decision_of, fit, fit_threshold
from serving.evidence import EvidenceStore
from serving.pipeline.rules import RuleEngine
from serving.settings import ThresholdSettings
from serving.store.db import Database
from serving.store.models import AuditEntry, Threshold, ThresholdChange
from serving.web.dashboard import dashboard_data

# (score, right?) as reviewers decided them, one camera x violation.
DECISIONS = [Decision(s, c) for s, c in [
    (0.30, False), (0.35, False), (0.40, True), (0.45, False), (0.50, True), (0.55, True),
    (0.60, True), (0.65, True), (0.70, True), (0.75, True), (0.80, True), (0.85, True)]]


def test_threshold_is_the_lowest_reviewed_score_that_holds_the_precision() -> None:
    # Precision of the decisions scored >= t, by hand:
    #   t=0.30: 9 right of 12 = 0.75;  t=0.35: 9/11 = 0.818;  t=0.40: 9/10 = 0.90 -> the alert threshold
    #   t=0.45: 8/9 = 0.889;           t=0.50: 8/8 = 1.00 -> the first >= 0.97, the auto-confirm threshold
    assert fit_threshold(DECISIONS, 0.90, 0.25, 0.95, 10) == 0.40
    assert fit_threshold(DECISIONS, 0.97, 0.25, 0.95, 10) == 0.50
    assert fit_threshold(DECISIONS, 0.80, 0.25, 0.95, 10) == 0.35  # 0.818 >= 0.80
    assert fit_threshold(DECISIONS, 0.90, 0.25, 0.95, 13) is None  # 12 reviews are not enough
    assert fit_threshold(DECISIONS, 0.90, 0.45, 0.95, 10) == 0.45  # the floor holds it up
    assert fit_threshold(DECISIONS, 0.90, 0.25, 0.38, 10) == 0.38  # the ceiling holds it down
    wrong = [Decision(s, False) for s in (0.5, 0.6, 0.7)]
    assert fit_threshold(wrong, 0.90, 0.25, 0.95, 3) == 0.95  # never reached: the ceiling
    fitted = fit(DECISIONS, ThresholdSettings(min_reviews=10))
    assert (fitted.confirmed, fitted.rejected, fitted.alert, fitted.auto_confirm, fitted.precision_at_alert) == \
        (9, 3, 0.40, 0.50, 0.9)


def test_which_reviews_count() -> None:
    assert decision_of("confirmed", "") is True and decision_of("corrected", "") is True
    assert decision_of("rejected", "false_alarm") is False and decision_of("rejected", "not_here") is False
    assert decision_of("rejected", "") is False
    assert decision_of("rejected", "duplicate") is None and decision_of("rejected", "bad_image") is None
    assert decision_of("pending", "") is None


@pytest.fixture
def book_and_cases(db_url: str, tmp_path: Path):
    db = Database(db_url)
    book = ThresholdBook(db, ThresholdSettings(min_reviews=4), refresh_s=3600)
    cases = CaseService(db, EvidenceStore(tmp_path / "ev"), load_taxonomy(),
                        CasePolicy(auto_confirm={"bin_overflow": 0.9}, learned_auto_confirm=book.auto_confirm),
                        public_url="http://gw.test", thresholds=book)
    yield book, cases
    db.close()


def test_reviews_move_the_pair_thresholds_into_rules_and_policy(book_and_cases, make_event) -> None:
    book, cases = book_and_cases
    numbers = [cases.ingest(*make_event(event_id=f"ev-{i}", score=score, box=(200.0 * i, 0.0, 200.0 * i + 150, 150.0)))
               .case_number for i, score in enumerate((0.5, 0.6, 0.7, 0.8, 0.9))]
    cases.review(numbers[0], "confirm", reviewer="ann")
    cases.review(numbers[1], "reject", reviewer="ann", reason="false_alarm")
    cases.review(numbers[2], "confirm", reviewer="ann")
    assert book.alert("cam-001", "bin_overflow") is None  # 3 decisions: below min_reviews, nothing moves
    cases.review(numbers[4], "reject", reviewer="ann", reason="duplicate")  # says nothing about the score
    assert book.alert("cam-001", "bin_overflow") is None
    cases.review(numbers[3], "correct", reviewer="ann", violation="exposed_garbage")  # right, as bin_overflow
    # 0.5 right, 0.6 wrong, 0.7 right, 0.8 right: t=0.5 3/4, t=0.6 2/3, t=0.7 2/2 -> 0.7 for both targets.
    assert (book.alert("cam-001", "bin_overflow"), book.auto_confirm("cam-001", "bin_overflow")) == (0.7, 0.7)
    # A re-decision on a case replaces its first decision: now all four are right -> 0.5.
    cases.redecide(numbers[1], "confirm", reviewer="bob", why="it was garbage", version=cases.get(numbers[1]).version)
    assert (book.alert("cam-001", "bin_overflow"), book.auto_confirm("cam-001", "bin_overflow")) == (0.5, 0.5)

    with cases.db.sessions() as session:
        row = session.get(Threshold, ("cam-001", "bin_overflow"))
        assert (row.confirmed, row.rejected) == (4, 0)
        changes = session.scalars(select(ThresholdChange).order_by(ThresholdChange.id)).all()
        assert [(c.alert, c.auto_confirm, c.confirmed, c.rejected) for c in changes] == [(0.7, 0.7, 3, 1),
                                                                                          (0.5, 0.5, 4, 0)]
        audit = session.scalars(select(AuditEntry).where(AuditEntry.action == "threshold.update")
                                .order_by(AuditEntry.id)).all()
        assert [(a.target, a.before["alert"], a.after["alert"]) for a in audit] == [
            ("threshold:cam-001/bin_overflow", None, 0.7), ("threshold:cam-001/bin_overflow", 0.7, 0.5)]

    # The dashboard's history and the thresholds in force.
    shown = dashboard_data(cases.db, {}, {})["thresholds"]
    assert [(h["camera"], h["alert"], h["auto_confirm"]) for h in shown["history"]] == [
        ("cam-001", 0.7, 0.7), ("cam-001", 0.5, 0.5)]
    assert shown["in_force"] == [{"camera": "cam-001", "violation": "bin_overflow", "confirmed": 4, "rejected": 0,
                                  "alert": 0.5, "auto_confirm": 0.5}]

    # The case policy: the learned bar replaces settings.auto_confirm for this camera only, and
    # never starts auto-confirming a violation the setting leaves to reviewers.
    policy = cases.policy
    assert policy.auto_confirm_score("cam-001", "bin_overflow") == 0.5
    assert policy.auto_confirm_score("cam-002", "bin_overflow") == 0.9
    assert policy.auto_confirm_score("cam-001", "exposed_garbage") is None
    assert policy.route("bin_overflow", camera="cam-001") == \
        "auto-confirm at score >= 0.5 (learned from reviews), review below it"  # the start-up log
    assert policy.route("bin_overflow", camera="cam-002") == "auto-confirm at score >= 0.9, review below it"
    made = cases.ingest(*make_event(event_id="ev-new", score=0.6, box=(0.0, 400.0, 150.0, 550.0)))
    assert made.queued == "case.reported"  # 0.6 >= the learned 0.5 (the setting alone, 0.9, would hold it)

    # The rules: the learned alert score replaces the rule's min_score on this camera.
    rule = {"violation": "bin_overflow", "zone_types": ["bin_area"], "min_score": 0.4}
    cameras = parse_cameras({"cameras": [
        {"id": cam, "source": "rtsp://127.0.0.1/x", "division": "370202", "grid": "370202001001001",
         "zones": [{"name": "bins", "type": "bin_area", "polygon": [[0, 0], [1, 0], [1, 1]]}], "rules": [rule]}
        for cam in ("cam-001", "cam-002")]}, Path(".")).cameras
    taxonomy = load_taxonomy()
    assert [RuleEngine(c, taxonomy, book.alert).min_score(RuleEngine(c, taxonomy).rules[0]) for c in cameras] \
        == [0.5, 0.4]


def test_rules_keep_the_last_thresholds_while_the_database_cannot_be_read(tmp_path: Path, caplog) -> None:
    from sqlalchemy import text

    db = Database(f"sqlite:///{tmp_path / 'gw.db'}")
    with db.transaction() as session:
        session.add(Threshold(camera="cam-1", violation="bin_overflow", confirmed=20, rejected=2,
                              alert=0.42, auto_confirm=0.6))
    book = ThresholdBook(db, ThresholdSettings(), refresh_s=0)
    assert book.alert("cam-1", "bin_overflow") == 0.42
    with db.engine.begin() as conn:
        conn.execute(text("DROP TABLE thresholds"))  # every read from now on fails
    assert book.refresh() is False  # the refresher's next read
    assert book.alert("cam-1", "bin_overflow") == 0.42 and book.auto_confirm("cam-1", "bin_overflow") == 0.6
    assert "the last ones stay in force" in caplog.text
    db.close()


def test_the_rules_read_thresholds_from_memory_while_a_thread_of_their_own_reads_the_database(tmp_path: Path) -> None:
    """The rules ask on every analysed frame: a database that does not answer must never hold a
    frame up. The book's own thread reads it every refresh_s and publishes what it read whole."""
    import threading

    from sqlalchemy import update

    from tests.support.service import wait_for

    db = Database(f"sqlite:///{tmp_path / 'gw.db'}")
    with db.transaction() as session:
        session.add(Threshold(camera="cam-1", violation="bin_overflow", confirmed=20, rejected=2,
                              alert=0.42, auto_confirm=0.6))
    book = ThresholdBook(db, ThresholdSettings(), refresh_s=0.01)
    assert book.alert("cam-1", "bin_overflow") == 0.42

    answer, asked, sessions = threading.Event(), [], db.sessions

    def not_answering(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        asked.append(threading.current_thread().name)
        assert answer.wait(30), "the database never answered"
        return sessions(*args, **kwargs)

    db.sessions = not_answering
    book.start()
    try:
        wait_for(lambda: asked, timeout=10)  # the book's thread waits on the database
        for _ in range(200):  # frames meanwhile: answered at once, from the last thresholds read
            assert book.alert("cam-1", "bin_overflow") == 0.42 and book.auto_confirm("cam-1", "bin_overflow") == 0.6
        assert book.alerts_for(["cam-1"]) == {"cam-1": {"bin_overflow": 0.42}}
        assert set(asked) == {"gridwatch-thresholds"}
        with sessions() as session, session.begin():  # another process moves the threshold
            session.execute(update(Threshold).values(alert=0.55))
        answer.set()  # the database answers again
        wait_for(lambda: book.alert("cam-1", "bin_overflow") == 0.55, timeout=10)
    finally:
        answer.set()
        book.stop()
        db.close()
