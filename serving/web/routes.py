"""The review page's routes: thin, each checks who is asking and calls one service function.

Pages need a signed-in user (else a redirect to /login); every POST needs the CSRF token
(else 403); /admin needs the admin role (else 403)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Form, HTTPException, Query, Request
from fastapi.responses import FileResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
import yaml
from pydantic import BaseModel, ConfigDict, Field

from serving import audit
from serving.accounts import Account, AccountError, add_user, check_password, disable_user, list_users
from serving.api.deps import get_service
from serving.api.routes import utc
from serving.api.schemas import ReviewRequest
from serving.auth import create_key, list_keys, revoke_key
from serving.cases import CaseError
from serving.cases.leases import QueueFilter
from serving.cameras.registry import CameraError
from serving.labelling.queue import LabelBox, LabellingError, LabellingView
from serving.live_model import ModelSwapError
from serving.store.models import REJECT_REASONS, ROLES, USER_ROLES
from serving.web import sessions
from serving.web.dashboard import dashboard_data
from serving.web.i18n import LANGUAGES, labels, pick_language
from serving.web.queue import review_case, violation_menu

WEB_DIR = Path(__file__).parent
templates = Jinja2Templates(directory=WEB_DIR / "templates")
pages = APIRouter(include_in_schema=False)
# Settings an admin may see; secrets (webhook secret, admin key, database URL) stay out.
SHOWN_SETTINGS = ("host", "port", "public_url", "webhook_url", "auto_confirm", "reopen_policy", "dedup_cooldown_s",
                  "delivery_max_tries", "session_ttl_s", "login_max_failures", "login_window_s",
                  "review_lease_s", "review_undo_s", "score_threshold", "iou_threshold", "labelling")


class LoginRequired(Exception):
    """No live session: pages redirect to /login, other requests get 401."""


class NotAllowed(Exception):
    """Signed in, but the role may not open this: a 403 page."""


def signed_in(request: Request) -> Account:
    account = sessions.session_account(get_service(request).db, request.cookies.get(sessions.SESSION_COOKIE))
    if account is None:
        raise LoginRequired()
    return account


def admin(account: Annotated[Account, Depends(signed_in)]) -> Account:
    if account.role != "admin":
        raise NotAllowed()
    return account


async def csrf_checked(request: Request) -> None:
    given = request.headers.get(sessions.CSRF_HEADER)
    if given is None and request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        given = (await request.form()).get(sessions.CSRF_FIELD)
    if not sessions.tokens_match(request.cookies.get(sessions.CSRF_COOKIE), given if isinstance(given, str) else None):
        raise HTTPException(403, "missing or wrong CSRF token")


User = Annotated[Account, Depends(signed_in)]
Admin = Annotated[Account, Depends(admin)]
Csrf = Depends(csrf_checked)


def language(request: Request) -> str:
    return pick_language(request.query_params.get("lang") or request.cookies.get("lang"),
                         request.headers.get("accept-language"))


def render(request: Request, template: str, account: Account | None, status_code: int = 200,
           **context: Any) -> Response:
    """A page in the reader's language, carrying the CSRF token its forms and scripts send."""
    lang = language(request)
    token = request.cookies.get(sessions.CSRF_COOKIE) or sessions.new_token()
    response = templates.TemplateResponse(request, template, {
        "t": labels(lang), "lang": lang, "other_lang": LANGUAGES[1 - LANGUAGES.index(lang)],
        "user": account, "csrf": token, **context}, status_code=status_code)
    set_cookie(request, response, sessions.CSRF_COOKIE, token, http_only=False)
    if request.query_params.get("lang") in LANGUAGES:
        set_cookie(request, response, "lang", lang, http_only=False)
    return response


def set_cookie(request: Request, response: Response, name: str, value: str, *, http_only: bool = True,
               max_age: int | None = None) -> None:
    response.set_cookie(name, value, max_age=max_age, httponly=http_only, samesite="strict",
                        secure=request.url.scheme == "https", path="/")


def client_address(request: Request) -> str:
    return request.client.host if request.client else "?"


def forbidden(request: Request) -> Response:
    account = sessions.session_account(get_service(request).db, request.cookies.get(sessions.SESSION_COOKIE))
    return render(request, "forbidden.html", account, status_code=403)


