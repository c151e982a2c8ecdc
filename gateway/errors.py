"""The gateway's error contract (DESIGN.md section 3): ``ApiError``, the ``{"error": {"code", "message"}}`` body,
its OpenAPI description, and the exception handlers that turn every typed error into that body and a status.

A leaf of the gateway: it imports no router and nothing that imports a router.
"""

from __future__ import annotations

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


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=`` entries for these error statuses, all with the contract's error body."""
    return {s: {"model": ErrorBody, "description": _ERROR_TEXT[s]} for s in statuses}


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
