"""Upload validation: every hostile case refused with its status and code, every odd valid image accepted."""

from __future__ import annotations

import io
import random
import warnings

import pytest
from PIL import Image, ImageFile

from actors.errors import PermanentError
from gateway.metadata import parse_metadata
from gateway.validation import ImageInfo, UploadError, sha256_hex, validate_image
from tests.corpus import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_PIXELS,
    Case,
    gif,
    hostile_cases,
    jpeg,
    jpeg_declaring,
    multipart_body,
    odd_valid_images,
    oversize_case,
    png,
    png_declaring,
    webp,
)

HOSTILE = hostile_cases()
VALID = odd_valid_images()


def check(
    case: Case, *, max_bytes: int = DEFAULT_MAX_BYTES, max_pixels: int = DEFAULT_MAX_PIXELS
) -> ImageInfo:
    """What the gateway does with one upload, minus the I/O."""
    parse_metadata(case.metadata)
    return validate_image(case.data, max_bytes=max_bytes, max_pixels=max_pixels)


@pytest.mark.parametrize("case", HOSTILE, ids=lambda c: c.name)
def test_hostile_case_is_refused(case: Case) -> None:
    with pytest.raises(UploadError) as err:
        check(case)
    assert (err.value.status, err.value.code) == (case.expect_status, case.expect_code), err.value.message
    assert err.value.message


@pytest.mark.parametrize("limit", [1024, DEFAULT_MAX_BYTES])
def test_over_byte_limit(limit: int) -> None:
    case = oversize_case(limit)
    assert len(case.data) == limit + 1
    with pytest.raises(UploadError) as err:
        check(case, max_bytes=limit)
    assert (err.value.status, err.value.code) == (413, "too_large")
    # one byte less is fine: the padding after the JPEG's end marker is not an error
    assert check(case, max_bytes=limit + 1).format == "JPEG"


@pytest.mark.parametrize("case", VALID, ids=lambda c: c.name)
def test_odd_valid_image_is_accepted(case: Case) -> None:
    info = check(case)
    assert (info.format, (info.width, info.height), info.frames) == (
        case.expect_format,
        case.expect_size,
        case.expect_frames,
    )
    assert info.content_type == f"image/{case.expect_format.lower()}"  # type: ignore[union-attr]


def test_spoofed_content_type_and_name_report_the_real_type() -> None:
    case = next(c for c in VALID if c.name == "jpeg_as_octet_stream_evil_exe")
    assert (case.content_type, case.filename) == ("application/octet-stream", "evil.exe")
    info = check(case)
    assert (info.format, info.content_type) == ("JPEG", "image/jpeg")


def test_corpus_cases_are_distinct_and_many() -> None:
    cases = HOSTILE + VALID
    assert len(HOSTILE) >= 20
    assert len({c.name for c in cases}) == len(cases)
    nonempty = [c.data for c in cases if c.data]
    assert len({sha256_hex(d) for d in nonempty}) == len(nonempty)


@pytest.mark.parametrize(
    "data",
    [png_declaring(50_000, 50_000), png_declaring(10_000, 10_000), jpeg_declaring(60_000, 60_000, 7)],
    ids=["png_over_pillow_error_limit", "png_in_pillow_warning_band", "jpeg_over_pillow_error_limit"],
)
def test_bomb_is_refused_before_decode(data: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    decoded: list[str] = []
    real_load = ImageFile.ImageFile.load

    def spy_load(self: ImageFile.ImageFile) -> object:
        decoded.append(str(self.format))
        return real_load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy_load)
    assert len(data) < 1024 * 1024
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with pytest.raises(UploadError) as err:
            validate_image(data, max_bytes=DEFAULT_MAX_BYTES, max_pixels=DEFAULT_MAX_PIXELS)
    assert (err.value.status, err.value.code) == (413, "too_many_pixels")
    assert decoded == []
    assert not [w for w in seen if issubclass(w.category, Image.DecompressionBombWarning)]


def test_pixel_limit_is_our_own_not_only_pillows(monkeypatch: pytest.MonkeyPatch) -> None:
    # even with Pillow's limit switched off process-wide, the configured one holds
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    with pytest.raises(UploadError) as err:
        validate_image(
            png_declaring(50_000, 50_000), max_bytes=DEFAULT_MAX_BYTES, max_pixels=DEFAULT_MAX_PIXELS
        )
    assert err.value.code == "too_many_pixels"
    data = png(1, (48, 32))
    assert validate_image(data, max_bytes=10_000, max_pixels=48 * 32).width == 48
    with pytest.raises(UploadError) as err:
        validate_image(data, max_bytes=10_000, max_pixels=48 * 32 - 1)
    assert (err.value.status, err.value.code) == (413, "too_many_pixels")


