"""One-off set-up once the servers answer, as the operators' identities: the JetStream streams every process
expects (NATS ``ops`` user), the bucket policy of the S3 store (``ops/stack/privileges.py``), and the upgrade of
stored data to this release's layout (``ops/migrate.py``). All are idempotent, so they run on every start."""

from __future__ import annotations

import asyncio

import boto3
import nats
import structlog
from botocore.config import Config

from actors.settings import Settings
from actors.streams import ensure_streams
from ops.migrate import migrate
from ops.stack.privileges import bucket_policy

log = structlog.get_logger("stack")


async def bootstrap_nats(s: Settings) -> None:
    nc = await nats.connect(s.nats_server_url, user="ops", password=s.nats_password("ops"))
    try:
        await ensure_streams(nc.jetstream(), s)
    finally:
        await nc.close()


def bootstrap_s3(s: Settings) -> None:
    """Put the bucket policy (the coordinator's delete of orphaned originals) as the ``ops`` identity."""
    access, secret = s.s3_credentials("ops")
    client = boto3.client(
        "s3",
        endpoint_url=s.s3_server_url,
        aws_access_key_id=access,
        aws_secret_access_key=secret,
        region_name=s.s3_region,
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 3}),
    )
    client.put_bucket_policy(Bucket=s.s3_bucket, Policy=bucket_policy(s))
    log.info("stack.bucket_policy", bucket=s.s3_bucket)


def bootstrap(s: Settings, *, servers: tuple[str, ...] = ("nats", "redis", "s3")) -> None:
    """Set up ``servers`` (compose's one-shot ``bootstrap`` service: all three); once all three answer, upgrade
    what they store to this release's layout (``ops/migrate.py``) unless ``migrate_on_start`` is off."""
    if "nats" in servers:
        asyncio.run(bootstrap_nats(s))
    if "s3" in servers:
        bootstrap_s3(s)
    if s.migrate_on_start and {"nats", "redis", "s3"} <= set(servers):
        m = asyncio.run(migrate(s))
        log.info("stack.layout", layout=m.layout, found=m.found, stamped=m.stamped, steps=",".join(m.steps))
