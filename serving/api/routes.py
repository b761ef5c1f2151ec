"""All routes. Each validates its input, calls one service function and shapes the answer."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Body, Depends, File, Form, HTTPException, Path, Query, UploadFile
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from serving.api.deps import decode_holds, get_service, require
from serving.api.schemas import (
    MAX_ID,
    CasePage,
    DecisionConflictBody,
    DetectResponse,
    EventResult,
    KeyCreated,
    KeyRequest,
    KeyRotation,
    ModelReload,
    ModelState,
    RedecideRequest,
    ReviewRequest,
    StatusCallback,
)
from serving.api.uploads import DETECT_MIN_SIDE, DecodeHolds, UploadError, check_image, original_size
from serving.audit import AuditQuery
from serving.audit import page as audit_page
from serving.auth import Principal, create_key, revoke_key, rotate_key

from serving.cameras.registry import CameraError
from serving.bundle import BundleError
from serving.cases import CaseError, CaseFilter, CasePublic
from serving.cases.review import Decision, DecisionConflict, Throttled
from serving.events import CAMERA_ID, ViolationEvent, division_problem
from serving.evidence import EvidenceFrame
from serving.frame_boxes import BoxError, clip_box
from serving.health import ready as service_ready
from serving.live_model import ModelSwapError
from serving.privacy import SealedError, unseal
from serving.service import GridwatchService
from serving.store.models import ApiKey

CASE_NUMBER = r"^[A-Za-z0-9-]{1,32}$"

EVENT_CLOCK_AHEAD = timedelta(days=1)

Service = Annotated[GridwatchService, Depends(get_service)]
Decoder = Annotated[DecodeHolds, Depends(decode_holds)]
CaseNumber = Annotated[str, Path(pattern=CASE_NUMBER)]
CameraId = Annotated[str, Path(pattern=CAMERA_ID)]
ItemId = Annotated[int, Path(ge=1, le=MAX_ID)]  # a row id in the URL: evidence, key, labelling item

system = APIRouter(tags=["system"])
v1 = APIRouter(prefix="/v1")


def utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    try:
        return (value if value.tzinfo else value.replace(tzinfo=timezone.utc)).astimezone(timezone.utc)
    except (OverflowError, ValueError):
        raise HTTPException(422, "time out of range") from None


def case_error(exc: CaseError | CameraError | UploadError) -> HTTPException:
    return HTTPException(exc.status, str(exc))


async def read_upload(upload: UploadFile, service: GridwatchService) -> tuple[bytes, str, tuple[int, int]]:
    """The bytes, media type and header size of a checked (not yet decoded) upload."""
    limit = service.settings.upload_max_bytes
    data = await upload.read(limit + 1)
    try:
        media_type, size = check_image(data, upload.content_type, max_bytes=limit,
                                       max_pixels=service.settings.upload_max_pixels)
    except UploadError as exc:
        raise case_error(exc) from None
    return data, media_type, size


async def decode_upload(decoder: DecodeHolds, data: bytes, header_size: tuple[int, int], *,
                        min_side: int | None = None) -> np.ndarray:
    """Decoded off the event loop, at most settings.max_concurrent_decodes at a time, its
    share of the decode budget held until the request ends (one budget for every route)."""
    try:
        return await decoder.decode(data, header_size, min_side=min_side)
    except UploadError as exc:
        raise case_error(exc) from None


# -- system ------------------------------------------------------------------------------------
@system.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is up and answering."""
    return {"status": "ok"}


@system.get("/readyz", responses={503: {"description": "not ready: each failing part named in `checks` "
                                                    "(database, evidence, camera:<id>, events)"}})
def readyz(service: Service) -> JSONResponse:
    checks = service.readiness()
    ready = service_ready(checks)
    return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)


@system.get("/metrics", response_class=PlainTextResponse)
def metrics(service: Service) -> PlainTextResponse:
    from serving.api.metrics import render

    return PlainTextResponse(render(service.metrics()), media_type="text/plain; version=0.0.4")


# -- detection -----------------------------------------------------------------------------------
@v1.post("/detect", response_model=DetectResponse, tags=["detect"],
         responses={413: {"description": "too large"}, 415: {"description": "not an image"}})
