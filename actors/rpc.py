"""Typed request/reply over NATS: encode a contract message, decode the reply, turn service errors into types."""

from __future__ import annotations

from typing import TypeVar

import msgspec
from nats.aio.client import Client
from nats.errors import NoRespondersError, TimeoutError
from nats.micro.request import ServiceError

from actors import contract
from actors.errors import PermanentError, RetryableError, service_call_error

T = TypeVar("T")

ERROR_CODE_HEADER = "Nats-Service-Error-Code"
ERROR_HEADER = "Nats-Service-Error"


async def call(
    nc: Client,
    subject: str,
    request: msgspec.Struct,
    reply_type: type[T],
    timeout: float = 5.0,  # noqa: ASYNC109 - passed to nats' request, which owns the deadline
    headers: dict[str, str] | None = None,
) -> T:
    """Send ``request`` to a mesh service and decode its reply.

    ``headers`` travel with the request (e.g. ``Mesh-Trace-Id``, which the service binds to its logs).
    Raises ``RetryableError`` when nobody answers in time (the service is down or restarting), and when the
    service answered with an error a ``ServiceCallError``: ``ServiceUnavailable`` (also a ``RetryableError``)
    for a 5xx, ``ServiceRefused`` (also a ``PermanentError``) otherwise.
    """
    try:
        msg = await nc.request(subject, contract.encode(request), timeout=timeout, headers=headers)
    except NoRespondersError as e:
        raise RetryableError(f"no service answers on {subject}") from e
    except TimeoutError as e:
        raise RetryableError(f"{subject} timed out after {timeout}s") from e
    if msg.headers and ERROR_CODE_HEADER in msg.headers:
        code, description = msg.headers[ERROR_CODE_HEADER], msg.headers.get(ERROR_HEADER, "")
        raise service_call_error(subject, code, description)
    return contract.decode(msg.data, reply_type)


def service_error(exc: Exception) -> ServiceError:
    """What a micro-service handler answers for an exception: 400 for bad requests, 503 when retryable."""
    if isinstance(exc, msgspec.ValidationError | msgspec.DecodeError):
        return ServiceError("400", f"bad request: {exc}")
    if isinstance(exc, RetryableError):
        return ServiceError("503", exc.message)
    if isinstance(exc, PermanentError):
        return ServiceError("404" if exc.code == "not_found" else "400", exc.message)
    return ServiceError("500", f"{type(exc).__name__}: {exc}")
