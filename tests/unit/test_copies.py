"""Copy verification (``actors.copies``): what a user sees when asking "is this a copy of that?".

Copies are edits of one photo (crop keeping at least half, mirror, small rotation, tone and colour); pictures
that share no region (two halves of one photo, two patches of one brick wall) are not, however alike they
look. Photos are scikit-image's (``tests/images.py``).
"""

from __future__ import annotations

import io
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageOps

from actors.copies import Features, Verdict, features, verify
from tests.images import photo


def _crop(img: Image.Image, left: float, top: float, right: float, bottom: float) -> Image.Image:
    """The part of ``img`` between fractions of its width and height."""
    w, h = img.size
    return img.crop((round(left * w), round(top * h), round(right * w), round(bottom * h)))


def _jpeg(img: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def _check(a: Image.Image, b: Image.Image) -> Verdict:
    """The verdict both ways round: the answer must not depend on which image is asked about first."""
    fa, fb = features(a), features(b)
    forward, backward = verify(fa, fb), verify(fb, fa)
    assert forward.is_copy == backward.is_copy, (forward, backward)
    return forward


@pytest.fixture(scope="module")
def astronaut() -> Image.Image:
    return photo("astronaut")


@pytest.fixture(scope="module")
def coffee() -> Image.Image:
    return photo("coffee")


def test_a_crop_keeping_70_percent_is_a_copy(astronaut: Image.Image, coffee: Image.Image) -> None:
    for img in (astronaut, coffee):
        side = 0.7**0.5  # 70% of the area
        verdict = _check(img, _jpeg(_crop(img, 0.1, 0.05, 0.1 + side, 0.05 + side), 85))
        assert verdict.is_copy, verdict
        assert verdict.coverage == pytest.approx(0.7, abs=0.05) and not verdict.mirrored


def test_a_crop_keeping_a_quarter_is_not_a_copy(astronaut: Image.Image) -> None:
    verdict = _check(astronaut, _crop(astronaut, 0.25, 0.25, 0.75, 0.75))
    assert not verdict.is_copy
    assert verdict.inliers > 20  # the region really matched: it is the share that is too small


def test_a_mirrored_copy_is_a_copy_and_says_so(astronaut: Image.Image, coffee: Image.Image) -> None:
    for img in (astronaut, coffee):
        verdict = _check(img, _jpeg(ImageOps.mirror(img).resize((img.width // 2, img.height // 2)), 80))
        assert verdict.is_copy and verdict.mirrored, verdict


def test_a_5_degree_rotation_is_a_copy(astronaut: Image.Image, coffee: Image.Image) -> None:
    for img in (astronaut, coffee):
        filled = img.rotate(5, Image.Resampling.BICUBIC, expand=True, fillcolor=(0, 0, 0))
        cropped = _crop(img.rotate(-5, Image.Resampling.BICUBIC), 0.08, 0.08, 0.92, 0.92)
        for turned in (filled, cropped):
            verdict = _check(img, turned)
            assert verdict.is_copy, verdict


def test_a_tone_and_colour_changed_copy_is_a_copy(astronaut: Image.Image, coffee: Image.Image) -> None:
    for img in (astronaut, coffee):
        darker = ImageEnhance.Contrast(ImageEnhance.Brightness(img).enhance(0.7)).enhance(1.3)
        gamma = darker.point([round(255 * (v / 255) ** 1.6) for v in range(256)] * 3)
        for edited in (gamma, ImageEnhance.Color(img).enhance(1.8), ImageOps.grayscale(img).convert("RGB")):
            verdict = _check(img, edited)
            assert verdict.is_copy, verdict


def test_the_two_halves_of_one_photo_are_not_a_copy() -> None:
    for name in ("astronaut", "coffee", "camera", "hubble_deep_field"):
        img = photo(name)
        for a, b in (
            (_crop(img, 0, 0, 0.5, 1), _crop(img, 0.5, 0, 1, 1)),
            (_crop(img, 0, 0, 1, 0.5), _crop(img, 0, 0.5, 1, 1)),
        ):
            verdict = _check(a, b)
            assert not verdict.is_copy, (name, verdict)


def test_two_crops_of_a_brick_texture_that_do_not_overlap_are_not_a_copy() -> None:
    brick = photo("brick")
    for a, b in (
        (_crop(brick, 0, 0, 0.45, 1), _crop(brick, 0.55, 0, 1, 1)),  # left and right, a gap between
        (_crop(brick, 0, 0, 0.5, 0.5), _crop(brick, 0.5, 0.5, 1, 1)),  # opposite quadrants
    ):
        verdict = _check(a, b)
        assert not verdict.is_copy, verdict


def test_a_blank_image_is_a_copy_of_nothing() -> None:
    blank = Image.new("RGB", (300, 200), (128, 128, 128))
    empty = features(blank)
    assert len(empty.plain) == 0 and len(empty.mirrored) == 0
    assert not verify(empty, empty).is_copy
    assert not verify(empty, features(photo("coffee"))).is_copy


def test_features_round_trip_through_bytes(astronaut: Image.Image) -> None:
    original = features(astronaut)
    data = original.to_bytes()
    # stored per image in the object store: 2 x 400 keypoints x 36 bytes + a 128 px frame, 45.2 KB at most
    assert len(data) <= 45_216
    restored = Features.from_bytes(data)
    assert (restored.width, restored.height) == (original.width, original.height)
    assert restored.pixels is not None and original.pixels is not None
    assert np.array_equal(restored.pixels, original.pixels) and max(restored.pixels.shape) == 128
    for mine, theirs in ((original.plain, restored.plain), (original.mirrored, restored.mirrored)):
        assert np.array_equal(mine.descriptors, theirs.descriptors)
        assert np.allclose(mine.points, theirs.points, atol=0.25)  # float16 positions
    crop = features(_crop(astronaut, 0, 0, 0.8, 0.8))
    assert verify(restored, crop).is_copy == verify(original, crop).is_copy
    assert Features.from_bytes(features(Image.new("RGB", (10, 10))).to_bytes()).plain.points.shape == (0, 2)


def test_features_stored_before_the_pixel_check_still_decide_on_their_keypoints(
    astronaut: Image.Image,
) -> None:
    """orb-1 features (no small frame) read back, and a pair with one is judged by its keypoints alone."""
    current = features(astronaut)
    old = Features.from_bytes(replace(current, pixels=None).to_bytes())
    assert old.pixels is None and old.to_bytes()[:4] == b"CPF1"
    crop = features(_jpeg(_crop(astronaut, 0.1, 0.1, 0.9, 0.9), 80))
    verdict = verify(old, crop)
    assert verdict.is_copy and verdict.agreement is None
    assert verify(current, crop).agreement == pytest.approx(1.0, abs=0.05)


def test_two_views_of_one_scene_are_not_a_copy_and_the_pixels_say_so() -> None:
    """The stereo motorcycle: its background and its foreground move differently between the views. The
    keypoints find one transform for most of the scene; the pixels under it disagree where parallax moved."""
    import skimage.data

    left, right = (Image.fromarray(v).convert("RGB") for v in skimage.data.stereo_motorcycle()[:2])
    verdict = _check(left, right)
    assert not verdict.is_copy, verdict
    assert verdict.inliers >= 50 and verdict.coverage > 0.8  # keypoints alone would have called it a copy
    assert verdict.agreement is not None and verdict.agreement < 0.9
    again = _check(left, _jpeg(left.resize((left.width // 2, left.height // 2)), 75))
    assert again.is_copy and again.agreement is not None and again.agreement > 0.95


def test_bytes_that_are_no_features_are_refused(astronaut: Image.Image) -> None:
    data = features(astronaut).to_bytes()
    for bad in (b"", b"CPF1", b"CPF2", b"XXXX" + data[4:], data[:-1], data + b"\0"):
        with pytest.raises(ValueError, match="copy features"):
            Features.from_bytes(bad)
