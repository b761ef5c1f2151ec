"""The review page's routes: thin, each checks who is asking and calls one service function.

Pages need a signed-in user (else a redirect to /login); every POST needs the CSRF token
(else 403); /admin needs the admin role (else 403)."""

from __future__ import annotations

from datetime import date, datetime, timezone
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, Form, HTTPException, Query, Request
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from fastapi.templating import Jinja2Templates
import yaml
from pydantic import BaseModel, ConfigDict, Field

from serving import audit
from serving.accounts import Account, AccountError, add_user, check_password, disable_user, list_users
from serving.api.deps import get_service
from serving.api.routes import ItemId, decision_refused, take_decision, utc
from serving.api.schemas import RedecideRequest, ReviewRequest, RowId
from serving.auth import create_key, list_keys, revoke_key
from serving.cases import CaseError
from serving.cases.leases import QueueFilter
from serving.cases.review import REVIEW_LOADS
from serving.cameras.registry import CameraError
from serving.labelling.queue import LabelBox, LabellingError, LabellingView
from serving.live_model import ModelSwapError
from serving.privacy import outgoing
from serving.store.models import REJECT_REASONS, ROLES, USER_ROLES
from serving.web import sessions
from serving.web.audit_view import AuditWords, audit_lines
from serving.web.dashboard import dashboard_data, evaluation, evaluation_csv
from serving.web.hotkeys import resolve_hotkeys
from serving.web.i18n import LANGUAGES, class_names, labels, pick_language
from serving.web.localtime import FIRST_DAY, LAST_DAY, CameraZones, parse_local_time, zone_label
from serving.web.queue import (decided_loads, decided_versions, open_duplicates, queue_cameras, queue_counts,
                               release_leases, renew_or_retake, review_case, violation_menu)

WEB_DIR = Path(__file__).parent
templates = Jinja2Templates(directory=WEB_DIR / "templates")
pages = APIRouter(include_in_schema=False)
# Settings an admin may see; secrets (webhook secret, admin key, database URL) stay out.
SHOWN_SETTINGS = ("host", "port", "public_url", "webhook_url", "auto_confirm", "reopen_policy", "dedup_cooldown_s",
                  "delivery_max_tries", "session_ttl_s", "login_max_failures", "login_window_s",
                  "review_lease_s", "review_undo_s", "review_hotkeys", "score_threshold", "iou_threshold",
                  "labelling")


class LoginRequired(Exception):
    """No live session: pages redirect to /login, other requests get 401."""


class NotAllowed(Exception):
    """Signed in, but the role may not open this: a 403 page."""


def session_of(request: Request) -> Account | None:
    """The account of the request's session cookie, if the session is live on the service's clock."""
    service = get_service(request)
    return sessions.session_account(service.db, request.cookies.get(sessions.SESSION_COOKIE), service.clock.now())


def signed_in(request: Request) -> Account:
    # The gate (serving/api/guard.py) found it already for a state-changing request.
    account = getattr(request.state, "account", None) or session_of(request)
    if account is None:
        raise LoginRequired()
    return account


def admin(account: Annotated[Account, Depends(signed_in)]) -> Account:
    if account.role != "admin":
        raise NotAllowed()
    return account


async def csrf_checked(request: Request) -> None:
    """The token must be the one derived from this request's session (or, signing in, its
    pre-session): the gw_csrf cookie is never what it is checked against."""
    given = request.headers.get(sessions.CSRF_HEADER)
    if given is None and request.headers.get("content-type", "").startswith(
            ("application/x-www-form-urlencoded", "multipart/form-data")):
        given = (await request.form()).get(sessions.CSRF_FIELD)
    if not sessions.csrf_valid(request.cookies, given if isinstance(given, str) else None):
        raise HTTPException(403, "missing or wrong CSRF token")


User = Annotated[Account, Depends(signed_in)]
Admin = Annotated[Account, Depends(admin)]
Csrf = Depends(csrf_checked)


