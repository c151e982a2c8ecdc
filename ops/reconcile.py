"""mesh reconcile: one full reconcile pass now, and the repairs it made by kind.

    mesh reconcile [--json] [--grace S] [--timeout S]

The pass is the coordinator's (``coordinator.reconcile``, ``actors/reconciler.py``): it walks every source
whole under the reconciler's lease and repairs what it finds, each repair counted in
``mesh_reconcile_repairs_total{kind}`` and written into the image's history (cause ``reconcile``). The
periodic reconciler does the same a bounded batch at a time, every ``reconcile_period_s``. ``--grace``
overrides the Config DB's ``reconcile_grace_s``. Connects as the ``ops`` NATS user with the ``MESH_*``
settings. Exit 0 (whatever it repaired; ``mesh check`` says what is left), 4 when the coordinator does not
answer.
"""

from __future__ import annotations

import argparse
import json
import sys

from nats.aio.client import Client

from actors import contract
from actors.contract import ReconcileReply, ReconcileRequest
from actors.errors import MeshError, RetryableError
from actors.rpc import call

EXIT_OK, EXIT_FAILED, EXIT_UNAVAILABLE = 0, 1, 4
TIMEOUT_S = 300.0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--grace", type=float, metavar="S", help="seconds of work in flight to leave alone")
    p.add_argument("--timeout", type=float, default=TIMEOUT_S, metavar="S", help="seconds to wait (300)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


async def reconcile(nc: Client, grace_s: float | None = None, timeout_s: float = TIMEOUT_S) -> ReconcileReply:
    """Ask the coordinators for one full pass (one of them answers)."""
    req = ReconcileRequest(grace_s=grace_s)
    return await call(nc, contract.COORDINATOR_RECONCILE, req, ReconcileReply, timeout_s)


async def run(args: argparse.Namespace, nc: Client) -> int:
    try:
        reply = await reconcile(nc, args.grace, args.timeout)
    except RetryableError as e:
        print(f"mesh reconcile: the coordinator does not answer: {e.message}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except MeshError as e:
        print(f"mesh reconcile: {e.message}", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        body = {"repairs": reply.repairs, "scanned": reply.scanned, "seconds": reply.seconds}
        print(json.dumps(body, sort_keys=True))
        return EXIT_OK
    scanned = ", ".join(f"{n} {s}" for s, n in reply.scanned.items())
    print(f"scanned {scanned} in {reply.seconds:.1f} s")
    for kind, n in reply.repairs.items():
        print(f"  {kind:<22} {n:>6} repaired")
    return EXIT_OK
