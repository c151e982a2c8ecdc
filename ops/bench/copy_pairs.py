"""The labelled pairs of the copies benchmark (``ops/bench/copies.py``), built offline from sample photos.

A *copy* is one image obtained from another by re-encoding, resizing, cropping that keeps at least half,
mirroring, a rotation by a few degrees, or a change of tone and colour (``actors.copies``). Every pair here is
made so that its truth is known by construction.

Sources: scikit-image's sample photos (no download). The synthetic drawings (checkerboard, colour wheel,
phantom, logo) are left out: a checkerboard's two halves are pixel-identical, so no method could or should
call them different pictures, and the others have no texture at all. ``cat`` is the same array as ``chelsea``,
so there is no second photo of any subject. The one pair of different shots of one scene is the stereo
``motorcycle`` pair (two cameras a few centimetres apart, shot at once): it is not a copy by the definition
(parallax moves the foreground against the background; no edit of the list makes one from the other), so it
is labelled a hard negative of its own kind, ``same_scene``, in the evaluation split only, and the figures
say how much it weighs.

Split: the sources are split by kind (textures, documents, colour photos, grey photos) into a tuning and an
evaluation set that share no source photo (seeded). ``actors.copies``'s thresholds were chosen on the tuning
set only (``python -m ops.bench.copies --tune``); the evaluation set is never used to tune.

Pairs (the truth of each is fixed by how it is made):

* copies: the source against one edit (JPEG at quality 20-95, resize to 30-80%, crop keeping 50-95% of the
  area, mirror, rotation by 1-8 degrees with the borders cropped or filled, brightness/contrast/gamma,
  saturation/hue, grayscale) or against 2-4 edits combined (the crop then keeps at least half of what is
  left); in half the combined pairs the source side is itself re-encoded, resized or toned;
* hard negatives: two parts of one photo that share no pixel (halves, quadrants, thirds, random rectangles on
  either side of a line), for ordinary photos (``photo_parts``) and textures (``texture_parts``); bursts, two
  equal frames that overlap by at most 30% of their area, each slightly rotated, re-exposed and re-encoded
  (camera motion; a pair overlapping more than half would be a copy by the definition, so none is made); the
  stereo pair (``same_scene``). Each side of a part pair gets mild edits at random;
* easy negatives: two different source photos (``different``), each mildly edited.

Everything is seeded: one generator per (seed, source, family of pairs), so a source's pairs do not depend
on which other sources are made.

Found while measuring: ``grass`` holds a cloned patch (a 50 px square correlates at 0.84 with the one 162 px
below it), so two of its parts can share a small region. They stay negatives: they share far less than half.
"""

from __future__ import annotations

import io
import math
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

Size = Literal["full", "reduced"]

# --- sources and split -----------------------------------------------------------------------------------

STRATA: dict[str, tuple[str, ...]] = {
    "texture": ("brick", "grass", "gravel"),
    "document": ("page", "text"),
    "colour": (
        "astronaut",
        "chelsea",
        "coffee",
        "rocket",
        "hubble_deep_field",
        "immunohistochemistry",
        "retina",
    ),
    "grey": ("camera", "coins", "moon", "cell", "clock", "horse"),
}
TUNING_SHARE = {"texture": 1, "document": 1, "colour": 3, "grey": 3}  # the rest of each kind: evaluation
STEREO = "motorcycle"  # the only two shots of one scene: evaluation only (see the module docstring)


@dataclass(frozen=True)
class Split:
    tuning: tuple[str, ...]
    evaluation: tuple[str, ...]


def split(seed: int = 0) -> Split:
    """Source photos per kind, shuffled with ``seed``, the first ``TUNING_SHARE`` of each kind for tuning."""
    rng = np.random.default_rng([seed, 1])
    tuning: list[str] = []
    evaluation: list[str] = []
    for stratum, names in STRATA.items():
        order = [names[i] for i in rng.permutation(len(names))]
        tuning += order[: TUNING_SHARE[stratum]]
        evaluation += order[TUNING_SHARE[stratum] :]
    return Split(tuple(tuning), (*evaluation, STEREO))


def is_texture(name: str) -> bool:
    return name in STRATA["texture"]


