"""Hostile and odd-but-valid uploads, generated in memory (nothing is committed, nothing downloaded).

Unit tests feed them to :mod:`gateway.validation`; integration and e2e tests POST them to ``/images/upload``
and assert the status and error code a user would see. Every case's bytes are distinct, so no case is a
duplicate of another. In each case at most one thing is wrong (a bad image comes with no metadata, bad
metadata comes with a valid image), so the order in which the gateway checks them does not matter.

Expectations assume the default limits of DESIGN.md (25 MB, 50 megapixels): :data:`DEFAULT_MAX_BYTES`,
:data:`DEFAULT_MAX_PIXELS`. The byte-limit case depends on the configured limit: :func:`oversize_case`.

File names: ``Case.filename`` is a ``str`` for names any multipart client sends (it is UTF-8 encoded on the
wire), or raw ``bytes`` for a name that is not valid UTF-8; httpx and browsers cannot send those, so
:func:`multipart_body` builds the request body by hand (pass it as ``content=`` with its ``Content-Type``).
"""

from __future__ import annotations

import io
import secrets
import struct
import zipfile
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image

DEFAULT_MAX_BYTES = 25 * 1024 * 1024
DEFAULT_MAX_PIXELS = 50_000_000


@dataclass(frozen=True)
class Case:
    """One upload and what the gateway must answer.

    ``expect_code`` is the ``error.code`` for refusals (None when accepted); for accepted images
    ``expect_format``/``expect_size`` (width, height as displayed)/``expect_frames`` are what validation
    reports, and the content type recorded is the real one, whatever ``content_type`` says.
    """

    name: str
    data: bytes
    filename: str | bytes
    content_type: str
    metadata: str | bytes | None = None
    expect_status: int = 202
    expect_code: str | None = None
    expect_format: str | None = None
    expect_size: tuple[int, int] | None = None
    expect_frames: int = 1


# --- image makers -----------------------------------------------------------------------------------------


def _pixels(width: int, height: int, seed: int) -> np.ndarray:
    """A gradient with seeded noise: looks like an image, compresses like one, differs for every seed."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 // max(width, 1), y * 255 // max(height, 1), (x + y + seed) % 256], axis=-1)
    noise = rng.integers(0, 48, size=(height, width, 3))
    return ((base + noise) % 256).astype(np.uint8)


def _image(width: int, height: int, seed: int) -> Image.Image:
    return Image.fromarray(_pixels(width, height, seed), "RGB")


def _encode(im: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **params)
    return buf.getvalue()


def jpeg(seed: int, size: tuple[int, int] = (48, 32), **params: object) -> bytes:
    """A small valid JPEG, distinct per seed."""
    return _encode(_image(*size, seed), "JPEG", quality=90, **params)


def png(seed: int, size: tuple[int, int] = (48, 32)) -> bytes:
    """A small valid PNG, distinct per seed."""
    return _encode(_image(*size, seed), "PNG")


def _frames(n: int, size: tuple[int, int], seed: int) -> list[Image.Image]:
    return [_image(*size, seed * 100 + i) for i in range(n)]


def gif(seed: int, frames: int = 1, size: tuple[int, int] = (40, 30)) -> bytes:
    ims = [f.convert("P", palette=Image.Palette.ADAPTIVE) for f in _frames(frames, size, seed)]
    return _encode(ims[0], "GIF", save_all=frames > 1, append_images=ims[1:], duration=80, loop=0)


def webp(seed: int, frames: int = 1, size: tuple[int, int] = (40, 30), **params: object) -> bytes:
    ims = _frames(frames, size, seed)
    return _encode(ims[0], "WEBP", save_all=frames > 1, append_images=ims[1:], **params)


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_by_hand(width: int, height: int, *, bit_depth: int, color_type: int, idat: bytes) -> bytes:
    """A PNG built chunk by chunk with valid CRCs, so the header can declare anything."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares ``width`` x ``height`` gray pixels and whose IDAT holds a few rows."""
    rows = b"".join(b"\x00" + bytes(min(width, 64)) for _ in range(4))
    return png_by_hand(width, height, bit_depth=8, color_type=0, idat=zlib.compress(rows))


