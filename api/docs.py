"""``/docs`` (Swagger UI) and ``/redoc``, served with no CDN: they work without internet access.

FastAPI's default pages load Swagger UI's and ReDoc's script and style sheet from a public CDN,
so on a machine without internet access ``/docs`` is a blank page. These pages are the same
(FastAPI's ``get_swagger_ui_html`` / ``get_redoc_html``, its "self-hosting JavaScript and CSS
for docs" recipe), pointed at the files of the ``fastapi-offline`` package (Swagger UI 5 and
ReDoc 2 bundles, MIT and Apache-2.0 licensed), which pip installs with predq and which are
served under ``/docs-assets``. Nothing on these pages is fetched from elsewhere: ReDoc's Google
Fonts are off, and the favicon is served too.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS_URL = "/docs-assets"
#: The files the pages load, all in the fastapi-offline package.
ASSET_FILES = ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js", "favicon.png")


def assets_dir() -> Path:
    """The directory holding Swagger UI's and ReDoc's files (installed with predq)."""
    return Path(str(files("fastapi_offline") / "static"))


def install(app: FastAPI, docs_url: str = "/docs", redoc_url: str = "/redoc") -> None:
    """Add the self-hosted ``/docs`` and ``/redoc``; create the app with both URLs None."""
    directory = assets_dir()
    missing = [f for f in ASSET_FILES if not (directory / f).is_file()]
    if missing:  # a broken install: say so at start, not as a blank page later
        raise RuntimeError(f"the API docs' assets are missing from {directory}: {missing}")
    app.mount(ASSETS_URL, StaticFiles(directory=directory), name="docs-assets")
    openapi_url = app.openapi_url or "/openapi.json"
    oauth2_url = app.swagger_ui_oauth2_redirect_url or f"{docs_url}/oauth2-redirect"

    @app.get(docs_url, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{openapi_url}",
            title=f"{app.title} - Swagger UI",
            oauth2_redirect_url=f"{root}{oauth2_url}",
            swagger_js_url=f"{root}{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
            swagger_ui_parameters=app.swagger_ui_parameters,
        )

    @app.get(oauth2_url, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get(redoc_url, include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_redoc_html(
            openapi_url=f"{root}{openapi_url}",
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{ASSETS_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
            with_google_fonts=False,
        )
