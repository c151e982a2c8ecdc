"""Back up and restore one JetStream stream (its messages, durable consumers and their ack state) through
JetStream's snapshot API, as the NATS CLI's ``nats stream backup`` / ``nats stream restore`` do.

Protocol (nats-server ``jetstream_api.go``, jsm.go ``snapshots.go``): a request to ``$JS.API.STREAM.SNAPSHOT.<s>``
names a deliver subject; the reply is the stream's config and state, then the server sends the snapshot (an
s2-compressed tar) there in chunks, each with a reply subject to answer (flow control: at most a window, 8 MiB,
goes unanswered), and ends with an empty message whose status header (if any) is 204 or an error. A request to
``$JS.API.STREAM.RESTORE.<s>`` with that config and state answers with a subject; each chunk of the file is a
request to it (answered empty, or with an error), and a final empty request is answered with the new stream's info.

A backup folder holds ``<stream>.tar.s2`` (the data) and ``<stream>.json`` (``{"config": ..., "state": ...}``):
the same split as the CLI's backup folder.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError

log = structlog.get_logger("backup")

API = "$JS.API"
STREAM_NOT_FOUND = 10059  # JetStream's err_code for "stream not found"
RESTORE_CHUNK_SIZE = 64 * 1024  # bytes per restore request (the CLI's size); max_payload is far above
_OK_STATUS = "204"  # the end-of-snapshot message's status when all went well
_BAD_NAME_CHARS = frozenset(".*> \t\r\n/\\")


class BackupError(Exception):
    """A backup or restore that did not complete; ``code``/``err_code`` are JetStream's, when it answered one."""

    def __init__(self, message: str, *, code: int | None = None, err_code: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.err_code = err_code


@dataclass(frozen=True)
class StreamSnapshot:
    """One stream's snapshot on disk."""

    stream: str
    bytes: int  # size of the snapshot file (the s2-compressed tar) written
    messages: int  # messages in the stream when the snapshot was taken
    path: Path  # the data file, ``<dest>/<stream>.tar.s2``; its metadata is ``<dest>/<stream>.json``


def data_path(folder: Path, stream: str) -> Path:
    """The snapshot's data file in a backup folder."""
    return folder / f"{stream}.tar.s2"


def meta_path(folder: Path, stream: str) -> Path:
    """The snapshot's metadata (config and state) in a backup folder."""
    return folder / f"{stream}.json"


async def snapshot_stream(
    nc: Client, stream: str, dest: Path, *, chunk_size: int = 128 * 1024, timeout_s: float = 60.0
) -> StreamSnapshot:
    """Snapshot ``stream`` (with its consumers) into ``dest/<stream>.tar.s2`` and ``dest/<stream>.json``.

    ``timeout_s`` bounds each wait on the server: the API reply, and the gap between two chunks (not the whole
    transfer, which grows with the stream). Files appear only once the snapshot is complete; a failure leaves
    none behind (an older snapshot of the same stream in ``dest`` stays until a new one replaces it).
    """
    _check_name(stream)
    what = f"snapshot of stream {stream}"
    data, meta = data_path(dest, stream), meta_path(dest, stream)
    part = data.with_name(data.name + ".partial")
    started = time.monotonic()
    log.info("backup.stream_snapshot_started", stream=stream, dest=str(dest), chunk_size=chunk_size)
    try:
        await asyncio.to_thread(dest.mkdir, parents=True, exist_ok=True)
    except OSError as e:
        raise BackupError(f"{what}: cannot create the folder {dest}: {e}") from e
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)  # before the request: the server streams as soon as it has answered
    try:
        reply = await _api(
            nc,
            f"{API}.STREAM.SNAPSHOT.{stream}",
            {"deliver_subject": inbox, "chunk_size": chunk_size, "no_consumers": False, "jsck": False},
            timeout_s,
            what,
        )
        config, state = reply.get("config"), reply.get("state")
        if not isinstance(config, dict) or not isinstance(state, dict):
            raise BackupError(f"{what}: the server's reply has no config and state: {_short(reply)}")
        try:
            size = await _receive(nc, sub, part, what, timeout_s)
            text = json.dumps({"config": config, "state": state}, indent=2) + "\n"
            await asyncio.to_thread(_write_synced, meta, text.encode())
            await asyncio.to_thread(part.replace, data)
        except OSError as e:
            raise BackupError(f"{what}: cannot write to {dest}: {e}") from e
    except BaseException:  # whatever stopped it (a cancel too): no half-written snapshot is left behind
        await asyncio.to_thread(part.unlink, missing_ok=True)
        raise
    finally:
        # no interest from here on: a server still sending (after a failure of ours) stops with 408 No Interest
        with contextlib.suppress(NatsError):  # a closed connection: the failure at hand says more
            await sub.unsubscribe()
    messages = int(state.get("messages", 0))
    log.info(
        "backup.stream_snapshot_done",
        stream=stream,
        bytes=size,
        messages=messages,
        seconds=round(time.monotonic() - started, 3),
        path=str(data),
    )
    return StreamSnapshot(stream=stream, bytes=size, messages=messages, path=data)


