"""``/docs`` without the internet: Swagger UI's files come from the ``swagger-ui-bundle-v2`` pip
package (installed with the collector, never copied into the repository) and are served by
the collector itself at ``/docs/assets``; FastAPI's default page would load them from a CDN.
"""

from __future__ import annotations

from pathlib import Path

import swagger_ui_bundle
from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

__all__ = ["ASSETS_PATH", "install_offline_docs"]

ASSETS_PATH = "/docs/assets"


def _assets_dir() -> Path:
    return Path(swagger_ui_bundle.swagger_ui_path)


def install_offline_docs(app: FastAPI) -> None:
    """Serve Swagger UI at ``/docs`` from local files (create the app with ``docs_url=None``)."""
    app.mount(ASSETS_PATH, StaticFiles(directory=str(_assets_dir())), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} - API",
            swagger_js_url=f"{ASSETS_PATH}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS_PATH}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS_PATH}/favicon-32x32.png",
        )
