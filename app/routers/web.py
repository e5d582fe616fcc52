"""The web page at `/`: plain HTML, CSS and JavaScript shipped inside the package.

Nothing is built or fetched at run time (no CDN), so the page works offline and behind a
firewall. It talks to the same JSON API as any other client; with API keys configured it asks
for one and sends it as `X-API-Key`, so the page itself needs no key to load.
"""

from __future__ import annotations

import os
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse
from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"

router = APIRouter(include_in_schema=False)


class RevalidatedStatic(StaticFiles):
    """Static files that browsers re-check on each load (a cheap 304 via ETag), so an upgraded
    service never runs a stale script against a newer API."""

    def file_response(
        self, full_path: str | os.PathLike[str], stat_result: os.stat_result, scope: Scope, status_code: int = 200
    ) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        response.headers["Cache-Control"] = "no-cache"
        return response


def static_files() -> RevalidatedStatic:
    return RevalidatedStatic(directory=STATIC_DIR)


@router.get("/")
async def index() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html", headers={"Cache-Control": "no-cache"})
