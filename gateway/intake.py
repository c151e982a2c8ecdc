"""An uploaded file on its way in: read under the byte limit, validated off the event loop under the process's
decode budget, and (for the search and encode routes) embedded exactly as the pipeline embeds a stored image.
Shared by the image and search routers.

Every full decode here holds its bytes of the gateway's ``DecodeBudget`` (``Services.decode_budget``, sized by
``MESH_DECODE_BUDGET_BYTES``) while it runs: the cost is read from the header first, so images over the pixel
limit are refused before they wait for (or take) anything, and peak memory follows the budget, not the load.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import Request, UploadFile

from actors import preprocess
from actors.contract import MeshConfig
from gateway.deps import Services
from gateway.validation import ImageInfo, UploadError, decode_cost, validate_image


async def read_limited(request: Request, file: UploadFile, max_bytes: int) -> bytes:
    """The file's bytes, refusing more than ``max_bytes`` without reading them all."""
    data = await file.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise UploadError(413, "too_large", f"the upload is over the limit of {max_bytes} bytes")
    return bytes(data)


async def validate(svc: Services, data: bytes, cfg: MeshConfig) -> ImageInfo:
    """Validate an image off the event loop, holding what its decode needs of the decode budget."""
    limits = {"max_bytes": cfg.max_upload_bytes, "max_pixels": cfg.max_pixels}
    cost = await asyncio.to_thread(decode_cost, data, **limits)  # the header only
    async with svc.decode_budget.hold(cost):
        return await asyncio.to_thread(validate_image, data, **limits)


async def embed_bytes(svc: Services, model: str, data: bytes) -> Any:
    """The vector of an image that is not stored, under ``model`` (``data`` has passed :func:`validate`)."""
    spec = await svc.embedder.preprocess_spec(model)
    # decoded exactly as the pipeline does (actors/imaging.py), so the vector matches the stored one
    img = await asyncio.to_thread(preprocess.open_image, data, spec.resize)
    try:
        async with svc.decode_budget.hold(preprocess.decode_cost(img)):
            (pixels,) = await asyncio.to_thread(preprocess.pixels_for, img, [spec])
    finally:
        img.close()
    return await svc.embedder.embed_image(model, pixels)
