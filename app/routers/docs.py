"""The OpenAPI document and its viewers, behind the API keys like every other data endpoint.

FastAPI serves these itself without dependencies; here they are ordinary routes so that, with
keys configured, the description of the API is no more public than the API. The viewers' own
scripts and styles come from this server (`ASSETS_URL`, public like the web page's), not from a
CDN, so the pages work on a network that reaches no CDN.
"""

from __future__ import annotations

from pathlib import Path

import fastapi_offline
from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

router = APIRouter(include_in_schema=False)

OPENAPI_URL = "/openapi.json"
ASSETS_URL = "/static/docs"


def assets() -> StaticFiles:
    """Swagger UI 5 and ReDoc 2 as the fastapi-offline package ships them."""
    return StaticFiles(directory=Path(fastapi_offline.__file__).parent / "static")


@router.get(OPENAPI_URL)
async def openapi(request: Request) -> JSONResponse:
    return JSONResponse(request.app.openapi())


@router.get("/docs")
async def swagger_ui(request: Request) -> HTMLResponse:
    return get_swagger_ui_html(
        openapi_url=OPENAPI_URL,
        title=f"{request.app.title} - Swagger UI",
        swagger_js_url=f"{ASSETS_URL}/swagger-ui-bundle.js",
        swagger_css_url=f"{ASSETS_URL}/swagger-ui.css",
        swagger_favicon_url=f"{ASSETS_URL}/favicon.png",
    )


@router.get("/redoc")
async def redoc(request: Request) -> HTMLResponse:
    return get_redoc_html(
        openapi_url=OPENAPI_URL,
        title=f"{request.app.title} - ReDoc",
        redoc_js_url=f"{ASSETS_URL}/redoc.standalone.js",
        redoc_favicon_url=f"{ASSETS_URL}/favicon.png",
        with_google_fonts=False,
    )