# -- signing in -------------------------------------------------------------------------------------
@pages.get("/")
def home(request: Request) -> RedirectResponse:
    account = sessions.session_account(get_service(request).db, request.cookies.get(sessions.SESSION_COOKIE))
    return RedirectResponse("/review" if account else "/login", status_code=303)


@pages.get("/login")
def login_page(request: Request) -> Response:
    return render(request, "login.html", None)


@pages.post("/login", dependencies=[Csrf])
def login(request: Request, username: Annotated[str, Form(max_length=64)],
          password: Annotated[str, Form(max_length=1024)]) -> Response:
    service = get_service(request)
    limiter: sessions.LoginLimiter = request.app.state.login_limiter
    address = client_address(request)
    wait = limiter.retry_after(username, address)
    if wait > 0:
        response = render(request, "login.html", None, status_code=429, error="too_many")
        response.headers["Retry-After"] = str(int(wait) + 1)
        return response
    account = check_password(service.db, username, password)
    if account is None:
        limiter.failed(username, address)
        return render(request, "login.html", None, status_code=401, error="bad_login")
    limiter.succeeded(username)
    ttl = service.settings.session_ttl_s
    response = RedirectResponse("/review", status_code=303)
    set_cookie(request, response, sessions.SESSION_COOKIE, sessions.open_session(service.db, account, ttl),
               max_age=int(ttl))
    # A fresh CSRF token with the new session, so one planted before sign-in is useless.
    set_cookie(request, response, sessions.CSRF_COOKIE, sessions.new_token(), http_only=False)
    return response


@pages.post("/logout", dependencies=[Csrf])
def logout(request: Request) -> RedirectResponse:
    sessions.close_session(get_service(request).db, request.cookies.get(sessions.SESSION_COOKIE))
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(sessions.SESSION_COOKIE, path="/")
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
    return render(request, "review.html", account, kinds=violation_menu(service.taxonomy),
                  reasons=REJECT_REASONS, undo_ms=int(service.settings.review_undo_s * 1000),
                  lease_ms=int(service.settings.review_lease_s * 1000),
                  cameras=sorted(service.cameras.all()), filters=request.query_params)


@pages.post("/review/next", dependencies=[Csrf])
def next_case(request: Request, body: NextRequest, account: User) -> dict[str, Any]:
    service = get_service(request)
    where = QueueFilter(**{**body.model_dump(exclude={"skip"}), "since": utc(body.since), "until": utc(body.until)})
    case = service.cases.claim_next(account.name, where, body.skip, service.settings.review_lease_s)
    return {"case": review_case(service.db, service.taxonomy, case).model_dump() if case else None}


class LeaseRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cases: list[Annotated[str, Field(max_length=32)]] = Field(max_length=50)


@pages.post("/review/leases", dependencies=[Csrf])
def renew_leases(request: Request, body: LeaseRequest, account: User) -> dict[str, int]:
    """The page still has these cases open: keep them from timing out to another reviewer."""
    service = get_service(request)
    return {"renewed": service.cases.renew_leases(account.name, body.cases, service.settings.review_lease_s)}


@pages.post("/review/cases/{case_number}/decision", dependencies=[Csrf])
def decide(request: Request, case_number: str, body: ReviewRequest, account: User) -> dict[str, Any]:
    service = get_service(request)
    try:
        case = service.cases.review(case_number, body.action, reviewer=account.name, note=body.note,
                                    violation=body.violation, reason=body.reason, boxes=body.boxes,
                                    lease_holder=account.name)
    except CaseError as exc:
        raise HTTPException(exc.status, str(exc)) from None
    if service.delivery is not None:
        service.delivery.wake()
    return {"case_number": case.case_number, "review_status": case.review_status, "violation": case.violation}


@pages.get("/review/cases/{case_number}")
def case_page(request: Request, case_number: str, account: User) -> Response:
    """One case with its whole audit history (linked from the audit log and history pages)."""
    service = get_service(request)
    case = service.cases.get(case_number)
    if case is None:
        raise HTTPException(404, f"no case {case_number!r}")
    return render(request, "case.html", account, case=review_case(service.db, service.taxonomy, case))


