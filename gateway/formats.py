"""What image bytes are, read from the bytes alone: pure functions, no I/O, no errors raised for bad input.

- the accepted formats (``ACCEPTED``: name, media type, Pillow plugin ids, file name suffixes), the one list
  the gateway validates against and ``mesh ingest`` picks files by (``ACCEPTED_SUFFIXES``), and their
  signatures (``allowed_magic``);
- formats we recognize and refuse (``refused_format``: JPEG XL, EPS, PSD, SVG, ...) and known non-images
  (``known_non_image``: PDF, ZIP);
- cheap structural counts Pillow gets slowly or not at all: JPEG scans, the first PNG frame's pixel data,
  GIF frames and TIFF pages (bounded work, whatever the bytes declare), and the EXIF orientation.

HEIC/HEIF is read by pillow-heif (libheif), whose Pillow opener :func:`register_openers` registers on import;
AVIF by Pillow's own plugin (libavif). ``gateway.validation`` decides what of this makes an upload refused,
and with which error.
"""

from __future__ import annotations

import io
import re
import zlib
from dataclasses import dataclass
from typing import Final, Literal

import pillow_heif
from PIL import ExifTags, Image

# Frames are counted, never decoded, and only up to here: the count is informational, the work to get it must
# stay bounded (Pillow walks GIF frames and TIFF pages in Python, TIFF in quadratic time).
MAX_COUNTED_FRAMES: Final = 10_000


@dataclass(frozen=True, slots=True)
class Format:
    """One accepted format: what the gateway reports, which Pillow plugins may decode it, its file names."""

    name: str  # as reported (ImageInfo.format, the record's format)
    label: str  # for people, in error messages ("WebP", "HEIC/HEIF")
    media_type: str  # the record's content type (HEIF: see media_type_of)
    plugins: tuple[str, ...]  # Pillow plugin ids allowed to open it (``Image.open(..., formats=...)``)
    suffixes: tuple[str, ...]  # lower-case file name suffixes (``mesh ingest`` picks files by them)


# The single list of what the mesh accepts: the gateway validates against it, ``mesh ingest`` picks files by its
# suffixes. Order: the order Pillow tries the plugins in, and error messages name them in. AVIF before HEIF: an
# AVIF whose major brand is the generic mif1 is claimed by pillow-heif too, which cannot decode AV1 here;
# Pillow's AVIF plugin passes on (SyntaxError) what is not AVIF.
ACCEPTED: Final[tuple[Format, ...]] = (
    Format("JPEG", "JPEG", "image/jpeg", ("JPEG",), (".jpg", ".jpeg", ".jpe", ".jfif")),
    Format("PNG", "PNG", "image/png", ("PNG",), (".png",)),
    Format("WEBP", "WebP", "image/webp", ("WEBP",), (".webp",)),
    Format("GIF", "GIF", "image/gif", ("GIF",), (".gif",)),
    Format("BMP", "BMP", "image/bmp", ("BMP",), (".bmp",)),
    Format("TIFF", "TIFF", "image/tiff", ("TIFF",), (".tif", ".tiff")),
    Format("AVIF", "AVIF", "image/avif", ("AVIF",), (".avif",)),
    Format("HEIF", "HEIC/HEIF", "image/heic", ("HEIF",), (".heic", ".heif", ".hif")),
)
ACCEPTED_SUFFIXES: Final = frozenset(suffix for f in ACCEPTED for suffix in f.suffixes)

# Pillow format name -> (the name we report, its media type). MPO is what Pillow calls a JPEG carrying the
# Multi-Picture extension (most phone cameras): it is a JPEG for every client that reads it.
ALLOWED: Final[dict[str, tuple[str, str]]] = {
    **{f.name: (f.name, f.media_type) for f in ACCEPTED},
    "MPO": ("JPEG", "image/jpeg"),
}
ALLOWED_FORMATS: Final = tuple(f.name for f in ACCEPTED)
ALLOWED_LIST: Final = ", ".join(f.label for f in ACCEPTED[:-1]) + f" or {ACCEPTED[-1].label}"
# Pillow's plugin ids for the accepted formats (``formats=`` takes plugin ids, and MPO is reached via JPEG).
OPEN_ALLOWED: Final = tuple(plugin for f in ACCEPTED for plugin in f.plugins)

_BMP_DIB_HEADER_SIZES: Final = frozenset({12, 40, 52, 56, 64, 108, 124})
_EXIF_ORIENTATION: Final = int(ExifTags.Base.Orientation)

