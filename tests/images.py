"""Test images made from photos that ship inside scikit-image (no downloads), and altered copies of them."""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

PHOTOS = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "stereo_motorcycle",
)
GREY_PHOTOS = ("camera", "moon", "coins", "brick", "grass", "gravel", "page", "text", "cell")


def photo(name: str) -> Image.Image:
    import skimage.data

    arr = getattr(skimage.data, name)()
    if isinstance(arr, tuple):  # stereo pairs
        arr = arr[0]
    img = Image.fromarray(np.asarray(arr))
    return img.convert("RGB")


def jpeg(img: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def crop(img: Image.Image) -> Image.Image:
    w, h = img.size
    return img.crop((int(w * 0.1), int(h * 0.1), int(w * 0.9), int(h * 0.9)))


def shrink_heavy_jpeg(img: Image.Image) -> Image.Image:
    small = img.resize((max(32, img.width // 3), max(32, img.height // 3)), Image.Resampling.BILINEAR)
    return Image.open(io.BytesIO(jpeg(small, quality=20))).convert("RGB")


def colour_shift(img: Image.Image) -> Image.Image:
    warmer = ImageEnhance.Color(img).enhance(1.4)
    r, g, b = warmer.split()
    return Image.merge("RGB", (r.point(lambda v: min(255, v + 20)), g, b.point(lambda v: max(0, v - 20))))


def flip(img: Image.Image) -> Image.Image:
    return ImageOps.mirror(img)


ALTERATIONS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "crop": crop,
    "shrink_jpeg": shrink_heavy_jpeg,
    "colour": colour_shift,
    "flip": flip,
}


def sibling_set(names: tuple[str, ...] = PHOTOS) -> list[tuple[str, str, bytes]]:
    """(group, variant, JPEG bytes) for each photo and its four altered copies: 5 per photo."""
    out: list[tuple[str, str, bytes]] = []
    for name in names:
        original = photo(name)
        out.append((name, "original", jpeg(original)))
        for variant, alter in ALTERATIONS.items():
            out.append((name, variant, jpeg(alter(original))))
    return out


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
