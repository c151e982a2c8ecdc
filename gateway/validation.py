"""Upload validation for the gateway: pure functions over bytes and strings, no I/O, no web framework.

The gateway turns an :class:`UploadError` into its status and ``{"error": {"code", "message"}}`` (DESIGN.md
section 3). Rules (section 7): the real type comes from the bytes, never from a file name or a Content-Type;
bytes and pixels are capped; a decompression bomb is an error, never a warning; a bad upload stores nothing.

Pillow is only ever asked to *decode* the allowed formats (``Image.open(..., formats=...)``): other plugins are
used to recognize a format by its header and are never loaded, so Ghostscript (EPS) and the long tail of rarely
fuzzed decoders never run on user bytes.

This module decides (what is refused, with which status and code); ``gateway.formats`` reads the bytes
(signatures, refused formats, frame and scan counts); ``gateway.metadata`` parses the metadata field.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass
from typing import Final

from PIL import Image, ImageFile

from actors.errors import PermanentError
from actors.preprocess import frame_bytes
from gateway import formats
from gateway.formats import ALLOWED, ALLOWED_FORMATS, ALLOWED_LIST, OPEN_ALLOWED, media_type_of

__all__ = [
    "ALLOWED_FORMATS",
    "ImageInfo",
    "UploadError",
    "brief",
    "decode_cost",
    "sha256_hex",
    "validate_image",
]


class UploadError(PermanentError):
    """An upload the gateway refuses: ``status`` is the HTTP status, ``code`` the stable error code."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message, code=code)
        self.status = status

    def __repr__(self) -> str:
        return f"UploadError({self.status}, {self.code!r}, {self.message!r})"


@dataclass(frozen=True, slots=True)
class ImageInfo:
    """What the bytes really are.

    ``width``/``height`` are as displayed: EXIF orientations 5-8 (rotated by 90 degrees) swap the stored
    dimensions, the way the embedder sees the image after ``ImageOps.exif_transpose``. ``frames`` counts the
    frames of animations and the pages of TIFFs, up to :data:`gateway.formats.MAX_COUNTED_FRAMES`; only the first is embedded.
    """

    format: str
    content_type: str
    width: int
    height: int
    frames: int = 1
    orientation: int = 1


# libheif (HEIF) and libavif (AVIF) decode into their own RGB(A) buffer, which Pillow then copies into its
# frame: both are alive at the peak. 8-bit RGBA at most (pillow-heif converts HDR to 8 bits).
LIBRARY_FRAME_BYTES_PER_PIXEL: Final = 4

# Progressive JPEG scans accepted (see _check_scans): far above what encoders write, far below a CPU bomb.
MAX_JPEG_SCANS: Final = 100


def sha256_hex(data: bytes | bytearray | memoryview) -> str:
    """The lowercase hex SHA-256 of ``data``: the upload's identity for de-duplication."""
    return hashlib.sha256(data).hexdigest()


