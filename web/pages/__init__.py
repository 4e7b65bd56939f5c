"""The pages: the radiologist's review desk and the administrator's queue.

:func:`install` adds them to the API app (:func:`web.api.create_app`); the web app
:func:`web.app.create_web_app` does so. Installed: the page routes, the static files,
the sign-in session and its resolver for the API's auth dependency.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlencode

from fastapi import FastAPI, Request, Response
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles

from raddraft.settings import Settings
from web.pages import sign_in
from web.pages.ratelimit import SignInLimit
from web.pages.routes import PageForbidden, SignInRequired, forbidden_response, router

STATIC_DIR = Path(__file__).parent / "static"


def install(app: FastAPI, settings: Settings) -> None:
    """Add the pages to ``app``; the API then also accepts the pages' cookie session.

    Idempotent: a second call changes nothing.
    """
    if getattr(app.state, "pages_installed", False):
        return
    app.state.pages_installed = True
    app.state.page_signer = sign_in.Signer(sign_in.load_secret(settings))
    app.state.sign_in_limit = SignInLimit(
        settings.login_max_failures, settings.login_failure_window_seconds
    )
    resolvers = getattr(app.state, "session_resolvers", None)
    if resolvers is None:
        resolvers = app.state.session_resolvers = []
    resolvers.append(sign_in.resolve_for_api)

    @app.exception_handler(SignInRequired)
    def _sign_in(_request: Request, error: SignInRequired) -> RedirectResponse:
        return RedirectResponse("/login?" + urlencode({"next": error.next_path}), 303)

    @app.exception_handler(PageForbidden)
    def _forbidden(request: Request, error: PageForbidden) -> Response:
        return forbidden_response(request, error)

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.include_router(router)


__all__ = ["install"]
