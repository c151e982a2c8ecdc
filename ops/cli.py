"""mesh: the image similarity mesh for people at a terminal.

    mesh ingest DIR            upload a folder (8 at a time, resumable: a rerun skips what the mesh has)
    mesh status ID             an image's state and history (--wait S: until done or error)
    mesh similar ID|FILE       the most similar stored images (a FILE is searched without being stored)
    mesh events                image events as JSON lines, live (or --since TIME from the IMAGE_EVENTS stream)
    mesh replay ...            run dead-lettered or errored images again (see ``mesh replay -h``)
    mesh reconcile             one full reconcile pass now: repair what is stuck or orphaned, by kind
    mesh check                 an invariant report (read only); exit 1 if anything is stuck or orphaned

HTTP commands talk to the gateway (``--url``, default ``http://$MESH_HOST:$MESH_GATEWAY_PORT``; API key from
``--api-key`` or ``MESH_API_KEY``). ``events``, ``replay``, ``reconcile`` and ``check`` connect to NATS as the
``ops`` user with the ``MESH_*`` settings (``MESH_NATS_URL`` or ``MESH_HOST``/``MESH_NATS_PORT``,
``MESH_NATS_PASSWORD_OPS``); ``check`` also reads Redis and S3 with the operators' credentials.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import msgspec
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

EXIT_OK = 0  # done
EXIT_PARTIAL = 1  # some files refused or failed; an image ended in error; a replay id unknown
EXIT_USAGE = 2  # bad arguments or settings
EXIT_NOT_FOUND = 3  # no such image (404), or the gateway lacks the endpoint
EXIT_UNAVAILABLE = 4  # the gateway / NATS / a service does not answer (connection error, 5xx, timeout)
EXIT_UNAUTHORIZED = 5  # 401: missing or wrong API key; 403: a key without the scope
EXIT_CONFLICT = 6  # 409: the image is not indexed yet
EXIT_CODES = (
    f"exit codes: {EXIT_OK} ok, {EXIT_PARTIAL} partly failed (refused/failed files, image in error),\n"
    f"{EXIT_USAGE} usage, {EXIT_NOT_FOUND} not found, {EXIT_UNAVAILABLE} unavailable, "
    f"{EXIT_UNAUTHORIZED} unauthorized, {EXIT_CONFLICT} not indexed yet"
)

err = Console(stderr=True)


class CliError(Exception):
    """An error for the person at the terminal: a message and an exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.message, self.code = message, code


def default_url(env: Mapping[str, str] = os.environ) -> str:
    host = env.get("MESH_HOST", "127.0.0.1")
    if host in ("0.0.0.0", "::"):  # a bind-all address is not where to connect
        host = "127.0.0.1"
    return f"http://{host}:{env.get('MESH_GATEWAY_PORT', '8080')}"


def exit_code_for(status: int) -> int:
    """The exit code for an HTTP error status from the gateway."""
    if status in (401, 403):  # no valid key, or one without the scope
        return EXIT_UNAUTHORIZED
    if status == 404:
        return EXIT_NOT_FOUND
    if status == 409:
        return EXIT_CONFLICT
    if status >= 500 or status == 429:  # 429: the key is over its rate for now
        return EXIT_UNAVAILABLE
    return EXIT_PARTIAL


def error_message(r: httpx.Response) -> str:
    try:
        e = r.json()["error"]
        return f"{e['message']} ({e['code']}, HTTP {r.status_code})"
    except (ValueError, KeyError, TypeError):
        return f"HTTP {r.status_code}: {r.text[:200]}"


def check(r: httpx.Response) -> dict[str, Any]:
    if r.status_code >= 400:
        raise CliError(error_message(r), exit_code_for(r.status_code))
    body: dict[str, Any] = r.json()
    return body


def http_client(args: argparse.Namespace, timeout: float = 30.0) -> httpx.AsyncClient:
    headers = {"X-API-Key": args.api_key} if args.api_key else {}
    limits = httpx.Limits(max_connections=max(10, getattr(args, "concurrency", 0) * 2))
    return httpx.AsyncClient(base_url=args.url, headers=headers, timeout=timeout, limits=limits)


def print_json(body: Any) -> None:
    print(json.dumps(body, indent=2, sort_keys=True))


def when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


