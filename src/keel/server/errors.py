"""Every error leaves the server as ``{"error": {code, message, type, param}}`` with
its status: the shape OpenAI's SDK turns into its own exception types. No stack
traces, ever; a store that fails is a 503 ``store_unavailable`` (with Retry-After);
unexpected exceptions are logged and answered with a 500 ``internal_error``."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from keel.errors import KeelError
from keel.store.db import DB_ERRORS

log = logging.getLogger("keel.server")


def error_response(code: str, message: str, status: int, type: str = "invalid_request_error",
                   param: str | None = None, headers: Mapping[str, str] | None = None) -> Response:
    body = {"error": {"code": code, "message": message, "type": type, "param": param}}
    return Response(orjson.dumps(body), status_code=status, media_type="application/json",
                    headers=headers)


def keel_error_response(exc: KeelError, headers: dict[str, str] | None = None) -> Response:
    return error_response(exc.code, exc.message, exc.status, exc.type, exc.param, headers)


_STATUS_CODES = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}


def install(app: FastAPI) -> None:
    async def on_keel(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, KeelError)
        if exc.retry_after is not None:
            return keel_error_response(exc, {"retry-after": str(max(1, math.ceil(exc.retry_after)))})
        return keel_error_response(exc)

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        code = _STATUS_CODES.get(exc.status_code, "http_error")
        type_ = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        message = str(exc.detail)
        if exc.status_code == 404:
            message = f"no route {request.method} {request.url.path}; see /docs for the API"
        return error_response(code, message, exc.status_code, type_, headers=exc.headers)

    async def on_validation(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        param = ".".join(str(p) for p in first["loc"] if p != "body") or None
        return error_response("invalid_request", f"{param or 'body'}: {first['msg']}", 400,
                              param=param)

    async def on_store(request: Request, exc: Exception) -> Response:
        # the database failed under a control-plane or read request: the caller may retry
        log.warning("store error on %s %s: %s", request.method, request.url.path, exc)
        return error_response("store_unavailable", "Keel's store did not answer this request "
                              "(it may be down or busy); retry shortly. Calls to features go "
                              "on meanwhile.", 503, "api_error", headers={"retry-after": "5"})

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return error_response("internal_error", "Keel hit an unexpected error; it is logged "
                              "with the request path. Please report it.", 500, "api_error")

    app.add_exception_handler(KeelError, on_keel)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(RequestValidationError, on_validation)
    for error in DB_ERRORS:
        app.add_exception_handler(error, on_store)
    app.add_exception_handler(Exception, on_unexpected)
