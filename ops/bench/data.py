"""Benchmark inputs: camera-sized JPEGs and ~100 KB upload JPEGs (the query vectors: ``ops.bench.realistic``).

Images start from the photos that ship inside scikit-image (``ops/photos.py``), cropped, recoloured and
given sensor-like noise so they compress like photos. Every repetition re-tags the same JPEGs with a comment
segment (:func:`tagged`): the bytes (and so the sha256 the gateway de-duplicates on) differ, the decoding
work does not.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

CAMERA_SIZE = (1024, 768)


def _bases(size: tuple[int, int]) -> list[Image.Image]:
    from ops.photos import PHOTOS, photo  # scikit-image's photos (a dev dependency, like the bench)

    w, h = size
    return [photo(n).resize((w + w // 8, h + h // 8), Image.Resampling.BICUBIC) for n in PHOTOS]


def _jpeg(arr: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def photo_jpegs(n: int, size: tuple[int, int] = CAMERA_SIZE, seed: int = 0, quality: int = 88) -> list[bytes]:
    """``n`` different photo-like JPEGs of ``size`` (crop, colour gain, a blob, noise of sigma ~5)."""
    rng = np.random.default_rng(seed)
    bases = [np.asarray(b, dtype=np.uint8) for b in _bases(size)]
    w, h = size
    # one noise field, shifted per image: drawing fresh Gaussian noise per image costs more than the JPEG
    noise = rng.normal(0, 5, (h + 64, w + 64, 3)).astype(np.int16)
    out = []
    for i in range(n):
        base = bases[i % len(bases)]
        x0 = int(rng.integers(0, base.shape[1] - w + 1))
        y0 = int(rng.integers(0, base.shape[0] - h + 1))
        gain = (rng.uniform(0.75, 1.2, 3) * 256).astype(np.int32)
        arr = (base[y0 : y0 + h, x0 : x0 + w].astype(np.int32) * gain) >> 8
        cx, cy, r = int(rng.integers(0, w)), int(rng.integers(0, h)), int(rng.integers(20, 120))
        arr[max(0, cy - r) : cy + r, max(0, cx - r) : cx + r] = rng.integers(0, 255, 3)
        dx, dy = int(rng.integers(0, 64)), int(rng.integers(0, 64))
        arr += noise[dy : dy + h, dx : dx + w]
        out.append(_jpeg(np.clip(arr, 0, 255).astype(np.uint8), quality))
    return out


def sized_jpegs(n: int, target_bytes: int = 100_000, seed: int = 1) -> list[bytes]:
    """``n`` different JPEGs of about ``target_bytes`` each (the quality is calibrated on the first one)."""
    size = (640, 480)
    best_q, best_gap = 85, float("inf")
    for q in (60, 70, 78, 85, 90, 94):
        got = len(photo_jpegs(1, size, seed, q)[0])
        if abs(got - target_bytes) < best_gap:
            best_q, best_gap = q, abs(got - target_bytes)
    return photo_jpegs(n, size, seed, best_q)


def tagged(jpeg: bytes, tag: str) -> bytes:
    """The same JPEG with a comment segment after SOI: other bytes (other sha256), identical pixels."""
    if jpeg[:2] != b"\xff\xd8":
        raise ValueError("not a JPEG")
    payload = tag.encode()
    return jpeg[:2] + b"\xff\xfe" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


def cached_jpegs(path: Path, make: Callable[[], list[bytes]]) -> list[bytes]:
    """``make()``'s JPEGs, saved to ``path`` (length-prefixed) the first time and read back after."""
    if path.exists():
        raw = path.read_bytes()
        out, pos = [], 0
        while pos < len(raw):
            (n,) = struct.unpack_from(">I", raw, pos)
            out.append(raw[pos + 4 : pos + 4 + n])
            pos += 4 + n
        return out
    images = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(b"".join(struct.pack(">I", len(d)) + d for d in images))
    tmp.replace(path)
    return images