def language(request: Request) -> str:
    return pick_language(request.query_params.get("lang") or request.cookies.get("lang"),
                         request.headers.get("accept-language"))


def zones(request: Request) -> CameraZones:
    """Each camera's zone for showing times (serving/web/localtime.py)."""
    service = get_service(request)
    return CameraZones(service.cameras.all(), service.settings.labelling.timezone)


def words(request: Request) -> AuditWords:
    lang = language(request)
    return AuditWords(labels(lang), get_service(request).taxonomy, lang)


def stages(request: Request) -> set[str]:
    """The second stages the served model runs (e.g. the truck load decision)."""
    return {stage.stage for stage in (getattr(get_service(request).detector, "second_stage", None) or {}).values()}


def switch_url(request: Request, lang: str) -> str:
    """This page in the other language, its filters kept (only `lang` changes)."""
    query = [(k, v) for k, v in request.query_params.multi_items() if k != "lang"] + [("lang", lang)]
    return f"{request.url.path}?{urlencode(query)}"


def render(request: Request, template: str, account: Account | None, status_code: int = 200,
           **context: Any) -> Response:
    """A page in the reader's language, carrying the CSRF token its forms and scripts send."""
    lang = language(request)
    base = sessions.csrf_base(request.cookies)
    presession = None if base else sessions.new_token()  # not signed in: the login form's token comes from this
    token = sessions.csrf_token(base or presession)
    other = LANGUAGES[1 - LANGUAGES.index(lang)]
    response = templates.TemplateResponse(request, template, {
        "t": labels(lang), "lang": lang, "other_lang": other, "switch_url": switch_url(request, other),
        "user": account, "csrf": token, **context}, status_code=status_code)
    set_cookie(request, response, sessions.CSRF_COOKIE, token, http_only=False)
    if presession:
        set_cookie(request, response, sessions.PRESESSION_COOKIE, presession)
    if request.query_params.get("lang") in LANGUAGES:
        set_cookie(request, response, "lang", lang, http_only=False)
    return response


def set_cookie(request: Request, response: Response, name: str, value: str, *, http_only: bool = True,
               max_age: int | None = None) -> None:
    response.set_cookie(name, value, max_age=max_age, httponly=http_only, samesite="strict",
                        secure=request.url.scheme == "https", path="/")


def client_address(request: Request) -> str:
    """The caller's address as the gate found it (X-Forwarded-For only from trusted_proxies)."""
    found = getattr(request.state, "client_address", None)
    return found or (request.client.host if request.client else "?")


def forbidden(request: Request) -> Response:
    return render(request, "forbidden.html", session_of(request), status_code=403)


# -- signing in -------------------------------------------------------------------------------------
@pages.get("/")
def home(request: Request) -> RedirectResponse:
    return RedirectResponse("/review" if session_of(request) else "/login", status_code=303)


@pages.get("/login")
def login_page(request: Request) -> Response:
    return render(request, "login.html", None)


@pages.post("/login", dependencies=[Csrf])
def login(request: Request, username: Annotated[str, Form(max_length=64)],
          password: Annotated[str, Form(max_length=1024)]) -> Response:
    service = get_service(request)
    limiter: sessions.LoginLimiter = request.app.state.login_limiter
    address = client_address(request)
    caller = audit.Actor("anonymous", address, username)  # not signed in: the address is who
    attempt = limiter.begin(username, address)  # counted before the password is checked
    if attempt.wait_s > 0:
        if attempt.newly_locked:
            audit.record_alone(service.db, username, "user.locked_out", f"user:{username}",
                               {"address": address, "retry_after_s": int(attempt.wait_s) + 1}, caller)
        response = render(request, "login.html", None, status_code=429, error="too_many")
        response.headers["Retry-After"] = str(int(attempt.wait_s) + 1)
        return response
    account = check_password(service.db, username, password)
    if account is None:
        audit.record_alone(service.db, username, "user.sign_in_failed", f"user:{username}", {"address": address},
                           caller)
        return render(request, "login.html", None, status_code=401, error="bad_login")
    limiter.succeeded(username, address)
    ttl = service.settings.session_ttl_s
    token = sessions.open_session(service.db, account, ttl, service.clock.now())
    audit.record_alone(service.db, account.name, "user.sign_in", f"user:{account.name}", {"address": address},
                       audit.Actor("user", str(account.id), account.name))
    response = RedirectResponse("/review", status_code=303)
    set_cookie(request, response, sessions.SESSION_COOKIE, token, max_age=int(ttl))
    # The new session's CSRF token: one planted before sign-in is useless.
    set_cookie(request, response, sessions.CSRF_COOKIE, sessions.csrf_token(token), http_only=False)
    response.delete_cookie(sessions.PRESESSION_COOKIE, path="/")
    return response