def _mutate(data: bytes, rng: random.Random) -> bytes:
    buf = bytearray(data)
    kind = rng.randrange(5)
    if kind == 0:  # truncate
        return bytes(buf[: rng.randrange(len(buf))])
    if kind == 1:  # flip a few bytes, biased towards the header where the parsers branch
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(min(len(buf), 64)) if rng.random() < 0.5 else rng.randrange(len(buf))
            buf[i] = rng.randrange(256)
        return bytes(buf)
    if kind == 2:  # extreme 32-bit value (sizes, lengths, offsets)
        i = rng.randrange(max(len(buf) - 4, 1))
        buf[i : i + 4] = rng.choice(
            [b"\xff\xff\xff\xff", b"\x00\x00\x00\x00", b"\x7f\xff\xff\xff", b"\x00\x01\x00\x00"]
        )
        return bytes(buf)
    if kind == 3:  # insert random bytes
        i = rng.randrange(len(buf))
        return bytes(buf[:i] + rng.randbytes(rng.randint(1, 32)) + buf[i:])
    i, j = sorted(rng.randrange(len(buf)) for _ in range(2))  # duplicate a slice
    return bytes(buf[:j] + buf[i:j] + buf[j:])


def test_mutated_images_only_ever_raise_upload_error() -> None:
    rng = random.Random(20240601)
    seeds = [jpeg(1), jpeg(2, progressive=True), png(3), gif(4, frames=2), webp(5), webp(6, frames=2)]
    outcomes: dict[str, int] = {}
    for _ in range(300):
        data = _mutate(rng.choice(seeds), rng)
        try:
            info = validate_image(data, max_bytes=1_000_000, max_pixels=1_000_000)
        except UploadError as exc:
            assert exc.status in (400, 413, 415), exc
            outcomes[exc.code] = outcomes.get(exc.code, 0) + 1
        else:
            assert info.width * info.height <= 1_000_000
            outcomes["ok"] = outcomes.get("ok", 0) + 1
    assert outcomes.get("broken_image", 0) > 0  # the mutations did reach the decoders


def test_metadata_accepts_flat_objects() -> None:
    assert parse_metadata(None) == {}
    assert parse_metadata("") == {}
    assert parse_metadata(b"  \n") == {}
    raw = '{"camera": "X100V", "iso": 400, "exposure": 0.008, "a.b-c_D": "caf\\u00e9"}'
    expected = {"camera": "X100V", "iso": 400, "exposure": 0.008, "a.b-c_D": "café"}
    assert parse_metadata(raw) == expected
    assert parse_metadata(raw.encode()) == expected
    keys = {f"k{i}": "v" * 1024 for i in range(32)} | {"k" * 64: 2**53 - 1}
    keys.pop("k0")
    assert parse_metadata(str(keys).replace("'", '"')) == keys


def test_metadata_messages_say_what_is_wrong() -> None:
    with pytest.raises(UploadError) as err:
        parse_metadata('{"ok": 1, "nested": {"x": 1}}')
    assert (err.value.status, err.value.code) == (422, "invalid_metadata")
    assert "'nested'" in err.value.message and "object" in err.value.message


def test_upload_error_carries_its_contract() -> None:
    exc = UploadError(415, "unsupported_format", "PSD images are not accepted")
    assert isinstance(exc, PermanentError)
    assert (exc.status, exc.code, exc.message, str(exc)) == (
        415,
        "unsupported_format",
        "PSD images are not accepted",
        "PSD images are not accepted",
    )


def test_sha256_hex() -> None:
    assert sha256_hex(b"") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert sha256_hex(bytearray(b"abc")) == sha256_hex(memoryview(b"abc"))


def test_multipart_body_sends_raw_names_and_escapes_injection() -> None:
    raw_name = next(c for c in VALID if c.name == "non_utf8_name")
    body, content_type = multipart_body(raw_name, boundary="b0undary")
    assert content_type == "multipart/form-data; boundary=b0undary"
    assert b'filename="caf\xe9-\xff\xfe.jpg"' in body
    assert body.endswith(b"--b0undary--\r\n")
    injected = next(c for c in VALID if c.name == "quote_crlf_name")
    body, _ = multipart_body(injected)
    assert b'filename="x%22.png%0D%0AContent-Type: text/html"' in body


