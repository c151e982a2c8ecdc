"""``mesh ingest DIR``: upload a folder of images concurrently, resumable by sha256, and optionally wait for them.

A small state file remembers, per gateway, the sha256 of every file the gateway accepted or already had (a
``200 duplicate``), so a rerun skips them without uploading; it also caches each file's sha256 by (size,
mtime) so a rerun does not hash unchanged files again. Refused files are not remembered: a rerun tries them
again and reports them again until they are fixed or removed.

The state file lives in the user's state folder, never in the photo folder (which may be read-only, shared,
or a camera card): ``$XDG_STATE_HOME/mesh/ingest-<hash of the folder's absolute path>.json``, by default
under ``~/.local/state``; ``--state`` names another file. A ``.mesh-ingest.json`` that older versions wrote
into the folder is read once, when the new file does not exist yet, and then left alone.

Which files are images is decided by their suffix, the accepted formats' suffixes (``gateway.formats``:
the same list the gateway validates against); ``--all`` sends every file and lets the gateway decide.
``wait_processed`` then polls ``GET /images/{id}`` until each uploaded image is ``done`` or ``error``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import random
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from gateway.formats import ACCEPTED_SUFFIXES

LEGACY_STATE_FILE = ".mesh-ingest.json"  # where earlier versions kept the state: in the folder itself
STATE_FILE = LEGACY_STATE_FILE  # older imports
STATE_VERSION = 1
IMAGE_SUFFIXES = ACCEPTED_SUFFIXES  # exactly what the gateway accepts (gateway/formats.py ACCEPTED)
TERMINAL = frozenset({"done", "error"})


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


def state_home(env: Mapping[str, str] = os.environ) -> Path:
    """The user's state folder for mesh: ``$XDG_STATE_HOME/mesh``, else ``~/.local/state/mesh`` (the XDG Base
    Directory default; a relative ``XDG_STATE_HOME`` is invalid there, and ignored)."""
    xdg = env.get("XDG_STATE_HOME", "")
    if xdg and Path(xdg).is_absolute():
        return Path(xdg) / "mesh"
    return Path(env.get("HOME") or Path.home()) / ".local" / "state" / "mesh"


def state_path(root: Path, env: Mapping[str, str] = os.environ) -> Path:
    """The state file of the folder ``root``: one per folder, named by a hash of its absolute path (so
    ``photos``, ``./photos`` and a symlink to it share one)."""
    key = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:16]
    return state_home(env) / f"ingest-{key}.json"


class IngestState:
    """The state file: per gateway URL, the sha256s it already has; per file, its cached sha256.

    ``legacy``: a state file of the old layout (in the folder) read when ``path`` does not exist yet; it is
    never written, so a read-only folder works and the old file is migrated by the first save.
    """

    def __init__(
        self, path: Path, gateway: str, *, legacy: Path | None = None, folder: Path | None = None
    ) -> None:
        self.path = path
        self.gateway = gateway.rstrip("/")
        self.data: dict[str, Any] = {"version": STATE_VERSION, "gateways": {}, "hashes": {}}
        self.migrated_from: Path | None = None
        source = path if path.exists() or legacy is None or not legacy.exists() else legacy
        if source.exists():
            with contextlib.suppress(OSError, ValueError):
                loaded = json.loads(source.read_text())
                if isinstance(loaded, dict) and loaded.get("version") == STATE_VERSION:
                    self.data = loaded
                    self.migrated_from = source if source != path else None
        if folder is not None:  # for a person reading the state folder: which photo folder this file is about
            self.data["folder"] = str(folder.resolve())
        self.known: dict[str, str] = self.data["gateways"].setdefault(self.gateway, {})

    @classmethod
    def for_folder(cls, root: Path, gateway: str, state: Path | None = None) -> IngestState:
        """The state of ``root``: ``state`` when given, else the folder's file in the user's state folder,
        migrating a ``.mesh-ingest.json`` found in the folder."""
        if state is not None:
            return cls(state, gateway, folder=root)
        return cls(state_path(root), gateway, legacy=root / LEGACY_STATE_FILE, folder=root)

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

    def forget_images(self, image_ids: Iterable[str]) -> None:
        """Forget images the gateway no longer has (deleted): the next ingest uploads their files again."""
        gone = set(image_ids)
        for sha in [sha for sha, image_id in self.known.items() if image_id in gone]:
            del self.known[sha]

    def save(self) -> None:
        """Write atomically: an interrupted ingest never leaves a half-written state file."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
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
async def upload_one(
    client: httpx.AsyncClient, path: Path, rel: str, sha: str, retries: int, metadata: str | None = None
) -> Outcome:
    """Upload one file (with ``metadata``, a JSON object's text, when given); 503, 429 and connection
    failures are retried (the gateway keeps nothing from them)."""
    data = await asyncio.to_thread(path.read_bytes)
    form = {"metadata": metadata} if metadata else None
    reason = ""
    for attempt in range(retries + 1):
        response: httpx.Response | None = None
        try:
            response = await client.post(
                "/images/upload", files={"file": (path.name, data, "application/octet-stream")}, data=form
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
    metadata: Mapping[str, str | int | float] | None = None,
    on_total: Callable[[int], None] = lambda n: None,
    on_result: Callable[[Outcome], None] = lambda r: None,
) -> Summary:
    """Upload every file under ``root`` that the gateway does not have yet, ``concurrency`` at a time, each
    with ``metadata`` (the upload's metadata field; files already uploaded keep theirs)."""
    files = [p for p in find_files(root, all_files) if p.resolve() != state.path.resolve()]
    meta_text = json.dumps(dict(metadata)) if metadata else None
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
            result = await _ingest_file(client, root, path, state, retries, meta_text)
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
    client: httpx.AsyncClient, root: Path, path: Path, state: IngestState, retries: int, metadata: str | None
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
    return await upload_one(client, path, rel, sha, retries, metadata)


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