# --- ingest -----------------------------------------------------------------------------------------------
async def cmd_ingest(args: argparse.Namespace) -> int:
    from ops import ingest

    root = Path(args.dir)
    if not await asyncio.to_thread(root.is_dir):
        raise CliError(f"{root} is not a folder", EXIT_USAGE)
    state = ingest.IngestState(Path(args.state) if args.state else root / ingest.STATE_FILE, args.url)
    show = not args.no_progress and not args.json
    progress = Progress(
        TextColumn("[bold]ingest"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[counts]}"),
        TimeElapsedColumn(),
        console=err,
        disable=not show,
    )
    counts: dict[str, int] = {}
    task = progress.add_task("ingest", total=None, counts="")

    def on_result(r: ingest.Outcome) -> None:
        counts[r.outcome] = counts.get(r.outcome, 0) + 1
        text = " ".join(f"{k} {v}" for k, v in sorted(counts.items()))
        progress.update(task, advance=1, counts=text)

    async with http_client(args, timeout=args.timeout) as client:
        with progress:
            summary = await ingest.ingest(
                client,
                root,
                state,
                concurrency=args.concurrency,
                retries=args.retries,
                all_files=args.all,
                on_total=lambda n: progress.update(task, total=n),
                on_result=on_result,
            )
    if args.json:
        print(json.dumps(summary.as_dict()))
    else:
        for line in ingest.summary_lines(summary):
            print(line)
    if any(r.reason and r.reason.startswith(("unauthorized", "forbidden")) for r in summary.results):
        return EXIT_UNAUTHORIZED
    if summary.results and all(r.outcome == "failed" for r in summary.results):
        return EXIT_UNAVAILABLE
    return EXIT_OK if summary.ok else EXIT_PARTIAL


# --- status, similar --------------------------------------------------------------------------------------
async def cmd_status(args: argparse.Namespace) -> int:
    async with http_client(args) as client:
        deadline = time.monotonic() + (args.wait or 0)
        while True:
            rec = check(await client.get(f"/images/{args.image_id}"))
            if rec["status"] in ("done", "error") or time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.5)
    if args.json:
        print_json(rec)
    else:
        out = Console()
        out.print(f"[bold]{rec['image_id']}[/]  {rec['status']}")
        out.print(
            f"  {rec.get('content_type')} {rec.get('width')}x{rec.get('height')} "
            f"{rec.get('size_bytes')} bytes  sha256 {rec.get('sha256')}"
        )
        out.print(f"  model {rec.get('model') or '-'}  dim {rec.get('embedding_dim') or '-'}")
        if rec.get("metadata"):
            out.print(f"  metadata {json.dumps(rec['metadata'])}")
        for h in rec.get("history") or []:
            detail = {k: v for k, v in h.items() if k not in ("status", "at")}
            out.print(f"  {when(h.get('at'))}  {h.get('status', '')} {json.dumps(detail) if detail else ''}")
        if rec.get("error"):
            out.print(f"  [red]error {rec['error']['code']}: {rec['error']['message']}[/]")
    return EXIT_PARTIAL if args.wait and rec["status"] == "error" else EXIT_OK


async def cmd_similar(args: argparse.Namespace) -> int:
    from ops.ingest import IMAGE_SUFFIXES

    target = Path(args.target)
    async with http_client(args) as client:
        if await asyncio.to_thread(target.is_file):
            data = await asyncio.to_thread(target.read_bytes)
            files = {"file": (target.name, data, "application/octet-stream")}
            params = {"k": args.k} if args.k else {}
            r = await client.post("/search/image", files=files, data=params, params=params)
            if r.status_code in (404, 405) and _no_route(r):
                raise CliError(
                    f"this gateway ({args.url}) has no POST /search/image, so a file that is not stored "
                    "cannot be searched; upload it (mesh ingest) and use `mesh similar IMAGE_ID`",
                    EXIT_NOT_FOUND,
                )
        else:
            if "/" in args.target or target.suffix.lower() in IMAGE_SUFFIXES:
                raise CliError(f"no such file: {target}", EXIT_USAGE)
            params = {"k": args.k} if args.k else {}
            r = await client.get(f"/images/{args.target}/similar", params=params)
        body = check(r)
    if args.json:
        print_json(body)
        return EXIT_OK
    table = Table("#", "image_id", "score", title=f"similar to {args.target} ({body.get('model')})")
    for i, hit in enumerate(body.get("results", []), 1):
        table.add_row(str(i), hit["image_id"], f"{hit['score']:.4f}")
    Console().print(table)
    return EXIT_OK


