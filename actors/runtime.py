"""What every actor process shares: logging, the NATS connection, its micro service, HTTP /health and /metrics,
and a graceful drain on SIGTERM.

An actor module only writes its handlers and its work loop::

    async with ActorProcess("indexer", settings, settings.indexer_http_port) as proc:
        await proc.add_service("indexer", "Vector index", {contract.INDEX_QUERY: typed(handle_query, QueryRequest)})
        await proc.stopped()
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from types import TracebackType
from typing import Any, TypeVar

import msgspec
import nats
import structlog
import uvicorn
from fastapi import FastAPI, Response
from nats.aio.client import Client
from nats.micro import add_service
from nats.micro.request import Request
from nats.micro.service import EndpointConfig, Service, ServiceConfig
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest

from actors import contract
from actors.rpc import service_error
from actors.settings import Settings

VERSION = "0.1.0"
Req = TypeVar("Req", bound=msgspec.Struct)

REQUESTS = Counter("mesh_service_requests_total", "NATS service requests", ["endpoint", "outcome"])
REQUEST_SECONDS = Histogram("mesh_service_request_seconds", "NATS service request latency", ["endpoint"])


def configure_logging(service: str, level: str = "info") -> None:
    """structlog JSON lines on stdout, with the service name bound."""
    logging.basicConfig(format="%(message)s", stream=sys.stdout, level=level.upper())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.bind_contextvars(service=service)


async def connect_nats(s: Settings, user: str, name: str | None = None) -> Client:
    """Connect as one of nats.conf's users; reconnect forever (a NATS restart is an outage, not a crash)."""
    log = structlog.get_logger("nats")

    async def on_disconnect() -> None:
        log.warning("nats.disconnected")

    async def on_reconnect() -> None:
        log.info("nats.reconnected")

    async def on_error(e: Exception) -> None:
        log.warning("nats.error", error=str(e))

    return await nats.connect(
        s.nats_server_url,
        user=user,
        password=s.nats_password(user),
        name=name or user,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        connect_timeout=3,
        disconnected_cb=on_disconnect,
        reconnected_cb=on_reconnect,
        error_cb=on_error,
    )


def typed(
    handler: Callable[[Req], Awaitable[msgspec.Struct]], request_type: type[Req]
) -> Callable[[Request], Awaitable[None]]:
    """Adapt ``handler(request_struct) -> reply_struct`` to a micro-service endpoint with typed errors."""

    async def endpoint(req: Request) -> None:
        # the caller's trace id (Mesh-Trace-Id) joins this service's log lines to the upload that caused them
        trace_id = (req.headers or {}).get(contract.TRACE_HEADER, "")
        with structlog.contextvars.bound_contextvars(**({"trace_id": trace_id} if trace_id else {})):
            await _serve(req)

    async def _serve(req: Request) -> None:
        start = time.perf_counter()
        subject = req.subject
        try:
            body = contract.decode(req.data or b"{}", request_type)
            reply = await handler(body)
        except Exception as exc:  # broad on purpose: every failure is answered (typed; a bug as a 500)
            err = service_error(exc)
            REQUESTS.labels(subject, err.code).inc()
            if err.code == "500":
                structlog.get_logger("service").exception("service.failed", subject=subject)
            await req.respond_error(err.code, err.description)
            return
        finally:
            REQUEST_SECONDS.labels(subject).observe(time.perf_counter() - start)
        REQUESTS.labels(subject, "ok").inc()
        await req.respond(contract.encode(reply))

    return endpoint


class OwnSignalsServer(uvicorn.Server):
    """A uvicorn server that leaves SIGTERM and SIGINT to the process that runs it.

    uvicorn re-raises the signal it caught after its graceful shutdown (the process would die of SIGTERM instead
    of exiting 0), and an actor must drain NATS before its HTTP side stops: the owner handles the signals and
    sets ``should_exit``.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def health_app(name: str) -> FastAPI:
    """The HTTP side of an actor: /health (alive) and /metrics (Prometheus); actors may add routes."""
    app = FastAPI(title=f"mesh {name}", docs_url=None, redoc_url=None)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok", "service": name}

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app


class ActorProcess:
    """One actor process: NATS connection, micro services, HTTP server, and SIGTERM handling."""

    def __init__(self, name: str, settings: Settings, http_port: int, nats_user: str | None = None) -> None:
        self.name = name
        self.settings = settings
        self.http_port = http_port
        self.nats_user = nats_user or name
        self.http = health_app(name)
        self.log = structlog.get_logger(name)
        self._stop = asyncio.Event()
        self._services: list[Service] = []
        self._server: uvicorn.Server | None = None
        self._server_task: asyncio.Task[None] | None = None
        self._nc: Client | None = None

    @property
    def nc(self) -> Client:
        assert self._nc is not None, "use ActorProcess as an async context manager"
        return self._nc

    async def __aenter__(self) -> ActorProcess:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        self._nc = await connect_nats(self.settings, self.nats_user, name=self.name)
        config = uvicorn.Config(
            self.http, host=self.settings.host, port=self.http_port, log_level="warning", lifespan="off"
        )
        self._server = OwnSignalsServer(config)  # the actor owns SIGTERM: drain first, then stop HTTP
        self._server_task = asyncio.create_task(self._server.serve(), name=f"{self.name}-http")
        self.log.info("actor.started", http_port=self.http_port)
        return self

    async def add_service(
        self, name: str, description: str, endpoints: dict[str, Callable[[Request], Awaitable[None]]]
    ) -> Service:
        """Register a NATS micro service (``nats micro ls`` finds it); endpoint names come from the subjects."""
        svc = await add_service(
            self.nc,
            ServiceConfig(name=name, version=VERSION, description=description, queue_group=name),
        )
        for subject, handler in endpoints.items():
            await svc.add_endpoint(
                EndpointConfig(name=subject.replace(".", "_"), subject=subject, handler=handler)
            )
        self._services.append(svc)
        # the server has every subscription before this returns: a request made as soon as the caller reports
        # ready finds a responder (a restarted actor's first requests got "no responders" in CI)
        await self.nc.flush()
        return svc

    def stop(self) -> None:
        self._stop.set()

    async def stopped(self) -> None:
        """Wait for SIGTERM/SIGINT (or ``stop()``)."""
        await self._stop.wait()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.log.info("actor.draining")
        for svc in self._services:
            await svc.stop()
        if self._nc is not None and not self._nc.is_closed:
            try:
                await asyncio.wait_for(self._nc.drain(), timeout=10)
            except Exception as e:  # broad on purpose: drain is best effort on the way out, close anyway
                self.log.warning("actor.drain_failed", error=str(e))
                await self._nc.close()
        if self._server is not None:
            self._server.should_exit = True
        if self._server_task is not None:
            await self._server_task
        self.log.info("actor.stopped")


def run(main: Callable[[Settings], Coroutine[Any, Any, None]], name: str) -> None:
    """Entry point of an actor process: settings, logging, then ``main`` in an event loop."""
    settings = Settings()
    configure_logging(name, settings.log_level)
    asyncio.run(main(settings))