@pages.post("/logout", dependencies=[Csrf])
def logout(request: Request) -> RedirectResponse:
    service = get_service(request)
    account: Account | None = getattr(request.state, "account", None)
    sessions.close_session(service.db, request.cookies.get(sessions.SESSION_COOKIE))
    if account is not None:
        audit.record_alone(service.db, account.name, "user.sign_out", f"user:{account.name}",
                           {"address": client_address(request)})
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(sessions.SESSION_COOKIE, path="/")
    response.delete_cookie(sessions.CSRF_COOKIE, path="/")
    return response


# -- the queue --------------------------------------------------------------------------------------
class NextRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    skip: list[Annotated[str, Field(max_length=32)]] = Field(default_factory=list, max_length=50)
    order: Literal["oldest", "score"] = "oldest"
    camera: str | None = Field(None, max_length=128)
    violation: str | None = Field(None, max_length=64)
    grid: str | None = Field(None, max_length=15)
    since: datetime | None = None
    until: datetime | None = None
    min_score: float | None = Field(None, ge=0, le=1)


@pages.get("/review")
def review_page(request: Request, account: User) -> Response:
    service = get_service(request)
    lang = language(request)
    return render(request, "review.html", account, kinds=violation_menu(service.taxonomy),
                  reasons=REJECT_REASONS, load_labels=REVIEW_LOADS, undo_ms=int(service.settings.review_undo_s * 1000),
                  lease_ms=int(service.settings.review_lease_s * 1000),
                  hotkeys=resolve_hotkeys(service.settings.review_hotkeys).keys,
                  day_offset=zone_label(datetime.now(zones(request).default))[3:],
                  class_names=class_names(list(service.detector.info.names.values()), lang),
                  cameras=queue_cameras(service.db, list(service.cameras.all())), filters=request.query_params,
                  undo_window_ms=int(service.settings.review_undo_window_s * 1000))


def queue_filter(body: NextRequest) -> QueueFilter:
    return QueueFilter(**{**body.model_dump(exclude={"skip"}), "since": utc(body.since), "until": utc(body.until)})


@pages.post("/review/next", dependencies=[Csrf])
def next_case(request: Request, body: NextRequest, account: User) -> dict[str, Any]:
    service = get_service(request)
    case = service.cases.claim_next(account.name, queue_filter(body), body.skip, service.settings.review_lease_s)
    return {"case": review_case(service.db, service.taxonomy, case, zones=zones(request), words=words(request),
                                stages=stages(request)).model_dump() if case else None}


@pages.post("/review/counts", dependencies=[Csrf])
def counts(request: Request, body: NextRequest, account: User) -> dict[str, int]:
    """Pending cases for the page's filter, how many of them other reviewers hold, and this
    reviewer's decisions today (local day)."""
    service = get_service(request)
    counted = queue_counts(service.db, account.name, queue_filter(body), zones(request), service.clock.now())
    return {"pending": counted.pending, "leased_to_others": counted.leased_to_others, "mine_today": counted.mine_today}