async def detect(
    service: Service,
    decoder: Decoder,
    file: Annotated[UploadFile, File(description="one image: JPEG, PNG, WebP or BMP")],
    _: Principal = Depends(require("camera", "reviewer")),
) -> dict[str, Any]:
    data, _media, header_size = await read_upload(file, service)
    image = await decode_upload(decoder, data, header_size, min_side=DETECT_MIN_SIDE)
    found, version = await run_in_threadpool(service.detect, image)
    width, height = original_size(image, header_size)
    # Boxes in the original's pixels, whatever size it was decoded at.
    found = found.scaled(width / image.shape[1], height / image.shape[0])
    return {"width": width, "height": height, "model_version": version,
            "detections": found.to_records()}


# -- events from edge boxes ------------------------------------------------------------------------
def bounded_event_box(box: tuple[float, float, float, float] | None,
                      frame: tuple[int, int] | None) -> tuple[float, float, float, float] | None:
    """The event's box cut to its frame (width, height); 422 when it is not finite, absurd,
    or wholly outside the frame. Without a frame only the sanity checks and the lower bound hold."""
    if box is None:
        return None
    try:
        return tuple(clip_box(box, *(frame or (None, None)), what="box"))
    except BoxError as exc:
        raise HTTPException(422, f"invalid event: {exc}") from None


@v1.post("/events", response_model=EventResult, tags=["events"])
async def push_event(
    service: Service,
    decoder: Decoder,
    event: Annotated[str, Form(description="the ViolationEvent as JSON (see `gridwatch watch --events`)")],
    frame: Annotated[UploadFile | None, File(description="the original evidence frame, unaltered")] = None,
    _: Principal = Depends(require("camera")),
) -> dict[str, Any]:
    try:
        parsed = ViolationEvent.model_validate(json.loads(event))
    except (ValueError, ValidationError, RecursionError) as exc:  # RecursionError: absurdly nested JSON
        raise HTTPException(422, f"invalid event: {exc}"[:2000]) from None
    first_seen, last_seen = utc(parsed.first_seen), utc(parsed.last_seen)
    if last_seen < first_seen:
        raise HTTPException(422, "last_seen is before first_seen")
    ahead = last_seen - service.clock.now()
    if ahead > EVENT_CLOCK_AHEAD:
        # It would stand as the case's last sighting, sent on to the case system: a sender's clock
        # a day or more ahead is wrong (a zone slip is at most 14 hours), not something to file.
        raise HTTPException(422, f"last_seen {last_seen.isoformat()} is {ahead} after this service's clock: "
                                 "check the sending box's clock and time zone")
    if not parsed.matter_code.endswith(service.taxonomy[parsed.violation].matter_code
                                       if parsed.violation in service.taxonomy else "?"):
        raise HTTPException(422, f"matter_code {parsed.matter_code} does not match violation {parsed.violation!r}")
    problem = division_problem(parsed.division or parsed.matter_code[:6], parsed.grid, parsed.matter_code)
    if problem:
        raise HTTPException(422, f"invalid event: {problem}")
    # The edge box's own evidence paths mean nothing here: the uploaded frame is the evidence.
    violation_event = parsed.model_copy(update={
        "first_seen": first_seen, "last_seen": last_seen, "evidence": (),
        "division": parsed.division or parsed.matter_code[:6],
    })
    event_box = bounded_event_box(parsed.box, None)  # refused before any upload is read
    evidence = None
    if frame is not None:
        data, media_type, size = await read_upload(frame, service)
        # Decoded here, in full (the annotated copy and crop use the box's pixels), so a frame
        # that cannot be decoded is refused like on /v1/detect before anything is stored.
        image = await decode_upload(decoder, data, size)
        event_box = bounded_event_box(parsed.box, (image.shape[1], image.shape[0]))
        suffix = {"image/png": ".png", "image/webp": ".webp", "image/bmp": ".bmp"}.get(media_type, ".jpg")
        evidence = EvidenceFrame(box=event_box, label=parsed.violation, image=image, encoded=data, suffix=suffix)
    violation_event = violation_event.model_copy(update={"box": event_box})
    try:
        result = await run_in_threadpool(service.ingest, violation_event, evidence)
    except CaseError as exc:
        raise case_error(exc) from None
    return {"case_number": result.case_number, "action": result.action, "queued": result.queued}


