"""The gateway's error contract (DESIGN.md section 3): ``ApiError``, the ``{"error": {"code", "message"}}`` body,
its OpenAPI description, and the exception handlers that turn every typed error into that body and a status.

400 or 422, the rule: **a request the gateway cannot use is 400**, whatever part of it is wrong: the path, a
query parameter, a header, a form field or JSON body that FastAPI cannot parse or that is out of range (FastAPI
itself would say 422: ``RequestValidationError`` is answered 400 ``missing_field`` or ``invalid_request``
here), or a value the route refuses (``bad_filter``, ``bad_page``, ``not_an_image``...). **422 is kept for one
thing only**, the upload's ``metadata`` form field: the request is well formed and the image may be fine, but
the metadata document breaks its rules (not UTF-8, not JSON, not a flat object of short keys to strings or
numbers: 422 ``invalid_metadata``, ``gateway/metadata.py``). That is the REST contract as it has always been
answered; the OpenAPI document says the same (``request_errors_as_400``: no FastAPI ``HTTPValidationError``
anywhere, a 400 with this body on every operation that takes input, 422 on ``POST /images/upload`` only).

A leaf of the gateway: it imports no router and nothing that imports a router.
"""

from __future__ import annotations

import json
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from actors.errors import MeshError, RetryableError, ServiceCallError
from gateway.validation import UploadError

log = structlog.get_logger("gateway")

RETRY_AFTER = {"Retry-After": "2"}


class ApiError(Exception):
    """An error answered as ``{"error": {"code", "message"}}`` with an HTTP status."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorBody(BaseModel):
    """Every error the gateway answers: ``{"error": {"code", "message"}}``."""

    error: ErrorDetail


_ERROR_TEXT = {
    400: "bad input (empty, missing field, not an image, broken image, bad parameter)",
    401: "API keys are on and the request has no valid key (X-API-Key or Authorization: Bearer)",
    403: "the API key lacks the scope this route needs (read, write or admin)",
    404: "no such image",
    409: "the image is not indexed yet",
    413: "over the byte or pixel limit",
    415: "a recognized image format that is not allowed",
    422: "malformed metadata",
    429: "the API key is over its request rate; retry after Retry-After seconds",
    503: "a dependency is down; retry (see Retry-After)",
}


def error_responses(*statuses: int | tuple[int, str]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=`` entries for these error statuses, all with the contract's error body; a status
    given as ``(status, description)`` says what it means on that route instead of the generic text."""
    out: dict[int | str, dict[str, Any]] = {}
    for item in statuses:
        status, text = item if isinstance(item, tuple) else (item, _ERROR_TEXT[item])
        out[status] = {"model": ErrorBody, "description": text}
    return out


def request_errors_as_400(schema: dict[str, Any]) -> dict[str, Any]:
    """The OpenAPI document made to say what the handlers answer (the module's 400/422 rule): FastAPI documents
    422 ``HTTPValidationError`` on every operation with parameters or a body, but request validation is
    answered 400 with the error body. Each such 422 becomes a 400 (unless the route documents its own 400),
    and the unused ``HTTPValidationError``/``ValidationError`` schemas go. Changes ``schema`` in place."""
    fastapi_422 = "#/components/schemas/HTTPValidationError"
    error_400 = {
        "description": _ERROR_TEXT[400],
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
    }
    for item in schema.get("paths", {}).values():
        for operation in item.values():
            responses = operation.get("responses", {})
            documented = responses.get("422", {}).get("content", {}).get("application/json", {})
            if documented.get("schema", {}).get("$ref") == fastapi_422:
                del responses["422"]
                responses.setdefault("400", error_400)
    components = schema.get("components", {}).get("schemas", {})
    if fastapi_422 not in json.dumps(schema.get("paths", {})):
        components.pop("HTTPValidationError", None)
        components.pop("ValidationError", None)
    return schema


def error_body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def install_error_handlers(app: FastAPI) -> None:
    """Map every error the routes raise on purpose (and FastAPI's own) to the contract's body and status."""

    @app.exception_handler(ApiError)
    async def _api(_: Request, e: ApiError) -> JSONResponse:
        return JSONResponse(error_body(e.code, e.message), status_code=e.status, headers=e.headers)

    @app.exception_handler(UploadError)
    async def _upload(_: Request, e: UploadError) -> JSONResponse:
        return JSONResponse(error_body(e.code, e.message), status_code=e.status)

    @app.exception_handler(RetryableError)
    async def _retryable(_: Request, e: RetryableError) -> JSONResponse:
        log.warning("request.unavailable", error=e.message)
        return JSONResponse(error_body("unavailable", e.message), status_code=503, headers=RETRY_AFTER)

    @app.exception_handler(ServiceCallError)
    async def _service(_: Request, e: ServiceCallError) -> JSONResponse:
        if e.retryable:
            return JSONResponse(
                error_body("unavailable", e.description), status_code=503, headers=RETRY_AFTER
            )
        return JSONResponse(error_body("upstream_error", e.message), status_code=502)

    @app.exception_handler(MeshError)
    async def _mesh(_: Request, e: MeshError) -> JSONResponse:
        return JSONResponse(error_body(e.code, e.message), status_code=400)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, e: RequestValidationError) -> JSONResponse:
        errors = e.errors()
        first = errors[0] if errors else {}
        where = ".".join(str(x) for x in first.get("loc", ()))
        missing = first.get("type") == "missing"
        code = "missing_field" if missing else "invalid_request"
        return JSONResponse(error_body(code, f"{where}: {first.get('msg', 'invalid')}"), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, e: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed", 401: "unauthorized"}.get(
            e.status_code, "http_error"
        )
        return JSONResponse(error_body(code, str(e.detail)), status_code=e.status_code)
