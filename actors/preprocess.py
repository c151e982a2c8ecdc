"""Image preprocessing shared by the pipeline and the tests: bytes -> PIL image -> uint8 pixels for Triton.

What a model needs (size, resize, crop, mean/std, channel order) is stored with the model, in its Triton
``config.pbtxt`` as the ``preprocess`` parameter (JSON); :class:`PreprocessSpec` is that JSON. The client only
resizes and crops: mean/std normalization is folded into the model graph, so requests carry uint8 HWC pixels
(4x fewer bytes than float32).
"""

from __future__ import annotations

import io
from typing import Literal

import numpy as np
from PIL import Image, ImageOps

from actors.contract import PreprocessSpec

Resample = Literal["nearest", "bilinear", "bicubic", "lanczos"]

_RESAMPLE: dict[str, Image.Resampling] = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


def decode_image(data: bytes, target: int | None = None) -> Image.Image:
    """Decode image bytes to an RGB image, upright (EXIF orientation applied), first frame of animations.

    ``target`` (the size the model will resize to) lets JPEG decode at a reduced scale (draft mode) when the
    image is much larger, which is several times faster for camera photos. Raises
    ``PIL.UnidentifiedImageError`` (or ``OSError``,
    ``Image.DecompressionBombError``) for bytes that are no (sane) image.
    """
    img: Image.Image = Image.open(io.BytesIO(data))
    if img.format == "JPEG" and target is not None and min(img.size) >= 2 * target:
        # draft keeps at least the requested size, scaling by 1/2, 1/4 or 1/8 in the DCT
        img.draft("RGB", (target, target))
    # an image opens at its first frame (GIF, WebP, TIFF pages): asking n_frames would walk every frame, which
    # is quadratic for a TIFF with many pages
    img = ImageOps.exif_transpose(img) or img
    if img.mode != "RGB":
        if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
            # transparent pixels over white rather than whatever colour they hide
            rgba = img.convert("RGBA")
            base = Image.new("RGB", rgba.size, (255, 255, 255))
            base.paste(rgba, mask=rgba.getchannel("A"))
            img = base
        else:
            img = img.convert("RGB")
    return img


def to_pixels(img: Image.Image, spec: PreprocessSpec) -> np.ndarray:
    """Resize the shortest edge, center-crop, return ``uint8 [crop, crop, 3]`` in the spec's channel order."""
    if img.mode != "RGB":
        img = img.convert("RGB")
    w, h = img.size
    scale = spec.resize / min(w, h)
    nw, nh = max(spec.crop, round(w * scale)), max(spec.crop, round(h * scale))
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), _RESAMPLE[spec.resample])
    left, top = (nw - spec.crop) // 2, (nh - spec.crop) // 2
    img = img.crop((left, top, left + spec.crop, top + spec.crop))
    pixels = np.asarray(img, dtype=np.uint8)
    if spec.channel_order == "BGR":
        pixels = pixels[:, :, ::-1]
    return np.ascontiguousarray(pixels)