# -- cameras ------------------------------------------------------------------------------------
@v1.get("/cameras", tags=["cameras"])
def list_cameras(service: Service, principal: Principal = Depends(require("reviewer", "camera"))) -> list[dict[str, Any]]:
    """Sources (which may carry a stream's credentials) are shown to admins only, masked."""
    return service.cameras.describe_all(show_source=principal.role == "admin")


@v1.get("/cameras/{camera_id}", tags=["cameras"])
def get_camera(camera_id: CameraId, service: Service,
               principal: Principal = Depends(require("reviewer", "camera"))) -> dict[str, Any]:
    camera = service.cameras.all().get(camera_id)
    if camera is None:
        raise HTTPException(404, f"no camera {camera_id!r}")
    return service.cameras.describe(camera, show_source=principal.role == "admin")


@v1.post("/cameras", status_code=201, tags=["cameras"])
def add_camera(service: Service, config: Annotated[dict[str, Any], Body(description="one camera entry, as in the cameras YAML")],
               principal: Principal = Depends(require())) -> dict[str, Any]:
    try:
        camera = service.cameras.add(config, actor=principal.name)
    except CameraError as exc:
        raise case_error(exc) from None
    return service.cameras.describe(camera, show_source=True)  # admins only here


@v1.put("/cameras/{camera_id}", tags=["cameras"])
def replace_camera(camera_id: CameraId, service: Service, config: Annotated[dict[str, Any], Body()],
                   principal: Principal = Depends(require())) -> dict[str, Any]:
    if config.get("id", camera_id) != camera_id:
        raise HTTPException(422, "the body's id differs from the path's")
    try:
        camera = service.cameras.add({**config, "id": camera_id}, replace=True, actor=principal.name)
    except CameraError as exc:
        raise case_error(exc) from None
    return service.cameras.describe(camera, show_source=True)  # admins only here


@v1.delete("/cameras/{camera_id}", status_code=204, tags=["cameras"])
def delete_camera(camera_id: CameraId, service: Service, principal: Principal = Depends(require())) -> None:
    try:
        service.cameras.remove(camera_id, actor=principal.name)
    except CameraError as exc:
        raise case_error(exc) from None


