"""mesh: the image similarity mesh for people at a terminal.

    mesh ingest DIR            upload a folder (8 at a time, resumable: a rerun skips what the mesh has;
                               --wait: until each image is done or error; --metadata key=value)
    mesh status ID             an image's state and history (--wait S: until done or error)
    mesh similar ID|FILE       the most similar stored images (a FILE is searched without being stored)
    mesh search TEXT           images matching words; ``--image FILE``: images like a local file
    mesh duplicates [ID]       near-duplicate groups of the whole index, or the near-duplicates of one image
    mesh delete ID...          delete images everywhere (index, object store, record)
    mesh models                the models, the active one, a switch's progress; ``models switch NAME``
    mesh config get|set        the runtime configuration (the Config DB), as the ops user
    mesh demo                  ingest the photos scikit-image ships, then suggest commands to try
    mesh events                image events as JSON lines, live (or --since TIME from the IMAGE_EVENTS stream)
    mesh replay ...            run dead-lettered or errored images again (see ``mesh replay -h``)
    mesh reconcile             one full reconcile pass now: repair what is stuck or orphaned, by kind
    mesh check                 an invariant report (read only); exit 1 if anything is stuck or orphaned
    mesh migrate               upgrade the stored data to this release's layout (the stack's start-up runs it)
    mesh backup DIR            a consistent backup of the running mesh (Redis, JetStream, the object store)
    mesh restore DIR           rebuild an empty stack from a backup

HTTP commands talk to the gateway (``--url``, default ``http://$MESH_HOST:$MESH_GATEWAY_PORT``; API key from
``--api-key`` or ``MESH_API_KEY``). ``config``, ``events``, ``replay``, ``reconcile`` and ``check`` connect to
NATS as the ``ops`` user with the ``MESH_*`` settings (``MESH_NATS_URL`` or ``MESH_HOST``/``MESH_NATS_PORT``,
``MESH_NATS_PASSWORD_OPS``); ``check`` also reads Redis and S3 with the operators' credentials. Every command
takes ``--json`` for machine output (on stdout; messages go to stderr) and exits with one of the codes below.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import msgspec
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from actors.settings import package_version
from ops.logs import logs_to_stderr

if TYPE_CHECKING:
    from ops import ingest as ingest_module

EXIT_OK = 0  # done
EXIT_PARTIAL = 1  # some files refused or failed; an image ended in error; a replay id unknown
EXIT_USAGE = 2  # bad arguments or settings
EXIT_NOT_FOUND = 3  # no such image (404), or the gateway lacks the endpoint
EXIT_UNAVAILABLE = 4  # the gateway / NATS / a service does not answer (connection error, 5xx, timeout)
EXIT_UNAUTHORIZED = 5  # 401: missing or wrong API key; 403: a key without the scope
EXIT_CONFLICT = 6  # 409: the image is not indexed yet
EXIT_CODES = (
    f"exit codes: {EXIT_OK} ok, {EXIT_PARTIAL} partly failed (refused/failed files, image in error, a model\n"
    f"switch that failed), {EXIT_USAGE} usage (also: a config value the config actor refused), "
    f"{EXIT_NOT_FOUND} not found,\n{EXIT_UNAVAILABLE} unavailable, {EXIT_UNAUTHORIZED} unauthorized, "
    f"{EXIT_CONFLICT} not indexed yet"
)

err = Console(stderr=True, soft_wrap=True)  # messages are never cut into lines: they are grepped


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


# --- ingest, demo -----------------------------------------------------------------------------------------
@dataclass
class IngestRun:
    """What one ``mesh ingest`` (or ``mesh demo``) did: the uploads, and where the images ended when waited."""

    state: ingest_module.IngestState
    summary: ingest_module.Summary
    processed: ingest_module.Processed | None = None

    def as_dict(self) -> dict[str, Any]:
        body = self.summary.as_dict() | {"state": str(self.state.path)}
        if self.processed is not None:
            body["processed"] = self.processed.as_dict()
        return body

    def exit_code(self) -> int:
        results = self.summary.results
        if any(r.reason and r.reason.startswith(("unauthorized", "forbidden")) for r in results):
            return EXIT_UNAUTHORIZED
        if results and all(r.outcome == "failed" for r in results):
            return EXIT_UNAVAILABLE
        ok = self.summary.ok and (self.processed is None or self.processed.ok)
        return EXIT_OK if ok else EXIT_PARTIAL


async def ingest_folder(
    args: argparse.Namespace, root: Path, *, metadata: Mapping[str, str | int | float] | None = None
) -> IngestRun:
    """Upload ``root`` (``mesh ingest``'s options in ``args``), then with ``args.wait`` wait for the pipeline.

    Progress bars go to stderr, unless ``--json`` or ``--no-progress``.
    """
    from ops import ingest

    state = ingest.IngestState.for_folder(root, args.url, Path(args.state) if args.state else None)
    try:
        await asyncio.to_thread(state.path.parent.mkdir, parents=True, exist_ok=True)
    except OSError as e:
        raise CliError(
            f"cannot write the state file {state.path}: {e} (name another with --state)", EXIT_USAGE
        ) from e
    if state.migrated_from is not None:
        err.print(
            f"read the old state {escape(str(state.migrated_from))}; from now on: {escape(str(state.path))}",
            highlight=False,
        )
    show = not args.no_progress and not args.json
    progress = Progress(
        TextColumn("[bold]{task.description:<10}"),
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
                metadata=metadata,
                on_total=lambda n: progress.update(task, total=n),
                on_result=on_result,
            )
            run = IngestRun(state, summary)
            images = {r.path: r.image_id for r in summary.results if r.image_id}
            if args.wait and images:
                waiting = progress.add_task("processed", total=len(set(images.values())), counts="")

                def on_update(p: ingest.Processed) -> None:
                    finished = p.count("done") + len(p.errors)
                    text = f"done {p.count('done')} error {len(p.errors)}"
                    progress.update(waiting, completed=finished, counts=text)

                try:
                    run.processed = await ingest.wait_processed(
                        client, images, timeout_s=args.wait_timeout, on_update=on_update
                    )
                except httpx.HTTPStatusError as e:
                    raise CliError(error_message(e.response), exit_code_for(e.response.status_code)) from e
                gone = [image_id for image_id, rec in run.processed.records.items() if rec is None]
                if gone:  # deleted since they were uploaded: the next ingest uploads them again
                    state.forget_images(gone)
                    await asyncio.to_thread(state.save)
    return run


def print_ingest(run: IngestRun) -> None:
    """The human report of an ingest: the uploads' summary, then (waited) each image that ended in error."""
    from ops import ingest

    for line in ingest.summary_lines(run.summary):
        print(line)
    if run.processed is not None:
        for line in ingest.processed_lines(run.processed):
            print(line)


async def cmd_ingest(args: argparse.Namespace) -> int:
    from ops import ingest

    root = Path(args.dir)
    if not await asyncio.to_thread(root.is_dir):
        raise CliError(f"{root} is not a folder", EXIT_USAGE)
    try:
        metadata = ingest.parse_metadata_pairs(args.metadata or [])
    except ValueError as e:
        raise CliError(str(e), EXIT_USAGE) from e
    run = await ingest_folder(args, root, metadata=metadata)
    if args.json:
        print(json.dumps(run.as_dict()))
    else:
        print_ingest(run)
    return run.exit_code()


async def cmd_demo(args: argparse.Namespace) -> int:
    """``mesh demo``: write the demo photos, ingest them and wait, then print commands to try."""
    from ops import demo

    folder = Path(args.dir) if args.dir else demo.default_folder()
    try:
        await asyncio.to_thread(demo.write_photos, folder)
    except demo.PhotosUnavailable as e:
        raise CliError(str(e), EXIT_USAGE) from e
    except OSError as e:
        raise CliError(
            f"cannot write the demo photos into {folder}: {e} (name another with --dir)", EXIT_USAGE
        ) from e
    run = await ingest_folder(args, folder, metadata=demo.METADATA)
    images = {r.path: r.image_id for r in run.summary.results if r.image_id}
    examples = demo.example_commands(images, folder)
    if args.json:
        print(json.dumps(run.as_dict() | {"folder": str(folder), "try": [c for c, _ in examples]}))
        return run.exit_code()
    print_ingest(run)
    out = Console()
    out.print(f"\nthe demo photos are in {escape(str(folder))}; try:", highlight=False)
    width = max(len(c) for c, _ in examples)
    for command, what in examples:
        out.print(f"  [bold]{escape(f'{command:<{width}}')}[/]  [dim]# {escape(what)}[/]", highlight=False)
    return run.exit_code()


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
    title = f"similar to {escape(args.target)} ({body.get('model')})"
    Console().print(hits_table(body.get("results", []), title))
    return EXIT_OK


async def cmd_search(args: argparse.Namespace) -> int:
    """``GET /search?q=TEXT``: prints how it searched (the text tower, or the labels) and the results.
    ``--image FILE``: ``POST /search/image``, the stored images most like a local file (nothing is stored)."""
    if (args.text is None) == (args.image is None):
        raise CliError("give TEXT or --image FILE (one of them, not both)", EXIT_USAGE)
    if args.image is not None:
        return await cmd_search_image(args)
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
    out.print(hits_table(body.get("results", []), f"search {escape(repr(args.text))}"))
    return EXIT_OK


async def cmd_search_image(args: argparse.Namespace) -> int:
    path = Path(args.image)
    if not await asyncio.to_thread(path.is_file):
        raise CliError(f"no such file: {path}", EXIT_USAGE)
    data = await asyncio.to_thread(path.read_bytes)
    params: list[tuple[str, str | int | float | bool | None]] = [("filter", f) for f in args.filter or []]
    if args.k:
        params.append(("k", args.k))
    async with http_client(args) as client:
        r = await client.post(
            "/search/image", files={"file": (path.name, data, "application/octet-stream")}, params=params
        )
        body = check(r)
    if args.json:
        print_json(body)
        return EXIT_OK
    Console().print(hits_table(body.get("results", []), f"like {escape(path.name)} ({body.get('model')})"))
    return EXIT_OK


def hits_table(hits: list[dict[str, Any]], title: str) -> Table:
    """Search results as a table: rank, image id, score (and the tier of duplicates)."""
    tiers = any("tier" in hit for hit in hits)
    table = Table("#", "image_id", "score", *(["tier"] if tiers else []), title=title)
    for i, hit in enumerate(hits, 1):
        table.add_row(
            str(i), hit["image_id"], f"{hit['score']:.4f}", *([hit.get("tier", "")] if tiers else [])
        )
    return table


# --- delete -----------------------------------------------------------------------------------------------
DELETE_CONCURRENCY = 8


async def cmd_delete(args: argparse.Namespace) -> int:
    """``DELETE /images/{id}`` for each id (8 at a time): 204 deleted, 404 not found (unknown or already gone).

    Exit 0 when every image was deleted, 3 when some were not found, the error's code when a call failed
    (the first such, e.g. 5 unauthorized, 4 unavailable); every id is tried either way.
    """
    ids = list(dict.fromkeys(args.image_ids))
    deleted: list[str] = []
    not_found: list[str] = []
    failed: list[dict[str, Any]] = []
    gate = asyncio.Semaphore(DELETE_CONCURRENCY)
    codes: dict[str, int] = {}  # image id -> the exit code its failure means

    async def delete(client: httpx.AsyncClient, image_id: str) -> None:
        async with gate:
            try:
                r = await client.delete(f"/images/{image_id}")
            except httpx.TransportError as e:
                failed.append({"image_id": image_id, "error": f"{type(e).__name__}: {e}"})
                codes[image_id] = EXIT_UNAVAILABLE
                return
        if r.status_code == 204:
            deleted.append(image_id)
        elif r.status_code == 404 and not _no_route(r):
            not_found.append(image_id)
        else:
            failed.append({"image_id": image_id, "error": error_message(r)})
            codes[image_id] = exit_code_for(r.status_code)

    async with http_client(args) as client:
        await asyncio.gather(*(delete(client, i) for i in ids))
    order = {image_id: n for n, image_id in enumerate(ids)}
    deleted.sort(key=order.__getitem__)
    not_found.sort(key=order.__getitem__)
    failed.sort(key=lambda f: order[f["image_id"]])
    if args.json:
        print(json.dumps({"deleted": deleted, "not_found": not_found, "failed": failed}))
    else:
        out = Console()
        for image_id in deleted:
            out.print(f"deleted {image_id}", highlight=False)
        for image_id in not_found:
            out.print(
                f"[yellow]not found: {image_id}[/] (no such image, or already deleted)", highlight=False
            )
        for f in failed:
            out.print(f"[red]failed: {f['image_id']}: {f['error']}[/]", highlight=False)
    if failed:  # the first failure in the order given
        return codes[failed[0]["image_id"]]
    return EXIT_NOT_FOUND if not_found else EXIT_OK


# --- duplicates -------------------------------------------------------------------------------------------
GROUPS_PAGE = 1000  # groups per GET /duplicates (the most it takes): every page scans the whole index


def _tier_of(body: dict[str, Any]) -> str:
    """How a duplicates reply decided: verified copies, or cosine alone at its cut."""
    if body.get("mode") == "similar":
        return f"tier similar: cosine >= {body.get('threshold')}, {body.get('model')}"
    pending = f"; {body['pending']} image(s) still being checked" if body.get("pending") else ""
    unchecked = "; this image's look-alikes are not verified yet" if body.get("checked") is False else ""
    return f"tier copy: verified copies, {body.get('model')}{pending}{unchecked}"


async def cmd_duplicates(args: argparse.Namespace) -> int:
    """``mesh duplicates``: every duplicate group (``GET /duplicates``, following ``next_cursor``), at most
    ``--limit``; ``mesh duplicates ID``: that image's duplicates (``GET /images/{id}/duplicates``). The tier
    (``--mode``): verified copies (default) or cosine similarity alone."""
    async with http_client(args, timeout=max(30.0, args.timeout)) as client:
        if args.image_id:
            params: dict[str, Any] = {"mode": args.mode} | ({"k": args.limit} if args.limit else {})
            if args.threshold is not None:
                params["threshold"] = args.threshold
            body = check(await client.get(f"/images/{args.image_id}/duplicates", params=params))
        else:
            body = await duplicate_groups(client, args.threshold, args.limit, args.mode)
    if args.json:
        print_json(body)
        return EXIT_OK
    out = Console()
    if args.image_id:
        title = f"duplicates of {escape(args.image_id)} ({_tier_of(body)})"
        out.print(hits_table(body.get("results", []), title))
        if not body.get("results"):
            out.print("none", highlight=False)
        return EXIT_OK
    groups = body["groups"]
    more = f" (first {len(groups)} of {body['total_groups']})" if len(groups) < body["total_groups"] else ""
    out.print(f"{body['total_groups']} duplicate group(s){more} ({_tier_of(body)})", highlight=False)
    if groups:
        table = Table("#", "tier", "size", "image ids")
        for i, g in enumerate(groups, 1):
            table.add_row(str(i), g.get("tier", ""), str(g["size"]), " ".join(g["image_ids"]))
        out.print(table)
    return EXIT_OK


async def duplicate_groups(
    client: httpx.AsyncClient, threshold: float | None, limit: int | None, mode: str = "copies"
) -> dict[str, Any]:
    """Every page of ``GET /duplicates`` (``next_cursor`` until null) as one body, at most ``limit`` groups.

    Each page is a scan of the whole index in the indexer, so pages are as large as the gateway allows.
    """
    groups: list[dict[str, Any]] = []
    cursor = ""
    while True:
        size = GROUPS_PAGE if limit is None else min(GROUPS_PAGE, limit - len(groups))
        params: dict[str, Any] = {"limit": size, "cursor": cursor, "mode": mode}
        if threshold is not None:
            params["threshold"] = threshold
        page = check(await client.get("/duplicates", params=params))
        groups += page["groups"]
        cursor = page.get("next_cursor") or ""
        if not cursor or (limit is not None and len(groups) >= limit):
            break
    return {k: v for k, v in page.items() if k != "next_cursor"} | {"groups": groups}


# --- models -----------------------------------------------------------------------------------------------
SWITCH_FINISHED = ("done", "failed", "cancelled")
SWITCH_CLOCK_LEEWAY_S = 60.0


async def cmd_models(args: argparse.Namespace) -> int:
    """``GET /models``: every model Triton serves, the active one, and the latest switch's progress."""
    async with http_client(args) as client:
        body = check(await client.get("/models"))
    if args.json:
        print_json(body)
        return EXIT_OK
    out = Console()
    out.print(f"active model: [bold]{body['active']}[/]", highlight=False)
    table = Table("", "model", "kind", "dim", "ready", "vectors")
    for m in body.get("models", []):
        vectors = m.get("vectors")
        table.add_row(
            "*" if m.get("active") else "",
            m["name"],
            str(m.get("kind") or "-"),
            str(m.get("dim") or "-"),
            "yes" if m.get("ready") else "no",
            "-" if vectors is None else str(vectors),
        )
    out.print(table)
    if body.get("switch"):
        out.print(switch_line(body["switch"]), highlight=False)
    return EXIT_OK


def switch_line(sw: Mapping[str, Any]) -> str:
    """One line about a switch: its model, state, images re-embedded and why it failed."""
    line = f"switch to {sw['model']}: {sw['state']}, {sw.get('done', 0)}/{sw.get('total', 0)} images"
    if sw.get("from_model"):
        line += f" (from {sw['from_model']})"
    return line + (f": {sw['reason']}" if sw.get("reason") else "")


async def cmd_models_switch(args: argparse.Namespace) -> int:
    """``POST /models/switch``; with ``--wait``, poll ``GET /models`` until the switch is done, failed or
    cancelled (or ``--timeout`` passed), showing its progress. Exit 0 when NAME is active at the end."""
    requested_at = time.time()
    async with http_client(args) as client:
        r = await client.post("/models/switch", json={"model": args.name})
        reply = check(r)
        already = r.status_code == 200  # active and no switch running: nothing to do
        if already or not args.wait:
            if args.json:
                print_json(reply)
            elif already:
                Console().print(f"{args.name} is already the active model: nothing to do", highlight=False)
            else:
                Console().print(
                    f"switching to {args.name} in the background (active meanwhile: {reply['active']}); "
                    "`mesh models` shows its progress",
                    highlight=False,
                )
            return EXIT_OK
        body = await wait_switch(client, args.name, args.timeout, requested_at, show=not args.json)
    sw = body.get("switch") or {}
    if args.json:
        print_json(body)
    elif body["active"] == args.name:
        Console().print(f"{args.name} is the active model ({switch_line(sw)})", highlight=False)
    if body["active"] == args.name:
        return EXIT_OK
    if sw.get("model") == args.name and sw.get("state") in SWITCH_FINISHED:
        raise CliError(switch_line(sw), EXIT_PARTIAL)
    raise CliError(
        f"not finished after {args.timeout:g} s ({switch_line(sw) if sw else 'no progress yet'}); "
        "it goes on in the background: `mesh models` shows it",
        EXIT_PARTIAL,
    )


async def wait_switch(
    client: httpx.AsyncClient, name: str, timeout_s: float, requested_at: float, *, show: bool
) -> dict[str, Any]:
    """Poll ``GET /models`` once a second until the switch to ``name`` is over (or ``timeout_s`` passed);
    returns the last body. A progress bar on stderr shows the images re-embedded so far.

    Progress of an earlier switch to the same model (started before ``requested_at``, with a minute's
    leeway for clocks apart) is not this switch's: it is waited past, not reported.
    """
    progress = Progress(
        TextColumn(f"[bold]switch to {name}"),
        TextColumn("{task.fields[state]:<9}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        disable=not show,
    )
    task = progress.add_task("switch", total=None, state="requested")
    deadline = time.monotonic() + timeout_s
    with progress:
        while True:
            body = check(await client.get("/models"))
            sw = body.get("switch") or {}
            mine = sw.get("model") == name and sw.get("started_at", 0) >= requested_at - SWITCH_CLOCK_LEEWAY_S
            if mine:
                progress.update(
                    task, total=sw.get("total") or None, completed=sw.get("done", 0), state=sw["state"]
                )
            if (mine and sw.get("state") in SWITCH_FINISHED) or (
                body["active"] == name and not body.get("next")
            ):
                return body
            if time.monotonic() >= deadline:
                return body
            await asyncio.sleep(1.0)


# --- config -----------------------------------------------------------------------------------------------
def parse_config_value(text: str) -> Any:
    """A ``mesh config set`` value: JSON when it parses (``12``, ``0.7``, ``true``, ``["exif"]``, ``"12"``),
    else the text itself as a string (``efficientnet_lite0``)."""
    try:
        return json.loads(text)
    except ValueError:
        return text


async def cmd_config(args: argparse.Namespace) -> int:
    """``mesh config get [KEY]`` / ``mesh config set KEY VALUE`` over NATS (``config.get``/``config.set``) as
    the ``ops`` user. The config actor validates a set: a refused value prints its reason and exits 2."""
    import msgspec.structs

    from actors.adapters.config_client import ConfigClient
    from actors.contract import MeshConfig
    from actors.errors import RetryableError, ServiceCallError
    from ops import replay

    keys = [f.name for f in msgspec.structs.fields(MeshConfig)]
    if args.key is not None and args.key not in keys:
        raise CliError(f"no config key {args.key!r}; the keys: {', '.join(keys)}", EXIT_USAGE)
    settings = nats_settings()
    nc = await _connect_ops(settings, f"mesh-config-{args.config_command}", replay.connect_ops)
    try:
        config = ConfigClient(nc, bucket=settings.config_bucket, timeout_s=args.timeout)
        before = msgspec.to_builtins(await config.read())
        if args.config_command == "set":
            value = parse_config_value(args.value)
            try:
                after = msgspec.to_builtins(await config.set(args.key, value))
            except ServiceCallError as e:
                if e.retryable:
                    raise CliError(f"the config service failed: {e.description}", EXIT_UNAVAILABLE) from e
                raise CliError(f"refused: {e.description}", EXIT_USAGE) from e
    except RetryableError as e:
        raise CliError(f"the config service does not answer: {e.message}", EXIT_UNAVAILABLE) from e
    finally:
        await nc.close()
    if args.config_command == "set":
        if args.json:
            print(json.dumps({"key": args.key, "value": after[args.key], "previous": before[args.key]}))
        else:
            print(f"{args.key}: {json.dumps(before[args.key])} -> {json.dumps(after[args.key])}")
        return EXIT_OK
    shown = {args.key: before[args.key]} if args.key else before
    if args.json:
        print(json.dumps(shown, sort_keys=True))
        return EXIT_OK
    table = Table("key", "value", title=None if args.key else "the mesh's configuration (the Config DB)")
    for key, value in shown.items():
        table.add_row(key, json.dumps(value))
    Console().print(table)
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


async def cmd_backup(args: argparse.Namespace) -> int:
    from ops.backup import backup, streams

    async def progress(part: str) -> None:
        if not args.json:
            err.print(f"{part}: copied")

    try:
        m = await backup.backup(nats_settings(), Path(args.dir), progress)
    except streams.BackupError as e:
        raise CliError(str(e), EXIT_USAGE) from e
    except Exception as e:  # broad on purpose: a store that fails mid-way leaves the folder unfinished
        raise CliError(
            f"backup failed ({args.dir} is incomplete): {type(e).__name__}: {e}", EXIT_UNAVAILABLE
        ) from e
    if args.json:
        print_json(dataclasses.asdict(m))
    else:
        err.print(
            f"{m.images} images ({m.done} done, {m.dropped} deleted meanwhile), {m.objects} objects "
            f"({m.object_bytes / 1e6:.1f} MB), {m.keys} Redis keys, streams {m.streams} -> {args.dir}"
        )
    return EXIT_OK


async def cmd_restore(args: argparse.Namespace) -> int:
    from ops.backup import restore, streams

    try:
        r = await restore.restore(nats_settings(), Path(args.dir))
    except streams.BackupError as e:
        raise CliError(str(e), EXIT_USAGE) from e
    except Exception as e:  # broad on purpose: the operator gets one line, the log has the rest
        raise CliError(f"restore failed: {type(e).__name__}: {e}", EXIT_UNAVAILABLE) from e
    if args.json:
        print_json(dataclasses.asdict(r))
    else:
        err.print(
            f"{r.images} images, {r.objects} objects, {r.keys} Redis keys, streams {r.streams} restored; "
            f"{r.jobs_published} unfinished images queued again ({r.seconds:.1f} s)"
        )
    return EXIT_OK


async def cmd_migrate(args: argparse.Namespace) -> int:
    from ops import migrate

    return await migrate.run(args, nats_settings())


async def _connect_ops(settings: Any, name: str, connect: Any) -> Any:
    try:
        return await asyncio.wait_for(connect(settings, name), timeout=15)
    except Exception as e:  # broad on purpose: whatever stops the connection, the user gets one line
        raise CliError(f"cannot connect to NATS at {settings.nats_server_url}: {e}", EXIT_UNAVAILABLE) from e


# --- parser -----------------------------------------------------------------------------------------------
def common_options(*, http: bool = True, nested: bool = False) -> argparse.ArgumentParser:
    """The options every command takes: ``--json`` and, for HTTP commands, ``--url``/``--api-key``.

    ``nested``: for a sub-subcommand (``models switch``): no defaults of its own, so that an option given
    before the sub-subcommand (``mesh models --json switch X``) is not reset by it.
    """
    common = argparse.ArgumentParser(add_help=False)
    unset: dict[str, Any] = {"default": argparse.SUPPRESS} if nested else {}
    if http:
        url = unset or {"default": default_url()}
        common.add_argument(
            "--url", help="the gateway (default: http://$MESH_HOST:$MESH_GATEWAY_PORT)", **url
        )
        key = unset or {"default": os.environ.get("MESH_API_KEY")}
        common.add_argument("--api-key", help="X-API-Key (MESH_API_KEY)", **key)
    json_default = unset or {"default": False}
    common.add_argument("--json", action="store_true", help="machine-readable output", **json_default)
    return common


def add_ingest_options(s: argparse.ArgumentParser) -> None:
    """Options ``mesh ingest`` and ``mesh demo`` share: concurrency, retries, timeouts, the progress bars."""
    s.add_argument("-c", "--concurrency", type=positive_int, default=8, help="uploads at a time (8)")
    s.add_argument("--retries", type=int, default=3, help="tries again on 503 / connection errors (3)")
    s.add_argument("--timeout", type=float, default=60.0, help="seconds per request (60)")
    s.add_argument(
        "--wait-timeout",
        type=float,
        default=900.0,
        metavar="S",
        help="with --wait: give up after S seconds (900)",
    )
    s.add_argument("--no-progress", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    from ops import replay

    common = common_options()
    p = argparse.ArgumentParser(
        prog="mesh",
        description=__doc__.split("\n\n")[0],
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"mesh {package_version()}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("ingest", parents=[common], help="upload a folder of images, resumably")
    s.add_argument("dir", help="the folder (searched recursively; hidden files are skipped)")
    add_ingest_options(s)
    s.add_argument("--all", action="store_true", help="send every file, not only image file names")
    s.add_argument(
        "--state",
        help="the state file (default: $XDG_STATE_HOME/mesh/ingest-HASH.json, one per folder; "
        "XDG_STATE_HOME defaults to ~/.local/state)",
    )
    s.add_argument(
        "--wait", action="store_true", help="then wait until every image is done or error; report the errors"
    )
    s.add_argument(
        "--metadata",
        action="append",
        metavar="KEY=VALUE",
        help="upload metadata (repeatable; numbers are sent as numbers); files already uploaded keep theirs",
    )
    s.set_defaults(func=cmd_ingest)

    s = sub.add_parser("status", parents=[common], help="an image's state and history")
    s.add_argument("image_id")
    s.add_argument("--wait", type=float, metavar="S", help="poll up to S seconds for done or error")
    s.set_defaults(func=cmd_status)

    s = sub.add_parser("similar", parents=[common], help="the stored images most like an image id or a file")
    s.add_argument("target", metavar="ID|FILE", help="a stored image's id, or a local image file")
    s.add_argument("-k", type=positive_int, help="how many results (default: the mesh's default_k)")
    s.set_defaults(func=cmd_similar)

    s = sub.add_parser(
        "search",
        parents=[common],
        help="images matching words (text tower or labels), or like a local file (--image)",
        usage="mesh search [options] (TEXT | --image FILE)",
    )
    s.add_argument("text", nargs="?", metavar="TEXT", help="what to look for, e.g. 'cat'")
    s.add_argument("--image", metavar="FILE", help="search by this image instead (it is not stored)")
    s.add_argument("-k", type=positive_int, help="how many results (default: the mesh's default_k)")
    s.add_argument(
        "--filter", action="append", metavar="KEY:VALUE", help="only images with this (repeatable)"
    )
    s.set_defaults(func=cmd_search)

    s = sub.add_parser(
        "duplicates",
        parents=[common],
        help="duplicate groups of the library, or of one image (ID), with their tier",
        description="Without ID: every group of duplicates. With ID: the duplicates of that image, most "
        "similar first. --mode copies (default): copies of the same picture, verified in the background; "
        "--mode similar: cosine similarity alone (each call scans the whole index), which groups pictures "
        "that merely look alike.",
    )
    s.add_argument("image_id", nargs="?", metavar="ID", help="only this image's duplicates")
    s.add_argument("--mode", choices=("copies", "similar"), default="copies", help="the tier (copies)")
    s.add_argument(
        "--threshold",
        type=threshold,
        metavar="T",
        help="--mode similar: the cosine cut (default: the config's)",
    )
    s.add_argument(
        "--limit", type=positive_int, metavar="N", help="at most N groups (with ID: N results; default_k)"
    )
    s.add_argument("--timeout", type=float, default=120.0, metavar="S", help="seconds per request (120)")
    s.set_defaults(func=cmd_duplicates)

    s = sub.add_parser("delete", parents=[common], help="delete images everywhere")
    s.add_argument("image_ids", nargs="+", metavar="ID")
    s.set_defaults(func=cmd_delete)

    s = sub.add_parser("models", parents=[common], help="the models, the active one, a switch's progress")
    s.set_defaults(func=cmd_models)
    models = s.add_subparsers(dest="models_command", metavar="[switch]")
    s = models.add_parser(
        "switch",
        parents=[common_options(nested=True)],
        help="make another model active without downtime",
        description="Ask for a switch (POST /models/switch): the model's index is built in the background "
        "while the active one serves, then they swap. Needs an API key with `admin` when keys are on.",
    )
    s.add_argument("name", metavar="NAME", help="an image model Triton serves (see `mesh models`)")
    s.add_argument("--wait", action="store_true", help="follow the switch's progress until it is over")
    s.add_argument(
        "--timeout", type=float, default=3600.0, metavar="S", help="with --wait: at most S s (3600)"
    )
    s.set_defaults(func=cmd_models_switch)

    nats_common = common_options(http=False)
    s = sub.add_parser(
        "config",
        help="read or set the runtime configuration (over NATS, as the ops user)",
        description="The Config DB, through the config actor (config.get / config.set), which validates "
        "every value: a refused one prints the reason and exits 2.",
    )
    config = s.add_subparsers(dest="config_command", required=True, metavar="get|set")
    c = config.add_parser("get", parents=[nats_common], help="every key, or one")
    c.add_argument("key", nargs="?", metavar="KEY")
    c.add_argument(
        "--timeout", type=float, default=5.0, metavar="S", help="seconds to wait for an answer (5)"
    )
    c.set_defaults(func=cmd_config)
    c = config.add_parser(
        "set",
        parents=[nats_common],
        help="set one key",
        description="VALUE is parsed as JSON when it parses (12, 0.7, true, '[\"exif\"]'), else taken as a "
        "string (efficientnet_lite0).",
    )
    c.add_argument("key", metavar="KEY")
    c.add_argument("value", metavar="VALUE")
    c.add_argument(
        "--timeout", type=float, default=5.0, metavar="S", help="seconds to wait for an answer (5)"
    )
    c.set_defaults(func=cmd_config)

    from ops import demo

    s = sub.add_parser(
        "demo",
        parents=[common],
        help="ingest the photos scikit-image ships, then suggest commands to try",
        description=demo.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    s.add_argument("--dir", help="where to write the photos (default: $XDG_CACHE_HOME/mesh/demo)")
    add_ingest_options(s)
    s.set_defaults(func=cmd_demo, all=False, state=None, wait=True)

    s = sub.add_parser("events", help="print image events as JSON lines (NATS images.events.>)")
    s.add_argument("--status", help="only events of this state (e.g. done, error)")
    s.add_argument("--since", metavar="TIME", help="replay from the IMAGE_EVENTS stream since TIME first")
    s.add_argument("--count", type=positive_int, help="exit after this many events")
    s.set_defaults(func=cmd_events)

    s = sub.add_parser("replay", help="run dead-lettered or errored images again", description=replay.__doc__)
    s.formatter_class = argparse.RawDescriptionHelpFormatter
    replay.add_arguments(s)
    s.set_defaults(func=cmd_replay)

    from ops import check, migrate, reconcile

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

    s = sub.add_parser(
        "migrate", help="upgrade the stored data to this release's layout", description=migrate.__doc__
    )
    s.formatter_class = argparse.RawDescriptionHelpFormatter
    migrate.add_arguments(s)
    s.set_defaults(func=cmd_migrate)

    from ops.backup import backup, restore

    s = sub.add_parser("backup", help="a consistent backup of the running mesh", description=backup.__doc__)
    s.formatter_class = argparse.RawDescriptionHelpFormatter
    s.add_argument("dir", help="a new (or empty) folder")
    s.add_argument("--json", action="store_true", help="the manifest as JSON on stdout")
    s.set_defaults(func=cmd_backup)

    s = sub.add_parser("restore", help="rebuild an empty stack from a backup", description=restore.__doc__)
    s.formatter_class = argparse.RawDescriptionHelpFormatter
    s.add_argument("dir", help="a folder written by mesh backup")
    s.add_argument("--json", action="store_true", help="what was restored, as JSON on stdout")
    s.set_defaults(func=cmd_restore)
    return p


def threshold(text: str) -> float:
    """A cosine similarity cut: a number above 0, at most 1."""
    value = float(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be above 0 and at most 1: {text}")
    return value


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text}")
    return value


def main(argv: list[str] | None = None) -> int:
    logs_to_stderr()
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
        err.print(f"[red]mesh {args.command}:[/] {escape(e.message)}", highlight=False)
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