def test_frame_count_is_bounded_and_survives_loops() -> None:
    buf = io.BytesIO()
    Image.new("L", (2, 2), 7).save(buf, "GIF")
    one = buf.getvalue()
    start = 13 + ((3 << ((one[10] & 7) + 1)) if one[10] & 0x80 else 0)  # after header and colour table
    # the single frame's blocks (its trailer is the last byte) repeated: 12,000 frames in ~250 KB
    data = one[:start] + one[start:-1] * 12_000 + one[-1:]
    assert validate_image(data, max_bytes=DEFAULT_MAX_BYTES, max_pixels=DEFAULT_MAX_PIXELS).frames == 10_000

    pages = [Image.new("L", (4, 4), i) for i in range(2)]
    buf = io.BytesIO()
    pages[0].save(buf, "TIFF", save_all=True, append_images=pages[1:])
    tiff = bytearray(buf.getvalue())
    first_ifd = int.from_bytes(tiff[4:8], "little")
    second_ifd = int.from_bytes(tiff[first_ifd + 2 + 12 * tiff[first_ifd] :][:4], "little")
    end = second_ifd + 2 + 12 * int.from_bytes(tiff[second_ifd : second_ifd + 2], "little")
    tiff[end : end + 4] = first_ifd.to_bytes(4, "little")  # page 2 points back to page 1
    info = validate_image(bytes(tiff), max_bytes=DEFAULT_MAX_BYTES, max_pixels=DEFAULT_MAX_PIXELS)
    assert (info.format, info.frames) == ("TIFF", 2)


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b'\xef\xbb\xbf<!-- x --><svg:svg xmlns:svg="http://www.w3.org/2000/svg"/>', "unsupported_format"),
        (b"  \n<svg>", "unsupported_format"),
        (b"<?xml version='1.0'?><html><svg></svg></html>", "not_an_image"),
        (b"<svgfoo/>", "not_an_image"),
        (b"%!PS-Adobe-2.0\n", "unsupported_format"),
        (b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1miaf", "broken_image"),  # an AVIF cut short
        (b"\x00\x00\x00\x0cJXL \r\n\x87\n\x00\x00\x00\x14ftypjxl ", "unsupported_format"),
        (b"GIF89a\x01", "broken_image"),
        (b"\x89PNG\r\n\x1a\n", "broken_image"),
    ],
)
def test_sniffing_edges(data: bytes, code: str) -> None:
    with pytest.raises(UploadError) as err:
        validate_image(data, max_bytes=DEFAULT_MAX_BYTES, max_pixels=DEFAULT_MAX_PIXELS)
    assert err.value.code == code, err.value.message


def test_refuses_to_run_with_truncated_images_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    # that process-wide Pillow switch would let every truncated image through as valid
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(RuntimeError):
        validate_image(png(1), max_bytes=DEFAULT_MAX_BYTES, max_pixels=DEFAULT_MAX_PIXELS)


@pytest.mark.parametrize("progressive", [False, True])
@pytest.mark.parametrize("kept", [0.3, 0.7, 0.95, 0.99])
def test_a_jpeg_cut_anywhere_in_its_pixel_data_is_broken(kept: float, progressive: bool) -> None:
    # validation decodes JPEGs at 1/8 scale (Image.draft): it must still read every scan to the end
    data = jpeg(7, size=(640, 480), progressive=progressive)
    assert validate_image(data, max_bytes=DEFAULT_MAX_BYTES, max_pixels=DEFAULT_MAX_PIXELS).width == 640
    with pytest.raises(UploadError) as err:
        validate_image(
            data[: int(len(data) * kept)], max_bytes=DEFAULT_MAX_BYTES, max_pixels=DEFAULT_MAX_PIXELS
        )
    assert (err.value.status, err.value.code) == (400, "broken_image")


def test_a_jpeg_reports_its_full_size_though_decoded_small() -> None:
    info = validate_image(
        jpeg(8, size=(1001, 333)), max_bytes=DEFAULT_MAX_BYTES, max_pixels=DEFAULT_MAX_PIXELS
    )
    assert (info.width, info.height) == (1001, 333)
    with pytest.raises(UploadError) as err:  # the pixel limit is on the real size, not the decoded one
        validate_image(jpeg(8, size=(1001, 333)), max_bytes=DEFAULT_MAX_BYTES, max_pixels=1001 * 333 - 1)
    assert err.value.code == "too_many_pixels"
