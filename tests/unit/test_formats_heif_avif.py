"""HEIC/HEIF and AVIF uploads: recognized from the bytes, capped from the header before any decode, and one
list of accepted formats (``gateway.formats.ACCEPTED``) for the gateway and ``mesh ingest``.

Test images are encoded on the spot: HEIC with pillow-heif (libheif + x265), AVIF with Pillow's own plugin.
"""

from __future__ import annotations

import io
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gateway import formats
from gateway.validation import ImageInfo, UploadError, decode_cost, validate_image
from ops import ingest
from tests.corpus import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, jpeg

ROOT = Path(__file__).resolve().parents[2]


def picture(size: tuple[int, int], seed: int) -> Image.Image:
    """A smooth random picture (compresses like a photo, unlike noise)."""
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8))
    return small.resize(size, Image.Resampling.BICUBIC)


def encode(img: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, quality=60, **params)
    return buf.getvalue()


def heic(size: tuple[int, int] = (64, 48), seed: int = 1, **params: object) -> bytes:
    return encode(picture(size, seed), "HEIF", **params)


def avif(size: tuple[int, int] = (64, 48), seed: int = 2, **params: object) -> bytes:
    return encode(picture(size, seed), "AVIF", **params)


def declaring(data: bytes, width: int, height: int) -> bytes:
    """``data`` with every ``ispe`` (image spatial extents) property rewritten to declare ``width x height``:
    a header that promises a huge image in a few hundred bytes."""
    out = bytearray(data)
    for m in re.finditer(b"ispe", data):
        body = m.end() + 4  # version and flags
        out[body : body + 4] = width.to_bytes(4, "big")
        out[body + 4 : body + 8] = height.to_bytes(4, "big")
    return bytes(out)


Make = Callable[..., bytes]


def validate(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageInfo:
    return validate_image(data, max_bytes=DEFAULT_MAX_BYTES, max_pixels=max_pixels)


# --- detection --------------------------------------------------------------------------------------------
def test_heic_is_accepted_as_what_its_bytes_are() -> None:
    info = validate(heic((64, 48)))
    assert (info.format, info.content_type, info.width, info.height, info.frames) == (
        "HEIF",
        "image/heic",
        64,
        48,
        1,
    )


def test_avif_is_accepted_as_what_its_bytes_are() -> None:
    info = validate(avif((64, 48)))
    assert (info.format, info.content_type, info.width, info.height, info.frames) == (
        "AVIF",
        "image/avif",
        64,
        48,
        1,
    )


def test_a_heif_that_is_not_hevc_coded_is_image_heif() -> None:
    data = bytearray(heic())
    brands_end = int.from_bytes(data[0:4], "big")
    for pos in range(8, brands_end, 4):  # the major and every compatible brand: the generic mif1
        if data[pos : pos + 4] in (b"heic", b"heix"):
            data[pos : pos + 4] = b"mif1"
    assert formats.media_type_of("HEIF", bytes(data)) == "image/heif"
    assert formats.media_type_of("HEIF", heic()) == "image/heic"


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic", "HEIF"),
        (b"\x00\x00\x00\x18ftypmif1\x00\x00\x00\x00mif1heic", "HEIF"),
        (b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1miaf", "AVIF"),
        (b"\x00\x00\x00\x1cftypmif1\x00\x00\x00\x00mif1avifmiaf", "AVIF"),  # generic major brand, avif listed
        (b"\x00\x00\x00\x18ftypisom\x00\x00\x00\x00isommp42", None),  # an MP4 video
        (b"\x00\x00\x00\x0cJXL \r\n\x87\n", None),
    ],
)
def test_bmff_signatures(head: bytes, expected: str | None) -> None:
    assert formats.allowed_magic(head + bytes(32)) == expected


def test_an_avif_with_the_generic_major_brand_is_read_as_avif() -> None:
    # pillow-heif claims every mif1 file and cannot decode AV1 here: Pillow's AVIF plugin must be asked first
    data = bytearray(avif())
    data[8:12] = b"mif1"
    assert validate(bytes(data)).format == "AVIF"


def test_the_name_and_the_declared_type_do_not_matter() -> None:
    # validate_image never sees them; a JPEG is a JPEG, a HEIC a HEIC, whatever the upload said
    assert validate(jpeg(3)).format == "JPEG"
    assert validate(heic()).content_type == "image/heic"


@pytest.mark.parametrize("make", [heic, avif], ids=["heic", "avif"])
def test_exif_orientation_gives_the_displayed_size(make: Make) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    info = validate(make((64, 48), exif=exif.tobytes()))
    assert (info.width, info.height) == (48, 64)


