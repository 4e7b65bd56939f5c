"""The HTML pages: sign-in, worklist, review desk and the administrator's queue.

Pages are rendered on the server from the same functions the JSON API uses
(:mod:`web.api.views`, :mod:`report_drafts.signoff`). Every change a page makes
(edits, per-finding feedback, sign, reject, retry, requeue) is a ``fetch`` to the JSON API with
the session cookie and the CSRF header, so the API's role checks, and the lifecycle's own, decide
what is allowed: a page that shows a button never grants the right to press it. What a page
*shows* is checked against the same role table as its API twin (:data:`web.api.auth.ACCESS`):
a page reads only what its twin would answer.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Depends, Form, Query, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from fastapi.templating import Jinja2Templates
from sqlalchemy import select

import report_drafts as drafts
from dicom_listener import Instance, is_frontal
from raddraft import atna
from raddraft.db import utcnow
from raddraft.logging import kv
from raddraft.numbers import decimal
from raddraft.settings import Settings
from report_drafts import (
    DEMO_WARNING,
    DRAFT_WARNING,
    EDITABLE,
    SIGNED_STATES,
    EditReason,
    LifecycleError,
    NotFound,
    ReportState,
    Role,
    User,
    user_for_password,
    user_for_token,
)
from web import queue_status
from web.api import views
from web.api.auth import Access, DbSession, allowed
from web.api.params import RowId
from web.pages import sign_in, viewmodel
from web.pages.ratelimit import SignInLimit

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=str(HERE / "templates"))
templates.env.globals.update(
    priority_label=viewmodel.priority_label,
    state_label=viewmodel.state_label,
    time_label=viewmodel.time_label,
    age_label=viewmodel.age_label,
    study_date_label=viewmodel.study_date_label,
    person_name=viewmodel.person_name,
    DEMO_WARNING=DEMO_WARNING,
    DRAFT_WARNING=DRAFT_WARNING,
)

router = APIRouter(include_in_schema=False)
log = logging.getLogger(__name__)

PAGE_SIZE = 25
IMAGE_MAX_SIZE = 1400  # pixels on the long side; boxes scale with it (SVG viewBox)
CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)


class SignInRequired(Exception):
    """No valid session: the handler sends the browser to the sign-in page."""

    def __init__(self, next_path: str) -> None:
        super().__init__(next_path)
        self.next_path = next_path


def page_user(request: Request, session: DbSession) -> User:
    """The signed-in user of a page request (cookie session), or a redirect to sign in."""
    user = sign_in.user_of_sign_in(request, session)
    if user is None:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        raise SignInRequired(target)
    request.state.user = user
    return user


PageUser = Annotated[User, Depends(page_user)]


class PageForbidden(Exception):
    """A signed-in user whose role may not see this page (answered 403)."""

    def __init__(self, user: User, access: Access, *, html: bool) -> None:
        super().__init__(f"role {user.role!r} may not {access.value} here")
        # A copy: the request's database session rolls back (expiring its rows) before the
        # handler renders the error page with the user's name.
        self.user = User(id=user.id, name=user.name, display_name=user.display_name, role=user.role)
        self.html = html


def page_for(access: Access, *, html: bool = True) -> Any:
    """The signed-in user if the role table lets their role ``access``; 403 otherwise."""

    def check(user: PageUser) -> User:
        if not allowed(user, access):
            raise PageForbidden(user, access, html=html)
        return user

    return Depends(check)


# One per kind of page, from the role table the API's Viewer and Admin are made from.
Viewing = Annotated[User, page_for(Access.view)]
ViewingData = Annotated[User, page_for(Access.view, html=False)]
Administering = Annotated[User, page_for(Access.administer)]
AdministeringData = Annotated[User, page_for(Access.administer, html=False)]


def forbidden_response(request: Request, error: PageForbidden) -> Response:
    """The 403 of :class:`PageForbidden`: the error page, or JSON for a page's data."""
    if not error.html:
        return JSONResponse({"detail": str(error)}, status_code=403)
    return error_page(request, None, error.user, 403, f"This page is not for you: {error}.")


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def safe_next(value: str | None) -> str:
    """Only local paths: an attacker's link cannot send a signed-in user elsewhere."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    return value


def page(
    request: Request,
    template: str,
    context: dict[str, Any],
    *,
    session: Any = None,
    user: User | None = None,
    status_code: int = 200,
    demo: bool | None = None,
) -> HTMLResponse:
    """Render ``template`` with the layout's values and the pages' security headers."""
    found = sign_in.sign_in_of(request)
    csrf = sign_in.signer_of(request).csrf_token(found) if found and user else ""
    if demo is None:
        demo = drafts.demo_mode(session) if session is not None else False
    response = templates.TemplateResponse(
        request,
        template,
        {
            "user": user,
            "is_admin": user is not None and user.role == Role.admin,
            "csrf": csrf,
            "demo": demo,
            "path": request.url.path,
            **context,
        },
        status_code=status_code,
    )
    secure_headers(response)
    return response


def secure_headers(response: Response) -> None:
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["Cache-Control"] = "no-store"  # pages show patient data


def error_page(
    request: Request, session: Any, user: User | None, status_code: int, message: str
) -> HTMLResponse:
    return page(
        request,
        "error.html",
        {"title": f"Error {status_code}", "status": status_code, "message": message},
        session=session,
        user=user,
        status_code=status_code,
    )


# -- sign-in ---------------------------------------------------------------------------------


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request, session: DbSession, next: str = "/") -> HTMLResponse:
    return _login_page(request, session, next_path=next)


def _login_page(
    request: Request, session: Any, *, next_path: str, error: str = "", status_code: int = 200
) -> HTMLResponse:
    token, fresh = sign_in.login_form_token(request)
    response = page(
        request,
        "login.html",
        {"title": "Sign in", "login_csrf": token, "next": safe_next(next_path), "error": error},
        session=session,
        status_code=status_code,
    )
    if fresh:
        sign_in.set_login_cookie(response, request, fresh)
    return response


@router.get("/login/session", response_model=None)
def login_session(request: Request, session: DbSession) -> JSONResponse:
    """Whether this browser's session is alive: 200 either way, so the sign-in page can ask
    without a 401 in the console (``/api/me`` answers 401 when signed out, as an API must)."""
    user = sign_in.user_of_sign_in(request, session)
    # A role with no page (sender) is not signed in to the pages, whatever its cookie says.
    response = JSONResponse({"signed_in": user is not None and allowed(user, Access.view)})
    response.headers["Cache-Control"] = "no-store"
    return response


@router.post("/login", response_model=None)
def login(
    request: Request,
    session: DbSession,
    csrf_token: Annotated[str, Form()] = "",
    username: Annotated[str, Form()] = "",
    password: Annotated[str, Form()] = "",
    token: Annotated[str, Form()] = "",
    next: Annotated[str, Form()] = "/",
) -> Response:
    """Sign in with a user name and password, or with an API token."""
    if not sign_in.login_csrf_ok(request, csrf_token):
        return _login_page(
            request,
            session,
            next_path=next,
            error="The sign-in form expired. Please try again.",
            status_code=400,
        )
    address = request.client.host if request.client else ""
    limit: SignInLimit = request.app.state.sign_in_limit
    user, subject, wait = _check_credentials(session, limit, address, username, password, token)
    tried = username.strip()[:64] if subject != drafts.TOKEN_SUBJECT else "(token)"
    if wait:
        log.warning("sign-in refused, too many failures %s", kv(user=tried, peer=address))
        refused = _login_page(
            request,
            session,
            next_path=next,
            error=f"Too many failed sign-ins. Try again in {wait} s.",
            status_code=429,
        )
        refused.headers["Retry-After"] = str(wait)
        return refused
    if user is None:
        limit.failed(session, subject, address)
        session.commit()
        atna.emit(atna.user_authentication(tried, address, success=False))
        return _login_page(
            request,
            session,
            next_path=next,
            error="Unknown user name, password or token.",
            status_code=401,
        )
    if not allowed(user, Access.view):
        # A gateway's account (sender) stores images; it has no page to sign in to.
        log.warning("sign-in refused, role has no pages %s", kv(user=user.name, role=user.role))
        return _login_page(
            request,
            session,
            next_path=next,
            error="This account has no pages to sign in to.",
            status_code=403,
        )
    if subject != drafts.TOKEN_SUBJECT:
        limit.succeeded(session, subject, address)
    drafts.record_audit(
        session, "sign_in", user=user, detail={"via": "token" if token else "password"}
    )
    session.commit()
    atna.emit(atna.user_authentication(user.name, address))
    target = safe_next(next)
    if target == "/":
        target = "/queue" if user.role == Role.admin else "/worklist"
    response = RedirectResponse(target, status_code=303)
    sign_in.set_sign_in_cookie(response, request, user)
    return response


def _check_credentials(
    session: Any, limit: SignInLimit, address: str, username: str, password: str, token: str
) -> tuple[User | None, str, int]:
    """(the user or None, the limit's subject, seconds to wait or 0); see :mod:`ratelimit`.

    A token is looked up first, so a valid one is never refused for others' failures; a
    password is not checked at all while its (account, address) is over the limit.
    """
    if token.strip():
        user = user_for_token(session, token.strip())
        if user is not None:
            return user, drafts.TOKEN_SUBJECT, 0
        return None, drafts.TOKEN_SUBJECT, limit.wait(session, drafts.TOKEN_SUBJECT, address)
    subject = drafts.password_subject(username)
    wait = limit.wait(session, subject, address)
    if wait or not (username.strip() and password):
        return None, subject, wait
    return user_for_password(session, username.strip(), password), subject, 0


@router.post("/logout", response_model=None)
def logout(
    request: Request, session: DbSession, csrf_token: Annotated[str, Form()] = ""
) -> Response:
    if not sign_in.csrf_ok(request, csrf_token):
        return error_page(request, session, None, 403, "Sign-out refused: invalid CSRF token.")
    response = RedirectResponse("/login", status_code=303)
    sign_in.clear_sign_in_cookie(response)
    user = sign_in.user_of_sign_in(request, session)
    if user is not None:
        # Ended on the server: a copy of the cookie kept from before no longer works.
        drafts.end_sessions(session, user)
        session.commit()
        address = request.client.host if request.client else ""
        atna.emit(atna.user_authentication(user.name, address, logout=True))
    return response


@router.get("/", response_model=None)
def home(user: PageUser) -> Response:
    return RedirectResponse("/queue" if user.role == Role.admin else "/worklist", status_code=303)


# -- worklist --------------------------------------------------------------------------------


@router.get("/worklist", response_class=HTMLResponse)
def worklist(  # noqa: PLR0913 (FastAPI: one parameter per form field)
    request: Request,
    session: DbSession,
    user: Viewing,
    state: Annotated[list[str] | None, Query()] = None,
    priority: str = "",
    date_from: str = "",
    date_to: str = "",
    patient_id: str = "",
    accession: str = "",
    page_number: Annotated[int, Query(alias="page", ge=1, le=100_000)] = 1,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> HTMLResponse:
    """Reports by priority, then longest waiting; filters keep to the query string. Pages are
    keyset pages (``cursor``); ``page`` only numbers them for the reader."""
    states = [s for s in (state or []) if s in {x.value for x in ReportState}]
    filters: dict[str, Any] = {
        "states": states or None,
        "priority": decimal(priority),
        "date_from": date_from or None,
        "date_to": date_to or None,
        "patient_id": patient_id.strip() or None,
        "accession": accession.strip() or None,
    }
    try:
        result = views.worklist(session, page_size=PAGE_SIZE, cursor=cursor, **filters)
    except LifecycleError as error:
        return error_page(request, session, user, error.http_status, str(error))
    now = utcnow()
    demo_svs = viewmodel.demo_versions(session, [i["study_version_pk"] for i in result["items"]])
    ended = viewmodel.decided(session, [i["id"] for i in result["items"]])
    rows = [
        {
            **item,
            "urgent": viewmodel.urgent_labels(item["critical"]),
            "demo": item["study_version_pk"] in demo_svs,
            "waiting": viewmodel.waiting_label(
                item["completed_at"] or item["created_at"], now, ended.get(item["id"])
            ),
        }
        for item in result["items"]
    ]
    query = {
        "state": states,
        "priority": priority,
        "date_from": date_from,
        "date_to": date_to,
        "patient_id": patient_id,
        "accession": accession,
    }
    capped = "+" if result["total_capped"] else ""
    pages = max(1, -(-result["total"] // PAGE_SIZE))
    next_cursor = result["next_cursor"]
    # "Previous" goes back to the first page: a keyset page knows where the next one starts,
    # and the browser's Back button knows the one before.
    first_link = "/worklist?" + urlencode(query, doseq=True)
    next_link = (
        "/worklist?"
        + urlencode({**query, "cursor": next_cursor, "page": page_number + 1}, doseq=True)
        if next_cursor
        else None
    )
    return page(
        request,
        "worklist.html",
        {
            "title": "Worklist",
            "rows": rows,
            "total": f"{result['total']}{capped}" if capped else result["total"],
            "page_number": page_number,
            "pages": f"{pages}{capped}" if capped else max(pages, page_number),
            "prev_link": first_link if cursor else None,
            "next_link": next_link,
            "query": query,
            "all_states": [s.value for s in ReportState],
            "priorities": viewmodel.PRIORITY_LABELS,
        },
        session=session,
        user=user,
        demo=drafts.demo_mode(session) or bool(demo_svs),
    )


# -- review ----------------------------------------------------------------------------------


@router.get("/reports/{report_id}", response_class=HTMLResponse)
def review(request: Request, report_id: RowId, session: DbSession, user: Viewing) -> HTMLResponse:
    """The review desk: image with boxes, prior, editable text, findings, stages, sign."""
    try:
        report = drafts.open_report(session, report_id, user)
        detail = views.detail(session, report)
    except LifecycleError as error:
        session.rollback()
        return error_page(request, session, user, error.http_status, str(error))
    session.commit()
    settings = _settings(request)
    context = review_context(session, settings, detail, user)
    return page(
        request,
        "review.html",
        {"title": f"Review {detail['accession_number'] or report_id}", **context},
        session=session,
        user=user,
        demo=context["demo"],
    )


def review_context(
    session: Any, settings: Settings, detail: dict[str, Any], user: User
) -> dict[str, Any]:
    """Everything review.html needs, derived from the API's detail view."""
    report_id = detail["id"]
    provenance = detail["provenance"] or {}
    content = _display_content(detail["content"] or {})
    demo = bool(provenance.get("demo"))
    instances = {
        i.sop_instance_uid: i
        for i in session.scalars(
            select(Instance).where(
                Instance.sop_instance_uid.in_([im["sop_instance_uid"] for im in detail["images"]])
            )
        )
    }

    def frontal(image: dict[str, Any]) -> bool:
        # The listener's rule, with the View Code Sequence where ViewPosition is empty.
        instance = instances.get(image["sop_instance_uid"])
        code = instance.view_code if instance is not None else ""
        return is_frontal(image["view_position"] or "", code)

    images = []
    for image in sorted(detail["images"], key=lambda im: not frontal(im)):
        instance = instances.get(image["sop_instance_uid"])
        window = (
            viewmodel.image_window(settings.archive_dir / instance.path)
            if instance
            else viewmodel.Window(0, 4095, None, None)
        )
        images.append({**image, "window": window, "src": f"{image['png']}?boxes=false"})
    findings = []
    for number, finding in enumerate(content.get("findings", []), start=1):
        findings.append(
            {
                **finding,
                "number": number,
                "urgent": viewmodel.is_urgent(finding["label"], detail["critical"]),
            }
        )
    prior_study, prior_images = viewmodel.prior_instances(session, detail.get("prior"))
    prior = None
    if prior_study is not None and prior_images:
        first = prior_images[0]
        prior = {
            "study_date": prior_study.study_date,
            "accession": prior_study.accession_number,
            "description": prior_study.study_description,
            "src": f"/reports/{report_id}/prior/{quote(first.sop_instance_uid)}.png",
            "view_position": first.view_position,
        }
    state = detail["state"]
    extra = content.get("extra") or {}
    signed_version = None
    if state in SIGNED_STATES:
        signed_version = next(
            (
                v
                for v in reversed(detail["versions"])
                if v["action"] in ("sign", "amend", "correct")
            ),
            None,
        )
    return {
        "d": detail,
        "content": content,
        "demo": demo,
        "images": images,
        "findings": findings,
        "stages": viewmodel.stage_groups(provenance.get("stages")),
        "prior": prior,
        "prior_note": (detail.get("prior") or {}).get("none") or "",
        "can_edit": user.role == Role.radiologist and state in EDITABLE,
        "signed": state in SIGNED_STATES,
        "signed_version": signed_version,
        "signer": content.get("signer"),
        "edit_reasons": [r.value for r in EditReason],
        "sent": detail["sent"],
        "image_max_size": IMAGE_MAX_SIZE,
        "unsigned": state not in SIGNED_STATES,
        "sanitised": drafts.removed_count(content.get("extra") or {}),
        "critical": list(extra.get("critical", [])),
        "needs_review": list(extra.get("needs_review", [])),
        "unlisted": list(extra.get("unlisted_findings", [])),
        "vocabulary": viewmodel.FINDING_LABELS,
    }


def _display_content(content: dict[str, Any]) -> dict[str, Any]:
    """The stored content with its text fields cleaned: a draft stored before the sanitiser
    must not show control bytes in the Findings box either."""
    cleaned = dict(content)
    for name in ("findings_text", "impression", "progression"):
        if isinstance(cleaned.get(name), str):
            cleaned[name] = drafts.clean_text(cleaned[name])
    return cleaned


@router.get("/reports/{report_id}/prior/{sop_instance_uid}.png", response_model=None)
def prior_png(
    request: Request,
    report_id: RowId,
    sop_instance_uid: str,
    session: DbSession,
    user: ViewingData,
    window_center: float | None = None,
    window_width: float | None = None,
) -> Response:
    """An image of the prior study this draft was compared with (not part of the report)."""
    try:
        report = drafts.get_report(session, report_id)
    except NotFound:
        return Response(status_code=404)
    run = drafts.draft_run(session, report)
    _study, instances = viewmodel.prior_instances(session, run.prior if run else None)
    found = next((i for i in instances if i.sop_instance_uid == sop_instance_uid), None)
    if found is None:
        return Response(status_code=404)
    png = drafts.render_png(
        _settings(request).archive_dir / found.path,
        window_center=window_center,
        window_width=window_width,
        max_size=IMAGE_MAX_SIZE,
    )
    return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=60"})


# -- queue (administrator) -------------------------------------------------------------------


@router.get("/queue", response_class=HTMLResponse)
def queue_page(request: Request, session: DbSession, user: Administering) -> HTMLResponse:
    data = queue_status.queue_figures(session, _settings(request))
    return page(
        request,
        "queue.html",
        {"title": "Queue", "q": data, "now": utcnow()},
        session=session,
        user=user,
    )


@router.get("/queue/data.json", response_model=None)
def queue_data(request: Request, session: DbSession, user: AdministeringData) -> Response:
    """The queue page's figures; the page fetches this every few seconds."""
    data = queue_status.queue_figures(session, _settings(request))
    return JSONResponse(data, headers={"Cache-Control": "no-store"})
