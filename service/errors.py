"""One error shape for every 4xx/5xx: ``{"detail": str, "field": str | null, "index": int | null}``."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from cl_core.validation import InvalidData
from registry import Conflict, InvalidIdentifier, NotFound, QueueFull, StoreUnavailable

log = logging.getLogger(__name__)

MAX_DETAIL = 1000
"""No error message is longer (a backstop: every place that repeats a caller's value cuts it to 200 characters)."""
_MAX_PART = 64  # a field name or key in an error's location (a 1 MB key of an unknown field is not echoed)


class ApiError(Exception):
    """An answer other than success, with the offending field and index when there is one."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        field: str | None = None,
        index: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status, self.detail, self.field, self.index, self.headers = status, detail, field, index, headers


class BodyTooLarge(Exception):
    """Raised while reading a body that outgrew the limit (its Content-Length did not tell in advance)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the body is larger than the limit of {limit} bytes")


def error_response(
    status: int, detail: str, field: str | None = None, index: int | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    if len(detail) > MAX_DETAIL:
        detail = detail[:MAX_DETAIL] + "… (cut)"
    if field is not None:
        field = _short(field)
    return JSONResponse({"detail": detail, "field": field, "index": index}, status_code=status, headers=headers)


def _short(part: str) -> str:
    return part if len(part) <= _MAX_PART else part[:_MAX_PART] + "…"


_UNION_TAGS = {"float", "int", "str", "bool", "function-after", "function-plain"}


def _path(loc: tuple[int | str, ...]) -> str:
    """``inputs[3][17]`` from pydantic's location (union branch tags such as 'list[…]' or 'float' left out)."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif (part in ("body", "query", "path", "header") and not out) or part in _UNION_TAGS or "[" in part:
            continue
        else:
            out += f".{_short(part)}" if out else _short(part)
    return out


def _validation_answer(exc: RequestValidationError) -> JSONResponse:
    """The most specific pydantic error, with the top-level field and the first list index in its location."""
    errors = exc.errors()
    if not errors:
        return error_response(422, "invalid request")
    priority = ("finite_number", "json_invalid", "missing", "extra_forbidden")
    preferred = sorted((e for e in errors if e.get("type") in priority), key=lambda e: priority.index(e["type"]))
    error = (preferred or sorted(errors, key=lambda e: -len(e.get("loc", ()))))[0]
    loc = tuple(error.get("loc", ()))
    names = [
        p
        for p in loc
        if isinstance(p, str) and p not in ("body", "query", "path", "header") and p not in _UNION_TAGS and "[" not in p
    ]
    field = names[-1] if names else None  # the innermost named field: "label" of samples[3].label
    index = next((p for p in loc if isinstance(p, int)), None)
    message = str(error.get("msg", "invalid value"))
    if error.get("type") == "value_error" and "error" in error.get("ctx", {}):
        message = str(error["ctx"]["error"])  # our own validators' message, without pydantic's "Value error, "
    if error.get("type") == "json_invalid":
        message = f"the body is not valid JSON ({error.get('ctx', {}).get('error', 'parse error')})"
    where = _path(loc)
    return error_response(422, f"{where}: {message}" if where else message, field, index)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.detail, exc.field, exc.index, exc.headers)

    @app.exception_handler(BodyTooLarge)
    async def too_large(_: Request, exc: BodyTooLarge) -> JSONResponse:
        return error_response(413, str(exc))

    @app.exception_handler(InvalidData)
    async def invalid_data(_: Request, exc: InvalidData) -> JSONResponse:
        return error_response(422, str(exc), exc.field, exc.index)

    @app.exception_handler(RequestValidationError)
    async def validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return _validation_answer(exc)

    @app.exception_handler(InvalidIdentifier)
    async def invalid_identifier(_: Request, exc: InvalidIdentifier) -> JSONResponse:
        return error_response(422, str(exc))

    @app.exception_handler(NotFound)
    async def not_found(_: Request, exc: NotFound) -> JSONResponse:
        return error_response(404, str(exc))

    @app.exception_handler(Conflict)
    async def conflict(_: Request, exc: Conflict) -> JSONResponse:
        return error_response(409, str(exc))

    @app.exception_handler(QueueFull)
    async def queue_full(_: Request, exc: QueueFull) -> JSONResponse:
        return error_response(429, str(exc), headers={"Retry-After": "10"})

    @app.exception_handler(StoreUnavailable)
    async def unavailable(_: Request, exc: StoreUnavailable) -> JSONResponse:
        return error_response(503, f"the store is unavailable: {exc}", headers={"Retry-After": "5"})

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return error_response(500, "internal error; the request changed nothing it had not already confirmed")
