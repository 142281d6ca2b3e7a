"""The web pages Keel serves itself: ``GET /`` (the dashboard, also at ``/dashboard`` and
``/dashboard/...``), ``GET /review`` (the human review queue) and their assets under
``GET /static/{file}``.

The files are plain HTML, CSS and ES modules shipped inside the package
(``keel/server/static``) and read with :mod:`importlib.resources`, so an installed
wheel serves them with no build step and no CDN. Only a flat name made of safe
characters with a known extension is ever looked up: no directory traversal, and
anything else is a 404 in Keel's error shape.
"""

from __future__ import annotations

import re
from importlib import resources
from importlib.resources.abc import Traversable

from fastapi import APIRouter
from starlette.responses import Response

from keel.errors import RouteNotFound

router = APIRouter()

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".json": "application/json",
}

# a flat file name: no slash, no backslash, no leading dot (so no "." or ".."), one extension
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*(\.[A-Za-z0-9]+)$")

# The pages load only their own files and talk only to this server.
_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")

_HEADERS = {"x-content-type-options": "nosniff", "cache-control": "no-cache",
            "referrer-policy": "no-referrer"}


def _static_dir() -> Traversable:
    return resources.files("keel.server").joinpath("static")


def static_file(name: str) -> tuple[bytes, str]:
    """The bytes and content type of one packaged static file; RouteNotFound otherwise."""
    match = _SAFE_NAME.match(name)
    content_type = CONTENT_TYPES.get(match.group(1).lower()) if match else None
    if content_type is None:
        raise RouteNotFound(f"no static file {name!r}")
    entry = _static_dir().joinpath(name)
    if not entry.is_file():
        raise RouteNotFound(f"no static file {name!r}")
    return entry.read_bytes(), content_type


def _page(name: str) -> Response:
    body, content_type = static_file(name)
    return Response(body, media_type=content_type,
                    headers={**_HEADERS, "content-security-policy": _CSP})


@router.get("/", summary="The dashboard (a web page)", include_in_schema=False)
@router.get("/dashboard", summary="The dashboard (a web page)", include_in_schema=False)
@router.get("/dashboard/{rest:path}", summary="The dashboard (a web page)", include_in_schema=False)
async def dashboard_page() -> Response:
    # one page; its own script routes by the URL's fragment (/#/events, /#/features/x)
    return _page("dashboard.html")


@router.get("/review", summary="The human review queue (a web page)", include_in_schema=False)
async def review_page() -> Response:
    return _page("review.html")


@router.get("/static/{file}", summary="Assets of Keel's web pages", include_in_schema=False)
async def static(file: str) -> Response:
    body, content_type = static_file(file)
    return Response(body, media_type=content_type, headers=_HEADERS)
