"""mesh migrate: upgrade what a stack stores from the previous storage layout to this release's, in place.

    python -m ops.migrate [--json] [--batch N] [--max-batches N] [--full]        (also: mesh migrate)

The layouts and where each structure carries its version are in ``actors/contract/layout.py``. The steps, in
order, each idempotent (a structure already at this layout is left alone) and each safe while the mesh runs:

  records   every image record without a ``layout`` field gets this release's: a ``SCAN`` in batches of
            ``--batch``, its cursor saved in ``P:layout`` after each batch, so a migration that stops (a crash,
            ``--max-batches``) resumes where it stopped; a record is stamped only if it still exists
  streams   the work and events streams and the coordinators' consumer: their configs gain the layout metadata
            (everything else in them as it is)
  config    the Config DB's bucket (created when missing, as the config actor would): its stream, likewise
  indexes   the vector indexes' and the records index's schemas (unchanged from layout 1): ``P:layout indexes``
  objects   the object key layout (unchanged from layout 1): the object ``.mesh/layout.json``

and last ``P:layout version``. On a stack already at this layout it does nothing (a start-up costs one
``HGET``), unless ``--full``: records written since by a process of the previous release, running beside this
one, carry no stamp (they read as layout 1, which they are) until a ``--full`` run. The stack's start-up runs it (``ops/stack/bootstrap.py``, unless the setting
``migrate_on_start`` is off). A stack whose layout is newer than this release's is refused: start the newer
release, or restore a backup. Exit 0: the stack is at this layout; 1: stopped by ``--max-batches`` with records
left (run it again); 2: bad settings or a newer layout; 4: a store does not answer.

Runs as an operator with the stack's ``MESH_*`` settings: NATS as ``ops``, Redis as the operators' user, S3 as
the operators' identity.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import asdict, dataclass, field

import nats
import redis.asyncio as aioredis
import structlog
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from redis.exceptions import RedisError

from actors import contract
from actors.adapters.object_store import ObjectStore
from actors.config_store import ConfigStore
from actors.contract import LAYOUT, LAYOUT_FIELD, LAYOUT_OBJECT, MeshConfig, layout_key, stamped_layout
from actors.errors import MeshError
from actors.settings import Settings
from actors.streams import ensure_streams
from ops.logs import logs_to_stderr

log = structlog.get_logger("migrate")

EXIT_OK, EXIT_PARTIAL, EXIT_USAGE, EXIT_UNAVAILABLE = 0, 1, 2, 4
BATCH = 500
RECORDS_CURSOR = "records_cursor"  # fields of P:layout
VERSION, INDEXES = "version", "indexes"

# Stamp the records of one batch that still exist, are hashes and carry no layout (a record deleted since the
# SCAN saw it must not come back as a one-field hash).
_STAMP = """
local n = 0
for _, key in ipairs(KEYS) do
  if redis.call('TYPE', key).ok == 'hash' and redis.call('HEXISTS', key, ARGV[1]) == 0 then
    redis.call('HSET', key, ARGV[1], ARGV[2])
    n = n + 1
  end
end
return n
"""


class NewerLayout(MeshError):
    """The stack was written by a newer release than this one."""


@dataclass
class Migration:
    """What one run did: the layout it found, records scanned and stamped, the steps done, and whether the
    stack is now at this release's layout (``complete``)."""

    found: int
    layout: int = LAYOUT
    scanned: int = 0
    stamped: int = 0
    steps: list[str] = field(default_factory=list)
    complete: bool = False
    seconds: float = 0.0