@pytest.mark.parametrize("make", [heic, avif], ids=["heic", "avif"])
def test_truncated_or_header_only_is_broken(make: Make) -> None:
    data = make()
    for cut in (data[: len(data) // 2], data[:40]):
        with pytest.raises(UploadError) as err:
            validate(cut)
        assert (err.value.status, err.value.code) == (400, "broken_image"), err.value.message


# --- the pixel cap, from the header -----------------------------------------------------------------------
@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every full decode of a HEIF or AVIF image from now on (their plugins' ``load``)."""
    from PIL import AvifImagePlugin
    from pillow_heif.as_plugin import HeifImageFile

    seen: list[str] = []
    for cls in (HeifImageFile, AvifImagePlugin.AvifImageFile):
        original = cls.load

        def spy(self: Image.Image, _original: Callable[..., object] = original) -> object:
            seen.append(str(self.format))
            return _original(self)

        monkeypatch.setattr(cls, "load", spy)
    return seen


@pytest.mark.parametrize("make", [heic, avif], ids=["heic", "avif"])
def test_over_the_pixel_cap_is_refused_from_the_header_before_any_decode(
    make: Make, decodes: list[str]
) -> None:
    small = make((64, 64))  # a multiple of the codec's block: no crop box, Pillow reports the ispe size
    validate(small)
    assert decodes, "the spy sees a normal validation decode"
    decodes.clear()
    bomb = declaring(small, 8000, 8000)  # 64 MP, under Pillow's own limit, over the default cap (50 MP)
    with pytest.raises(UploadError) as err:
        validate(bomb)
    assert (err.value.status, err.value.code) == (413, "too_many_pixels"), err.value.message
    assert decodes == []
    assert decode_cost(bomb, max_bytes=DEFAULT_MAX_BYTES, max_pixels=DEFAULT_MAX_PIXELS) == 0
    # the cap is the configured one, not a fixed number
    with pytest.raises(UploadError) as err:
        validate(small, max_pixels=64 * 64 - 1)
    assert err.value.code == "too_many_pixels" and decodes == []


def test_a_heic_cropped_to_a_few_pixels_is_capped_on_its_coded_size(decodes: list[str]) -> None:
    # 64x48 is coded 64x64 and cropped (clap): Pillow reports 64x48, libheif decodes all it declares
    data = declaring(heic((64, 48)), 8000, 8000)
    assert Image.open(io.BytesIO(data)).size == (64, 48)
    assert formats.bmff_declared_pixels(data) == 64_000_000
    with pytest.raises(UploadError) as err:
        validate(data)
    assert (err.value.status, err.value.code) == (413, "too_many_pixels")
    assert "coded image" in err.value.message and decodes == []


def test_decode_cost_counts_the_librarys_frame_too() -> None:
    for data in (heic((64, 64)), avif((64, 64))):
        cost = decode_cost(data, max_bytes=DEFAULT_MAX_BYTES, max_pixels=DEFAULT_MAX_PIXELS)
        assert cost == 64 * 64 * 4 + 64 * 64 * 4  # Pillow's RGB frame (4 B/px) + the decoder's buffer


def test_bmff_walk_is_bounded_and_survives_garbage() -> None:
    assert formats.bmff_declared_pixels(b"") == 0
    assert formats.bmff_declared_pixels(b"\x00\x00\x00\x01meta" + bytes(8)) == 0  # a 64-bit size of 0
    nested = b"\x00\x00\x00\x08meta" * 100_000  # meta boxes in meta boxes, all too short
    assert formats.bmff_declared_pixels(nested) == 0


# --- one list of accepted formats -------------------------------------------------------------------------
def test_the_cli_picks_exactly_the_suffixes_of_the_accepted_formats() -> None:
    assert ingest.IMAGE_SUFFIXES == formats.ACCEPTED_SUFFIXES
    assert {".heic", ".heif", ".avif", ".jpg", ".png"} <= ingest.IMAGE_SUFFIXES
    assert set(formats.ALLOWED_FORMATS) == {f.name for f in formats.ACCEPTED}
    assert formats.ALLOWED_LIST == "JPEG, PNG, WebP, GIF, BMP, TIFF, AVIF or HEIC/HEIF"


def test_every_suffix_is_one_pillow_opens_with_that_formats_plugin() -> None:
    registered = Image.registered_extensions()
    for f in formats.ACCEPTED:
        assert f.suffixes, f.name
        for suffix in f.suffixes:
            assert suffix == suffix.lower() and suffix.startswith(".")
            assert registered.get(suffix) in f.plugins, (suffix, registered.get(suffix))


def test_find_files_picks_heic_and_avif(tmp_path: Path) -> None:
    for name in ("IMG_0001.HEIC", "b.heif", "c.avif", "d.jxl", "e.jpg"):
        (tmp_path / name).write_bytes(b"1")
    found = [p.name for p in ingest.find_files(tmp_path)]
    assert found == ["IMG_0001.HEIC", "b.heif", "c.avif", "e.jpg"]


def test_the_coordinators_decoder_reads_heic_without_the_gateway(tmp_path: Path) -> None:
    """The pipeline (actors.imaging -> actors.preprocess) must open HEIC on its own: the coordinator never
    imports the gateway, which registers pillow-heif's opener for itself."""
    path = tmp_path / "x.heic"
    path.write_bytes(heic((64, 48)))
    code = (
        "import sys\n"
        "from actors import imaging, preprocess\n"
        "assert 'gateway' not in sys.modules and 'gateway.formats' not in sys.modules\n"
        f"img = preprocess.decode_image(open({str(path)!r}, 'rb').read())\n"
        "print(img.size, img.mode)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "(64, 48) RGB"