async def cmd_search(args: argparse.Namespace) -> int:
    """``GET /search?q=TEXT``: prints how it searched (the text tower, or the labels) and the results."""
    params: list[tuple[str, str | int | float | bool | None]] = [("q", args.text)]
    params += [("filter", f) for f in args.filter or []]
    if args.k:
        params.append(("k", args.k))
    async with http_client(args) as client:
        body = check(await client.get("/search", params=params))
    if args.json:
        print_json(body)
        return EXIT_OK
    out = Console()
    if body.get("mode") == "labels":
        how = f"labels of {body.get('model')}: " + (", ".join(body.get("labels", [])) or "none matched")
    else:
        how = f"text tower of {body.get('model')}"
    out.print(f"mode: {body.get('mode')} ({how})", highlight=False)
    if body.get("reason"):
        out.print(f"[yellow]{body['reason']}[/]", highlight=False)
    table = Table("#", "image_id", "score", title=f"search {args.text!r}")
    for i, hit in enumerate(body.get("results", []), 1):
        table.add_row(str(i), hit["image_id"], f"{hit['score']:.4f}")
    out.print(table)
    return EXIT_OK


def _no_route(r: httpx.Response) -> bool:
    """A 404/405 from the router itself (no such endpoint), not a 404 about an image."""
    try:
        message = r.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return True
    return message in ("Not Found", "Method Not Allowed")


# --- NATS commands ----------------------------------------------------------------------------------------
def nats_settings() -> Any:
    from actors.settings import Settings

    try:
        return Settings()
    except ValueError as e:
        raise CliError(f"bad MESH_* settings: {e}", EXIT_USAGE) from e


async def cmd_events(args: argparse.Namespace) -> int:
    from actors import contract
    from ops.replay import connect_ops, parse_since

    settings = nats_settings()
    since = parse_since(args.since) if args.since else None
    subject = contract.event_subject(args.status) if args.status else contract.EVENTS_SUBJECTS
    try:
        nc = await asyncio.wait_for(connect_ops(settings, "mesh-events"), timeout=15)
    except Exception as e:  # broad on purpose: whatever stops the connection, the user gets one line
        raise CliError(f"cannot connect to NATS at {settings.nats_server_url}: {e}", EXIT_UNAVAILABLE) from e
    seen = 0
    sub: Any
    try:
        if since is not None:
            from nats.js.api import ConsumerConfig, DeliverPolicy

            config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_TIME, opt_start_time=since)
            sub = await nc.jetstream().subscribe(
                subject, stream=settings.events_stream, ordered_consumer=True, config=config
            )
        else:
            sub = await nc.subscribe(subject)
        async for msg in sub.messages:
            try:
                event = contract.decode(msg.data, contract.ImageEvent)
            except (msgspec.ValidationError, msgspec.DecodeError):
                err.print(f"skipped an undecodable message on {msg.subject}", highlight=False)
                continue
            print(json.dumps(msgspec.to_builtins(event)), flush=True)
            seen += 1
            if args.count and seen >= args.count:
                break
    finally:
        await nc.close()
    return EXIT_OK


async def cmd_replay(args: argparse.Namespace) -> int:
    from ops import replay

    settings = nats_settings()
    try:
        nc = await asyncio.wait_for(replay.connect_ops(settings, "mesh-replay"), timeout=15)
    except Exception as e:  # broad on purpose: whatever stops the connection, the user gets one line
        raise CliError(f"cannot connect to NATS at {settings.nats_server_url}: {e}", EXIT_UNAVAILABLE) from e
    try:
        return await replay.run(args, settings, nc)
    finally:
        await nc.close()


async def cmd_reconcile(args: argparse.Namespace) -> int:
    from ops import reconcile, replay

    settings = nats_settings()
    nc = await _connect_ops(settings, "mesh-reconcile", replay.connect_ops)
    try:
        return await reconcile.run(args, nc)
    finally:
        await nc.close()


async def cmd_check(args: argparse.Namespace) -> int:
    from ops import check, replay

    settings = nats_settings()
    nc = await _connect_ops(settings, "mesh-check", replay.connect_ops)
    try:
        return await check.run(args, settings, nc)
    finally:
        await nc.close()