@pages.get("/review/evidence/{case_number}/{evidence_id}")
def evidence(request: Request, case_number: str, evidence_id: int, _: User) -> FileResponse:
    service = get_service(request)
    case = service.cases.get(case_number)
    item = next((e for e in case.evidence if e.id == evidence_id), None) if case else None
    if item is None:
        raise HTTPException(404, "no such evidence")
    # Evidence never changes, so the preloaded next image is served from the browser's cache.
    return FileResponse(service.evidence.resolve(item.path), media_type=item.media_type,
                        headers={"Cache-Control": "private, max-age=86400, immutable"})


# -- labelling mode: unsure frames the pipeline sampled (active learning) ----------------------------
class LabellingNextRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    skip: list[int] = Field(default_factory=list, max_length=50)
    camera: str | None = Field(None, max_length=128)


class LabellingLeaseRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    items: list[int] = Field(max_length=50)


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
    return {"item": LabellingView.of(item).model_dump() if item else None,
            "classes": list(service.detector.info.names.values())}


@pages.post("/review/labelling/leases", dependencies=[Csrf])
def renew_labelling_leases(request: Request, body: LabellingLeaseRequest, account: User) -> dict[str, int]:
    service = get_service(request)
    return {"renewed": service.labelling.renew(account.name, body.items, service.settings.review_lease_s)}


@pages.post("/review/labelling/{item_id}/save", dependencies=[Csrf])
def save_labels(request: Request, item_id: int, body: LabelsRequest, account: User) -> dict[str, Any]:
    try:
        item = get_service(request).labelling.save(item_id, body.boxes, labeller=account.name)
    except LabellingError as exc:
        raise labelling_error(exc) from None
    return {"id": item.id, "status": item.status, "boxes": item.boxes}


@pages.post("/review/labelling/{item_id}/skip", dependencies=[Csrf])
def skip_labelling_item(request: Request, item_id: int, account: User) -> dict[str, Any]:
    try:
        item = get_service(request).labelling.skip(item_id, labeller=account.name)
    except LabellingError as exc:
        raise labelling_error(exc) from None
    return {"id": item.id, "status": item.status}


@pages.get("/review/labelling/{item_id}/frame")
def labelling_frame(request: Request, item_id: int, _: User) -> FileResponse:
    service = get_service(request)
    item = service.labelling.get(item_id)
    if item is None:
        raise HTTPException(404, f"no labelling item {item_id}")
    return FileResponse(service.evidence.resolve(item.path), media_type=item.media_type,
                        headers={"Cache-Control": "private, max-age=86400, immutable"})


@pages.get("/review/history")
def history(request: Request, account: User) -> Response:
    return render(request, "audit.html", account, entries=audit.entries(get_service(request).db, actor=account.name),
                  csv_link=None)


# -- dashboard --------------------------------------------------------------------------------------
@pages.get("/dashboard")
def dashboard(request: Request, account: User) -> Response:
    return render(request, "dashboard.html", account)


@pages.get("/dashboard/data")
def dashboard_json(request: Request, _: User) -> dict[str, Any]:
    service = get_service(request)
    return dashboard_data(service.db, service.cameras.health(), service.cameras.stats())


# -- admin ------------------------------------------------------------------------------------------
@pages.get("/admin")
def admin_page(request: Request, account: Admin) -> Response:
    return admin_view(request, account)


def admin_view(request: Request, account: Account, new_key: str | None = None,
               model_error: str | None = None, camera_error: str | None = None) -> Response:
    service = get_service(request)
    shown = {k: getattr(service.settings, k) for k in SHOWN_SETTINGS}
    return render(request, "admin.html", account, users=list_users(service.db), keys=list_keys(service.db),
                  cameras=[service.cameras.describe(c) for c in service.cameras.all().values()],
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
    _, key = create_key(get_service(request).db, name, role, actor=account.name)
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
def admin_revoke_key(request: Request, key_id: int, account: Admin) -> Response:
    if not revoke_key(get_service(request).db, key_id, actor=account.name):
        raise HTTPException(404, f"no active key {key_id}")
    return back_to_admin()


@pages.get("/admin/audit")
def audit_page(request: Request, account: Admin, format: Literal["html", "csv"] = "html") -> Response:
    records = audit.entries(get_service(request).db, limit=10_000 if format == "csv" else 500)
    if format == "csv":
        return Response(audit.to_csv(records), media_type="text/csv; charset=utf-8",
                        headers={"Content-Disposition": 'attachment; filename="gridwatch-audit.csv"'})
    return render(request, "audit.html", account, entries=records, csv_link="/admin/audit?format=csv")
