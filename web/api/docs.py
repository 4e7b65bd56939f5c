"""The API docs at ``/docs`` (Swagger UI) and ``/favicon.ico``, from this package's own files.

FastAPI's default ``/docs`` loads Swagger UI from a CDN, a blank page on a hospital network
without internet. Here the page is FastAPI's :func:`get_swagger_ui_html` with local URLs: the
vendored swagger-ui-dist (``static/swagger_ui/``, Apache-2.0, see ``VENDORED.txt``) under
``/docs-assets``. The validator badge is off: it would call validator.swagger.io.

The page has a link back to the review desk, and its *Authorize* button takes an API token:
the OpenAPI document declares the HTTP bearer scheme (:data:`web.api.auth.bearer_scheme`).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).parent / "static"
SWAGGER_UI_DIR = STATIC_DIR / "swagger_ui"
SWAGGER_UI_VERSION = "5.35.0"
ASSETS = "/docs-assets"
FAVICON = STATIC_DIR / "favicon.ico"
BACK_LINK = (
    b'<body><nav style="font-family: sans-serif; padding: 8px 20px; background: #10243e">'
    b'<a href="/" style="color: #fff">&larr; Back to the desk</a></nav>'
)


def install(app: FastAPI) -> None:
    """Add ``/docs``, its assets and ``/favicon.ico`` to ``app`` (made with ``docs_url=None``)."""
    app.mount(ASSETS, StaticFiles(directory=SWAGGER_UI_DIR), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def swagger_ui() -> HTMLResponse:
        page = get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} - API docs",
            swagger_js_url=f"{ASSETS}/swagger-ui-bundle.js?v={SWAGGER_UI_VERSION}",
            swagger_css_url=f"{ASSETS}/swagger-ui.css?v={SWAGGER_UI_VERSION}",
            swagger_favicon_url="/favicon.ico",
            swagger_ui_parameters={"validatorUrl": None, "persistAuthorization": False},
        )
        body = bytes(page.body).replace(b"<body>", BACK_LINK, 1)
        return HTMLResponse(body)

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> FileResponse:
        return FileResponse(FAVICON, media_type="image/x-icon")
