"""Test images: scikit-image's photos and their altered copies (``ops/photos.py``), and generated JPEGs."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from ops.photos import (
    ALTERATIONS,
    GREY_PHOTOS,
    PHOTOS,
    colour_shift,
    crop,
    flip,
    jpeg,
    photo,
    shrink_heavy_jpeg,
    sibling_set,
)

__all__ = [
    "ALTERATIONS",
    "GREY_PHOTOS",
    "PHOTOS",
    "colour_shift",
    "crop",
    "distinct_jpegs",
    "flip",
    "jpeg",
    "photo",
    "png",
    "shrink_heavy_jpeg",
    "sibling_set",
]


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def distinct_jpegs(
    n: int, size: tuple[int, int] = (256, 192), seed: int = 0, quality: int = 85
) -> list[bytes]:
    """``n`` different JPEGs with some structure (gradients and blobs), for load tests."""
    rng = np.random.default_rng(seed)
    h, w = size[1], size[0]
    yy, xx = np.mgrid[0:h, 0:w]
    images = []
    for _ in range(n):
        base = rng.integers(0, 255, 3)
        arr = np.empty((h, w, 3), dtype=np.float32)
        for c in range(3):
            fx, fy = rng.uniform(0.005, 0.05, 2)
            arr[..., c] = base[c] + 60 * np.sin(xx * fx + rng.uniform(0, 6)) * np.cos(yy * fy)
        cx, cy, r = rng.integers(0, w), rng.integers(0, h), rng.integers(10, 60)
        arr[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] = rng.integers(0, 255, 3)
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
        images.append(jpeg(img, quality))
    return images