async def restore_stream(nc: Client, src: Path, stream: str, *, timeout_s: float = 60.0) -> dict[str, Any]:
    """Restore ``stream`` from ``src/<stream>.tar.s2`` and ``src/<stream>.json``; returns the new stream's info.

    Restore rebuilds an empty stack: a stream that exists and holds messages is refused (untouched); one that
    exists empty (the stack's bootstrap creates its streams empty at start) is deleted first, with its
    consumers; the snapshot's consumers come back with the stream. ``timeout_s`` bounds each wait on the server.
    """
    _check_name(stream)
    what = f"restore of stream {stream}"
    data, meta = data_path(src, stream), meta_path(src, stream)
    config, state = await asyncio.to_thread(_read_meta, meta, stream)
    try:
        size = (await asyncio.to_thread(data.stat)).st_size
    except OSError as e:
        raise BackupError(f"{what}: no snapshot data at {data}: {e}") from e
    started = time.monotonic()
    log.info("backup.stream_restore_started", stream=stream, src=str(src), bytes=size)

    existing = await _stream_info(nc, stream, timeout_s)
    if existing is not None:
        held = int((existing.get("state") or {}).get("messages", 0))
        if held:
            raise BackupError(
                f"stream {stream} already holds {held} messages: restore rebuilds an empty stack"
            )
        await _api(nc, f"{API}.STREAM.DELETE.{stream}", None, timeout_s, f"{what}: deleting the empty stream")
        log.info("backup.empty_stream_deleted", stream=stream)

    reply = await _api(
        nc, f"{API}.STREAM.RESTORE.{stream}", {"config": config, "state": state}, timeout_s, what
    )
    deliver = reply.get("deliver_subject")
    if not isinstance(deliver, str) or not deliver:
        raise BackupError(f"{what}: the server's reply has no deliver_subject: {_short(reply)}")

    sent = 0
    try:
        fh: IO[bytes] = await asyncio.to_thread(data.open, "rb")
    except OSError as e:
        raise BackupError(f"{what}: cannot read {data}: {e}") from e
    try:
        while chunk := await asyncio.to_thread(fh.read, RESTORE_CHUNK_SIZE):
            answer = await _chunk(nc, deliver, chunk, timeout_s, f"{what} (after {sent} of {size} bytes)")
            if answer.data:  # a chunk is answered empty; anything else is the server's error
                _reply(answer, f"{what} (after {sent} of {size} bytes)")
                raise BackupError(f"{what}: unexpected answer to a chunk: {_short(answer.data)}")
            sent += len(chunk)
    finally:
        await asyncio.to_thread(fh.close)
    # the end: an empty request, answered with the restored stream's info (or why the restore failed)
    info = _reply(await _chunk(nc, deliver, b"", timeout_s, f"{what} (finishing)"), what)
    info_state = info.get("state") or {}
    log.info(
        "backup.stream_restore_done",
        stream=stream,
        bytes=sent,
        messages=info_state.get("messages"),
        consumers=info_state.get("consumer_count"),
        seconds=round(time.monotonic() - started, 3),
    )
    return info


# --- the wire -------------------------------------------------------------------------------------------------
async def _api(
    nc: Client, subject: str, payload: dict[str, Any] | None, timeout_s: float, what: str
) -> dict[str, Any]:
    """One JetStream API request; its JSON reply, or ``BackupError`` with the server's error."""
    body = b"" if payload is None else json.dumps(payload).encode()
    try:
        msg = await nc.request(subject, body, timeout=timeout_s)
    except NatsTimeoutError as e:
        raise BackupError(f"{what}: no answer from JetStream on {subject} within {timeout_s:g}s") from e
    except NoRespondersError as e:
        raise BackupError(
            f"{what}: nothing answers on {subject} (is JetStream enabled for this account?)"
        ) from e
    except NatsError as e:
        raise BackupError(f"{what}: request on {subject} failed: {e}") from e
    return _reply(msg, what)


