"""Upload validation for the gateway: pure functions over bytes and strings, no I/O, no web framework.

The gateway turns an :class:`UploadError` into its status and ``{"error": {"code", "message"}}`` (DESIGN.md
section 3). Rules (section 7): the real type comes from the bytes, never from a file name or a Content-Type;
bytes and pixels are capped; a decompression bomb is an error, never a warning; a bad upload stores nothing.

Pillow is only ever asked to *decode* the allowed formats (``Image.open(..., formats=...)``): other plugins are
used to recognize a format by its header and are never loaded, so Ghostscript (EPS) and the long tail of rarely
fuzzed decoders never run on user bytes.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
import warnings
import zlib
from dataclasses import dataclass
from typing import Final, Literal

from PIL import ExifTags, Image, ImageFile

from actors.errors import PermanentError

__all__ = [
    "ALLOWED_FORMATS",
    "ImageInfo",
    "UploadError",
    "parse_metadata",
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
    frames of animations and the pages of TIFFs, up to :data:`MAX_COUNTED_FRAMES`; only the first is embedded.
    """

    format: str
    content_type: str
    width: int
    height: int
    frames: int = 1
    orientation: int = 1


# Frames are counted, never decoded, and only up to here: the count is informational, the work to get it must
# stay bounded (Pillow walks GIF frames and TIFF pages in Python, TIFF in quadratic time).
MAX_COUNTED_FRAMES: Final = 10_000
# Progressive JPEG scans accepted (see _check_scans): far above what encoders write, far below a CPU bomb.
MAX_JPEG_SCANS: Final = 100


# Pillow format name -> (the name we report, its media type). MPO is what Pillow calls a JPEG carrying the
# Multi-Picture extension (most phone cameras): it is a JPEG for every client that reads it.
_ALLOWED: Final[dict[str, tuple[str, str]]] = {
    "JPEG": ("JPEG", "image/jpeg"),
    "MPO": ("JPEG", "image/jpeg"),
    "PNG": ("PNG", "image/png"),
    "WEBP": ("WEBP", "image/webp"),
    "GIF": ("GIF", "image/gif"),
    "BMP": ("BMP", "image/bmp"),
    "TIFF": ("TIFF", "image/tiff"),
}
ALLOWED_FORMATS: Final = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
_ALLOWED_LIST: Final = "JPEG, PNG, WebP, GIF, BMP or TIFF"
# Pillow's plugin names for the allowed formats (``formats=`` takes plugin ids, and MPO is reached via JPEG).
_OPEN_ALLOWED: Final = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")

_BMP_DIB_HEADER_SIZES: Final = frozenset({12, 40, 52, 56, 64, 108, 124})
_EXIF_ORIENTATION: Final = int(ExifTags.Base.Orientation)

