"""One-off set-up after NATS answers: the streams every process expects (as the ``ops`` user)."""

from __future__ import annotations

import asyncio

import nats

from actors.settings import Settings
from actors.streams import ensure_streams


async def bootstrap_nats(s: Settings) -> None:
    nc = await nats.connect(s.nats_server_url, user="ops", password=s.nats_password("ops"))
    try:
        await ensure_streams(nc.jetstream(), s)
    finally:
        await nc.close()


def bootstrap(s: Settings) -> None:
    asyncio.run(bootstrap_nats(s))