async def _chunk(nc: Client, subject: str, data: bytes, timeout_s: float, what: str) -> Msg:
    """One restore chunk (or the empty end) as a request to the server's restore subject."""
    try:
        return await nc.request(subject, data, timeout=timeout_s)
    except NatsTimeoutError as e:
        raise BackupError(f"{what}: the server did not take a chunk within {timeout_s:g}s") from e
    except NoRespondersError as e:  # the server gave up on this restore (an error, or 5 s without a chunk)
        raise BackupError(f"{what}: the server no longer takes chunks (the restore was abandoned)") from e
    except NatsError as e:
        raise BackupError(f"{what}: sending a chunk failed: {e}") from e


def _reply(msg: Msg, what: str) -> dict[str, Any]:
    """A JetStream API reply as a dict; ``BackupError`` when it is an error or not JSON."""
    try:
        body = json.loads(msg.data)
    except ValueError as e:
        raise BackupError(f"{what}: unreadable answer from JetStream: {_short(msg.data)}") from e
    if not isinstance(body, dict):
        raise BackupError(f"{what}: unexpected answer from JetStream: {_short(msg.data)}")
    error = body.get("error")
    if error:
        err = error if isinstance(error, dict) else {"description": str(error)}
        code, err_code = err.get("code"), err.get("err_code")
        raise BackupError(
            f"{what}: JetStream error {code} ({err_code}): {err.get('description', 'no description')}",
            code=code if isinstance(code, int) else None,
            err_code=err_code if isinstance(err_code, int) else None,
        )
    return body


async def _stream_info(nc: Client, stream: str, timeout_s: float) -> dict[str, Any] | None:
    """The stream's info, or None when there is no such stream."""
    try:
        return await _api(nc, f"{API}.STREAM.INFO.{stream}", None, timeout_s, f"info of stream {stream}")
    except BackupError as e:
        if e.err_code == STREAM_NOT_FOUND:
            return None
        raise


async def _receive(nc: Client, sub: Subscription, path: Path, what: str, timeout_s: float) -> int:
    """Write the snapshot's chunks to ``path`` (synced) until the end message; the bytes written."""
    size = 0
    fh: IO[bytes] = await asyncio.to_thread(path.open, "wb")
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=timeout_s)
            except NatsTimeoutError as e:
                raise BackupError(
                    f"{what}: no data from the server for {timeout_s:g}s after {size} bytes"
                ) from e
            if not msg.data:  # the end; a status other than 204 says why the snapshot failed
                status = (msg.headers or {}).get("Status")
                if status and status != _OK_STATUS:
                    desc = (msg.headers or {}).get("Description", "")
                    raise BackupError(
                        f"{what}: the server stopped after {size} bytes: {status} {desc}".rstrip()
                    )
                break
            if (
                msg.reply
            ):  # flow control: answer at once (every chunk but a short last one has a reply subject)
                await nc.publish(msg.reply, b"")
            await asyncio.to_thread(fh.write, msg.data)
            size += len(msg.data)
        await asyncio.to_thread(_sync, fh)
    finally:
        await asyncio.to_thread(fh.close)
    if size == 0:
        raise BackupError(f"{what}: the server sent an empty snapshot")
    return size


# --- files ----------------------------------------------------------------------------------------------------
def _sync(fh: IO[bytes]) -> None:
    fh.flush()
    os.fsync(fh.fileno())


def _write_synced(path: Path, data: bytes) -> None:
    with path.open("wb") as fh:
        fh.write(data)
        _sync(fh)


def _read_meta(path: Path, stream: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The saved config and state; ``BackupError`` when missing, unreadable or for another stream."""
    what = f"restore of stream {stream}"
    try:
        doc = json.loads(path.read_bytes())
    except OSError as e:
        raise BackupError(f"{what}: no snapshot metadata at {path}: {e}") from e
    except ValueError as e:
        raise BackupError(f"{what}: {path} is not JSON: {e}") from e
    config = doc.get("config") if isinstance(doc, dict) else None
    state = doc.get("state") if isinstance(doc, dict) else None
    if not isinstance(config, dict) or not isinstance(state, dict):
        raise BackupError(f"{what}: {path} has no config and state")
    if config.get("name") != stream:  # the server cannot rename a stream on restore
        raise BackupError(f"{what}: {path} holds stream {config.get('name')!r}, not {stream!r}")
    if config.get("storage") == "memory":
        raise BackupError(f"{what}: memory streams have no snapshots")
    return config, state


def _check_name(stream: str) -> None:
    if not stream or any(c in _BAD_NAME_CHARS for c in stream):
        raise BackupError(f"invalid stream name {stream!r}")


def _short(data: object, limit: int = 300) -> str:
    text = data.decode(errors="replace") if isinstance(data, bytes) else str(data)
    return text if len(text) <= limit else text[:limit] + "..."
