"""An uploaded file on its way in: read under the byte limit, validated off the event loop with bounded
concurrency, and (for the search and encode routes) embedded exactly as the pipeline embeds a stored image.
Shared by the image and search routers.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from fastapi import Request, UploadFile

from actors import preprocess
from actors.contract import MeshConfig
from gateway.deps import Services
from gateway.validation import ImageInfo, UploadError, validate_image

# validations (full decodes) at once per process: one per core, so peak memory stays bounded under load
DECODE_SLOTS = asyncio.Semaphore(os.cpu_count() or 2)


async def read_limited(request: Request, file: UploadFile, max_bytes: int) -> bytes:
    """The file's bytes, refusing more than ``max_bytes`` without reading them all."""
    data = await file.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise UploadError(413, "too_large", f"the upload is over the limit of {max_bytes} bytes")
    return bytes(data)


async def validate(data: bytes, cfg: MeshConfig) -> ImageInfo:
    """Validate an image off the event loop; a full decode holds up to ~4 bytes per pixel, so at most
    ``DECODE_SLOTS`` run at once and peak memory stays bounded under load."""
    async with DECODE_SLOTS:
        return await asyncio.to_thread(
            validate_image, data, max_bytes=cfg.max_upload_bytes, max_pixels=cfg.max_pixels
        )


async def embed_bytes(svc: Services, model: str, data: bytes) -> Any:
    """The vector of an image that is not stored, under ``model``."""
    spec = await svc.embedder.preprocess_spec(model)
    # decoded exactly as the pipeline does (actors/workflow.py), so the vector matches the stored one
    img = await asyncio.to_thread(preprocess.decode_image, data, spec.resize)
    pixels = await asyncio.to_thread(preprocess.to_pixels, img, spec)
    return await svc.embedder.embed_image(model, pixels)
