"""mesh check: an invariant report over the object store, Redis and JetStream. Reads only; repairs nothing.

    python -m ops.check [--json] [--grace S]        (also: mesh check)

Walks every source the reconciler walks (``actors/reconcile_scan.py``: upload intents, records, vectors,
originals), whole, and counts every anomaly it would repair (``actors/reconcile_rules.py``: pending without
job, stuck, orphaned object, done without vector, vector without record, stale intent) plus two it cannot:
images with two ``done`` entries caused by the same delivery of the same job, and (model, image) pairs with
more than one vector; under Temporal, workflows open past their retry policy and images whose workflow failed
without an ``error`` record (``ops/check_temporal.py``). ``--grace`` overrides the Config DB's ``reconcile_grace_s`` (what is younger is work in
flight, not an anomaly). Exit 0: no anomaly; 1: some; 4: a store does not answer; 2: bad settings.

Runs as an operator with the stack's ``MESH_*`` settings: NATS as the ``ops`` user (the config, the work
stream and its consumer), Redis as the operators' user, S3 as the operators' identity.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from collections import Counter
from dataclasses import dataclass, field

import redis.asyncio as aioredis
from nats.aio.client import Client

from actors import contract
from actors.adapters.embedder import Embedder
from actors.adapters.object_store import ObjectStore
from actors.adapters.upload_intents import IntentTable
from actors.adapters.vector_index import VectorIndex
from actors.adapters.workflow_store import WorkflowStore
from actors.contract import ConfigGet, MeshConfig
from actors.errors import MeshError, PermanentError, RetryableError
from actors.reconcile_rules import Kind, indexed_twice, policy_for
from actors.reconcile_scan import START, Inspector, Source, StreamJobs
from actors.rpc import call
from actors.settings import Settings

EXIT_OK, EXIT_ANOMALIES, EXIT_USAGE, EXIT_UNAVAILABLE = 0, 1, 2, 4
BATCH = 500
EXAMPLES = 5  # ids shown per kind


@dataclass
class Report:
    anomalies: dict[str, int]
    scanned: dict[str, int]
    grace_s: float
    seconds: float = 0.0
    examples: dict[str, list[str]] = field(default_factory=dict)

    def add(self, found: dict[str, list[str]], source: str, scanned: int) -> None:
        """Count another source's anomalies (each kind's images) into the report."""
        self.scanned[source] = scanned
        for kind, ids in found.items():
            self.anomalies[kind] = len(ids)
            if ids:
                self.examples[kind] = ids[:EXAMPLES]

    @property
    def total(self) -> int:
        return sum(self.anomalies.values())

    def as_dict(self) -> dict[str, object]:
        return {
            "ok": self.total == 0,
            "total": self.total,
            "anomalies": self.anomalies,
            "examples": self.examples,
            "scanned": self.scanned,
            "grace_s": self.grace_s,
            "seconds": self.seconds,
        }


async def check(
    inspector: Inspector,
    vectors: VectorIndex,
    cfg: MeshConfig,
    grace_s: float | None = None,
    batch: int = BATCH,
    labelled: bool = False,
) -> Report:
    """Walk every source whole and count what is wrong (no repair); ``labelled``: the active model has a
    classifier (done images without labels count)."""
    started = time.perf_counter()
    consumer = await inspector.jobs.facts()
    policy = policy_for(cfg, consumer, grace_s=grace_s, labelled=labelled)
    counts: Counter[str] = Counter()
    scanned: Counter[str] = Counter()
    examples: dict[str, list[str]] = {}
    strays: list[tuple[str, str]] = []
    for source in Source:
        cursor = START
        while True:
            found = await inspector.batch(source, cursor, batch, policy, consumer, time.time())
            scanned[source.value] += found.scanned
            strays += found.strays
            for f in found.findings:
                counts[f.kind.value] += 1
                shown = examples.setdefault(f.kind.value, [])
                if len(shown) < EXAMPLES:
                    shown.append(f.image_id or f.key)
            cursor = found.cursor
            if cursor == START:
                break
    counts[Kind.VECTOR_INDEXED_TWICE.value] = indexed_twice(strays, await _with_own_doc(vectors, strays))
    return Report(
        anomalies={k.value: counts.get(k.value, 0) for k in Kind},
        scanned={s.value: scanned.get(s.value, 0) for s in Source},
        grace_s=policy.grace_s,
        seconds=round(time.perf_counter() - started, 3),
        examples=examples,
    )


async def _with_own_doc(vectors: VectorIndex, strays: list[tuple[str, str]]) -> set[tuple[str, str]]:
    """The strays' (model, image) pairs whose image also has its own document."""
    own: set[tuple[str, str]] = set()
    for model, image_id in set(strays):
        with contextlib.suppress(PermanentError):  # a stray holding no valid id has no own document
            if await vectors.present(model, [image_id]):
                own.add((model, image_id))
    return own