def validate_image(data: bytes | bytearray | memoryview, *, max_bytes: int, max_pixels: int) -> ImageInfo:
    """Check that ``data`` is one whole, allowed, not too large image and say what it really is.

    Raises :class:`UploadError` and nothing else for any bytes: 400 ``empty``, ``not_an_image`` or
    ``broken_image``; 413 ``too_large`` or ``too_many_pixels``; 415 ``unsupported_format``. The pixel limit is
    checked on the size the header declares, before anything is decoded; the effective limit is the smaller
    of ``max_pixels`` and Pillow's ``Image.MAX_IMAGE_PIXELS`` (whose warning is turned into this error).
    Raises ``TypeError``/``ValueError``/``RuntimeError`` only for programming errors: not bytes, non-positive
    limits, or Pillow's process-wide ``ImageFile.LOAD_TRUNCATED_IMAGES`` switched on.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"validate_image takes bytes, not {type(data).__name__}")
    if max_bytes < 1 or max_pixels < 1:
        raise ValueError("max_bytes and max_pixels must be positive")
    data = bytes(data)
    if not data:
        raise UploadError(400, "empty", "the upload is empty")
    if len(data) > max_bytes:
        raise UploadError(413, "too_large", f"the upload is {len(data)} bytes; the limit is {max_bytes}")
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        # a process-wide switch that would make every truncated image look whole: refuse to run with it
        raise RuntimeError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is on; upload validation needs it off")

    # Pillow reports a bomb as a warning between MAX_IMAGE_PIXELS and twice that: make it an error here.
    # catch_warnings swaps process-wide filters, so under threads it may not apply; the explicit pixel check
    # below is the real guard, the filter only keeps a bomb from ever being a mere log line.
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        return _decode_allowed(data, max_pixels)


def decode_cost(data: bytes | bytearray | memoryview, *, max_bytes: int, max_pixels: int) -> int:
    """The bytes :func:`validate_image` will hold while it decodes ``data``, read from the header alone.

    The first frame as Pillow stores it (``actors.preprocess.frame_bytes``), at 1/8 scale for a JPEG (draft
    decoding); for HEIF and AVIF also the frame their library decodes into before Pillow copies it
    (:data:`LIBRARY_FRAME_BYTES_PER_PIXEL`, on the coded size). 0 for bytes that ``validate_image`` refuses
    before it decodes anything: empty, over ``max_bytes``, no readable header of an allowed format, or more
    pixels than ``max_pixels`` declared (by any HEIF/AVIF image item too).
    Never raises for any bytes.
    """
    if not data or len(data) > max_bytes:
        return 0
    data = bytes(data)
    try:
        im = Image.open(io.BytesIO(data), formats=OPEN_ALLOWED)
    except Exception:  # broad on purpose: any header Pillow cannot read is refused before decoding
        return 0
    try:
        width, height = im.size
        if width <= 0 or height <= 0 or width * height > max_pixels:
            return 0
        if im.format in ("JPEG", "MPO"):
            im.draft(im.mode, (max(1, width // 8), max(1, height // 8)))  # as _decode_allowed does
        if im.format in ("HEIF", "AVIF"):
            coded = max(width * height, formats.bmff_declared_pixels(data))
            if coded > max_pixels:
                return 0
            return frame_bytes(im.mode, im.size) + LIBRARY_FRAME_BYTES_PER_PIXEL * coded
        return frame_bytes(im.mode, im.size)
    except Exception:  # broad on purpose, as above: a header Pillow chokes on is refused before decoding
        return 0
    finally:
        im.close()


def _decode_allowed(data: bytes, max_pixels: int) -> ImageInfo:
    magic = formats.allowed_magic(data)
    try:
        im = Image.open(io.BytesIO(data), formats=OPEN_ALLOWED)
    except Image.UnidentifiedImageError:
        if magic is not None:
            # it starts like an allowed format but its header cannot be read: truncated or corrupt
            raise UploadError(400, "broken_image", f"the {magic} header is broken or truncated") from None
        raise _classify_other(data) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _too_many_pixels(exc) from None
    except Exception as exc:  # broad on purpose:
        # Pillow's plugins raise a wide, undocumented set (OSError, SyntaxError, ValueError, struct.error,
        # EOFError, IndexError, ...); all of them mean the same thing to the uploader
        raise _broken(magic or "image", exc) from None

    name = ALLOWED.get(str(im.format), (str(im.format), ""))[0]
    content_type = media_type_of(name, data)
    try:
        _check_pixels(im.size, max_pixels)  # the declared size, before a single pixel is decoded
        if name in ("HEIF", "AVIF"):
            _check_coded_pixels(data, max_pixels)
        if name == "JPEG":
            _check_scans(data)
        elif name == "PNG":
            _check_png_data(data)  # before load(): a short stream is refused before its frame is allocated
        # verify() checks what load() does not (PNG chunk CRCs) but misses truncated pixel data, and leaves
        # the image unusable: reopen and decode the first frame fully as well
        im.verify()
        im.close()
        im = Image.open(io.BytesIO(data), formats=OPEN_ALLOWED)
        _check_pixels(im.size, max_pixels)
        width, height = im.size
        if name == "JPEG":
            # libjpeg still reads and entropy-decodes every scan at 1/8 scale (a truncated or corrupt stream
            # fails the same), but skips most of the inverse DCT and allocates 1/64 of the pixels
            im.draft(im.mode, (max(1, width // 8), max(1, height // 8)))
        im.load()
        if name != "JPEG":
            _check_pixels(im.size, max_pixels)  # a few plugins settle the size while loading
            width, height = im.size
        frames = formats.count_frames(im, data)
        orientation = formats.orientation(im)
    except UploadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _too_many_pixels(exc) from None
    except MemoryError:
        raise UploadError(
            413, "too_many_pixels", "the image needs more memory to decode than allowed"
        ) from None
    except Exception as exc:  # broad on purpose, see above: any decoder failure is a broken image
        raise _broken(name, exc) from None
    finally:
        im.close()
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    return ImageInfo(name, content_type, width, height, max(frames, 1), orientation)


def _check_pixels(size: tuple[int, int], max_pixels: int) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise UploadError(400, "broken_image", f"the image declares an empty size {width}x{height}")
    if width * height > max_pixels:
        raise UploadError(
            413,
            "too_many_pixels",
            f"the image declares {width}x{height} = {width * height} pixels; the limit is {max_pixels}",
        )


def _check_coded_pixels(data: bytes, max_pixels: int) -> None:
    """HEIF/AVIF: no image item (a grid, a tile, the coded image behind a crop) declares more than the limit.

    Pillow reports the displayed size, after a ``clap`` crop; libheif decodes the whole coded image first.
    """
    coded = formats.bmff_declared_pixels(data)
    if coded > max_pixels:
        raise UploadError(
            413,
            "too_many_pixels",
            f"the image declares a coded image of {coded} pixels; the limit is {max_pixels}",
        )


def _check_scans(data: bytes) -> None:
    # Every progressive scan costs a pass over the whole image: a few KB of repeated scans make a 16 MP JPEG
    # take minutes to decode. Encoders write 1 (baseline) to ~20.
    scans = formats.jpeg_scans(data)
    if scans > MAX_JPEG_SCANS:
        raise UploadError(
            400, "broken_image", f"the JPEG has {scans} scans; no encoder writes more than {MAX_JPEG_SCANS}"
        )


def _check_png_data(data: bytes) -> None:
    """The first frame's zlib stream holds every row IHDR declares.

    Pillow's decoder stops quietly when the stream ends early and leaves the missing rows black, so a PNG with
    whole chunks and right CRCs but short pixel data would pass ``load()``.
    """
    short = formats.png_data_shortfall(data)
    if short is not None:
        produced, expected = short
        raise UploadError(
            400, "broken_image", f"the PNG pixel data ends early ({produced} of {expected} bytes)"
        )


def _too_many_pixels(exc: BaseException) -> UploadError:
    return UploadError(413, "too_many_pixels", f"the image has too many pixels ({brief(exc)})")


def _broken(name: str, exc: BaseException) -> UploadError:
    return UploadError(400, "broken_image", f"the {name} image is broken or truncated ({brief(exc)})")


def brief(exc: BaseException) -> str:
    """An exception's text for a message to the uploader, at most 160 characters."""
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def _classify_other(data: bytes) -> UploadError:
    """Bytes no allowed decoder accepts: a known non-image, a recognized but refused format, or no image."""
    document = formats.known_non_image(data)
    if document is not None:
        return UploadError(400, "not_an_image", f"the bytes are {document}, not an image")
    refused = formats.refused_format(data)
    if refused is not None:
        return UploadError(
            415, "unsupported_format", f"{refused} images are not accepted; send {ALLOWED_LIST}"
        )
    return UploadError(400, "not_an_image", f"the bytes are not an image; send {ALLOWED_LIST}")