@pages.post("/review/leases/release", dependencies=[Csrf])
def give_back_leases(request: Request, account: User,
                     cases: Annotated[list[str], Form()] = [],  # noqa: B006
                     items: Annotated[list[RowId], Form()] = []) -> dict[str, int]:  # noqa: B006
    """The page is hidden or closed (navigator.sendBeacon, a form body carrying the CSRF
    token): its leases end now, not review_lease_s later."""
    if len(cases) > 50 or len(items) > 50 or any(len(c) > 32 for c in cases):
        raise HTTPException(422, "at most 50 cases and 50 items, case numbers of at most 32 characters")
    return {"released": release_leases(get_service(request).db, account.name, cases, items)}


@pages.post("/review/cases/{case_number}/duplicates", dependencies=[Csrf])
def reject_duplicates(request: Request, case_number: str, account: User) -> dict[str, Any]:
    """Every other open case of this one's camera, violation and place, rejected as a
    duplicate of it in one action (cases another reviewer holds are left to them)."""
    service = get_service(request)
    case = service.cases.get(case_number)
    if case is None:
        raise HTTPException(404, f"no case {case_number!r}")
    rejected = []
    for number in open_duplicates(service.db, case, account.name, service.clock.now()):
        try:
            service.cases.review(number, "reject", reviewer=account.name, reason="duplicate",
                                 note=f"duplicate of {case_number}", lease_holder=account.name)
        except CaseError:
            continue  # decided or taken meanwhile: not ours to change
        rejected.append(number)
    if rejected and service.delivery is not None:
        service.delivery.wake()
    return {"case_number": case_number, "rejected": rejected}


class LeaseRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cases: list[Annotated[str, Field(max_length=32)]] = Field(max_length=50)


@pages.post("/review/leases", dependencies=[Csrf])
def renew_leases(request: Request, body: LeaseRequest, account: User) -> dict[str, int]:
    """The page still has these cases open: keep them from timing out to another reviewer."""
    service = get_service(request)
    return {"renewed": renew_or_retake(service.db, account.name, body.cases, service.settings.review_lease_s,
                                       service.clock.now())}


@pages.post("/review/cases/{case_number}/decision", dependencies=[Csrf])
def decide(request: Request, case_number: str, body: ReviewRequest, account: User) -> Any:
    """The page's first decision on a case; it always names the version it was shown (a
    second tab, or a case that moved on, gets the 409 with who holds it)."""
    if body.version is None:
        raise HTTPException(422, "the page's decisions name the case version they were made on ('version')")
    return decided(take_decision(get_service(request), case_number, body.decision(), account.name))


def decided(case: Any) -> Any:
    """What the page needs of the case after a decision (or the refusal as it came)."""
    if isinstance(case, Response):
        return case
    return {"case_number": case.case_number, "review_status": case.review_status, "violation": case.violation,
            "version": case.version}


@pages.post("/review/cases/{case_number}/redecide", dependencies=[Csrf])
def redecide(request: Request, case_number: str, body: RedecideRequest, account: User) -> Any:
    """Change a decided case's decision from its page or from My history, saying why."""
    return decided(take_decision(get_service(request), case_number, body.decision(), account.name))


class UndoRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int = Field(ge=0)  # the version the decision left the case at


@pages.post("/review/cases/{case_number}/undo", dependencies=[Csrf])
def undo(request: Request, case_number: str, body: UndoRequest, account: User) -> Any:
    """Take back one of this reviewer's recent decisions (the page's undo stack), audited as
    review.undo; a first decision's case comes back to the queue leased to them."""
    service = get_service(request)
    try:
        case = service.cases.undo(case_number, reviewer=account.name, version=body.version,
                                  within_s=service.settings.review_undo_window_s,
                                  lease_s=service.settings.review_lease_s)
    except CaseError as exc:
        return decision_refused(exc)
    if service.delivery is not None:
        service.delivery.wake()
    return decided(case)


