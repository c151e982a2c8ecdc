"""Real photos without downloads: the ones that ship inside scikit-image, and altered copies of them.

The benchmarks (``ops/bench``) and the tests (``tests/images.py``) draw their photo-like inputs from here.
scikit-image is a dev dependency, like the benchmarks: it is imported inside :func:`photo` only, so importing
this module (or anything in ``ops/``) never needs it.
"""

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
    """One of scikit-image's sample photos (``PHOTOS``, ``GREY_PHOTOS``) as an RGB image."""
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
