"""The gateway's Prometheus metrics: request latency per route, upload outcomes (on ``GET /metrics``).

One pure ASGI middleware measures every request; it labels by the route's template (``/images/{image_id}``),
never by the raw path, so an id in a URL cannot create a new time series. Upload outcomes are derived from the
status the upload answered, so a refusal by a middleware (413 on the byte limit), a dependency (401) or request
validation (400, missing file) is counted as well as one raised inside the route. ``install`` must run after
the other middlewares are added, so that this one is the outermost and sees their answers.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import FastAPI
from prometheus_client import Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

UPLOAD_ROUTE = "/images/upload"
UNMATCHED = "unmatched"  # 404s for unknown paths share one label value

UPLOADS = Counter(
    "mesh_uploads_total",
    "Uploads answered by the gateway, by outcome (accepted, duplicate, refused, unavailable)",
    ["outcome"],
)
HTTP_SECONDS = Histogram(
    "mesh_http_request_seconds",
    "Gateway HTTP request latency, by route template, method and status",
    ["route", "method", "status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)

for _outcome in ("accepted", "duplicate", "refused", "unavailable"):
    UPLOADS.labels(
        _outcome
    )  # every outcome is exported from the start (a rate over a missing series is empty)


def upload_outcome(status: int) -> str:
    """What an upload's HTTP status means for ``mesh_uploads_total`` (DESIGN.md section 3)."""
    if status == 202:
        return "accepted"
    if status == 200:
        return "duplicate"
    if 400 <= status < 500:
        return "refused"
    return "unavailable"


def route_label(scope: Scope) -> str:
    route: Any = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else UNMATCHED


class MetricsMiddleware:
    """Times every HTTP request and counts upload outcomes."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # what the client sees when the app raises before answering

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            # the router stores the matched route in the scope while it handles the request; an upload
            # refused by a middleware before routing (gateway/forms.py's byte limit) has none, so the upload
            # route (no path parameters) is also recognized by its path
            is_upload = scope.get("path") == UPLOAD_ROUTE and scope.get("method") == "POST"
            route = UPLOAD_ROUTE if is_upload else route_label(scope)
            HTTP_SECONDS.labels(route, scope.get("method", ""), str(status)).observe(
                time.perf_counter() - start
            )
            if is_upload:
                UPLOADS.labels(upload_outcome(status)).inc()


def install(app: FastAPI) -> None:
    """Add the metrics middleware to the gateway (``GET /metrics`` is served by ``gateway/health.py``)."""
    app.add_middleware(MetricsMiddleware)