@pages.get("/review/cases/{case_number}")
def case_page(request: Request, case_number: str, account: User) -> Response:
    """One case with its whole audit history (linked from the audit log and history pages)."""
    service = get_service(request)
    case = service.cases.get(case_number)
    if case is None:
        raise HTTPException(404, f"no case {case_number!r}")
    return render(request, "case.html", account,
                  case=review_case(service.db, service.taxonomy, case, zones=zones(request), words=words(request),
                                   stages=stages(request)),
                  kinds=violation_menu(service.taxonomy), reasons=REJECT_REASONS)


@pages.get("/review/evidence/{case_number}/{evidence_id}")
def evidence(request: Request, case_number: str, evidence_id: ItemId, _: User) -> FileResponse:
    service = get_service(request)
    case = service.cases.get(case_number)
    item = next((e for e in case.evidence if e.id == evidence_id), None) if case else None
    if item is None:
        raise HTTPException(404, "no such evidence")
    item = outgoing(case, item)  # a sealed original: reviewers see its masked copy (serving/privacy.py)
    # Evidence never changes, so the preloaded next image is served from the browser's cache.
    return FileResponse(service.evidence.resolve(item.path), media_type=item.media_type,
                        headers={"Cache-Control": "private, max-age=86400, immutable"})


# -- labelling mode: unsure frames the pipeline sampled (active learning) ----------------------------
class LabellingNextRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    skip: list[RowId] = Field(default_factory=list, max_length=50)
    camera: str | None = Field(None, max_length=128)


class LabellingLeaseRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    items: list[RowId] = Field(max_length=50)


class LabelsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    boxes: list[LabelBox] = Field(max_length=200)


def labelling_error(exc: LabellingError) -> HTTPException:
    return HTTPException(exc.status, str(exc))


@pages.get("/review/labelling/items")
def labelling_items(request: Request, _: User, status: Literal["pending", "labelled", "skipped"] | None = None,
                    camera: str | None = None, limit: int = Query(100, ge=1, le=1000)) -> dict[str, Any]:
    items = get_service(request).labelling.list(status, camera, limit)
    return {"items": [LabellingView.of(i).model_dump() for i in items]}


@pages.post("/review/labelling/next", dependencies=[Csrf])
def next_labelling_item(request: Request, body: LabellingNextRequest, account: User) -> dict[str, Any]:
    service = get_service(request)
    item = service.labelling.claim_next(account.name, body.skip, service.settings.review_lease_s, body.camera)
    view = LabellingView.of(item).model_dump() if item else None
    if item is not None:  # when the frame was taken, in its camera's own time
        view["taken_at_local"] = zones(request).show(item.taken_at, item.camera)
    return {"item": view,
            "classes": list(service.detector.info.names.values())}


@pages.post("/review/labelling/leases", dependencies=[Csrf])
def renew_labelling_leases(request: Request, body: LabellingLeaseRequest, account: User) -> dict[str, int]:
    service = get_service(request)
    return {"renewed": service.labelling.renew(account.name, body.items, service.settings.review_lease_s)}


@pages.post("/review/labelling/{item_id}/save", dependencies=[Csrf])
def save_labels(request: Request, item_id: ItemId, body: LabelsRequest, account: User) -> dict[str, Any]:
    try:
        item = get_service(request).labelling.save(item_id, body.boxes, labeller=account.name)
    except LabellingError as exc:
        raise labelling_error(exc) from None
    return {"id": item.id, "status": item.status, "boxes": item.boxes}


@pages.post("/review/labelling/{item_id}/skip", dependencies=[Csrf])
def skip_labelling_item(request: Request, item_id: ItemId, account: User) -> dict[str, Any]:
    try:
        item = get_service(request).labelling.skip(item_id, labeller=account.name)
    except LabellingError as exc:
        raise labelling_error(exc) from None
    return {"id": item.id, "status": item.status}


@pages.get("/review/labelling/{item_id}/frame")
def labelling_frame(request: Request, item_id: ItemId, _: User) -> FileResponse:
    service = get_service(request)
    item = service.labelling.get(item_id)
    if item is None:
        raise HTTPException(404, f"no labelling item {item_id}")
    return FileResponse(service.evidence.resolve(item.path), media_type=item.media_type,
                        headers={"Cache-Control": "private, max-age=86400, immutable"})