# -- cases -----------------------------------------------------------------------------------------
@v1.get("/cases", response_model=CasePage, tags=["cases"])
def list_cases(
    service: Service,
    principal: Principal = Depends(require("reviewer", "case_system")),
    since: Annotated[datetime | None, Query(description="only cases changed after this time (ISO-8601)")] = None,
    camera: Annotated[str | None, Query(pattern=CAMERA_ID)] = None,
    violation: Annotated[str | None, Query(pattern=r"^[a-z][a-z0-9_]{0,63}$")] = None,
    review_status: Annotated[str | None, Query(pattern=r"^(pending|confirmed|corrected|rejected)$")] = None,
    status: Annotated[str | None, Query(pattern=r"^(new|dispatched|reopened|handled|closed)$")] = None,
    state: Annotated[str | None, Query(pattern=r"^(active|ended)$")] = None,
    cursor: Annotated[str | None, Query(max_length=200, pattern=r"^[A-Za-z0-9_-]+$")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> dict[str, Any]:
    try:
        where = CaseFilter(camera=camera, violation=violation, review_status=review_status, status=status,
                           state=state, since=utc(since),
                           delivered_only=principal.role == "case_system")  # the case system sees what was sent
        items, next_cursor = service.cases.list_cases(where, cursor=cursor, limit=limit)
    except CaseError as exc:
        raise case_error(exc) from None
    return {"items": items, "next_cursor": next_cursor}


def _visible_case(service: GridwatchService, case_number: str, principal: Principal):  # noqa: ANN202
    case = service.cases.get(case_number)
    if case is None or (principal.role == "case_system" and case.version == 0):
        raise HTTPException(404, f"no case {case_number!r}")
    return case


@v1.get("/cases/{case_number}", response_model=CasePublic, tags=["cases"])
def get_case(case_number: CaseNumber, service: Service,
             principal: Principal = Depends(require("reviewer", "case_system"))) -> CasePublic:
    return service.cases.public(_visible_case(service, case_number, principal))


@v1.get("/cases/{case_number}/evidence/{evidence_id}", tags=["cases"], response_class=FileResponse)
def get_evidence(case_number: CaseNumber, evidence_id: ItemId, service: Service,
                 principal: Principal = Depends(require("reviewer", "case_system")),
                 reason: Annotated[str, Query(max_length=500, description="why an admin reads a sealed "
                                                                             "original (audited)")] = "") -> FileResponse:
    case = _visible_case(service, case_number, principal)
    item = next((e for e in case.evidence if e.id == evidence_id), None)
    if item is None:
        raise HTTPException(404, f"case {case_number} has no evidence {evidence_id}")
    try:
        unseal(service.db, case, item, principal, reason)
    except SealedError as exc:
        raise HTTPException(exc.status, str(exc)) from None
    path = service.evidence.resolve(item.path)
    if not path.is_file():
        raise HTTPException(410, f"evidence file {item.path} is missing from the store")
    return FileResponse(path, media_type=item.media_type, headers={"X-Content-SHA256": item.sha256})


@v1.get("/cases/{case_number}/bundle", tags=["cases"], response_class=Response,
        responses={200: {"content": {"application/zip": {}}}})
def get_bundle(case_number: CaseNumber, service: Service,
               principal: Principal = Depends(require("reviewer", "case_system")),
               originals: Annotated[bool, Query(description="include sealed originals (admins, with a reason)")] = False,
               reason: Annotated[str, Query(max_length=500)] = "") -> Response:
    """The case's evidence bundle: checkable with sha256sum and openssl alone (its README says how)."""
    case = _visible_case(service, case_number, principal)
    try:
        data = service.bundle(case, principal, originals=originals, reason=reason)
    except (SealedError, BundleError) as exc:
        raise HTTPException(exc.status, str(exc)) from None
    return Response(data, media_type="application/zip",
                    headers={"Content-Disposition": f'attachment; filename="{case_number}.zip"'})


def decision_refused(exc: CaseError) -> JSONResponse:
    """A refused decision: a conflict says who holds the case and its version; too many
    decisions say when to try again."""
    if isinstance(exc, DecisionConflict):
        return JSONResponse(exc.to_json(), status_code=409)
    headers = {"Retry-After": str(int(exc.retry_after_s) + 1)} if isinstance(exc, Throttled) else None
    return JSONResponse({"detail": str(exc)}, status_code=exc.status, headers=headers)


def take_decision(service: Any, case_number: str, decision: Decision, reviewer: str) -> CasePublic | JSONResponse:
    """One decision through CaseService.decide, for the API's and the page's routes alike: the
    case as it is now, or the refusal as its JSON answer; a decision that goes out wakes delivery."""
    try:
        case = service.cases.decide(case_number, decision, reviewer=reviewer)
    except CaseError as exc:
        return decision_refused(exc)
    if service.delivery is not None:
        service.delivery.wake()
    return case


DECISION_RESPONSES: dict[int | str, dict[str, Any]] = {
    409: {"model": DecisionConflictBody, "description": "leased to someone else, already decided, or a stale version"},
    429: {"description": "too many decisions a minute (settings.review_max_per_min); Retry-After says when"}}


@v1.post("/cases/{case_number}/review", response_model=CasePublic, tags=["cases"], responses=DECISION_RESPONSES)
def review_case(case_number: CaseNumber, body: ReviewRequest, service: Service,
                principal: Principal = Depends(require("reviewer"))) -> CasePublic | JSONResponse:
    """The first decision on a pending case. A second one is a 409: change a decision with
    /redecide. `version` (optional here) is checked when given."""
    return take_decision(service, case_number, body.decision(), principal.name)


@v1.post("/cases/{case_number}/redecide", response_model=CasePublic, tags=["cases"], responses=DECISION_RESPONSES)
def redecide_case(case_number: CaseNumber, body: RedecideRequest, service: Service,
                  principal: Principal = Depends(require("reviewer"))) -> CasePublic | JSONResponse:
    """Change a decided case's decision, saying why (`why`), on the version it was seen at;
    audited as review.redecide and sent to the case system as a new version."""
    return take_decision(service, case_number, body.decision(), principal.name)


@v1.post("/cases/{case_number}/status", response_model=CasePublic, tags=["cases"])
def status_callback(case_number: CaseNumber, body: StatusCallback, service: Service,
                    principal: Principal = Depends(require("case_system"))) -> CasePublic:
    """The case system reports progress: dispatched, handled, closed."""
    _visible_case(service, case_number, principal)
    try:
        return service.cases.set_status(case_number, body.status, external_id=body.external_id)
    except CaseError as exc:
        raise case_error(exc) from None


# -- audit ------------------------------------------------------------------------------------------
@v1.get("/audit", tags=["audit"])
def audit_log(
    service: Service,
    _: Principal = Depends(require()),
    actor: Annotated[str | None, Query(max_length=64)] = None,
    action: Annotated[str | None, Query(max_length=33, description="exact, or a prefix ending in * (review.*)")] = None,
    case: Annotated[str | None, Query(pattern=CASE_NUMBER)] = None,
    since: Annotated[datetime | None, Query(description="entries at or after this time (ISO-8601)")] = None,
    until: Annotated[datetime | None, Query(description="entries before this time")] = None,
    cursor: Annotated[int | None, Query(ge=1, le=MAX_ID, description="next_cursor of the previous page")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    """The audit log, newest first, filtered by actor, action, case and time, paged by cursor."""
    where = AuditQuery(actor=actor, action=action, case=case, since=utc(since), until=utc(until), before=cursor)
    records, older = audit_page(service.db, where, limit)
    return {"items": [r.to_json() for r in records], "next_cursor": older}


# -- models -----------------------------------------------------------------------------------------
@v1.get("/models", response_model=ModelState, tags=["models"])
def current_model(service: Service, _: Principal = Depends(require("reviewer", "camera"))) -> ModelState:
    return ModelState.of(service.detector)


@v1.post("/models/reload", response_model=ModelState, tags=["models"],
         responses={422: {"description": "the new model was refused; the old one keeps running"}})
async def reload_model(service: Service, body: Annotated[ModelReload | None, Body()] = None,
                       principal: Principal = Depends(require())) -> ModelState:
    """Load the model file again (after a promotion), or another file in the same folder;
    it goes live only after a smoke check on stored evidence."""
    try:
        await run_in_threadpool(lambda: service.reload_model(body.file if body else None, actor=principal.name))
    except ModelSwapError as exc:
        raise HTTPException(422, str(exc)) from None
    return ModelState.of(service.detector)


# -- keys -------------------------------------------------------------------------------------------
def key_created(row: ApiKey, key: str) -> dict[str, Any]:
    return {"id": row.id, "name": row.name, "role": row.role, "key": key}


@v1.post("/keys", status_code=201, response_model=KeyCreated, tags=["keys"])
def add_key(body: KeyRequest, service: Service, principal: Principal = Depends(require())) -> dict[str, Any]:
    return key_created(*create_key(service.db, body.name, body.role, actor=principal.name))


@v1.post("/keys/{key_id}/rotate", status_code=201, response_model=KeyCreated, tags=["keys"])
def rotate(key_id: ItemId, body: KeyRotation, service: Service,
           principal: Principal = Depends(require())) -> dict[str, Any]:
    """A new key with the same name and role; the old one keeps working for `overlap_s`."""
    rotated = rotate_key(service.db, key_id, body.overlap_s, actor=principal.name)
    if rotated is None:
        raise HTTPException(404, f"no active key {key_id}")
    return key_created(*rotated)


@v1.delete("/keys/{key_id}", status_code=204, tags=["keys"])
def delete_key(key_id: ItemId, service: Service,
               principal: Principal = Depends(require())) -> None:
    if not revoke_key(service.db, key_id, actor=principal.name):
        raise HTTPException(404, f"no active key {key_id}")
