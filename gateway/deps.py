"""What the routes depend on: ``Services`` (the adapters, built once in the app's lifespan), the ``Svc``
dependency that hands them to a route, and the API-key checks: ``require_api_key`` (401, 429, read scope; the key
from a header or the session cookie) and ``require_scope`` (``WRITE``, ``ADMIN``: 403).

Every router imports these from here, never from ``gateway.app`` (which imports the routers).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Literal

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyCookie, APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from nats.aio.client import Client

from actors.adapters.config_client import ConfigClient
from actors.adapters.copy_pairs import CopyPairs
from actors.adapters.embedder import Embedder
from actors.adapters.events import Events
from actors.adapters.index_client import IndexClient
from actors.adapters.job_queue import JobQueue
from actors.adapters.object_store import ObjectStore
from actors.adapters.record_index import RecordIndex
from actors.adapters.vector_index import VectorIndex
from actors.adapters.workflow_store import WorkflowStore
from actors.decode_budget import DecodeBudget
from actors.settings import Settings
from gateway.admission import Admission
from gateway.auth import ApiKeys
from gateway.errors import ApiError
from gateway.intents import UploadIntents
from gateway.session_tokens import COOKIE


@dataclass
class Services:
    """What the routes use; built once in the lifespan."""

    settings: Settings
    nc: Client
    store: WorkflowStore
    objects: ObjectStore
    config: ConfigClient
    index: IndexClient  # the indexer actor over NATS: deletes, stats, duplicate groups
    # the read side of the same vector indexes, straight from Redis: a similarity query is one FT.SEARCH, and a
    # NATS hop to the indexer cost more than the search itself (docs/BENCHMARKS.md); writes stay with the indexer
    search: VectorIndex
    embedder: Embedder
    events: Events
    intents: UploadIntents
    jobs: JobQueue  # durable ProcessJobs on JetStream (new uploads, healing a pending record)
    admission: Admission  # refuses uploads the mesh cannot take (backlog, JetStream's store)
    decode_budget: DecodeBudget  # bytes of decoded pixels held at once (gateway/intake.py)
    records: RecordIndex  # the library's listing (GET /images)
    copies: CopyPairs  # the copy checker's verdicts (GET /duplicates, /images/{id}/duplicates)


def services(request: Request) -> Services:
    svc: Services | None = getattr(request.app.state, "services", None)
    if svc is None:  # the admin port (production) answers while the public app's lifespan still builds them
        raise ApiError(503, "unavailable", "the gateway is starting", headers={"Retry-After": "1"})
    return svc


async def services_dependency(request: Request) -> Services:
    """``services`` for ``Depends``: async, because FastAPI runs a plain ``def`` dependency in a worker thread
    (a thread hop on every request)."""
    return services(request)


Svc = Annotated[Services, Depends(services_dependency)]


def api_keys(request: Request) -> ApiKeys:
    keys: ApiKeys = request.app.state.api_keys  # set by create_app, lifespan or not
    return keys


# The ways a request shows a key; as FastAPI security schemes, so /docs has an Authorize button and the OpenAPI
# document lists them on every protected operation (any one of them is enough).
API_KEY_HEADER = APIKeyHeader(
    name="X-API-Key", scheme_name="ApiKeyHeader", auto_error=False, description="an API key (MESH_API_KEYS)"
)
BEARER = HTTPBearer(
    scheme_name="BearerKey", auto_error=False, description="the same API key as `Authorization: Bearer KEY`"
)
SESSION_COOKIE = APIKeyCookie(
    name=COOKIE,
    scheme_name="SessionCookie",
    auto_error=False,
    description="what `POST /session` sets, for browsers (`<img src>`, `EventSource`); unsafe methods "
    "(POST, DELETE) with the cookie alone also need an `X-Requested-With` header",
)
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


# The same parameters in each dependency that reads them (not one shared sub-dependency): every dependency level
# FastAPI resolves costs microseconds on every request, /similar's included.
ApiKeyParam = Annotated[str | None, Security(API_KEY_HEADER)]
BearerParam = Annotated[HTTPAuthorizationCredentials | None, Security(BEARER)]


def header_key(x_api_key: str | None, bearer: HTTPAuthorizationCredentials | None) -> str | None:
    """The key the request's headers carry, unchecked: ``X-API-Key``, else ``Authorization: Bearer KEY`` (the
    scheme spelled exactly so, as before the schemes were declared); None without either."""
    return x_api_key or (bearer.credentials if bearer is not None and bearer.scheme == "Bearer" else None)


def admit(keys: ApiKeys, key: str | None) -> str:
    """``key`` (already identified) past the checks after identification: 401 when None, then 429 (with
    ``Retry-After``) when over its rate, then 403 unless it has ``read``."""
    if key is None:
        raise ApiError(401, "unauthorized", "a valid API key is required (X-API-Key header)")
    wait_s = keys.retry_after_s(key)
    if wait_s:
        raise ApiError(
            429, "rate_limited", "this API key is over its request rate", headers={"Retry-After": str(wait_s)}
        )
    _check_scope(keys, key, "read")
    return key


async def require_api_key(
    request: Request,
    x_api_key: ApiKeyParam = None,
    bearer: BearerParam = None,
    session: Annotated[str | None, Security(SESSION_COOKIE)] = None,
) -> str | None:
    """The caller's API key, which has at least the ``read`` scope; None when API keys are off.

    The key comes from the headers (``header_key``) or, when they carry none, from the session cookie (``POST
    /session``): the header wins, a bad header is 401 whatever the cookie. 401 unless one of ``MESH_API_KEYS``
    is found; for the cookie alone on an unsafe method, 403 ``csrf`` without ``X-Requested-With`` (a header a
    cross-site page cannot add: it needs a CORS preflight, and the gateway answers none); then 429 (with
    ``Retry-After``) when the key is over its rate (``gateway/auth.py``); then 403 unless it has ``read``.
    Every protected router depends on this; a route that needs more adds ``require_scope``, which reuses this
    answer (FastAPI runs a dependency once per request), so a request takes one token."""
    keys = api_keys(request)
    if not keys.enabled:
        return None
    given = header_key(x_api_key, bearer)
    if given is not None:
        return admit(keys, keys.identify(given))
    key = keys.session_key(session)
    if key is not None and request.method not in SAFE_METHODS and not request.headers.get("x-requested-with"):
        raise ApiError(
            403, "csrf", "a request authenticated by the session cookie alone needs X-Requested-With here"
        )
    return admit(keys, key)


def _check_scope(keys: ApiKeys, key: str, scope: str) -> None:
    if not keys.allows(key, scope):
        raise ApiError(403, "forbidden", f"this API key does not have the {scope!r} scope")


def require_scope(scope: Literal["write", "admin"]) -> Callable[..., Awaitable[None]]:
    """A dependency: 403 unless the caller's key has ``scope`` (after ``require_api_key``'s 401 and 429)."""

    async def check(request: Request, key: Annotated[str | None, Depends(require_api_key)]) -> None:
        if key is not None:
            _check_scope(api_keys(request), key, scope)

    check.__name__ = f"require_{scope}_scope"
    return check


WRITE = Depends(require_scope("write"))  # uploads, deletes, /encode
ADMIN = Depends(require_scope("admin"))  # the model switch
