"""The operator's console at ``/ui``: one HTML page, plain JavaScript modules and one vendored charting library
(uPlot), all shipped in this package (``static/``), so the page works offline and needs no build step.

The page is a client of the public REST API like any other: it sends the API key the operator typed (kept in the
browser tab's session storage, sent in the ``Authorization`` header only) and the API decides what the key may do;
the console itself holds no data and checks no key (its files are public, as /docs is).

Every response under ``/ui`` carries a strict Content-Security-Policy: scripts, styles and connections from this
origin only, no inline script or style, no framing, no form submission (the key form is handled in script, so a
key can never end up in a URL).  ``/docs`` and ``/redoc`` keep their own pages (Swagger UI needs inline script).
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, MutableMapping
from os import PathLike
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

PREFIX = "/ui"
STATIC = Path(__file__).resolve().parent / "static"

CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)
"""No 'unsafe-inline' anywhere: an injected <script> or style attribute is refused by the browser.  (Scripts set
element styles through the CSSOM, which CSP does not restrict: uPlot sizes its canvas that way.)"""

HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
)

router = APIRouter(include_in_schema=False)


@router.get(PREFIX)
def console() -> FileResponse:
    """The page (its views are chosen by the URL's fragment, which never reaches the server)."""
    return FileResponse(STATIC / "index.html", media_type="text/html", headers={"Cache-Control": "no-store"})


def under_console(path: str) -> bool:
    return path == PREFIX or path.startswith(PREFIX + "/")


class ConsoleHeaders:
    """Pure ASGI middleware: the console's security headers on every response under ``/ui`` (the page, its assets,
    their 404s), replacing any the route set; other paths pass untouched."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not under_console(scope.get("path", "")):
            await self.app(scope, receive, send)
            return
        names = {name for name, _ in HEADERS}

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                kept = [(k, v) for k, v in message.get("headers", []) if k.lower() not in names]
                message["headers"] = [*kept, *HEADERS]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def install(app: FastAPI) -> None:
    """Serve the console at ``/ui`` and its assets under ``/ui/static`` (revalidated on every load: an upgraded
    service never runs an old script against a new API)."""
    app.include_router(router)
    app.mount(PREFIX + "/static", RevalidatedFiles(directory=STATIC), name="ui-static")
    app.add_middleware(ConsoleHeaders)


class RevalidatedFiles(StaticFiles):
    """Static files the browser must revalidate (ETag) before reusing."""

    def file_response(
        self, full_path: PathLike[str] | str, stat_result: os.stat_result, scope: Scope, status_code: int = 200
    ) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        response.headers["Cache-Control"] = "no-cache"
        return response