def source(name: str, view: int = 0) -> Image.Image:
    """A source photo as RGB; ``motorcycle`` is the stereo pair, ``view`` 0 (left) or 1 (right)."""
    import skimage.data

    if name == STEREO:
        arr = skimage.data.stereo_motorcycle()[view]
    else:
        arr = getattr(skimage.data, name)()
    if arr.dtype == bool:  # the horse silhouette
        arr = arr.astype(np.uint8) * 255
    return Image.fromarray(np.asarray(arr)).convert("RGB")


# --- edits -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Edited:
    """An edited image, the fraction of its input's area it still shows, and what was done."""

    image: Image.Image
    kept: float
    what: str


Edit = Callable[[Image.Image, np.random.Generator], Edited]


def jpeg(img: Image.Image, rng: np.random.Generator, lo: int = 20, hi: int = 95) -> Edited:
    quality = int(rng.integers(lo, hi + 1))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return Edited(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"), 1.0, f"jpeg q{quality}")


_RESAMPLERS = (Image.Resampling.BILINEAR, Image.Resampling.BICUBIC, Image.Resampling.LANCZOS)


def resize(img: Image.Image, rng: np.random.Generator, lo: float = 0.3, hi: float = 0.8) -> Edited:
    f = float(rng.uniform(lo, hi))
    size = (max(8, round(img.width * f)), max(8, round(img.height * f)))
    resample = _RESAMPLERS[int(rng.integers(len(_RESAMPLERS)))]
    return Edited(img.resize(size, resample), 1.0, f"resize {f:.2f}")


def crop_box(width: int, height: int, area: float, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """A box of about ``area`` of the frame, aspect ratio jittered, at a random place."""
    r = math.exp(float(rng.uniform(-0.25, 0.25)))
    fw = min(1.0, math.sqrt(area) * r)
    fh = min(1.0, area / fw)
    fw = area / fh
    w, h = max(1, round(width * fw)), max(1, round(height * fh))
    x = int(rng.integers(0, width - w + 1))
    y = int(rng.integers(0, height - h + 1))
    return x, y, x + w, y + h


def crop(img: Image.Image, rng: np.random.Generator, lo: float = 0.5, hi: float = 0.95) -> Edited:
    area = float(rng.uniform(lo, hi))
    x0, y0, x1, y1 = crop_box(img.width, img.height, area, rng)
    kept = (x1 - x0) * (y1 - y0) / (img.width * img.height)
    return Edited(img.crop((x0, y0, x1, y1)), kept, f"crop {kept:.2f}")


def mirror(img: Image.Image, rng: np.random.Generator) -> Edited:
    return Edited(ImageOps.mirror(img), 1.0, "mirror")


def inscribed_scale(width: int, height: int, degrees: float) -> float:
    """The largest scale of the frame, same aspect and centre, that fits inside the frame rotated."""
    c, s = abs(math.cos(math.radians(degrees))), abs(math.sin(math.radians(degrees)))
    return min(width / (width * c + height * s), height / (width * s + height * c))


def rotate(
    img: Image.Image, rng: np.random.Generator, lo: float = 1.0, hi: float = 8.0, borders: str | None = None
) -> Edited:
    """Rotation by ``lo``-``hi`` degrees either way; the borders it uncovers are cropped off or filled."""
    degrees = float(rng.uniform(lo, hi)) * (1 if rng.random() < 0.5 else -1)
    borders = borders or ("crop" if rng.random() < 0.5 else "fill")
    if borders == "fill":
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        turned = img.rotate(degrees, Image.Resampling.BICUBIC, expand=True, fillcolor=fill)
        return Edited(turned, 1.0, f"rotate {degrees:.1f} filled")
    k = inscribed_scale(img.width, img.height, degrees)
    turned = img.rotate(degrees, Image.Resampling.BICUBIC)
    w, h = round(img.width * k), round(img.height * k)
    x, y = (img.width - w) // 2, (img.height - h) // 2
    return Edited(turned.crop((x, y, x + w, y + h)), k * k, f"rotate {degrees:.1f} cropped")


def tone(img: Image.Image, rng: np.random.Generator, strength: float = 1.0) -> Edited:
    """Brightness, contrast and gamma, each changed by a random amount (``strength`` scales the range)."""
    b = math.exp(float(rng.uniform(-0.45, 0.4)) * strength)
    c = math.exp(float(rng.uniform(-0.45, 0.4)) * strength)
    g = math.exp(float(rng.uniform(-0.7, 0.7)) * strength)
    out = ImageEnhance.Contrast(ImageEnhance.Brightness(img).enhance(b)).enhance(c)
    lut = [round(255 * (v / 255) ** g) for v in range(256)] * 3
    return Edited(out.point(lut), 1.0, f"tone b{b:.2f} c{c:.2f} g{g:.2f}")


def colour(img: Image.Image, rng: np.random.Generator) -> Edited:
    """Saturation scaled by 0-2 and the hue turned by 20-120 degrees either way."""
    sat = float(rng.uniform(0.0, 2.0))
    hue = float(rng.uniform(20, 120)) * (1 if rng.random() < 0.5 else -1)
    out = ImageEnhance.Color(img).enhance(sat)
    hsv = np.asarray(out.convert("HSV")).copy()
    hsv[..., 0] = (hsv[..., 0].astype(np.int32) + round(hue * 256 / 360)) % 256
    return Edited(Image.fromarray(hsv, "HSV").convert("RGB"), 1.0, f"colour s{sat:.2f} h{hue:+.0f}")


def grayscale(img: Image.Image, rng: np.random.Generator) -> Edited:
    return Edited(ImageOps.grayscale(img).convert("RGB"), 1.0, "grayscale")


SINGLE_EDITS: dict[str, Edit] = {
    "jpeg": jpeg,
    "resize": resize,
    "crop": crop,
    "mirror": mirror,
    "rotate": rotate,
    "tone": tone,
    "colour": colour,
    "grayscale": grayscale,
}


def combined(img: Image.Image, rng: np.random.Generator) -> Edited:
    """2-4 different edits; the crop (if any) goes last but a re-encode, and keeps the total at half or more."""
    names = [str(n) for n in rng.choice(list(SINGLE_EDITS), size=int(rng.integers(2, 5)), replace=False)]
    order = [n for n in names if n not in ("crop", "jpeg")]
    rng.shuffle(order)
    order += [n for n in ("crop", "jpeg") if n in names]
    kept, steps, out = 1.0, [], img
    for name in order:
        if name == "crop":
            lo = 0.5 / kept
            if lo > 0.95:
                continue
            step = crop(out, rng, lo=lo)
        else:
            step = SINGLE_EDITS[name](out, rng)
        out, kept = step.image, kept * step.kept
        steps.append(step.what)
    return Edited(out, kept, " + ".join(steps))


def mild(img: Image.Image, rng: np.random.Generator) -> Edited:
    """What a negative pair's sides get at random: a re-encode, a tone change, a resize, a mirror."""
    steps, out = [], img
    if rng.random() < 0.3:
        step = mirror(out, rng)
        out = step.image
        steps.append(step.what)
    if rng.random() < 0.3:
        step = resize(out, rng, 0.5, 1.0)
        out = step.image
        steps.append(step.what)
    if rng.random() < 0.3:
        step = tone(out, rng, 0.5)
        out = step.image
        steps.append(step.what)
    if rng.random() < 0.5:
        step = jpeg(out, rng, 60, 95)
        out = step.image
        steps.append(step.what)
    return Edited(out, 1.0, " + ".join(steps) or "none")


def source_side(img: Image.Image, rng: np.random.Generator) -> Edited:
    """A copy pair's source side, itself altered without losing content: re-encoded, resized or toned."""
    name = ("jpeg", "resize", "tone", "colour")[int(rng.integers(4))]
    return SINGLE_EDITS[name](img, rng)


# --- pairs -----------------------------------------------------------------------------------------------

Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class Pair:
    """Two images and the truth about them: ``copy`` by construction, ``kind`` says how they were made.

    ``a_key`` names a side shared by many pairs (an unedited source), so its features and embedding are
    computed once.
    """

    kind: str
    detail: str
    copy: bool
    hard: bool
    source: str
    a: Image.Image
    b: Image.Image
    a_key: str | None = None


@dataclass(frozen=True)
class Counts:
    """How many pairs of each family one source photo yields."""

    single: int  # per single-edit kind
    combined: int
    halves: int
    quadrants: int
    thirds: int
    random_parts: int
    bursts: int
    same_scene: int
    different: int  # per pair of source photos


COUNTS: dict[str, Counts] = {
    "full": Counts(
        single=2,
        combined=14,
        halves=2,
        quadrants=6,
        thirds=6,
        random_parts=10,
        bursts=6,
        same_scene=10,
        different=3,
    ),
    "reduced": Counts(
        single=1,
        combined=2,
        halves=1,
        quadrants=1,
        thirds=1,
        random_parts=1,
        bursts=2,
        same_scene=3,
        different=1,
    ),
}


def _rng(seed: int, *names: str) -> np.random.Generator:
    """A generator per (seed, names): one source's pairs do not depend on which others are made."""
    return np.random.default_rng([seed, *(zlib.crc32(n.encode()) for n in names)])


def copy_pairs(name: str, img: Image.Image, counts: Counts, seed: int) -> Iterator[Pair]:
    rng = _rng(seed, name, "copies")
    for kind, edit in SINGLE_EDITS.items():
        for _ in range(1 if kind in ("mirror", "grayscale") else counts.single):
            b = edit(img, rng)
            yield Pair(f"copy_{kind}", b.what, True, False, name, img, b.image, a_key=name)
    for i in range(counts.combined):
        b = combined(img, rng)
        if i % 2:
            a = source_side(img, rng)
            yield Pair("copy_combined", f"{a.what} | {b.what}", True, False, name, a.image, b.image)
        else:
            yield Pair("copy_combined", b.what, True, False, name, img, b.image, a_key=name)


def layouts(width: int, height: int) -> dict[str, list[tuple[Box, Box]]]:
    """Fixed pairs of boxes that share no pixel: halves, quadrants, thirds (both directions)."""
    w2, h2 = width // 2, height // 2
    quads = [(0, 0, w2, h2), (w2, 0, width, h2), (0, h2, w2, height), (w2, h2, width, height)]
    xs = [0, width // 3, 2 * width // 3, width]
    ys = [0, height // 3, 2 * height // 3, height]
    cols = [(xs[i], 0, xs[i + 1], height) for i in range(3)]
    rows = [(0, ys[i], width, ys[i + 1]) for i in range(3)]
    pairs3 = [(0, 1), (1, 2), (0, 2)]
    return {
        "halves": [((0, 0, w2, height), (w2, 0, width, height)), ((0, 0, width, h2), (0, h2, width, height))],
        "quadrants": [(quads[i], quads[j]) for i in range(4) for j in range(i + 1, 4)],
        "thirds": [(cols[i], cols[j]) for i, j in pairs3] + [(rows[i], rows[j]) for i, j in pairs3],
    }


def random_parts(width: int, height: int, rng: np.random.Generator) -> tuple[Box, Box]:
    """Two boxes on either side of a random vertical or horizontal line, each 40-100% of its side."""
    vertical = rng.random() < 0.5
    extent = width if vertical else height
    cut = round(extent * float(rng.uniform(0.3, 0.7)))
    boxes = []
    for lo, hi in ((0, cut), (cut, extent)):
        w, h = (hi - lo, height) if vertical else (width, hi - lo)
        x0, y0, x1, y1 = crop_box(w, h, float(rng.uniform(0.4, 1.0)), rng)
        boxes.append((x0 + lo, y0, x1 + lo, y1) if vertical else (x0, y0 + lo, x1, y1 + lo))
    return boxes[0], boxes[1]


def part_pairs(name: str, img: Image.Image, counts: Counts, seed: int) -> Iterator[Pair]:
    rng = _rng(seed, name, "parts")
    kind = "texture_parts" if is_texture(name) else "photo_parts"
    fixed = layouts(img.width, img.height)
    chosen: list[tuple[str, tuple[Box, Box]]] = []
    for layout, n in (("halves", counts.halves), ("quadrants", counts.quadrants), ("thirds", counts.thirds)):
        options = fixed[layout]
        picks = rng.permutation(len(options))[:n]
        chosen += [(layout, options[i]) for i in sorted(picks)]
    chosen += [("random", random_parts(img.width, img.height, rng)) for _ in range(counts.random_parts)]
    for layout, (box_a, box_b) in chosen:
        a, b = mild(img.crop(box_a), rng), mild(img.crop(box_b), rng)
        yield Pair(
            kind, f"{layout} {box_a} {box_b} | {a.what} | {b.what}", False, True, name, a.image, b.image
        )


def burst_frames(width: int, height: int, rng: np.random.Generator) -> tuple[Box, Box, float]:
    """Two equal frames, the second moved so that they share at most 30% of their area (and that share)."""
    horizontal = rng.random() < 0.5
    along, across = (width, height) if horizontal else (height, width)
    overlap = float(rng.uniform(0.0, 0.3))
    size = int(along / (2 - overlap))  # two frames overlapping by `overlap` span the whole side
    shift = size - int(size * overlap)
    side = int(across * float(rng.uniform(0.75, 0.95)))
    drift = int(rng.integers(0, across - side + 1))  # the second frame's offset across the motion
    start = int(rng.integers(0, across - side + 1))
    first = (0, start, size, start + side)
    second = (shift, drift, shift + size, drift + side)
    shared_across = max(0, min(start, drift) + side - max(start, drift))
    share = max(0, size - shift) * shared_across / (size * side)
    if not horizontal:
        first = (first[1], first[0], first[3], first[2])
        second = (second[1], second[0], second[3], second[2])
    return first, second, share


def _shot(img: Image.Image, rng: np.random.Generator) -> Edited:
    """One frame of a burst as a camera would take it: a little rotation, exposure, a re-encode."""
    turned = rotate(img, rng, 0.0, 2.0, borders="crop")
    toned = tone(turned.image, rng, 0.4)
    encoded = jpeg(toned.image, rng, 70, 95)
    return Edited(encoded.image, turned.kept, f"{turned.what} + {toned.what} + {encoded.what}")


def burst_pairs(name: str, img: Image.Image, counts: Counts, seed: int) -> Iterator[Pair]:
    rng = _rng(seed, name, "bursts")
    for _ in range(counts.bursts):
        box_a, box_b, share = burst_frames(img.width, img.height, rng)
        a, b = _shot(img.crop(box_a), rng), _shot(img.crop(box_b), rng)
        detail = f"share {share:.2f} {box_a} {box_b} | {a.what} | {b.what}"
        yield Pair("burst", detail, False, True, name, a.image, b.image)


def same_scene_pairs(counts: Counts, seed: int) -> Iterator[Pair]:
    """The stereo pair: the left view against the right one, either side possibly edited."""
    rng = _rng(seed, STEREO, "same_scene")
    left, right = source(STEREO, 0), source(STEREO, 1)
    yield Pair("same_scene", "left | right", False, True, STEREO, left, right, a_key=STEREO)
    edits: list[Edit] = [jpeg, resize, tone, mirror, crop, colour, rotate, combined]
    for i in range(counts.same_scene - 1):
        edit = edits[i % len(edits)]
        if i % 2:
            a, b = edit(left, rng), Edited(right, 1.0, "none")
        else:
            a, b = Edited(left, 1.0, "none"), edit(right, rng)
        yield Pair("same_scene", f"{a.what} | {b.what}", False, True, STEREO, a.image, b.image)


def different_pairs(
    names: Sequence[str], photos: dict[str, Image.Image], n: int, seed: int
) -> Iterator[Pair]:
    for i, first in enumerate(names):
        for second in names[i + 1 :]:
            rng = _rng(seed, first, second, "different")
            for _ in range(n):
                a, b = mild(photos[first], rng), mild(photos[second], rng)
                detail = f"{first} vs {second} | {a.what} | {b.what}"
                yield Pair("different", detail, False, False, f"{first}+{second}", a.image, b.image)


def pairs(names: Sequence[str], size: Size, seed: int) -> Iterator[Pair]:
    """Every labelled pair of one split's source photos, generated lazily (a few images in memory at once)."""
    counts = COUNTS[size]
    photos = {name: source(name) for name in names}
    for name in names:
        yield from copy_pairs(name, photos[name], counts, seed)
        if name != STEREO:
            yield from part_pairs(name, photos[name], counts, seed)
        yield from burst_pairs(name, photos[name], counts, seed)
    if STEREO in names:
        yield from same_scene_pairs(counts, seed)
    yield from different_pairs(names, photos, counts.different, seed)


def reduced_names(names: Sequence[str]) -> tuple[str, ...]:
    """The reduced size's sources: one texture, one other photo and the stereo pair if the split has them."""
    texture = next(n for n in names if is_texture(n))
    other = next(n for n in names if not is_texture(n) and n != STEREO)
    return (texture, other, *([STEREO] if STEREO in names else []))