class Migrator:
    """The steps of the module docstring over one stack's Redis, JetStream and object store."""

    def __init__(self, settings: Settings, redis: aioredis.Redis, js: JetStreamContext, store: ObjectStore):
        self.s, self.redis, self.js, self.store = settings, redis, js, store
        self.key = layout_key(settings.redis_prefix)
        self._stamp = redis.register_script(_STAMP)

    async def stack_layout(self) -> int:
        """The stack's layout: ``P:layout version``; none yet: the first layout (an empty stack is migrated in
        no time, so it needs no exception)."""
        raw = await self.redis.hget(self.key, VERSION)
        return int(raw) if raw else contract.FIRST_LAYOUT

    async def run(
        self, *, batch: int = BATCH, max_batches: int | None = None, full: bool = False
    ) -> Migration:
        """Every step, or none when the stack is at this layout already (``full``: every step anyway)."""
        started = time.monotonic()
        m = Migration(found=await self.stack_layout())
        if m.found > LAYOUT:
            raise NewerLayout(
                f"the stack is at layout {m.found}, written by a newer release than this one (layout {LAYOUT}): "
                "run the newer release, or restore a backup made by this one"
            )
        if m.found == LAYOUT and not full:
            m.complete = True
            return m
        if not await self.records(m, batch, max_batches):
            m.seconds = time.monotonic() - started
            return m
        await self.streams(m)
        await self.config(m)
        await self.indexes(m)
        await self.objects(m)
        await self.redis.hset(self.key, VERSION, str(LAYOUT))
        m.complete = True
        m.seconds = time.monotonic() - started
        log.info(
            "migrate.done", **{k: v for k, v in asdict(m).items() if k != "steps"}, steps=",".join(m.steps)
        )
        return m

    async def records(self, m: Migration, batch: int, max_batches: int | None) -> bool:
        """Stamp every unstamped record, resuming at the saved cursor; False when ``max_batches`` stopped it."""
        raw = await self.redis.hget(self.key, RECORDS_CURSOR)
        cursor, batches = int(raw or 0), 0
        match = f"{self.s.redis_prefix}:image:*"
        while True:
            if max_batches is not None and batches >= max_batches:
                log.info("migrate.paused", cursor=cursor, scanned=m.scanned, stamped=m.stamped)
                return False
            cursor, keys = await self.redis.scan(cursor, match=match, count=batch, _type="hash")
            batches += 1
            m.scanned += len(keys)
            if keys:
                m.stamped += int(await self._stamp(keys=keys, args=[LAYOUT_FIELD, str(LAYOUT)]))
            if cursor == 0:
                await self.redis.hdel(self.key, RECORDS_CURSOR)
                m.steps.append("records")
                return True
            await self.redis.hset(self.key, RECORDS_CURSOR, str(cursor))

    async def streams(self, m: Migration) -> None:
        """The streams' configs as this release writes them, and the layout on the coordinators' consumer."""
        await ensure_streams(self.js, self.s)
        try:
            info = await self.js.consumer_info(self.s.stream, self.s.consumer)
        except NotFoundError:  # no coordinator has run yet: it creates the consumer with the layout
            pass
        else:
            if stamped_layout(info.config.metadata) < LAYOUT:
                cfg = info.config
                cfg.metadata = {**(cfg.metadata or {}), **contract.layout_metadata()}
                await self.js.add_consumer(self.s.stream, cfg)
        m.steps.append("streams")

    async def config(self, m: Migration) -> None:
        """The Config DB's bucket, stamped on its stream (``KV_<bucket>``)."""
        await ConfigStore.open(self.js, self.s.config_bucket, MeshConfig(), replicas=self.s.stream_replicas)
        info = await self.js.stream_info(f"KV_{self.s.config_bucket}")
        if stamped_layout(info.config.metadata) < LAYOUT:
            cfg = info.config
            cfg.metadata = {**(cfg.metadata or {}), **contract.layout_metadata()}
            await self.js.update_stream(cfg)
        m.steps.append("config")

    async def indexes(self, m: Migration) -> None:
        await self.redis.hset(self.key, INDEXES, str(LAYOUT))
        m.steps.append("indexes")

    async def objects(self, m: Migration) -> None:
        await self.store.put(LAYOUT_OBJECT, json.dumps({"layout": LAYOUT}).encode(), "application/json")
        m.steps.append("objects")


async def migrate(
    settings: Settings, *, batch: int = BATCH, max_batches: int | None = None, full: bool = False
) -> Migration:
    """Migrate the stack of ``settings`` (as the operators): see the module docstring."""
    nc = await nats.connect(
        settings.nats_server_url, user="ops", password=settings.nats_password("ops"), max_reconnect_attempts=2
    )
    redis = aioredis.Redis.from_url(settings.redis_server_url)
    try:
        async with ObjectStore(settings, identity="ops") as store:
            return await Migrator(settings, redis, nc.jetstream(), store).run(
                batch=batch, max_batches=max_batches, full=full
            )
    finally:
        await redis.aclose()
        await nc.close()


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="the result as JSON on stdout")
    p.add_argument("--batch", type=int, default=BATCH, help="records per SCAN step (default %(default)s)")
    p.add_argument("--max-batches", type=int, default=None, help="stop after this many record batches")
    p.add_argument(
        "--full",
        action="store_true",
        help="stamp records again on a stack already at this layout (see above)",
    )


async def run(args: argparse.Namespace, settings: Settings) -> int:
    """``mesh migrate``: the exit codes of the module docstring."""
    try:
        m = await migrate(settings, batch=max(1, args.batch), max_batches=args.max_batches, full=args.full)
    except NewerLayout as e:
        print(f"mesh migrate: {e}", file=sys.stderr)
        return EXIT_USAGE
    except (MeshError, RedisError, OSError, TimeoutError, nats.errors.Error) as e:
        print(f"mesh migrate: a store does not answer: {type(e).__name__}: {e}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    if args.json:
        print(json.dumps(asdict(m), indent=2, sort_keys=True))
    else:
        state = "at layout" if m.complete else "stopped before layout"
        print(
            f"{state} {m.layout} (found {m.found}): {m.stamped} of {m.scanned} records stamped, "
            f"steps {', '.join(m.steps) or 'none'}, {m.seconds:.1f} s",
            file=sys.stderr,
        )
    return EXIT_OK if m.complete else EXIT_PARTIAL


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="mesh migrate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(ap)
    args = ap.parse_args(argv)
    logs_to_stderr()
    return asyncio.run(run(args, Settings()))


if __name__ == "__main__":
    sys.exit(main())
