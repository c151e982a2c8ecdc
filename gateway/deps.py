"""What the routes depend on: ``Services`` (the adapters, built once in the app's lifespan), the ``Svc``
dependency that hands them to a route, and ``require_api_key``.

Every router imports these from here, never from ``gateway.app`` (which imports the routers).
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header, Request
from nats.aio.client import Client

from actors.adapters.config_client import ConfigClient
from actors.adapters.embedder import Embedder
from actors.adapters.events import Events
from actors.adapters.index_client import IndexClient
from actors.adapters.job_queue import JobQueue
from actors.adapters.object_store import ObjectStore
from actors.adapters.vector_index import VectorIndex
from actors.adapters.workflow_store import WorkflowStore
from actors.settings import Settings
from gateway.errors import ApiError
from gateway.intents import UploadIntents


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


def services(request: Request) -> Services:
    svc: Services = request.app.state.services
    return svc


async def services_dependency(request: Request) -> Services:
    """``services`` for ``Depends``: async, because FastAPI runs a plain ``def`` dependency in a worker thread
    (a thread hop on every request)."""
    return services(request)


Svc = Annotated[Services, Depends(services_dependency)]


async def require_api_key(
    request: Request,
    x_api_key: Annotated[str | None, Header()] = None,
    authorization: Annotated[str | None, Header()] = None,
) -> None:
    """401 unless the request carries one of ``MESH_API_KEYS`` (when API keys are on)."""
    keys = services(request).settings.api_key_set
    if not keys:
        return
    given = x_api_key or (
        authorization[7:] if authorization and authorization.startswith("Bearer ") else None
    )
    if not given or not any(hmac.compare_digest(given, k) for k in keys):
        raise ApiError(401, "unauthorized", "a valid API key is required (X-API-Key header)")
