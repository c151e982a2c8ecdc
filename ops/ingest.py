"""``mesh ingest DIR``: upload a folder of images concurrently, resumable by sha256.

A small state file (``.mesh-ingest.json`` in DIR) remembers, per gateway, the sha256 of every file the gateway
accepted or already had (a ``200 duplicate``), so a rerun skips them without uploading; it also caches each
file's sha256 by (size, mtime) so a rerun does not hash unchanged files again. Refused files are not
remembered: a rerun tries them again and reports them again until they are fixed or removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

STATE_FILE = ".mesh-ingest.json"
STATE_VERSION = 1
IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff", ".jfif", ".avif", ".heic"}
)


@dataclass
class Outcome:
    """What happened to one file."""

    path: str  # relative to the ingested folder
    outcome: str  # accepted | duplicate | skipped | refused | failed
    image_id: str | None = None
    sha256: str | None = None
    reason: str | None = None  # refused: the gateway's error code and message; failed: what went wrong


@dataclass
class Summary:
    results: list[Outcome] = field(default_factory=list)

    def count(self, outcome: str) -> int:
        return sum(r.outcome == outcome for r in self.results)

    @property
    def ok(self) -> bool:
        return not any(r.outcome in ("refused", "failed") for r in self.results)

    def as_dict(self) -> dict[str, Any]:
        return {
            "accepted": self.count("accepted"),
            "duplicates": self.count("duplicate"),
            "skipped": self.count("skipped"),
            "refused": [{"path": r.path, "reason": r.reason} for r in self.results if r.outcome == "refused"],
            "failed": [{"path": r.path, "reason": r.reason} for r in self.results if r.outcome == "failed"],
            "images": {r.path: r.image_id for r in self.results if r.image_id},
        }


# --- files and state --------------------------------------------------------------------------------------
def find_files(root: Path, all_files: bool = False) -> list[Path]:
    """Regular files under ``root`` (recursively, sorted), without hidden ones; images by suffix unless
    ``all_files`` (the gateway decides the real type from the bytes either way)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            path = Path(dirpath) / name
            if not path.is_file():
                continue
            if all_files or path.suffix.lower() in IMAGE_SUFFIXES:
                found.append(path)
    return found


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class IngestState:
    """The state file: per gateway URL, the sha256s it already has; per file, its cached sha256."""

    def __init__(self, path: Path, gateway: str) -> None:
        self.path = path
        self.gateway = gateway.rstrip("/")
        self.data: dict[str, Any] = {"version": STATE_VERSION, "gateways": {}, "hashes": {}}
        if path.exists():
            with contextlib.suppress(OSError, ValueError):
                loaded = json.loads(path.read_text())
                if isinstance(loaded, dict) and loaded.get("version") == STATE_VERSION:
                    self.data = loaded
        self.known: dict[str, str] = self.data["gateways"].setdefault(self.gateway, {})

    def cached_sha(self, rel: str, stat: os.stat_result) -> str | None:
        entry = self.data["hashes"].get(rel)
        if entry and entry.get("size") == stat.st_size and entry.get("mtime_ns") == stat.st_mtime_ns:
            return str(entry["sha256"])
        return None

    def remember_sha(self, rel: str, stat: os.stat_result, sha: str) -> None:
        self.data["hashes"][rel] = {"sha256": sha, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}

    def image_for(self, sha: str) -> str | None:
        return self.known.get(sha)

    def remember_image(self, sha: str, image_id: str) -> None:
        self.known[sha] = image_id

    def save(self) -> None:
        """Write atomically: an interrupted ingest never leaves a half-written state file."""
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, sort_keys=True))
        tmp.replace(self.path)


def refusal_reason(response: httpx.Response) -> str:
    """``code: message`` from the gateway's ``{"error": {code, message}}`` body (or the raw status)."""
    try:
        err = response.json()["error"]
        return f"{err['code']}: {err['message']}"
    except (ValueError, KeyError, TypeError):
        return f"HTTP {response.status_code}: {response.text[:200]}"


