"""One error shape for every /v1 response that is not a success:
`{"error": {"message": "...", "type": "...", ...}}`, whatever produced it: our own refusals
(`error()`), an `HTTPException` raised by a route, FastAPI's request validation (422, with
the offending `field`), Starlette's router (404 for an unknown /v1 path, 405 for a method
the path does not take). A client then has one thing to parse, like the APIs it knows
(OpenAI's, Stripe's); the Twilio routes keep their plain-text answers, which only Twilio
reads."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler, request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("voxline.gateway.api")

# What kind of failure, by HTTP status: stable strings a client can branch on.
ERROR_TYPES: dict[int, str] = {
    400: "invalid_request",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    412: "precondition_failed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "rate_limit_exceeded",
    500: "internal_error",
    502: "upstream_error",
    503: "unavailable",
    504: "upstream_timeout",
}
JSON_EXPECTED = "expected a JSON body with the header Content-Type: application/json"


class ErrorBody(BaseModel):
    message: str = Field(description="What went wrong, for a person to read.")
    type: str = Field(description="The kind of failure: " + ", ".join(sorted(set(ERROR_TYPES.values()))) + ".")
    field: str | None = Field(None, description="The request field at fault (422), e.g. `to` or `limit`.")


class ErrorResponse(BaseModel):
    """Every /v1 error. Some add fields to `error` (`retry_after_s`, `twilio_code`, `errors`)."""

    error: ErrorBody


def error_type(status: int) -> str:
    return ERROR_TYPES.get(status, "invalid_request" if status < 500 else "internal_error")


def error(status: int, message: str, headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    body = {"message": message, "type": extra.pop("type", None) or error_type(status), **extra}
    return JSONResponse({"error": body}, status_code=status, headers=headers)


def is_api(request: Request) -> bool:
    path = str(request.scope["path"])
    return path == "/v1" or path.startswith("/v1/")


def _field(loc: Sequence[Any]) -> str:
    """`("body", "to")` -> `to`, `("query", "limit")` -> `limit`, `("body",)` -> `body`."""
    parts = [str(p) for p in loc[1:]] if len(loc) > 1 else [str(p) for p in loc]
    return ".".join(parts)


def _json_expected(request: Request, first: dict[str, Any]) -> bool:
    """FastAPI reads a body as JSON only with a JSON content type: curl's `-d` alone sends
    a form, which then fails as 'not a valid dictionary' on the whole body."""
    if tuple(first.get("loc", ())) != ("body",):
        return False
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    kind = str(first.get("type", ""))
    return kind in ("model_attributes_type", "dict_type", "json_invalid", "missing") or (
        content_type != "application/json"
    )


async def _validation(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    if not is_api(request):
        return await request_validation_exception_handler(request, exc)
    problems = [e for e in exc.errors() if isinstance(e, dict)]
    first = problems[0] if problems else {"loc": ("body",), "msg": "invalid request"}
    field = _field(first.get("loc", ("body",)))
    if _json_expected(request, first):
        message = f"{JSON_EXPECTED}; {first.get('msg', 'invalid body')}"
    else:
        message = f"{field}: {first.get('msg', 'invalid value')}"
    errors = [{"field": _field(e.get("loc", ())), "message": e.get("msg", "")} for e in problems]
    return error(422, message, field=field, errors=jsonable_encoder(errors))


async def _http(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    if not is_api(request):
        return await http_exception_handler(request, exc)
    if exc.status_code == 404 and exc.detail == "Not Found":  # the router's: no such route
        message = f"no such endpoint: {request.method} {request.scope['path'][:200]}"
    elif exc.status_code == 405:
        message = f"{request.method} is not allowed on {request.scope['path'][:200]}"
    else:
        message = str(exc.detail)
    return error(exc.status_code, message, headers=dict(exc.headers) if exc.headers else None)


async def _unexpected(request: Request, exc: Exception) -> Response:
    """A bug: logged with its traceback, answered in the same shape, never with its text."""
    log.error("unhandled error on %s %s", request.method, request.scope["path"][:200], exc_info=exc)
    return error(500, "internal error")


def install(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(StarletteHTTPException, _http)
    app.add_exception_handler(Exception, _unexpected)
