"""The ``exif`` step: camera make and model and the time the photo was taken, from the image's EXIF.

They go into the record's metadata as ``exif.make``, ``exif.model`` and ``exif.taken_at`` (ISO 8601, as
written by the camera: EXIF has no time zone), and so into the index tags: ``filter=exif.make:Canon``.
GPS coordinates stay out of the record unless the config's ``exif_keep_gps`` is on (then ``exif.gps_lat`` and
``exif.gps_lon`` in decimal degrees): a photo's location is personal data. The stored bytes are never
changed: the EXIF block, GPS included, stays in the original as uploaded.
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from typing import Any

from PIL import ExifTags, Image

from actors.steps.base import MetadataValue, StepContext, StepResult

MAX_VALUE_CHARS = 128
_EXIF_TIME = re.compile(r"^(\d{4}):(\d{2}):(\d{2})[ T](\d{2}):(\d{2}):(\d{2})")


def clean(value: Any) -> str | None:
    """An EXIF text value fit for metadata: decoded, NULs and padding removed, bounded; None when empty."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not isinstance(value, str):
        return None
    text = "".join(ch for ch in value if ch.isprintable()).strip()
    return text[:MAX_VALUE_CHARS] or None


def iso_time(value: Any) -> str | None:
    """EXIF's ``YYYY:MM:DD HH:MM:SS`` as ``YYYY-MM-DDTHH:MM:SS``; other text as it is (cleaned)."""
    text = clean(value)
    if text is None:
        return None
    m = _EXIF_TIME.match(text)
    return f"{m[1]}-{m[2]}-{m[3]}T{m[4]}:{m[5]}:{m[6]}" if m else text


def degrees(dms: Sequence[Any], ref: Any) -> float | None:
    """GPS degrees/minutes/seconds (rationals) and a hemisphere (N/S/E/W) as signed decimal degrees."""
    try:
        d, m, s = (float(x) for x in dms)
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    value = d + m / 60 + s / 3600
    if clean(ref) in ("S", "W"):
        value = -value
    return round(value, 6)


def read_exif(data: bytes, *, keep_gps: bool = False) -> dict[str, MetadataValue]:
    """The EXIF fields this step records, from the original bytes (empty when there is no EXIF)."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.format == "PNG" and "exif" not in img.info:
                # Pillow's PNG getexif() decodes every pixel to reach an eXIf chunk after them: read it
                # from the chunks instead (the decode budget only counts the one decode of the pipeline)
                img.info["exif"] = png_exif(data)
            exif = img.getexif()
            sub = exif.get_ifd(ExifTags.IFD.Exif)
            gps = exif.get_ifd(ExifTags.IFD.GPSInfo) if keep_gps else {}
    except Exception:  # a broken EXIF block is no reason to refuse an image that decodes
        return {}
    found: dict[str, MetadataValue | None] = {
        "exif.make": clean(exif.get(ExifTags.Base.Make)),
        "exif.model": clean(exif.get(ExifTags.Base.Model)),
        "exif.taken_at": iso_time(
            sub.get(ExifTags.Base.DateTimeOriginal) or exif.get(ExifTags.Base.DateTime)
        ),
    }
    if gps:
        found["exif.gps_lat"] = degrees(
            gps.get(ExifTags.GPS.GPSLatitude, ()), gps.get(ExifTags.GPS.GPSLatitudeRef)
        )
        found["exif.gps_lon"] = degrees(
            gps.get(ExifTags.GPS.GPSLongitude, ()), gps.get(ExifTags.GPS.GPSLongitudeRef)
        )
    return {k: v for k, v in found.items() if v is not None}


def png_exif(data: bytes) -> bytes:
    """The body of a PNG's eXIf chunk as Pillow keeps it (``Exif\\0\\0`` first), wherever the chunk is; empty
    when there is none. Walks the chunk headers only: no pixel is decoded."""
    pos = 8
    while pos + 8 <= len(data):
        length, kind = int.from_bytes(data[pos : pos + 4], "big"), data[pos + 4 : pos + 8]
        if kind == b"eXIf":
            return b"Exif\x00\x00" + data[pos + 8 : pos + 8 + length]
        if kind == b"IEND":
            break
        pos += 12 + length
    return b""


class ExifStep:
    """Records the camera and the time taken (and, when the config allows it, where)."""

    async def run(self, ctx: StepContext) -> StepResult:
        fields = read_exif(ctx.data, keep_gps=ctx.config.exif_keep_gps)
        return StepResult(metadata=fields, note={"fields": sorted(fields)})