def _png_rgb16(seed: int, size: tuple[int, int] = (24, 16)) -> bytes:
    """16 bits per channel RGB: Pillow cannot write it, so it is built by hand."""
    width, height = size
    px = _pixels(width, height, seed).astype(">u2") * 257
    raw = b"".join(b"\x00" + px[y].tobytes() for y in range(height))
    return png_by_hand(width, height, bit_depth=16, color_type=2, idat=zlib.compress(raw))


def jpeg_declaring(width: int, height: int, seed: int) -> bytes:
    """A small JPEG whose SOF0 header is patched to declare ``width`` x ``height``."""
    data = bytearray(jpeg(seed))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def jpeg_scan_bomb(seed: int, scans: int = 300) -> bytes:
    """A progressive JPEG whose last scan is repeated: each scan is another pass over every pixel (CPU bomb)."""
    data = jpeg(seed, (64, 64), progressive=True)
    last = data[data.rindex(b"\xff\xda") : -2]  # the last scan, up to the end-of-image marker
    return data[:-2] + last * (scans - data.count(b"\xff\xda")) + data[-2:]


def _psd(seed: int) -> bytes:
    """A minimal real Photoshop file (Pillow cannot write PSD): 4x4 RGB, 8 bits, raw planes."""
    header = b"8BPS" + struct.pack(">H6xHIIHH", 1, 3, 4, 4, 8, 3)
    planes = bytes((seed + i) % 256 for i in range(3 * 4 * 4))
    # colour-mode data, image resources, layer and mask info: all empty; then compression 0 (raw)
    return header + struct.pack(">III", 0, 0, 0) + struct.pack(">H", 0) + planes


