"""Upload bodies before FastAPI parses them: the byte limit, and the raw bytes of the metadata field.

FastAPI reads a whole multipart body before any dependency runs, and Starlette decodes a text field that is not
valid UTF-8 as Latin-1 without saying so. This ASGI middleware therefore (1) refuses an upload whose declared
length is over the limit before reading it, and one without a length as soon as it passes the limit, and
(2) keeps the ``metadata`` field's raw bytes in ``request.state.raw_metadata`` so they are validated as UTF-8.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

MULTIPART_OVERHEAD = 64 * 1024  # boundaries, part headers and the metadata field, on top of the file
GUARDED_PATHS = frozenset({"/images/upload", "/encode", "/search/image"})


def raw_field(body: bytes, content_type: str, name: str) -> bytes | None:
    """The raw bytes of a multipart form's text field ``name`` (None when absent)."""
    marker = "boundary="
    if marker not in content_type:
        return None
    boundary = content_type.split(marker, 1)[1].split(";", 1)[0].strip().strip('"').encode()
    needle = f'name="{name}"'.encode()
    for part in body.split(b"--" + boundary):
        head, sep, data = part.partition(b"\r\n\r\n")
        if not sep or needle not in head or b"filename=" in head:
            continue
        return data[:-2] if data.endswith(b"\r\n") else data
    return None


class UploadGuard:
    """Byte limit and raw metadata for the upload-like routes (``GUARDED_PATHS``)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in GUARDED_PATHS:
            await self.app(scope, receive, send)
            return
        max_bytes = (await scope["app"].state.services.config.get()).max_upload_bytes
        limit = max_bytes + MULTIPART_OVERHEAD
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            await _too_large(send, max_bytes)
            return
        chunks: list[bytes] = []
        total = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > limit:
                await _too_large(send, max_bytes)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        scope.setdefault("state", {})["raw_metadata"] = raw_field(
            body, headers.get("content-type", ""), "metadata"
        )
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


async def _too_large(send: Send, max_bytes: int) -> None:
    body: dict[str, Any] = {
        "error": {"code": "too_large", "message": f"the upload is over the limit of {max_bytes} bytes"}
    }
    data = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": data})