AUDIT_PAGE = 100  # entries per page of /admin/audit and /review/history


class AuditFilter(BaseModel):
    """The audit views' query: filters and the page (`before`: an entry id)."""

    actor: str | None = Field(None, max_length=64)
    action: str | None = Field(None, max_length=33)
    case: str | None = Field(None, max_length=32)
    # Typed as yyyy-mm-dd or yyyy-mm-dd HH:MM in text fields (localtime.parse_local_time): a
    # browser's date picker would show its own language's order (mm/dd/yyyy) in a Chinese page.
    since: str | None = Field(None, max_length=40)
    until: str | None = Field(None, max_length=40)
    before: RowId | None = None


class FilterError(ValueError):
    """A filter field (`field`) the page cannot read: shown on the page, in its language (422)."""

    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field = field


def audit_query(request: Request, given: AuditFilter, **fixed: Any) -> audit.AuditQuery:
    """Times without a zone are the service's local time (as the pages show them); a day
    alone as `until` includes that day."""
    zone = ZoneInfo(get_service(request).settings.labelling.timezone)
    t = labels(language(request))
    bounds = {}
    for name, field, end in (("since", "from", False), ("until", "to", True)):
        try:
            bounds[name] = utc(parse_local_time(getattr(given, name), zone, end=end))
        except ValueError:
            raise FilterError(t["time_format_error"].format(field=t[field], value=getattr(given, name)), name) from None
    values = {**given.model_dump(), **bounds, **fixed}
    return audit.AuditQuery(**{k: (v or None) if isinstance(v, str) else v for k, v in values.items()})


def audit_view(request: Request, account: Account, where: audit.AuditQuery | FilterError,
               csv_link: str | None) -> Response:
    """The entries `where` selects; a filter that could not be read: the page with its error."""
    service = get_service(request)
    # My history: each decision row gets its own re-decide button (one dialog form on the page).
    mine = {"redecide_dialog": True, "kinds": violation_menu(service.taxonomy), "reasons": REJECT_REASONS,
            "load_labels": REVIEW_LOADS} if csv_link is None else {}
    if isinstance(where, FilterError):
        return render(request, "audit.html", account, status_code=422, entries=[], csv_link=csv_link,
                      filters=request.query_params, older_link=None, newest_link=None, filter_error=str(where),
                      filter_field=where.field, redecidable={}, **mine)
    records, older = audit.page(service.db, where, AUDIT_PAGE)
    lines = audit_lines(service.db, records, words(request), zones(request))
    redecidable = decided_versions(service.db, [line.case_number for line in lines if line.case_number
                                                and line.action_id.startswith("review.")]) if mine else {}
    # A truck load case's row opens the dialog with its load field, on the case's load now.
    redecide_loads = decided_loads(service.db, service.taxonomy, list(redecidable))
    query = [(k, v) for k, v in request.query_params.multi_items() if k not in ("before", "format")]
    older_link = f"{request.url.path}?{urlencode(query + [('before', str(older))])}" if older else None
    return render(request, "audit.html", account, entries=lines,
                  csv_link=csv_link, filters=request.query_params, older_link=older_link,
                  newest_link=f"{request.url.path}?{urlencode(query)}" if where.before else None,
                  redecidable=redecidable, redecide_loads=redecide_loads, **mine)


def read_filter(request: Request, given: AuditFilter, **fixed: Any) -> audit.AuditQuery | FilterError:
    try:
        return audit_query(request, given, **fixed)
    except FilterError as exc:
        return exc


@pages.get("/review/history")
def history(request: Request, account: User, given: Annotated[AuditFilter, Query()]) -> Response:
    """This reviewer's own entries, paged and filtered like the audit log; each decision row
    has its own re-decide button (the form asks why)."""
    return audit_view(request, account, read_filter(request, given, actor=account.name), None)