def _exif_rotated_jpeg(seed: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    return _encode(_image(40, 24, seed), "JPEG", exif=exif.tobytes())


def _zip(seed: int) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("photo.jpg", f"not really {seed}")
    return buf.getvalue()


def _random_bytes(seed: int, n: int = 4096) -> bytes:
    data = np.random.default_rng(seed).integers(0, 256, size=n, dtype=np.uint8).tobytes()
    return b"\x13" + data[1:]  # no image signature starts with 0x13, whatever the seed gives


# --- cases ------------------------------------------------------------------------------------------------


def hostile_cases() -> list[Case]:
    """Uploads the gateway must refuse, each with its status and error code (default limits)."""
    big_jpeg = jpeg(101, (96, 64))
    big_png = png(102, (96, 64))
    png_bad_crc = bytearray(png(103))
    idat = png_bad_crc.index(b"IDAT")
    png_bad_crc[idat + 10] ^= 0xFF  # inside the compressed data; the chunk's CRC no longer matches
    svg = b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"></svg>\n'
    svg_xxe = (
        b'<?xml version="1.0"?>\n<!DOCTYPE svg [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>\n'
        b'<!-- a comment --><svg xmlns="http://www.w3.org/2000/svg"><text>&xxe;</text></svg>'
    )
    html = (
        b"<!DOCTYPE html><html><head><title>x</title></head><body>"
        b'<svg width="1" height="1"></svg><script>alert(1)</script></body></html>'
    )
    heic = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(64)
    jxl = b"\x00\x00\x00\x0cJXL \r\n\x87\n\x00\x00\x00\x14ftypjxl \x00\x00\x00\x00jxl " + bytes(64)
    j, p = "image/jpeg", "image/png"
    broken, bomb = (400, "broken_image"), (413, "too_many_pixels")
    no_image, refused = (400, "not_an_image"), (415, "unsupported_format")
    table: list[tuple[str, bytes, str, str, tuple[int, str]]] = [
        ("empty", b"", "empty.jpg", j, (400, "empty")),
        ("truncated_jpeg", big_jpeg[: len(big_jpeg) // 2], "cut.jpg", j, broken),
        ("truncated_jpeg_header", big_jpeg[:40], "head.jpg", j, broken),
        ("truncated_png", big_png[: len(big_png) * 2 // 3], "cut.png", p, broken),
        ("png_bad_crc", bytes(png_bad_crc), "crc.png", p, broken),
        ("truncated_gif", gif(104)[:-40], "cut.gif", "image/gif", broken),
        ("truncated_webp", webp(105)[:-60], "cut.webp", "image/webp", broken),
        ("png_zero_width", png_declaring(0, 10), "zero.png", p, broken),
        # 2.5 gigapixels in a few hundred bytes: over Pillow's own error limit (2 x MAX_IMAGE_PIXELS)
        ("png_declares_50000x50000", png_declaring(50_000, 50_000), "bomb.png", p, bomb),
        # 100 MP: where Pillow only warns (between MAX_IMAGE_PIXELS and twice that)
        ("png_declares_10000x10000", png_declaring(10_000, 10_000), "warn.png", p, bomb),
        # 64 MP: under Pillow's limits, over ours
        ("png_declares_8000x8000", png_declaring(8_000, 8_000), "big.png", p, bomb),
        ("jpeg_declares_60000x60000", jpeg_declaring(60_000, 60_000, 106), "bomb.jpg", j, bomb),
        ("jpeg_scan_bomb", jpeg_scan_bomb(115), "scans.jpg", j, broken),
        ("text_as_jpg", b"hello, this is a plain text file\n" * 4, "photo.jpg", j, no_image),
        ("html_as_png", html, "photo.png", p, no_image),
        ("pdf_as_jpg", _encode(_image(16, 16, 107), "PDF"), "photo.jpg", j, no_image),
        ("zip_as_png", _zip(108), "photo.png", p, no_image),
        ("svg_as_png", svg, "photo.png", p, refused),
        ("svg_xxe_as_jpg", svg_xxe, "photo.jpg", j, refused),
        ("eps_as_jpg", _encode(_image(8, 8, 109), "EPS"), "photo.jpg", j, refused),
        ("psd", _psd(110), "layers.psd", "image/vnd.adobe.photoshop", refused),
        ("ico_as_png", _encode(_image(16, 16, 111), "ICO", sizes=[(16, 16)]), "favicon.png", p, refused),
        # JPEG XL in its ISO-BMFF container (recognized, refused); AVIF and HEIC are accepted formats now
        ("jxl_container", jxl, "photo.jxl", "image/jxl", refused),
        # a HEIC's ftyp box and nothing else: an accepted format whose header is cut short
        ("heic_header", heic, "IMG_0001.HEIC", "image/heic", broken),
        ("garbage_spoofed_as_jpeg", _random_bytes(113), "photo.jpg", j, no_image),
        ("random_bytes", _random_bytes(114, 1000), "blob.bin", "application/octet-stream", no_image),
    ]
    cases = [Case(name, data, fn, ct, None, st, code) for name, data, fn, ct, (st, code) in table]
    bad_metadata: list[tuple[str, str | bytes]] = [
        ("metadata_malformed_json", '{"camera": "x",'),
        ("metadata_not_object", '["camera", "x"]'),
        ("metadata_string", '"camera"'),
        ("metadata_non_utf8", b'{"camera": "caf\xe9"}'),
        ("metadata_key_too_long", '{"' + "k" * 65 + '": 1}'),
        ("metadata_empty_key", '{"": 1}'),
        ("metadata_bad_key_chars", '{"../etc/passwd": 1}'),
        ("metadata_nested", '{"exif": {"iso": 100}}'),
        ("metadata_array_value", '{"tags": ["a", "b"]}'),
        ("metadata_bool", '{"public": true}'),
        ("metadata_null", '{"camera": null}'),
        ("metadata_value_too_long", '{"caption": "' + "x" * 1025 + '"}'),
        ("metadata_too_many_keys", "{" + ", ".join(f'"k{i}": {i}' for i in range(33)) + "}"),
        ("metadata_duplicate_key", '{"camera": "a", "camera": "b"}'),
        ("metadata_nan", '{"exposure": NaN}'),
        ("metadata_overflow_float", '{"exposure": 1e999}'),
        ("metadata_huge_int", '{"n": 9007199254740993}'),
        ("metadata_lone_surrogate", '{"caption": "\\ud800"}'),
        ("metadata_deeply_nested", "[" * 20_000 + "]" * 20_000),
        ("metadata_too_big", '{"caption": "' + "x" * 70_000 + '"}'),
    ]
    for i, (name, raw) in enumerate(bad_metadata):
        cases.append(
            Case(name, png(200 + i, (16, 16)), f"{name}.png", "image/png", raw, 422, "invalid_metadata")
        )
    return cases


def oversize_case(limit: int) -> Case:
    """A valid JPEG padded (after its end marker, which decoders ignore) to ``limit + 1`` bytes: 413.

    (For a limit under the smallest JPEG, about 400 bytes, the unpadded JPEG is returned: still over it.)
    """
    data = jpeg(300, (8, 8))
    data += bytes(limit + 1 - len(data)) if limit + 1 > len(data) else b""
    return Case("over_byte_limit", data, "huge.jpg", "image/jpeg", None, 413, "too_large")


def odd_valid_images() -> list[Case]:
    """Unusual but valid uploads the gateway must accept (202), each with its real format and size."""
    cmyk = _encode(_image(48, 32, 1).convert("CMYK"), "JPEG")
    gray16 = Image.fromarray(
        (np.arange(24 * 16, dtype=np.uint16).reshape(16, 24) * 170 + 2).astype(np.uint16)
    )
    palette = _image(20, 20, 5).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    rgba = _image(20, 12, 16).convert("RGBA")
    rgba.putpixel((0, 0), (0, 0, 0, 0))
    mpo, apng, pages = _frames(2, (32, 24), 17), _frames(2, (24, 24), 18), _frames(2, (16, 16), 19)
    j, p = "image/jpeg", "image/png"
    # name, bytes, file name, content type sent, real format, (width, height) as displayed, frames
    table: list[tuple[str, bytes, str | bytes, str, str, tuple[int, int], int]] = [
        ("cmyk_jpeg", cmyk, "cmyk.jpg", j, "JPEG", (48, 32), 1),
        ("progressive_jpeg", jpeg(2, progressive=True), "p.jpg", j, "JPEG", (48, 32), 1),
        ("grayscale_jpeg", _encode(_image(30, 20, 3).convert("L"), "JPEG"), "g.jpg", j, "JPEG", (30, 20), 1),
        (
            "mpo_jpeg",
            _encode(mpo[0], "MPO", save_all=True, append_images=mpo[1:]),
            "m.jpg",
            j,
            "JPEG",
            (32, 24),
            2,
        ),
        # stored 40x24, EXIF orientation 6: displayed (and embedded) 24x40
        ("exif_rotated_jpeg", _exif_rotated_jpeg(4), "rotated.jpg", j, "JPEG", (24, 40), 1),
        ("png_16bit_gray", _encode(gray16, "PNG"), "g16.png", p, "PNG", (24, 16), 1),
        ("png_16bit_rgb", _png_rgb16(6), "rgb16.png", p, "PNG", (24, 16), 1),
        (
            "palette_png_transparency",
            _encode(palette, "PNG", transparency=0),
            "pal.png",
            p,
            "PNG",
            (20, 20),
            1,
        ),
        ("png_rgba", _encode(rgba, "PNG"), "rgba.png", p, "PNG", (20, 12), 1),
        (
            "apng",
            _encode(apng[0], "PNG", save_all=True, append_images=apng[1:]),
            "a.png",
            p,
            "PNG",
            (24, 24),
            2,
        ),
        ("png_1x1", png(7, (1, 1)), "dot.png", p, "PNG", (1, 1), 1),
        ("animated_gif", gif(8, frames=3), "anim.gif", "image/gif", "GIF", (40, 30), 3),
        ("webp_lossy", webp(9, quality=80), "p.webp", "image/webp", "WEBP", (40, 30), 1),
        ("webp_lossless", webp(10, lossless=True), "l.webp", "image/webp", "WEBP", (40, 30), 1),
        ("webp_animated", webp(11, frames=2), "a.webp", "image/webp", "WEBP", (40, 30), 2),
        ("bmp", _encode(_image(33, 17, 12), "BMP"), "p.bmp", "image/bmp", "BMP", (33, 17), 1),
        (
            "tiff_lzw",
            _encode(_image(25, 15, 13), "TIFF", compression="tiff_lzw"),
            "p.tif",
            "image/tiff",
            "TIFF",
            (25, 15),
            1,
        ),
        (
            "tiff_multipage",
            _encode(pages[0], "TIFF", save_all=True, append_images=pages[1:]),
            "pages.tif",
            "image/tiff",
            "TIFF",
            (16, 16),
            2,
        ),
        # the real type comes from the bytes: recorded as image/jpeg
        (
            "jpeg_as_octet_stream_evil_exe",
            jpeg(14),
            "evil.exe",
            "application/octet-stream",
            "JPEG",
            (48, 32),
            1,
        ),
        ("png_named_gif", png(15), "photo.gif", "image/gif", "PNG", (48, 32), 1),
        ("path_traversal_name", jpeg(20), "../../etc/passwd.jpg", j, "JPEG", (48, 32), 1),
        ("windows_path_name", jpeg(21), "C:\\Users\\x\\..\\..\\boot.ini.jpg", j, "JPEG", (48, 32), 1),
        ("long_name_2kb", png(22), "a" * 2044 + ".png", p, "PNG", (48, 32), 1),
        # raw bytes that are not UTF-8 (Latin-1 e-acute, 0xFF 0xFE): send with multipart_body()
        ("non_utf8_name", jpeg(23), b"caf\xe9-\xff\xfe.jpg", j, "JPEG", (48, 32), 1),
        ("unicode_name", png(24), "фото 🙂.png", p, "PNG", (48, 32), 1),
        # a multipart client escapes the quote and CR/LF; a careless one would inject a header
        ("quote_crlf_name", png(25), 'x".png\r\nContent-Type: text/html', p, "PNG", (48, 32), 1),
    ]
    cases = [
        Case(name, data, fn, ct, expect_format=fmt, expect_size=size, expect_frames=frames)
        for name, data, fn, ct, fmt, size, frames in table
    ]
    meta = '{"camera": "X100V", "iso": 400, "exposure": 0.008, "caption": "caf\\u00e9 \\ud83d\\ude00"}'
    cases.append(
        Case("with_metadata", jpeg(26), "meta.jpg", j, meta, expect_format="JPEG", expect_size=(48, 32))
    )
    return cases


def multipart_body(
    case: Case, *, field: str = "file", metadata_field: str = "metadata", boundary: str | None = None
) -> tuple[bytes, str]:
    """The raw ``multipart/form-data`` body of ``case`` and the ``Content-Type`` header to send it with.

    The file name is written as its raw bytes (UTF-8 for a ``str``), with ``"``, CR and LF percent-escaped
    as browsers and httpx do, so a ``bytes`` name reaches the server exactly as given.
    """
    boundary = boundary or "mesh-" + secrets.token_hex(16)
    name = case.filename.encode() if isinstance(case.filename, str) else case.filename
    name = name.replace(b'"', b"%22").replace(b"\r", b"%0D").replace(b"\n", b"%0A")
    sep = b"--" + boundary.encode()
    parts = [
        sep
        + b"\r\n"
        + f'Content-Disposition: form-data; name="{field}"; filename="'.encode()
        + name
        + b'"\r\n'
        + f"Content-Type: {case.content_type}\r\n\r\n".encode()
        + case.data
        + b"\r\n"
    ]
    if case.metadata is not None:
        meta = case.metadata.encode() if isinstance(case.metadata, str) else case.metadata
        parts.append(
            sep
            + f'\r\nContent-Disposition: form-data; name="{metadata_field}"\r\n\r\n'.encode()
            + meta
            + b"\r\n"
        )
    return b"".join(parts) + sep + b"--\r\n", f"multipart/form-data; boundary={boundary}"
