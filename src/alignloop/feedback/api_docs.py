"""Offline API docs: Swagger UI served from the ``swagger-ui-bundle-v2`` package (module ``swagger_ui_bundle``), no CDN.

FastAPI's own ``/docs`` page loads Swagger UI from a CDN with an inline script; offline that page
is blank, and the service's CSP (``script-src 'self'``) blocks the inline script anyway. Here the
page is our template, the assets come from the pinned PyPI package, and the one line that starts
Swagger UI lives in ``static/api_docs.js``. Without the package the page says how to get it.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS = "/api/docs-assets"
router = APIRouter(include_in_schema=False)


def swagger_ui_path() -> Path | None:
    """The folder of Swagger UI's built files inside ``swagger-ui-bundle-v2``, or None when it is not installed."""
    try:
        import swagger_ui_bundle
    except ImportError:
        return None
    path = Path(swagger_ui_bundle.swagger_ui_path)
    return path if (path / "swagger-ui-bundle.js").exists() else None


@router.get("/api/docs")
def docs_page(request: Request) -> HTMLResponse:
    from alignloop.feedback.pages import render

    return render(request, "api_docs.html", user=None, available=swagger_ui_path() is not None, assets=ASSETS)


def mount(app: FastAPI) -> None:
    """Serve the docs page and, when the package is there, its assets."""
    path = swagger_ui_path()
    if path is not None:
        app.mount(ASSETS, StaticFiles(directory=str(path)), name="swagger-ui")
    app.include_router(router)