async def report_for(settings: Settings, nc: Client, grace_s: float | None = None) -> Report:
    """Open the stores with the operators' credentials, check, close them."""
    cfg = await call(nc, contract.CONFIG_GET, ConfigGet(), MeshConfig, 10.0)
    store = WorkflowStore(settings.redis_server_url, settings.redis_prefix)
    redis = aioredis.Redis.from_url(settings.redis_server_url, socket_timeout=10)
    try:
        async with (
            VectorIndex.from_settings(settings) as vectors,
            ObjectStore(settings) as objects,
            Embedder.from_settings(settings) as embedder,
        ):
            labelled = await embedder.classifies(cfg.active_model)
            inspector = Inspector(
                records=store,
                vectors=vectors,
                objects=objects,
                intents=IntentTable(redis, settings.redis_prefix),
                jobs=StreamJobs(nc.jetstream(), settings.stream, settings.consumer),
            )
            report = await check(inspector, vectors, cfg, grace_s, labelled=labelled)
            if settings.workflow_engine == "temporal":  # the engine's side (ops/check_temporal.py)
                from ops.check_temporal import temporal_anomalies  # Temporal's SDK only when it is the engine

                policy = policy_for(cfg, await inspector.jobs.facts(), grace_s=grace_s, labelled=labelled)
                found, scanned = await temporal_anomalies(settings, store, policy.stuck_after_s)
                report.add(found, "workflows", scanned)
            return report
    finally:
        await store.close()
        await redis.aclose()


def print_report(report: Report, as_json: bool) -> None:
    if as_json:
        print(json.dumps(report.as_dict(), sort_keys=True))
        return
    scanned = ", ".join(f"{n} {s}" for s, n in report.scanned.items())
    print(f"scanned {scanned} in {report.seconds:.1f} s (grace {report.grace_s:.0f} s)")
    for kind, n in report.anomalies.items():
        shown = " ".join(report.examples.get(kind, []))
        print(f"  {kind:<22} {n:>6}{'  e.g. ' + shown if n else ''}")
    print("no anomaly" if report.total == 0 else f"{report.total} anomalies (`mesh reconcile` repairs most)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--grace", type=float, metavar="S", help="seconds of work in flight to leave alone")
    p.add_argument("--json", action="store_true", help="print the report as JSON")


async def run(args: argparse.Namespace, settings: Settings, nc: Client) -> int:
    """``mesh check`` / ``python -m ops.check`` on an open ``ops`` connection; returns the exit code."""
    try:
        report = await report_for(settings, nc, args.grace)
    except RetryableError as e:
        print(f"mesh check: a store does not answer: {e.message}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except MeshError as e:
        print(f"mesh check: {e.message}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    print_report(report, args.json)
    return EXIT_OK if report.total == 0 else EXIT_ANOMALIES


async def _main(args: argparse.Namespace) -> int:
    from ops.replay import run_connected

    try:
        settings = Settings()
    except ValueError as e:
        print(f"bad MESH_* settings: {e}", file=sys.stderr)
        return EXIT_USAGE
    return await run_connected(settings, "mesh-check", lambda nc: run(args, settings, nc))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ops.check", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return asyncio.run(_main(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
