"""``python -m ops.stack run|up|down|ps``: the local mesh on one machine (what ``make run`` calls)."""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from actors.settings import Settings
from ops.stack.prepare import prepare
from ops.stack.supervisor import Stack, StackError


def addresses(s: Settings) -> str:
    h = s.host
    return "\n".join(
        [
            f"  gateway      http://{h}:{s.gateway_port}   (web page /, API docs /docs, metrics /metrics)",
            *(
                [
                    f"  worker       http://{h}:{s.coordinator_http_port}/health  /metrics   (Temporal's, for the coordinator)",
                    f"  temporal     {s.temporal_server_address}   web UI http://{h}:{s.temporal_ui_port}",
                ]
                if s.workflow_engine == "temporal"
                else [f"  coordinator  http://{h}:{s.coordinator_http_port}/health  /metrics"]
            ),
            f"  config       http://{h}:{s.config_http_port}/config  /health  /metrics",
            f"  indexer      http://{h}:{s.indexer_http_port}/health  /metrics",
            f"  nats         nats://{h}:{s.nats_port}   monitoring http://{h}:{s.nats_monitor_port}",
            f"  redis        redis://{h}:{s.redis_port}   (user {s.redis_user})",
            f"  s3           http://{h}:{s.s3_port}   bucket {s.s3_bucket}",
            f"  triton       http://{h}:{s.triton_http_port}  grpc {h}:{s.triton_grpc_port}"
            f"  metrics http://{h}:{s.triton_metrics_port}/metrics",
            f"  logs         {s.log_dir.resolve()}/<service>.log",
        ]
    )


def cmd_run(stack: Stack) -> int:
    prepare(stack.settings)
    proc = stack.launch_supervisord()
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        stack.start()
        print(f"\nimage mesh is up:\n{addresses(stack.settings)}\n\nCtrl-C stops everything.", flush=True)
        while not stop.is_set() and proc.poll() is None:
            stop.wait(1)
    except StackError as e:
        print(f"stack failed: {e}", file=sys.stderr)
        return 1
    finally:
        print("stopping...", flush=True)
        stack.shutdown()
        proc.wait(timeout=60)
    return 0


def cmd_up(stack: Stack) -> int:
    prepare(stack.settings)
    if stack.ctl("pid").returncode != 0:
        stack.launch_supervisord()
    try:
        stack.start()
    except StackError as e:
        print(f"stack failed: {e}", file=sys.stderr)
        return 1
    print(f"image mesh is up:\n{addresses(stack.settings)}\n`make down` stops it.")
    return 0


def cmd_down(stack: Stack) -> int:
    stack.shutdown()
    print("stack stopped")
    return 0


def cmd_ps(stack: Stack) -> int:
    pids = stack.pids()
    bad = 0
    for name, problem in stack.health().items():
        state = "healthy" if problem is None else f"UNHEALTHY: {problem}"
        bad += problem is not None
        print(f"{name:12} pid {pids.get(name) or '-':>8}  {state}")
    return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ops.stack")
    parser.add_argument("command", choices=["run", "up", "down", "ps"])
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated services to run (e.g. nats,redis,s3: the servers alone, for mesh restore)",
    )
    args = parser.parse_args(argv)
    only = tuple(n for n in args.only.split(",") if n) or None
    stack = Stack(Settings(), only=only)
    return {"run": cmd_run, "up": cmd_up, "down": cmd_down, "ps": cmd_ps}[args.command](stack)


if __name__ == "__main__":
    sys.exit(main())