def retry_delay(response: httpx.Response | None, attempt: int) -> float:
    """Seconds before the next try: the gateway's Retry-After, else exponential backoff with jitter."""
    if response is not None:
        with contextlib.suppress(ValueError, TypeError):
            return min(30.0, float(response.headers.get("retry-after", "")))
    return min(30.0, 0.5 * 2**attempt) * (0.5 + random.random() / 2)


# --- uploading --------------------------------------------------------------------------------------------
async def upload_one(client: httpx.AsyncClient, path: Path, rel: str, sha: str, retries: int) -> Outcome:
    """Upload one file; 503, 429 and connection failures are retried (the gateway keeps nothing from them)."""
    data = await asyncio.to_thread(path.read_bytes)
    reason = ""
    for attempt in range(retries + 1):
        response: httpx.Response | None = None
        try:
            response = await client.post(
                "/images/upload", files={"file": (path.name, data, "application/octet-stream")}
            )
        except httpx.HTTPError as e:
            reason = f"{type(e).__name__}: {e}"
        else:
            status = response.status_code
            if status in (200, 202):
                body = response.json()
                outcome = "duplicate" if status == 200 else "accepted"
                return Outcome(rel, outcome, image_id=body["image_id"], sha256=sha)
            if status in (401, 403):  # the API key (none, wrong, or without `write`), not the file
                return Outcome(rel, "failed", sha256=sha, reason=refusal_reason(response))
            if 400 <= status < 500 and status != 429:  # 429: the key is over its rate, tried again
                return Outcome(rel, "refused", sha256=sha, reason=refusal_reason(response))
            reason = refusal_reason(response)
        if attempt < retries:
            await asyncio.sleep(retry_delay(response, attempt))
    return Outcome(rel, "failed", sha256=sha, reason=reason)


async def ingest(
    client: httpx.AsyncClient,
    root: Path,
    state: IngestState,
    *,
    concurrency: int = 8,
    retries: int = 3,
    all_files: bool = False,
    on_total: Callable[[int], None] = lambda n: None,
    on_result: Callable[[Outcome], None] = lambda r: None,
) -> Summary:
    """Upload every file under ``root`` that the gateway does not have yet, ``concurrency`` at a time."""
    files = [p for p in find_files(root, all_files) if p.resolve() != state.path.resolve()]
    on_total(len(files))
    summary = Summary()
    queue: asyncio.Queue[Path] = asyncio.Queue()
    for p in files:
        queue.put_nowait(p)

    async def worker() -> None:
        while True:
            try:
                path = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            result = await _ingest_file(client, root, path, state, retries)
            summary.results.append(result)
            if result.outcome in ("accepted", "duplicate") and result.sha256 and result.image_id:
                state.remember_image(result.sha256, result.image_id)
            on_result(result)
            if len(summary.results) % 50 == 0:
                await asyncio.to_thread(state.save)

    try:
        async with asyncio.TaskGroup() as tg:
            for _ in range(max(1, min(concurrency, len(files)))):
                tg.create_task(worker())
    finally:  # also on Ctrl-C: what was uploaded is remembered
        state.save()
    summary.results.sort(key=lambda r: r.path)
    return summary


async def _ingest_file(
    client: httpx.AsyncClient, root: Path, path: Path, state: IngestState, retries: int
) -> Outcome:
    rel = path.relative_to(root).as_posix()
    try:
        stat = await asyncio.to_thread(path.stat)
        sha = state.cached_sha(rel, stat)
        if sha is None:
            sha = await asyncio.to_thread(sha256_file, path)
            state.remember_sha(rel, stat, sha)
    except OSError as e:
        return Outcome(rel, "failed", reason=f"cannot read: {e}")
    known = state.image_for(sha)
    if known is not None:
        return Outcome(rel, "skipped", image_id=known, sha256=sha)
    return await upload_one(client, path, rel, sha, retries)


def summary_lines(summary: Summary) -> Iterable[str]:
    """The human summary printed at the end of an ingest."""
    yield (
        f"accepted {summary.count('accepted')}, duplicates {summary.count('duplicate')}, "
        f"already ingested {summary.count('skipped')}, refused {summary.count('refused')}, "
        f"failed {summary.count('failed')}"
    )
    for r in summary.results:
        if r.outcome in ("refused", "failed"):
            yield f"  {r.outcome}: {r.path}: {r.reason}"