# ISO-BMFF brands of image formats Pillow cannot read (HEIC/HEIF from phones, JPEG XL in its container).
_HEIF_BRANDS: Final = frozenset({b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"})


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


def _decode_allowed(data: bytes, max_pixels: int) -> ImageInfo:
    magic = _allowed_magic(data)
    try:
        im = Image.open(io.BytesIO(data), formats=_OPEN_ALLOWED)
    except Image.UnidentifiedImageError:
        if magic is not None:
            # it starts like an allowed format but its header cannot be read: truncated or corrupt
            raise UploadError(400, "broken_image", f"the {magic} header is broken or truncated") from None
        raise _classify_other(data) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _too_many_pixels(exc) from None
    except Exception as exc:
        # Pillow's plugins raise a wide, undocumented set (OSError, SyntaxError, ValueError, struct.error,
        # EOFError, IndexError, ...); all of them mean the same thing to the uploader
        raise _broken(magic or "image", exc) from None

    name, content_type = _ALLOWED.get(str(im.format), (str(im.format), "application/octet-stream"))
    try:
        _check_pixels(im.size, max_pixels)  # the declared size, before a single pixel is decoded
        if name == "JPEG":
            _check_scans(data)
        elif name == "PNG":
            _check_png_data(data)  # before load(): a short stream is refused before its frame is allocated
        # verify() checks what load() does not (PNG chunk CRCs) but misses truncated pixel data, and leaves
        # the image unusable: reopen and decode the first frame fully as well
        im.verify()
        im.close()
        im = Image.open(io.BytesIO(data), formats=_OPEN_ALLOWED)
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
        frames = _count_frames(im, data)
        orientation = _orientation(im)
    except UploadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _too_many_pixels(exc) from None
    except MemoryError:
        raise UploadError(
            413, "too_many_pixels", "the image needs more memory to decode than allowed"
        ) from None
    except Exception as exc:  # see above: any decoder failure is a broken image
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


def _check_scans(data: bytes) -> None:
    # Every progressive scan costs a pass over the whole image: a few KB of repeated scans make a 16 MP JPEG
    # take minutes to decode. Encoders write 1 (baseline) to ~20; 0xFFDA cannot occur in entropy-coded data
    # (0xFF is stuffed there), so counting it counts scans, those of an embedded thumbnail or MPO image too.
    scans = data.count(b"\xff\xda")
    if scans > MAX_JPEG_SCANS:
        raise UploadError(
            400, "broken_image", f"the JPEG has {scans} scans; no encoder writes more than {MAX_JPEG_SCANS}"
        )


# PNG colour type -> samples per pixel (IHDR)
_PNG_CHANNELS: Final = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
# Adam7 passes: (x0, y0, dx, dy)
_ADAM7: Final = (
    (0, 0, 8, 8),
    (4, 0, 8, 8),
    (0, 4, 4, 8),
    (2, 0, 4, 4),
    (0, 2, 2, 4),
    (1, 0, 2, 2),
    (0, 1, 1, 2),
)


def _check_png_data(data: bytes) -> None:
    """The first frame's zlib stream holds every row IHDR declares.

    Pillow's decoder stops quietly when the stream ends early and leaves the missing rows black, so a PNG with
    whole chunks and right CRCs but short pixel data would pass ``load()``. Inflated in bounded pieces and
    thrown away: memory stays O(1 MB) whatever the image declares.
    """
    pos, expected, produced, in_idat = 8, 0, 0, False
    inflate = zlib.decompressobj()
    while pos + 8 <= len(data):
        length = int.from_bytes(data[pos : pos + 4], "big")
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR" and len(body) >= 13:
            expected = _png_raw_size(body)
        elif kind == b"IDAT":
            in_idat = True
            while body and produced < expected:
                produced += len(inflate.decompress(body, 1 << 20))
                body = inflate.unconsumed_tail
            if produced >= expected:
                return
        elif in_idat:  # IDAT chunks are consecutive; what follows (fdAT, IEND) is not the first frame
            break
        pos += 12 + length
    if produced < expected:
        raise UploadError(
            400, "broken_image", f"the PNG pixel data ends early ({produced} of {expected} bytes)"
        )


def _png_raw_size(ihdr: bytes) -> int:
    """Bytes of filtered scanlines (a filter byte per row) that IHDR's size, depth and interlace imply."""
    width, height = int.from_bytes(ihdr[0:4], "big"), int.from_bytes(ihdr[4:8], "big")
    bits = ihdr[8] * _PNG_CHANNELS.get(ihdr[9], 4)
    passes = _ADAM7 if ihdr[12] == 1 else ((0, 0, 1, 1),)
    total = 0
    for x0, y0, dx, dy in passes:
        w, h = -(-(width - x0) // dx), -(-(height - y0) // dy)
        if w > 0 and h > 0:
            total += h * (1 + (w * bits + 7) // 8)
    return total


def _too_many_pixels(exc: BaseException) -> UploadError:
    return UploadError(413, "too_many_pixels", f"the image has too many pixels ({_short(exc)})")


def _broken(name: str, exc: BaseException) -> UploadError:
    return UploadError(400, "broken_image", f"the {name} image is broken or truncated ({_short(exc)})")


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def _count_frames(im: Image.Image, data: bytes) -> int:
    """Frames (pages), at most MAX_COUNTED_FRAMES; only the first frame has been decoded and checked."""
    if im.format == "GIF":
        return _gif_frames(data)
    if im.format == "TIFF":
        return _tiff_frames(data)
    # PNG (acTL), WebP (libwebp's demuxer) and MPO (its index) declare the count: reading it is cheap
    return max(1, min(int(getattr(im, "n_frames", 1)), MAX_COUNTED_FRAMES))


def _gif_frames(data: bytes) -> int:
    """Image descriptors of a GIF, found by skipping its blocks (Pillow's n_frames walks them much slower)."""
    end = len(data)
    pos = 13  # header and logical screen descriptor
    if end > 10 and data[10] & 0x80:
        pos += 3 << ((data[10] & 7) + 1)  # global colour table
    frames = 0
    while pos < end and frames < MAX_COUNTED_FRAMES:
        block = data[pos]
        if block == 0x21:  # extension: label, then sub-blocks
            pos = _skip_sub_blocks(data, pos + 2)
        elif block == 0x2C and pos + 10 <= end:  # image: descriptor, local colour table, LZW size, sub-blocks
            flags = data[pos + 9]
            pos += 10 + ((3 << ((flags & 7) + 1)) if flags & 0x80 else 0)
            pos = _skip_sub_blocks(data, pos + 1)
            frames += 1
        else:  # trailer, or trailing junk decoders ignore
            break
    return max(frames, 1)


def _skip_sub_blocks(data: bytes, pos: int) -> int:
    end = len(data)
    while pos < end:
        size = data[pos]
        pos += 1 + size
        if size == 0:
            break
    return pos


def _tiff_frames(data: bytes) -> int:
    """Pages of a (Big)TIFF, following the IFD chain (Pillow's seek checks for loops in quadratic time)."""
    order: Literal["little", "big"] = "little" if data[:2] == b"II" else "big"
    big = int.from_bytes(data[2:4], order) == 43
    count_size, entry_size, offset_size = (8, 20, 8) if big else (2, 12, 4)
    offset = int.from_bytes(data[8:16] if big else data[4:8], order)
    seen: set[int] = set()
    while 0 < offset and offset + count_size <= len(data) and offset not in seen:
        if len(seen) >= MAX_COUNTED_FRAMES:
            break
        seen.add(offset)
        entries = int.from_bytes(data[offset : offset + count_size], order)
        next_at = offset + count_size + entries * entry_size
        offset = int.from_bytes(data[next_at : next_at + offset_size], order)
    return max(len(seen), 1)


def _orientation(im: Image.Image) -> int:
    """The EXIF orientation (1-8), 1 when absent or unreadable: broken EXIF does not make a broken image."""
    try:
        value = im.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _allowed_magic(data: bytes) -> str | None:
    """The allowed format ``data`` starts like, from its signature alone (used to say "broken", not "no image")."""
    if data[:3] == b"\xff\xd8\xff":
        return "JPEG"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "PNG"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "TIFF"
    # "BM" alone starts too many texts: also require a known DIB header size
    if (
        data[:2] == b"BM"
        and len(data) >= 18
        and int.from_bytes(data[14:18], "little") in _BMP_DIB_HEADER_SIZES
    ):
        return "BMP"
    return None


def _classify_other(data: bytes) -> UploadError:
    """Bytes no allowed decoder accepts: a known non-image, a recognized but refused format, or no image."""
    head = data[:64]
    if head.startswith(b"%PDF-"):
        return UploadError(400, "not_an_image", "the bytes are a PDF document, not an image")
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return UploadError(400, "not_an_image", "the bytes are a ZIP archive, not an image")
    refused = _refused_format(data)
    if refused is not None:
        return UploadError(
            415, "unsupported_format", f"{refused} images are not accepted; send {_ALLOWED_LIST}"
        )
    return UploadError(400, "not_an_image", f"the bytes are not an image; send {_ALLOWED_LIST}")


def _refused_format(data: bytes) -> str | None:
    """The name of an image format we recognize but do not accept, or None."""
    if data[:4] == b"%!PS" or data[:4] == b"\xc5\xd0\xd3\xc6":
        return "EPS"
    if data[:4] == b"8BPS":
        return "PSD"
    if data[4:8] == b"ftyp":
        brand = data[8:12]
        if brand in (b"avif", b"avis"):
            return "AVIF"
        if brand in _HEIF_BRANDS:
            return "HEIF"
    if data[:2] == b"\xff\x0a" or data[:12] == b"\x00\x00\x00\x0cJXL \r\n\x87\n":
        return "JPEG XL"
    if data[:9] == b"gimp xcf ":
        return "XCF"
    if _looks_like_svg(data):
        return "SVG"
    # Anything else Pillow recognizes by a signature (ICO, CUR, ICNS, JPEG 2000, DDS, PCX, ...): open reads
    # only the header. Plugins without a signature check (TGA, SPIDER, ...) are left out: they would claim
    # random bytes now and then.
    try:
        im = Image.open(io.BytesIO(data), formats=_signature_formats())
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        return "this"  # recognized (Pillow got as far as its size) and refused either way
    except Exception:
        return None
    try:
        return str(im.format)
    finally:
        im.close()


def _signature_formats() -> list[str]:
    Image.init()
    return [fmt for fmt, (_, accept) in Image.OPEN.items() if accept is not None and fmt not in _ALLOWED]


# XML prolog items that may come before the root element: declaration, processing instructions, comments,
# a doctype (with its internal subset, where XXE payloads live). Never parsed as XML: matched and skipped.
_XML_PROLOG = re.compile(
    rb"\s+|<\?.*?\?>|<!--.*?-->|<!doctype[^\[>]*(?:\[.*?\])?\s*>",
    re.DOTALL | re.IGNORECASE,
)
_SVG_ROOT = re.compile(rb"<(?:[a-z_][\w.-]*:)?svg[\s/>]", re.IGNORECASE)


def _looks_like_svg(data: bytes) -> bool:
    """True when the first XML element is ``<svg>``; an HTML page with an inline ``<svg>`` is not SVG."""
    text = data[:65536]
    if text.startswith(b"\xef\xbb\xbf"):
        text = text[3:]
    pos = 0
    while True:
        m = _XML_PROLOG.match(text, pos)
        if m is None or m.end() == pos:
            break
        pos = m.end()
    return _SVG_ROOT.match(text, pos) is not None


# --- metadata -------------------------------------------------------------------------------------------

MAX_METADATA_KEYS: Final = 32
MAX_KEY_CHARS: Final = 64
MAX_VALUE_CHARS: Final = 1024
# Far above any valid object (32 keys of 64 + 1024 chars), so the parser never sees a huge field.
MAX_METADATA_BYTES: Final = 64 * 1024
# Numbers must survive JSON clients that hold them as doubles (JavaScript): integers beyond 2**53 would not.
MAX_SAFE_INT: Final = 2**53 - 1
_KEY = re.compile(r"[A-Za-z0-9_.-]{1,64}")

MetadataValue = str | int | float


def parse_metadata(raw: str | bytes | None) -> dict[str, MetadataValue]:
    """Parse the optional ``metadata`` form field: a flat JSON object of short keys to strings or numbers.

    ``None``, an empty or a blank field mean no metadata (``{}``): HTML forms send empty fields. Keys are
    1-64 characters of ``[A-Za-z0-9_.-]``, at most 32 of them, no duplicates; values are strings of at most
    1024 characters or finite numbers (integers within +-(2**53-1)); no booleans, nulls, arrays or objects.
    Anything else raises :class:`UploadError` 422 ``invalid_metadata`` saying what is wrong.
    """
    if raw is None:
        return {}
    if not isinstance(raw, str | bytes):
        raise TypeError(f"parse_metadata takes str, bytes or None, not {type(raw).__name__}")
    if len(raw) > MAX_METADATA_BYTES:
        raise _bad_metadata(f"metadata is {len(raw)} long; the limit is {MAX_METADATA_BYTES}")
    if isinstance(raw, bytes):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _bad_metadata(f"metadata is not valid UTF-8 (byte {exc.start})") from None
    else:
        text = raw
    if not text.strip():
        return {}
    try:
        obj = json.loads(text, object_pairs_hook=_pairs, parse_constant=_no_constant)
    except _MetadataProblem as exc:
        raise _bad_metadata(str(exc)) from None
    except json.JSONDecodeError as exc:
        raise _bad_metadata(f"metadata is not valid JSON: {exc.msg} at character {exc.pos}") from None
    except RecursionError:
        raise _bad_metadata("metadata is nested too deeply") from None
    except ValueError as exc:  # e.g. an integer with more digits than Python converts
        raise _bad_metadata(f"metadata is not valid JSON: {_short(exc)}") from None
    if not isinstance(obj, dict):
        raise _bad_metadata(f"metadata must be a JSON object, not {_json_kind(obj)}")
    if len(obj) > MAX_METADATA_KEYS:
        raise _bad_metadata(f"metadata has {len(obj)} keys; the limit is {MAX_METADATA_KEYS}")
    out: dict[str, MetadataValue] = {}
    for key, value in obj.items():
        _check_key(key)
        out[key] = _check_value(key, value)
    return out


class _MetadataProblem(ValueError):
    """Raised from inside the JSON parser's hooks; carries the message for the uploader."""


def _pairs(pairs: list[tuple[str, object]]) -> dict[str, object]:
    # json.loads keeps the last of duplicate keys silently; two values for one key is ambiguous: refuse it
    obj: dict[str, object] = {}
    for key, value in pairs:
        if key in obj:
            raise _MetadataProblem(f"metadata key {_show(key)} appears more than once")
        obj[key] = value
    return obj


def _no_constant(name: str) -> object:
    # Python's json accepts NaN and Infinity, which are not JSON and which no other client can read back
    raise _MetadataProblem(f"metadata contains {name}, which is not a JSON number")


def _check_key(key: str) -> None:
    if not key:
        raise _bad_metadata("metadata keys must not be empty")
    if len(key) > MAX_KEY_CHARS:
        raise _bad_metadata(
            f"metadata key {_show(key)} is {len(key)} characters; the limit is {MAX_KEY_CHARS}"
        )
    if not _KEY.fullmatch(key):
        raise _bad_metadata(f"metadata key {_show(key)} may only contain letters, digits, '_', '.' and '-'")


def _check_value(key: str, value: object) -> MetadataValue:
    if isinstance(value, str):
        if len(value) > MAX_VALUE_CHARS:
            raise _bad_metadata(
                f"metadata value of {_show(key)} is {len(value)} characters; the limit is {MAX_VALUE_CHARS}"
            )
        try:
            value.encode("utf-8")  # a lone surrogate ("\ud800") parses but cannot be stored or sent on
        except UnicodeEncodeError:
            raise _bad_metadata(f"metadata value of {_show(key)} contains an unpaired surrogate") from None
        return value
    # bool is an int in Python: test it first
    if isinstance(value, bool) or value is None:
        raise _bad_metadata(
            f"metadata value of {_show(key)} must be a string or a number, not {_json_kind(value)}"
        )
    if isinstance(value, int):
        if abs(value) > MAX_SAFE_INT:
            raise _bad_metadata(f"metadata value of {_show(key)} is outside +-(2**53-1)")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):  # 1e999 parses to inf
            raise _bad_metadata(f"metadata value of {_show(key)} is not a finite number")
        return value
    raise _bad_metadata(
        f"metadata value of {_show(key)} must be a string or a number, not {_json_kind(value)} (no nesting)"
    )


def _json_kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    return "a number"


def _show(key: str) -> str:
    """A key quoted for a message, cut short and with any odd character escaped."""
    text = key if len(key) <= 40 else key[:37] + "..."
    return ascii(text)


def _bad_metadata(message: str) -> UploadError:
    return UploadError(422, "invalid_metadata", message)