# -- dashboard --------------------------------------------------------------------------------------
@pages.get("/dashboard")
def dashboard(request: Request, account: User) -> Response:
    lang = language(request)
    t = labels(lang)
    names = {v.id: v.name_zh if lang == "zh-CN" else v.name_en for v in get_service(request).taxonomy.violations}
    states = {k[6:]: v for k, v in t.items() if k.startswith("state_")}
    shown = [(k, v) for k, v in request.query_params.items() if k in ("since", "until", "deadline_h") and v]
    return render(request, "dashboard.html", account, names=names, states=states, query=request.query_params,
                  evaluation_query=urlencode(shown))


@pages.get("/dashboard/data")
def dashboard_json(request: Request, _: User) -> dict[str, Any]:
    service = get_service(request)
    shown = zones(request)
    data = dashboard_data(service.db, service.cameras.health(), service.cameras.stats(), shown.default)
    for camera in data["cameras"]:  # the reader's wall-clock time, in the camera's own zone
        last = camera.get("last_frame")
        camera["last_frame_local"] = shown.show(datetime.fromtimestamp(last, timezone.utc), camera["camera"]) \
            if isinstance(last, (int, float)) else shown.show(last, camera["camera"]) if last else "-"
    data["evidence"] = evidence_store(service.retention.figures(), shown)
    return data


def evidence_store(figures: dict[str, Any], shown: Any) -> dict[str, Any]:
    """Disk use and the purge schedule, the purge times in the page's default zone."""
    local = {f"{key}_local": shown.show(datetime.fromtimestamp(figures[key], timezone.utc), None)
             if figures.get(key) else "-" for key in ("last_purge", "next_purge")}
    return {**figures, **local}


@pages.get("/dashboard/evaluation")
def dashboard_evaluation(request: Request, _: User, since: date | None = None, until: date | None = None,
                         deadline_h: float = Query(24.0, gt=0, le=24 * 365),
                         format: Literal["json", "csv"] = "json") -> Response:
    """综合评价 per grid unit and division for [since, until] (local days, inclusive); CSV
    with a UTF-8 BOM so spreadsheet programs read the Chinese."""
    if since and until and since > until:
        raise HTTPException(422, "since is after until")
    if any(day is not None and not FIRST_DAY <= day <= LAST_DAY for day in (since, until)):
        raise HTTPException(422, f"since and until must be days from {FIRST_DAY} to {LAST_DAY}")
    service = get_service(request)
    report = evaluation(service.db, zones(request), since, until, deadline_h)
    if format == "csv":
        return Response(evaluation_csv(report, labels(language(request))), media_type="text/csv; charset=utf-8",
                        headers={"Content-Disposition": 'attachment; filename="gridwatch-evaluation.csv"'})
    return JSONResponse(report)


# -- admin ------------------------------------------------------------------------------------------
@pages.get("/admin")
def admin_page(request: Request, account: Admin) -> Response:
    return admin_view(request, account)


def admin_view(request: Request, account: Account, new_key: str | None = None,
               model_error: str | None = None, camera_error: str | None = None) -> Response:
    service = get_service(request)
    shown = {k: getattr(service.settings, k) for k in SHOWN_SETTINGS}
    # A refused form shows the page with its notice, answered 422 so a script driving it sees the refusal.
    return render(request, "admin.html", account, 422 if model_error or camera_error else 200,
                  users=list_users(service.db), keys=list_keys(service.db),
                  cameras=service.cameras.describe_all(show_source=True),
                  settings=shown, user_roles=USER_ROLES, key_roles=ROLES, new_key=new_key,
                  model=service.detector, model_error=model_error, camera_error=camera_error)


def back_to_admin() -> RedirectResponse:
    return RedirectResponse("/admin", status_code=303)