# ISO-BMFF brands (the ftyp box's major and compatible brands). HEVC-coded HEIF is HEIC (image/heic); the
# other HEIF brands are image/heif. An AVIF file usually has major brand avif and also lists mif1/miaf.
_AVIF_BRANDS: Final = frozenset({b"avif", b"avis"})
_HEIC_BRANDS: Final = frozenset({b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis"})
_HEIF_BRANDS: Final = _HEIC_BRANDS | frozenset({b"mif1", b"msf1", b"mif2"})


def register_openers() -> None:
    """Make Pillow open HEIC/HEIF (pillow-heif's opener; AVIF is Pillow's own plugin). Idempotent.

    Thumbnails, depth and auxiliary images are never read: only the primary image is validated and embedded.
    Pillow's own plugins are loaded first (``Image.init``) so that an ``Image.open`` without ``formats=`` (the
    search route's decode, ``actors.preprocess``) tries AVIF before HEIF, as ``OPEN_ALLOWED`` does. Called on
    import, so every process that validates uploads reads what ``ACCEPTED`` lists; the coordinator's decoder
    (``actors.preprocess``) must register the same opener.
    """
    Image.init()
    pillow_heif.register_heif_opener(thumbnails=False, depth_images=False, aux_images=False)


register_openers()


def media_type_of(name: str, data: bytes) -> str:
    """The media type of accepted bytes whose format is ``name``: HEIF is image/heic when HEVC-coded (the
    brands phones write), image/heif otherwise."""
    if name == "HEIF":
        return "image/heic" if _ftyp_brands(data) & _HEIC_BRANDS else "image/heif"
    return ALLOWED.get(name, (name, "application/octet-stream"))[1]


def _ftyp_brands(data: bytes) -> frozenset[bytes]:
    """The major and compatible brands of an ISO-BMFF ``ftyp`` box at the start, or none."""
    if data[4:8] != b"ftyp":
        return frozenset()
    size = int.from_bytes(data[0:4], "big")
    end = min(len(data), size if 16 <= size <= 4096 else 16)
    brands = {data[8:12]}
    brands.update(data[pos : pos + 4] for pos in range(16, end - 3, 4))
    return frozenset(brands)


def bmff_image_format(data: bytes) -> str | None:
    """``"AVIF"`` or ``"HEIF"`` when ``data`` starts with an ISO-BMFF ``ftyp`` box of that image format."""
    brands = _ftyp_brands(data)
    if brands & _AVIF_BRANDS:
        return "AVIF"
    if brands & _HEIF_BRANDS:
        return "HEIF"
    return None


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
    return bmff_image_format(data)


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


# --- ISO-BMFF (HEIF, AVIF) structure -----------------------------------------------------------------------

# Boxes walked to find the image items' sizes: meta > iprp > ipco > ispe. At most this many boxes are read.
_BMFF_MAX_BOXES: Final = 4096
_BMFF_CONTAINERS: Final = frozenset({b"meta", b"iprp", b"ipco"})


def bmff_declared_pixels(data: bytes) -> int:
    """The most pixels any image item of a HEIF/AVIF file declares (its ``ispe`` property), 0 when none does.

    The size Pillow reports is the displayed one, after a ``clap`` crop: a file may declare a huge coded image
    and crop it to a few pixels, and the library decodes the whole coded image first. A grid's own ``ispe``
    declares the full picture. Bounded work: at most ``_BMFF_MAX_BOXES`` box headers are read.
    """
    largest, boxes = 0, 0
    stack = [(0, len(data))]
    while stack:
        pos, end = stack.pop()
        while pos + 8 <= end and boxes < _BMFF_MAX_BOXES:
            boxes += 1
            size, kind, header = int.from_bytes(data[pos : pos + 4], "big"), data[pos + 4 : pos + 8], 8
            if size == 1:  # a 64-bit size follows the type
                size, header = int.from_bytes(data[pos + 8 : pos + 16], "big"), 16
            elif size == 0:  # to the end of the enclosing box
                size = end - pos
            if size < header:
                break  # corrupt: the decoder will say so
            box_end = min(end, pos + size)
            if kind in _BMFF_CONTAINERS:
                # meta is a full box: 4 bytes of version and flags before its children
                stack.append((pos + header + (4 if kind == b"meta" else 0), box_end))
            elif kind == b"ispe" and pos + header + 12 <= box_end:
                body = pos + header + 4  # version and flags
                width = int.from_bytes(data[body : body + 4], "big")
                height = int.from_bytes(data[body + 4 : body + 8], "big")
                largest = max(largest, width * height)
            pos += size
    return largest


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
