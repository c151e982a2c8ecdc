"""Image preprocessing shared by the pipeline and the tests: bytes -> PIL image -> uint8 pixels for Triton.

What a model needs (size, resize, crop, mean/std, channel order) is stored with the model, in its Triton
``config.pbtxt`` as the ``preprocess`` parameter (JSON); :class:`PreprocessSpec` is that JSON. The client only
resizes and crops: mean/std normalization is folded into the model graph, so requests carry uint8 HWC pixels
(4x fewer bytes than float32).

Decoding is split for callers that bound their memory (``actors.decode_budget``): ``open_image`` reads the
header, ``decode_cost`` says from it how many bytes the decode will hold at its peak, ``decode_opened`` (or
``pixels_for``) decodes; ``decode_image`` opens and decodes in one call, for callers without a budget.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pillow_heif
from PIL import ExifTags, Image, ImageMode, ImageOps

from actors import copies
from actors.contract import PreprocessSpec

# HEIC/HEIF (phone photos) is read by pillow-heif's opener, AVIF by Pillow's own plugin. Registered here, in the
# module every decoder of the mesh imports (the coordinator's pipeline through actors.imaging, the gateway's
# validation and search), so that the pipeline decodes what the gateway accepts (gateway/formats.py ACCEPTED).
# Pillow's plugins load first (Image.init) so that an AVIF whose major brand is the generic mif1 is tried as
# AVIF before pillow-heif claims it (no AV1 decoder in its libheif). Thumbnails, depth and auxiliary images
# are never read. Idempotent.
Image.init()
pillow_heif.register_heif_opener(thumbnails=False, depth_images=False, aux_images=False)

Resample = Literal["nearest", "bilinear", "bicubic", "lanczos"]

_RESAMPLE: dict[str, Image.Resampling] = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


def open_image(data: bytes, target: int | None = None, max_pixels: int | None = None) -> Image.Image:
    """The image as :func:`decode_opened` will decode it, from its header alone: no pixel is decoded yet.

    ``target`` (the size the model will resize to) lets JPEG decode at a reduced scale (draft mode) when the
    image is much larger, which is several times faster for camera photos and holds 4 to 64 times fewer bytes;
    ``size`` and ``mode`` are then the reduced frame's. Raises ``PIL.UnidentifiedImageError`` (or ``OSError``)
    for bytes that are no image, and ``Image.DecompressionBombError`` when the header declares more than
    ``max_pixels`` (or Pillow's own limit).
    """
    img: Image.Image = Image.open(io.BytesIO(data))
    width, height = img.size
    if max_pixels is not None and width * height > max_pixels:
        img.close()
        raise Image.DecompressionBombError(
            f"the image declares {width}x{height} = {width * height} pixels; the limit is {max_pixels}"
        )
    if img.format == "JPEG" and target is not None and min(img.size) >= 2 * target:
        # draft keeps at least the requested size, scaling by 1/2, 1/4 or 1/8 in the DCT
        img.draft("RGB", (target, target))
    return img


def frame_bytes(mode: str, size: tuple[int, int]) -> int:
    """Bytes Pillow allocates for one frame: width x height x bytes per pixel as Pillow stores them (every
    multi-band 8-bit mode, RGB included, takes 4 bytes a pixel; ``L``/``P`` 1, ``I;16`` 2, ``I``/``F`` 4)."""
    width, height = size
    try:
        info = ImageMode.getmode(mode)
    except KeyError:  # a mode Pillow does not describe: assume the widest common pixel
        return width * height * 4
    per_pixel = 4 if len(info.bands) > 1 else max(1, int(info.typestr[-1]))
    return width * height * per_pixel


def decode_cost(img: Image.Image) -> int:
    """The most bytes :func:`decode_opened` holds at once for an image from :func:`open_image`, from its header.

    The decoded frame, plus whichever is larger of the transposed copy (an EXIF orientation the header
    declares) and the RGB copy (with its alpha channel and an RGBA copy for transparent images). What
    ``to_pixels`` allocates after that (a resized strip, the crop) is small beside it and not counted.
    """
    width, height = img.size
    pixels = width * height
    frame = frame_bytes(img.mode, img.size)
    if img.mode == "RGB":
        convert = 0
    elif _transparent(img):
        convert = (0 if img.mode == "RGBA" else 4 * pixels) + 4 * pixels + pixels
    else:
        convert = 4 * pixels
    transpose = frame if _orientation(img) in _TRANSPOSED else 0
    return frame + max(convert, transpose)


def decode_opened(img: Image.Image) -> Image.Image:
    """Decode an image from :func:`open_image` to RGB, upright (EXIF orientation applied), first frame of
    animations. Every intermediate frame is closed as soon as the next exists, so the peak is
    :func:`decode_cost`; ``img`` is closed unless it is the result."""
    img.load()
    # an image opens at its first frame (GIF, WebP, TIFF pages): asking n_frames would walk every frame, which
    # is quadratic for a TIFF with many pages. In place: otherwise Pillow returns a full copy even when the
    # image has no orientation to apply
    ImageOps.exif_transpose(img, in_place=True)
    if img.mode == "RGB":
        return img
    try:
        if _transparent(img):
            # transparent pixels over white rather than whatever colour they hide
            rgba = img if img.mode == "RGBA" else img.convert("RGBA")
            base = Image.new("RGB", rgba.size, (255, 255, 255))
            alpha = rgba.getchannel("A")
            base.paste(rgba, mask=alpha)
            alpha.close()
            rgba.close()
            return base
        return img.convert("RGB")
    finally:
        img.close()


def decode_image(data: bytes, target: int | None = None) -> Image.Image:
    """Decode image bytes to an RGB image, upright (EXIF orientation applied), first frame of animations.

    :func:`open_image` then :func:`decode_opened`; callers that bound their memory read
    :func:`decode_cost` in between (``actors.decode_budget``).
    """
    return decode_opened(open_image(data, target))


def pixels_for(img: Image.Image, specs: Sequence[PreprocessSpec]) -> list[np.ndarray]:
    """Decode an image from :func:`open_image` and return its pixels for each spec; the decoded frame is
    closed before returning, so only the small pixel arrays outlive the call."""
    rgb = decode_opened(img)
    try:
        return [to_pixels(rgb, spec) for spec in specs]
    finally:
        rgb.close()


THUMBNAIL_SIDE = 256  # the long side of the thumbnail the pipeline stores for every image
THUMBNAIL_QUALITY = 80  # WebP quality of thumbnails and previews


def thumbnail_webp(rgb: Image.Image, side: int) -> bytes:
    """The image scaled to ``side`` px on its long side (never enlarged) as WebP bytes."""
    small = rgb.copy()
    try:
        small.thumbnail((side, side), Image.Resampling.LANCZOS, reducing_gap=3.0)
        buf = io.BytesIO()
        small.save(buf, format="WEBP", quality=THUMBNAIL_QUALITY, method=4)
        return buf.getvalue()
    finally:
        small.close()


@dataclass(frozen=True)
class Derived:
    """What the pipeline makes from one decode of an image: each model's pixels, the thumbnail (WebP) and the
    copy-detection features (``actors.copies``, serialized)."""

    pixels: list[np.ndarray]
    thumbnail: bytes
    copy_features: bytes


def derive(img: Image.Image, specs: Sequence[PreprocessSpec]) -> Derived:
    """Decode an image from :func:`open_image` (opened with a draft target of at least ``THUMBNAIL_SIDE``, so
    the frame serves every product) and make everything the pipeline needs of its pixels; the frame is closed
    before returning."""
    rgb = decode_opened(img)
    try:
        return Derived(
            pixels=[to_pixels(rgb, spec) for spec in specs],
            thumbnail=thumbnail_webp(rgb, THUMBNAIL_SIDE),
            copy_features=copies.features(rgb).to_bytes(),
        )
    finally:
        rgb.close()


_TRANSPOSED = frozenset(range(2, 9))
_EXIF_ORIENTATION = int(ExifTags.Base.Orientation)


def _transparent(img: Image.Image) -> bool:
    return img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info)


def _orientation(img: Image.Image) -> int:
    """The EXIF orientation the header declares. Never decodes: a PNG's ``getexif`` loads the whole image to
    look for an eXIf chunk after the pixels, so a PNG without one in its header counts as upright here."""
    if img.format == "PNG" and "exif" not in img.info:
        return 1
    try:
        value = img.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # broad on purpose: Pillow's EXIF parser raises many types, all meaning "unreadable"
        return 1
    return value if isinstance(value, int) else 1


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