@pages.post("/admin/users", dependencies=[Csrf])
def admin_add_user(request: Request, account: Admin, name: Annotated[str, Form(max_length=64)],
                   role: Annotated[str, Form(max_length=16)], password: Annotated[str, Form(max_length=1024)]) -> Response:
    try:
        add_user(get_service(request).db, name, role, password, actor=account.name)
    except AccountError as exc:
        raise HTTPException(422, str(exc)) from None
    return back_to_admin()


@pages.post("/admin/users/{name}/disable", dependencies=[Csrf])
def admin_disable_user(request: Request, name: str, account: Admin) -> Response:
    try:
        disable_user(get_service(request).db, name, actor=account.name)
    except AccountError as exc:
        raise HTTPException(404, str(exc)) from None
    return back_to_admin()


@pages.post("/admin/keys", dependencies=[Csrf])
def admin_add_key(request: Request, account: Admin, name: Annotated[str, Form(min_length=1, max_length=64)],
                  role: Annotated[Literal["camera", "reviewer", "case_system", "admin"], Form()]) -> Response:
    try:
        _, key = create_key(get_service(request).db, name, role, actor=account.name)
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None
    # The key is shown once, in this answer; only its hash is kept.
    return admin_view(request, account, new_key=key)


@pages.post("/admin/cameras", dependencies=[Csrf])
def admin_put_camera(request: Request, account: Admin,
                     entry: Annotated[str, Form(max_length=64 * 1024)]) -> Response:
    """One camera entry as in the cameras YAML (YAML or JSON); an existing id is replaced."""
    try:
        config = yaml.safe_load(entry)
    except (yaml.YAMLError, RecursionError) as exc:
        return admin_view(request, account, camera_error=f"not YAML: {exc}"[:500])
    if not isinstance(config, dict):
        return admin_view(request, account, camera_error="expected one camera entry (a mapping with id, source, ...)")
    try:
        get_service(request).cameras.add(config, replace=True, actor=account.name)
    except CameraError as exc:
        return admin_view(request, account, camera_error=str(exc))
    return back_to_admin()


@pages.post("/admin/cameras/{camera_id}/remove", dependencies=[Csrf])
def admin_remove_camera(request: Request, camera_id: str, account: Admin) -> Response:
    try:
        get_service(request).cameras.remove(camera_id, actor=account.name)
    except CameraError as exc:
        return admin_view(request, account, camera_error=str(exc))
    return back_to_admin()


@pages.post("/admin/model/reload", dependencies=[Csrf])
def admin_reload_model(request: Request, account: Admin) -> Response:
    """The served model file, loaded again after a promotion (smoke-checked; refused models
    leave the old one serving)."""
    try:
        get_service(request).reload_model(actor=account.name)
    except ModelSwapError as exc:
        return admin_view(request, account, model_error=str(exc))
    return back_to_admin()


@pages.post("/admin/keys/{key_id}/revoke", dependencies=[Csrf])
def admin_revoke_key(request: Request, key_id: ItemId, account: Admin) -> Response:
    if not revoke_key(get_service(request).db, key_id, actor=account.name):
        raise HTTPException(404, f"no active key {key_id}")
    return back_to_admin()


@pages.get("/admin/audit")
def audit_page(request: Request, account: Admin, given: Annotated[AuditFilter, Query()],
               format: Literal["html", "csv"] = "html") -> Response:
    """The whole log, paged (AUDIT_PAGE a page) and filtered by actor, action, case and time;
    the CSV holds every entry the filter selects, streamed."""
    where = read_filter(request, given)
    if format == "csv" and isinstance(where, FilterError):
        raise HTTPException(422, str(where))
    if format == "csv":
        return StreamingResponse(audit.csv_chunks(get_service(request).db, where), media_type="text/csv; charset=utf-8",
                                 headers={"Content-Disposition": 'attachment; filename="gridwatch-audit.csv"'})
    query = [(k, v) for k, v in request.query_params.multi_items() if k not in ("before", "format")]
    return audit_view(request, account, where, f"/admin/audit?{urlencode(query + [('format', 'csv')])}")
