"""The mesh's typed errors. Retryable and permanent failures are different types.

Each boundary turns them into its own contract: HTTP status and ``{"error": {code, message}}`` at the gateway,
``ServiceError(code, description)`` on NATS services.
"""

from __future__ import annotations


class MeshError(Exception):
    """Base of every error the mesh raises on purpose."""

    code = "internal"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class RetryableError(MeshError):
    """A dependency is down or lagging: the same work can succeed later."""

    code = "unavailable"


class PermanentError(MeshError):
    """The work itself is bad: retrying it cannot help."""

    code = "invalid"


class NotFound(PermanentError):
    code = "not_found"


class ServiceCallError(MeshError):
    """A NATS service answered with an error (its code and description travel in the reply headers).

    ``rpc.call`` raises one of the two typed kinds below (see ``service_call_error``), so that callers who
    only know retryable from permanent (the coordinator's delivery policy) treat a service's 503 as an
    outage and its 400 as bad work; ``retryable`` and ``description`` stay for callers that look closer.
    """

    def __init__(self, subject: str, code: str, description: str) -> None:
        super().__init__(f"{subject}: {description}", code=code)
        self.subject = subject
        self.description = description

    @property
    def retryable(self) -> bool:
        return self.code.startswith("5")


class ServiceUnavailable(ServiceCallError, RetryableError):
    """The service answered 5xx (e.g. the indexer's 503 while its Redis is down): the call may succeed later."""


class ServiceRefused(ServiceCallError, PermanentError):
    """The service refused the request (4xx: bad request, not found): sending it again cannot help."""


def service_call_error(subject: str, code: str, description: str) -> ServiceCallError:
    """The typed error for a service's error reply: ``ServiceUnavailable`` for 5xx, else ``ServiceRefused``."""
    kind = ServiceUnavailable if code.startswith("5") else ServiceRefused
    return kind(subject, code, description)
