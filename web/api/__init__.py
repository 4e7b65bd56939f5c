"""The review API as a FastAPI app: ``create_app(settings)``; OpenAPI docs at ``/docs``, served
from the package's own Swagger UI (:mod:`web.api.docs`)."""

from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import text
from sqlalchemy.orm import Session

import report_drafts as drafts
from raddraft.db import engine_for, session_factory
from raddraft.settings import Settings, get_settings
from report_drafts import DEMO_WARNING, LifecycleError
from web.api import dicomweb_routes, docs, fhir_routes, routes

log = logging.getLogger(__name__)


def _finite(value: Any) -> Any:
    """``value`` with NaN and the infinities written as text (JSON holds neither)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


#: A request body at most (413 beyond): report texts, a sign-in form, a finding are kilobytes.
MAX_BODY_BYTES = 1024 * 1024


def _refuse_malformed(app: FastAPI) -> None:
    """What is refused before a route runs, and how a malformed request is answered."""

    @app.middleware("http")
    async def _no_nul(request: Request, call_next: Any) -> Response:
        """Refuse NUL in a path or query (400): no database text holds it (PostgreSQL refuses
        the whole statement, a 500), and no UID, id or search value contains it."""
        query = request.scope.get("query_string", b"")
        if "\x00" in request.url.path or b"%00" in query or b"\x00" in query:
            return JSONResponse({"detail": "NUL (0x00) is not allowed in a path or query"}, 400)
        response: Response = await call_next(request)
        return response

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, error: RequestValidationError) -> JSONResponse:
        # FastAPI's own answer echoes each bad input, and JSON has no NaN or Infinity (which
        # Python's JSON reader admits): its 422 for a box of NaN failed as a 500.
        return JSONResponse({"detail": _finite(jsonable_encoder(error.errors()))}, 422)


def create_app(settings: Settings | None = None) -> FastAPI:
    """The API alone: review API at ``/api``, FHIR at ``/fhir``, DICOMweb at ``/dicomweb``,
    ``/healthz`` and ``/readyz``.

    ``app.state.session_resolvers`` is a list the pages may append a cookie-session resolver
    to (see :mod:`web.api.auth`). The pages, which build on the API, are added by
    :func:`web.app.create_web_app`, the app ``raddraft web`` serves.
    """
    settings = settings or get_settings()
    app = FastAPI(
        title="RadDraft review API",
        description=(
            "Review and sign-off of AI-drafted chest X-ray reports. Nothing AI-written leaves "
            "as final without a named radiologist's signature."
        ),
        version="0.1.0",
        # Our own /docs: FastAPI's loads Swagger UI from a CDN (web.api.docs).
        docs_url=None,
        redoc_url=None,
        # FastAPI reads a JSON or form body whole before it resolves a route's dependencies,
        # sign-in included: bounded, anyone reaching the port could make this process hold
        # any number of bytes. STOW-RS routes take images under their own bound.
        max_body_size=MAX_BODY_BYTES,
    )
    engine = engine_for(settings.database_url)
    app.state.settings = settings
    app.state.engine = engine
    app.state.sessionmaker = session_factory(engine)
    app.state.session_resolvers = []

    _refuse_malformed(app)

    @app.exception_handler(LifecycleError)
    def _lifecycle_error(_request: Request, error: LifecycleError) -> JSONResponse:
        return JSONResponse(
            {"detail": str(error), "error": type(error).__name__},
            status_code=error.http_status,
        )

    @app.exception_handler(FileNotFoundError)
    def _file_missing(request: Request, error: FileNotFoundError) -> JSONResponse:
        # A file the tables name is not on disk (removed behind RadDraft's back, a data
        # directory not mounted): a server fault, logged, but answered. Left to the server, the
        # exception would also close the client's kept-alive connection, failing its next
        # request (WADO-RS metadata of a lost image made the next FHIR search fail).
        log.error(
            "a stored file is missing: %s %s: %s",
            request.method,
            request.url.path,
            error.filename,
            exc_info=error,
        )
        return JSONResponse({"detail": "a stored file is missing on the server"}, 500)

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, Any]:
        """Liveness: the process answers; and, loudly, whether the demo model is in use."""
        body: dict[str, Any] = {"status": "ok", "demo": False}
        try:
            with Session(engine) as session:
                body["demo"] = drafts.demo_mode(session)
        except Exception:  # liveness must not depend on the database; readyz reports it
            body["demo"] = None
        if body["demo"]:
            body["warning"] = DEMO_WARNING
        return body

    @app.get("/readyz", tags=["health"])
    def readyz() -> JSONResponse:
        """Readiness: the database answers."""
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except Exception as error:  # any failure means "not ready"; say which
            return JSONResponse({"status": "unavailable", "error": str(error)[:200]}, 503)
        return JSONResponse({"status": "ok"})

    app.include_router(routes.router)
    app.include_router(fhir_routes.router)
    app.include_router(dicomweb_routes.router)
    docs.install(app)
    return app


__all__ = ["create_app"]
