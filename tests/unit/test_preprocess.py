"""actors/preprocess.py: decoding (EXIF, draft, GIF, modes) and pixels for a model's spec."""

from __future__ import annotations

import io

import msgspec
import numpy as np
import pytest
from PIL import Image

from actors.contract import PreprocessSpec
from actors.preprocess import decode_image, to_pixels

SPEC = PreprocessSpec(resize=256, crop=224, resample="bilinear")


def encode(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def test_spec_round_trips_through_the_json_stored_in_the_model_config() -> None:
    spec = PreprocessSpec(resize=224, crop=224, mean=(0.48, 0.45, 0.40), std=(0.26, 0.26, 0.27))
    assert PreprocessSpec.from_json(spec.to_json()) == spec
    assert spec.shape == (224, 224, 3)


def test_spec_rejects_a_bad_spec() -> None:
    with pytest.raises(msgspec.ValidationError):
        PreprocessSpec.from_json('{"resize": 256, "crop": 224, "resample": "cubic-ish"}')
    with pytest.raises(msgspec.ValidationError):
        PreprocessSpec.from_json('{"crop": 224}')


def test_exif_orientation_is_applied() -> None:
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to display
    out = decode_image(encode(img, "JPEG", exif=exif.tobytes()))
    assert out.size == (20, 40)
    assert out.mode == "RGB"


def test_large_jpeg_is_decoded_in_draft_mode_but_never_below_the_target() -> None:
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (2000, 3000, 3), dtype=np.uint8))
    data = encode(img, "JPEG", quality=80)
    full = decode_image(data)
    small = decode_image(data, target=256)
    assert full.size == (3000, 2000)
    assert small.size[0] < 3000 and min(small.size) >= 256


def test_gif_first_frame_and_modes_become_rgb() -> None:
    frames = [Image.new("P", (32, 32), i) for i in (3, 7)]
    frames[0].putpalette([0, 0, 0] * 3 + [10, 200, 30] + [0, 0, 0] * 3 + [200, 10, 10] + [0, 0, 0] * 248)
    frames[1].putpalette(frames[0].getpalette() or [])
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    out = decode_image(data)
    assert out.mode == "RGB"
    assert out.getpixel((5, 5)) == (10, 200, 30)
    rgba = Image.new("RGBA", (8, 8), (0, 0, 255, 0))  # fully transparent: shows as white
    assert decode_image(encode(rgba, "PNG")).getpixel((0, 0)) == (255, 255, 255)
    assert decode_image(encode(Image.new("L", (8, 8), 77), "PNG")).getpixel((0, 0)) == (77, 77, 77)


def test_garbage_is_not_an_image() -> None:
    with pytest.raises(Image.UnidentifiedImageError):
        decode_image(b"not an image at all")


def test_to_pixels_resizes_the_shortest_edge_and_center_crops() -> None:
    # left third red, middle green, right third blue: a center crop of a wide image is all green
    arr = np.zeros((300, 900, 3), dtype=np.uint8)
    arr[:, :300, 0] = 255
    arr[:, 300:600, 1] = 255
    arr[:, 600:, 2] = 255
    px = to_pixels(Image.fromarray(arr), SPEC)
    assert px.shape == (224, 224, 3) and px.dtype == np.uint8 and px.flags["C_CONTIGUOUS"]
    assert (px[:, :, 1] > 250).all() and (px[:, :, [0, 2]] < 5).all()


def test_to_pixels_small_images_and_channel_order() -> None:
    img = Image.new("RGB", (10, 30), (1, 2, 3))
    assert to_pixels(img, SPEC).shape == (224, 224, 3)
    bgr = PreprocessSpec(resize=64, crop=64, channel_order="BGR")
    assert tuple(to_pixels(img, bgr)[0, 0]) == (3, 2, 1)
    assert tuple(to_pixels(img.convert("L"), SPEC)[0, 0]) == (2, 2, 2)
