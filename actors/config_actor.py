"""The config actor: owner of the Config DB (``actors.config_store``), served over NATS and HTTP.

- On start it creates the bucket if missing and seeds every absent key from settings (never overwriting).
- ``config.get`` answers the current ``MeshConfig``; ``config.set`` changes one key after validating it
  (types from the msgspec schema, then the sanity rules of ``actors.config_rules``) and refuses a bad value
  with a 400 naming the key and the reason; nothing is written then.
- ``GET /config`` on its HTTP port shows the config and this process's settings, secrets redacted.

Every read goes to the bucket (one direct get per key, a few ms), so an operator's
``nats kv put config max_k 50`` is seen at once and replicas never disagree. The other processes follow the
bucket with a watch (``ConfigClient``), so a change reaches them as soon as it is written. A bad value written
there directly is logged and replaced by that key's default: it never crashes a reader.
"""

from __future__ import annotations

from typing import Any

import msgspec
import structlog
from fastapi import FastAPI
from fastapi.responses import JSONResponse

from actors import contract
from actors.adapters.config_client import mesh_config_defaults
from actors.config_rules import redacted_settings
from actors.config_store import ConfigStore
from actors.contract import ConfigGet, ConfigSet, MeshConfig
from actors.errors import RetryableError
from actors.runtime import ActorProcess, typed
from actors.settings import Settings

log = structlog.get_logger("config")


def add_routes(app: FastAPI, store: ConfigStore, settings: Settings) -> None:
    """``GET /config``: the current configuration and this process's settings, secrets redacted."""

    @app.get("/config")
    async def get_config() -> Any:
        try:
            cfg = await store.read()
        except RetryableError as e:
            return JSONResponse({"error": {"code": e.code, "message": e.message}}, status_code=503)
        return {
            "bucket": settings.config_bucket,
            "config": msgspec.to_builtins(cfg),
            "settings": redacted_settings(settings),
        }


async def start(proc: ActorProcess) -> ConfigStore:
    """Open and seed the Config DB, then serve ``config.get``/``config.set`` and ``GET /config``."""
    s = proc.settings
    store = await ConfigStore.open(
        proc.nc.jetstream(), s.config_bucket, mesh_config_defaults(s), replicas=s.stream_replicas
    )
    seeded = await store.seed()
    log.info("config.seeded", bucket=s.config_bucket, keys=seeded)

    async def handle_get(_: ConfigGet) -> MeshConfig:
        return await store.read()

    async def handle_set(req: ConfigSet) -> MeshConfig:
        return await store.set(req.key, req.value)

    add_routes(proc.http, store, s)
    await proc.add_service(
        contract.CONFIG_SERVICE,
        "Runtime configuration of the mesh (Config DB in NATS KV)",
        {
            contract.CONFIG_GET: typed(handle_get, ConfigGet),
            contract.CONFIG_SET: typed(handle_set, ConfigSet),
        },
    )
    return store


async def main(settings: Settings) -> None:
    """``python -m actors config``: run until SIGTERM, then drain."""
    async with ActorProcess("config", settings, settings.config_http_port) as proc:
        await start(proc)
        await proc.stopped()
