"""The whole web app: the review API (``web.api``), the pages, and ``/metrics``.

``raddraft web`` serves :func:`create_web_app`. The API app brings ``/api``, ``/fhir``, ``/docs``,
``/healthz`` and ``/readyz``; this module adds the review desk and queue pages
(:mod:`web.pages`) and the Prometheus metrics (:mod:`web.metrics`).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy import text

from raddraft.settings import Settings, get_settings
from web import metrics, pages
from web.api import create_app


def create_web_app(settings: Settings | None = None) -> FastAPI:
    """The API app with the pages and ``/metrics``."""
    settings = settings or get_settings()
    app = create_app(settings)
    pages.install(app, settings)
    _add_metrics(app, settings)
    _ensure_health(app)
    _add_security_headers(app)
    return app


# What the pages load: their own scripts, styles and images, nothing inline, no frames. The
# API docs (Swagger UI, ReDoc) load from a CDN with an inline script, so they go without it.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'self'; form-action 'self'; "
    "frame-ancestors 'none'"
)
_NO_CSP = ("/docs", "/redoc")
HSTS = "max-age=31536000; includeSubDomains"


def _add_security_headers(app: FastAPI) -> None:
    """OWASP's baseline response headers on every response; HSTS only over HTTPS (RFC 6797 7.2:
    a host sends it on secure transport only)."""

    @app.middleware("http")
    async def security_headers(request: Request, call_next: Any) -> Response:
        response: Response = await call_next(request)
        headers = response.headers
        headers.setdefault("X-Content-Type-Options", "nosniff")
        headers.setdefault("X-Frame-Options", "DENY")
        headers.setdefault("Referrer-Policy", "same-origin")
        if not request.url.path.startswith(_NO_CSP):
            headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        if request.url.scheme == "https":
            headers.setdefault("Strict-Transport-Security", HSTS)
        return response


def _add_metrics(app: FastAPI, settings: Settings) -> None:
    @app.get("/metrics", include_in_schema=False)
    def prometheus(request: Request) -> Response:
        """Counts only (no patient data), so it is open to the scraper like ``/healthz``."""
        session = request.app.state.sessionmaker()
        try:
            body = metrics.collect(session, settings)
        finally:
            session.close()
        return Response(body, media_type=metrics.CONTENT_TYPE)


def _ensure_health(app: FastAPI) -> None:
    """``/healthz`` and ``/readyz`` for the orchestrator, unless the API already has them."""
    paths = {getattr(route, "path", None) for route in app.routes}
    if "/healthz" not in paths:

        @app.get("/healthz", include_in_schema=False)
        def healthz() -> dict[str, str]:
            return {"status": "ok"}

    if "/readyz" not in paths:

        @app.get("/readyz", include_in_schema=False)
        def readyz(request: Request) -> JSONResponse:
            try:
                with request.app.state.sessionmaker() as session:
                    session.execute(text("SELECT 1"))
            except Exception as error:  # any failure means "not ready"
                return JSONResponse({"status": "unavailable", "error": str(error)[:200]}, 503)
            return JSONResponse({"status": "ok"})


__all__ = ["create_web_app"]
