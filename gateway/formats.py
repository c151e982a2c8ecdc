"""What image bytes are, read from the bytes alone: pure functions, no I/O, no errors raised for bad input.

- the allowed formats (name, media type, Pillow plugin ids) and their signatures (``allowed_magic``);
- formats we recognize and refuse (``refused_format``: HEIF, AVIF, JPEG XL, EPS, PSD, SVG, ...) and known
  non-images (``known_non_image``: PDF, ZIP);
- cheap structural counts Pillow gets slowly or not at all: JPEG scans, the first PNG frame's pixel data,
  GIF frames and TIFF pages (bounded work, whatever the bytes declare), and the EXIF orientation.

``gateway.validation`` decides what of this makes an upload refused, and with which error.
"""

from __future__ import annotations

import io
import re
import zlib
from typing import Final, Literal

from PIL import ExifTags, Image

# Frames are counted, never decoded, and only up to here: the count is informational, the work to get it must
# stay bounded (Pillow walks GIF frames and TIFF pages in Python, TIFF in quadratic time).
MAX_COUNTED_FRAMES: Final = 10_000

# Pillow format name -> (the name we report, its media type). MPO is what Pillow calls a JPEG carrying the
# Multi-Picture extension (most phone cameras): it is a JPEG for every client that reads it.
ALLOWED: Final[dict[str, tuple[str, str]]] = {
    "JPEG": ("JPEG", "image/jpeg"),
    "MPO": ("JPEG", "image/jpeg"),
    "PNG": ("PNG", "image/png"),
    "WEBP": ("WEBP", "image/webp"),
    "GIF": ("GIF", "image/gif"),
    "BMP": ("BMP", "image/bmp"),
    "TIFF": ("TIFF", "image/tiff"),
}
ALLOWED_FORMATS: Final = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
ALLOWED_LIST: Final = "JPEG, PNG, WebP, GIF, BMP or TIFF"
# Pillow's plugin names for the allowed formats (``formats=`` takes plugin ids, and MPO is reached via JPEG).
OPEN_ALLOWED: Final = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")

_BMP_DIB_HEADER_SIZES: Final = frozenset({12, 40, 52, 56, 64, 108, 124})
_EXIF_ORIENTATION: Final = int(ExifTags.Base.Orientation)

# ISO-BMFF brands of image formats Pillow cannot read (HEIC/HEIF from phones, JPEG XL in its container).
_HEIF_BRANDS: Final = frozenset({b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"})


# --- signatures ---------------------------------------------------------------------------------------------


def allowed_magic(data: bytes) -> str | None:
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


def known_non_image(data: bytes) -> str | None:
    """What a well-known non-image document is ("a PDF document"), or None."""
    head = data[:64]
    if head.startswith(b"%PDF-"):
        return "a PDF document"
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "a ZIP archive"
    return None


def refused_format(data: bytes) -> str | None:
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
    if looks_like_svg(data):
        return "SVG"
    # Anything else Pillow recognizes by a signature (ICO, CUR, ICNS, JPEG 2000, DDS, PCX, ...): open reads
    # only the header. Plugins without a signature check (TGA, SPIDER, ...) are left out: they would claim
    # random bytes now and then.
    try:
        im = Image.open(io.BytesIO(data), formats=_signature_formats())
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        return "this"  # recognized (Pillow got as far as its size) and refused either way
    except Exception:  # broad on purpose: any plugin failure on a header we refuse anyway means "not this"
        return None
    try:
        return str(im.format)
    finally:
        im.close()


def _signature_formats() -> list[str]:
    Image.init()
    return [fmt for fmt, (_, accept) in Image.OPEN.items() if accept is not None and fmt not in ALLOWED]


# XML prolog items that may come before the root element: declaration, processing instructions, comments,
# a doctype (with its internal subset, where XXE payloads live). Never parsed as XML: matched and skipped.
_XML_PROLOG = re.compile(
    rb"\s+|<\?.*?\?>|<!--.*?-->|<!doctype[^\[>]*(?:\[.*?\])?\s*>",
    re.DOTALL | re.IGNORECASE,
)
_SVG_ROOT = re.compile(rb"<(?:[a-z_][\w.-]*:)?svg[\s/>]", re.IGNORECASE)


def looks_like_svg(data: bytes) -> bool:
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


# --- JPEG and PNG structure ---------------------------------------------------------------------------------


def jpeg_scans(data: bytes) -> int:
    """Start-of-scan markers in a JPEG (those of an embedded thumbnail or MPO image too).

    0xFFDA cannot occur in entropy-coded data (0xFF is stuffed there), so counting it counts scans.
    """
    return data.count(b"\xff\xda")


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


def png_data_shortfall(data: bytes) -> tuple[int, int] | None:
    """``(produced, expected)`` when the first frame's zlib stream holds fewer bytes than IHDR's rows need;
    None when it holds them all.

    Inflated in bounded pieces and thrown away: memory stays O(1 MB) whatever the image declares.
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
                return None
        elif in_idat:  # IDAT chunks are consecutive; what follows (fdAT, IEND) is not the first frame
            break
        pos += 12 + length
    return (produced, expected) if produced < expected else None


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


# --- frames and orientation ---------------------------------------------------------------------------------


def count_frames(im: Image.Image, data: bytes) -> int:
    """Frames (pages), at most MAX_COUNTED_FRAMES; only the first frame has been decoded and checked."""
    if im.format == "GIF":
        return gif_frames(data)
    if im.format == "TIFF":
        return tiff_frames(data)
    # PNG (acTL), WebP (libwebp's demuxer) and MPO (its index) declare the count: reading it is cheap
    return max(1, min(int(getattr(im, "n_frames", 1)), MAX_COUNTED_FRAMES))


def gif_frames(data: bytes) -> int:
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


def tiff_frames(data: bytes) -> int:
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


def orientation(im: Image.Image) -> int:
    """The EXIF orientation (1-8), 1 when absent or unreadable: broken EXIF does not make a broken image."""
    try:
        value = im.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # broad on purpose: Pillow's EXIF parser raises many types, all meaning "unreadable"
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1
