"""The upload baseline: a bare FastAPI endpoint that does the work every upload must do, then discards it.

Read the multipart file, validate it with the gateway's own ``validate_image`` (off the event loop, like the
gateway), hash it. Run as ``python -m ops.bench.bare PORT`` (its own uvicorn, like ``python -m gateway``).
"""

from __future__ import annotations

import asyncio
import sys
from typing import Annotated, Any

import uvicorn
from fastapi import FastAPI, File, UploadFile

from actors.contract import MeshConfig
from gateway.validation import sha256_hex, validate_image

LIMITS = MeshConfig()
app = FastAPI()


@app.post("/upload")
async def upload(file: Annotated[UploadFile, File()]) -> dict[str, Any]:
    data = await file.read(LIMITS.max_upload_bytes + 1)
    info = await asyncio.to_thread(
        validate_image, data, max_bytes=LIMITS.max_upload_bytes, max_pixels=LIMITS.max_pixels
    )
    return {"sha256": sha256_hex(data), "width": info.width}


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