async def _connect_ops(settings: Any, name: str, connect: Any) -> Any:
    try:
        return await asyncio.wait_for(connect(settings, name), timeout=15)
    except Exception as e:  # broad on purpose: whatever stops the connection, the user gets one line
        raise CliError(f"cannot connect to NATS at {settings.nats_server_url}: {e}", EXIT_UNAVAILABLE) from e


# --- parser -----------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    from ops import replay

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=default_url(), help="the gateway (default: %(default)s)")
    common.add_argument("--api-key", default=os.environ.get("MESH_API_KEY"), help="X-API-Key (MESH_API_KEY)")
    common.add_argument("--json", action="store_true", help="machine-readable output")

    p = argparse.ArgumentParser(
        prog="mesh",
        description=__doc__.split("\n\n")[0],
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("ingest", parents=[common], help="upload a folder of images, resumably")
    s.add_argument("dir", help="the folder (searched recursively; hidden files are skipped)")
    s.add_argument("-c", "--concurrency", type=positive_int, default=8, help="uploads at a time (8)")
    s.add_argument("--retries", type=int, default=3, help="tries again on 503 / connection errors (3)")
    s.add_argument("--timeout", type=float, default=60.0, help="seconds per request (60)")
    s.add_argument("--all", action="store_true", help="send every file, not only image file names")
    s.add_argument("--state", help="the state file (default: DIR/.mesh-ingest.json)")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_ingest)

    s = sub.add_parser("status", parents=[common], help="an image's state and history")
    s.add_argument("image_id")
    s.add_argument("--wait", type=float, metavar="S", help="poll up to S seconds for done or error")
    s.set_defaults(func=cmd_status)

    s = sub.add_parser("similar", parents=[common], help="the stored images most like an image id or a file")
    s.add_argument("target", metavar="ID|FILE", help="a stored image's id, or a local image file")
    s.add_argument("-k", type=positive_int, help="how many results (default: the mesh's default_k)")
    s.set_defaults(func=cmd_similar)

    s = sub.add_parser("search", parents=[common], help="images matching words (text tower or labels)")
    s.add_argument("text", help="what to look for, e.g. 'cat'")
    s.add_argument("-k", type=positive_int, help="how many results (default: the mesh's default_k)")
    s.add_argument(
        "--filter", action="append", metavar="KEY:VALUE", help="only images with this (repeatable)"
    )
    s.set_defaults(func=cmd_search)

    s = sub.add_parser("events", help="print image events as JSON lines (NATS images.events.>)")
    s.add_argument("--status", help="only events of this state (e.g. done, error)")
    s.add_argument("--since", metavar="TIME", help="replay from the IMAGE_EVENTS stream since TIME first")
    s.add_argument("--count", type=positive_int, help="exit after this many events")
    s.set_defaults(func=cmd_events)

    s = sub.add_parser("replay", help="run dead-lettered or errored images again", description=replay.__doc__)
    s.formatter_class = argparse.RawDescriptionHelpFormatter
    replay.add_arguments(s)
    s.set_defaults(func=cmd_replay)

    from ops import check, reconcile

    s = sub.add_parser("reconcile", help="one full reconcile pass now", description=reconcile.__doc__)
    s.formatter_class = argparse.RawDescriptionHelpFormatter
    reconcile.add_arguments(s)
    s.set_defaults(func=cmd_reconcile)

    s = sub.add_parser(
        "check", help="invariant report: anything stuck or orphaned?", description=check.__doc__
    )
    s.formatter_class = argparse.RawDescriptionHelpFormatter
    check.add_arguments(s)
    s.set_defaults(func=cmd_check)
    return p


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "status", None) and args.command == "events":
        from actors.contract import Status

        if args.status not in {s.value for s in Status}:
            parser.error(f"--status: one of {', '.join(s.value for s in Status)}")
    try:
        code: int = asyncio.run(args.func(args))
        return code
    except CliError as e:
        err.print(f"[red]mesh {args.command}:[/] {e.message}", highlight=False)
        return e.code
    except httpx.TransportError as e:
        url = getattr(args, "url", "")
        err.print(
            f"[red]mesh {args.command}:[/] cannot reach {url}: {type(e).__name__}: {e}", highlight=False
        )
        return EXIT_UNAVAILABLE
    except ValueError as e:  # a bad --since
        err.print(f"[red]mesh {args.command}:[/] {e}", highlight=False)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