# --- metadata ---------------------------------------------------------------------------------------------
def parse_metadata_pairs(pairs: Iterable[str]) -> dict[str, str | int | float]:
    """``--metadata key=value`` options as the upload's metadata object. A value that is a JSON number
    (``7``, ``2.8``) is sent as a number, anything else as the string it is (``true``, ``007``, ``a=b``).
    Raises ``ValueError`` for an item without ``=``, an empty key, or a key given twice."""
    out: dict[str, str | int | float] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"--metadata {pair!r}: use key=value")
        if key in out:
            raise ValueError(f"--metadata: {key!r} is given twice")
        value: str | int | float = text
        with contextlib.suppress(ValueError):
            number = json.loads(text)
            if isinstance(number, int | float) and not isinstance(number, bool):
                value = number
        out[key] = value
    return out


# --- waiting for the pipeline -----------------------------------------------------------------------------
@dataclass
class Processed:
    """Where the uploaded images ended: each image id's last record (``None``: the gateway has no such image,
    e.g. it was deleted meanwhile), and which ones were still pending when the wait ran out."""

    paths: dict[str, str]  # image id -> the (first) file it came from
    records: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    pending: list[str] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(1 for r in self.records.values() if r is not None and r.get("status") == status)

    @property
    def errors(self) -> list[dict[str, Any]]:
        """Every image that ended in ``error`` (or is gone): path, image id, error code and message."""
        out = []
        for image_id, rec in sorted(self.records.items(), key=lambda kv: self.paths[kv[0]]):
            if rec is None:
                code, message = "not_found", "deleted from the mesh; the next ingest uploads it again"
            elif rec.get("status") == "error":
                error = rec.get("error") or {}
                code, message = str(error.get("code", "")), str(error.get("message", ""))
            else:
                continue
            out.append({"path": self.paths[image_id], "image_id": image_id, "code": code, "message": message})
        return out

    @property
    def ok(self) -> bool:
        return not self.pending and not self.errors

    def as_dict(self) -> dict[str, Any]:
        return {
            "done": self.count("done"),
            "errors": self.errors,
            "pending": [{"path": self.paths[i], "image_id": i} for i in sorted(self.pending)],
        }


async def wait_processed(
    client: httpx.AsyncClient,
    images: Mapping[str, str],
    *,
    timeout_s: float = 900.0,
    concurrency: int = 8,
    on_update: Callable[[Processed], None] = lambda p: None,
) -> Processed:
    """Poll ``GET /images/{id}`` for every image in ``images`` (path -> image id) until each is ``done`` or
    ``error``, or ``timeout_s`` passed; images not in a final state then are listed as pending.

    Only the images still pending are asked again, ``concurrency`` at a time, every 0.5 s growing to 3 s.
    Raises ``httpx.HTTPStatusError`` for an answer that is neither 200 nor 404 (401, 503, ...) and
    ``httpx.TransportError`` when the gateway does not answer at all.
    """
    paths: dict[str, str] = {}
    for path, image_id in sorted(images.items()):
        paths.setdefault(image_id, path)
    result = Processed(paths)
    pending = list(paths)
    deadline = time.monotonic() + timeout_s
    gate = asyncio.Semaphore(concurrency)
    delay = 0.5

    async def look(image_id: str) -> None:
        async with gate:
            r = await client.get(f"/images/{image_id}")
        if r.status_code == 404:
            result.records[image_id] = None
            return
        r.raise_for_status()
        result.records[image_id] = r.json()

    while True:
        await asyncio.gather(*(look(i) for i in pending))
        pending = [
            i for i in pending if (rec := result.records.get(i)) is not None and rec["status"] not in TERMINAL
        ]
        result.pending = pending
        on_update(result)
        if not pending or time.monotonic() >= deadline:
            return result
        await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        delay = min(3.0, delay * 1.5)


def processed_lines(processed: Processed) -> Iterable[str]:
    """The human report of a wait: counts, then each error with its code and message."""
    yield (
        f"processed: done {processed.count('done')}, error {len(processed.errors)}, "
        f"still pending {len(processed.pending)}"
    )
    for e in processed.errors:
        yield f"  error: {e['path']} ({e['image_id']}): {e['code']}: {e['message']}"
    for image_id in processed.pending:
        yield f"  pending: {processed.paths[image_id]} ({image_id})"
