"""Synthetic hard cases for tuning the copy check, made from the tuning split's photos only.

The first evaluation of ``actors.copies`` (orb-1) showed three kinds of look-alike pair that the tuning split
had no example of, so no threshold could have been chosen against them:

* repeated structure: a brick wall's two parts match at the mortar corners (``periodic`` walls here);
* a region cloned inside one texture (``grass`` has one): two parts of it share a small patch, far less than
  half of either (``cloned`` here: a texture with patches copied from elsewhere in it);
* two shots of one scene from two places (the stereo ``motorcycle``): the background moves one way, the
  foreground another, so no edit of the definition makes one from the other (``scene`` here: a background
  photo and cut-out objects at different depths, seen from two camera positions).

Each is built from tuning photos (never an evaluation one), so the evaluation split stays unseen by the
thresholds; which *kinds* of case to model was learnt from the first evaluation's mistakes, and the report
says so. Copies of the synthetic images are made too (crops, re-encodes, tone: the definition's edits), so a
rule that rejects the hard cases is also charged for the copies it loses.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ops.bench.copy_pairs import (
    Counts,
    Edited,
    Pair,
    _rng,
    combined,
    crop,
    jpeg,
    layouts,
    mild,
    random_parts,
    source,
    tone,
)

SIZE = 512  # synthetic images are square, like the sample textures


def _patch(img: Image.Image, size: tuple[int, int], rng: np.random.Generator) -> Image.Image:
    """A random ``size`` crop of ``img`` (resized first when it is smaller)."""
    w, h = size
    if img.width < w or img.height < h:
        img = img.resize((max(w, img.width), max(h, img.height)))
    x = int(rng.integers(0, img.width - w + 1))
    y = int(rng.integers(0, img.height - h + 1))
    return img.crop((x, y, x + w, y + h))


def periodic(photo: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A brick wall: running-bond rows of bricks, each filled with its own patch of ``photo``, toned and
    jittered, with mortar between: every mortar corner looks like every other, no two bricks are equal."""
    bw, bh = int(rng.integers(40, 110)), int(rng.integers(18, 50))
    mortar = int(rng.integers(2, 7))
    mortar_grey = int(rng.integers(150, 230))
    wall = Image.new("RGB", (SIZE, SIZE), (mortar_grey,) * 3)
    base = np.array([int(v) for v in rng.integers(90, 200, 3)], dtype=np.float32)
    for row, y in enumerate(range(-bh, SIZE + bh, bh + mortar)):
        offset = (bw + mortar) // 2 if row % 2 else 0
        for x in range(-bw - offset, SIZE + bw, bw + mortar):
            brick = np.asarray(_patch(photo, (bw, bh), rng), dtype=np.float32)
            tint = float(rng.uniform(0.75, 1.2))
            filled = np.clip(tint * (0.5 * brick + 0.5 * base), 0, 255).astype(np.uint8)
            wall.paste(Image.fromarray(filled), (x, y))
    return wall.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.0, 0.8))))


def cloned(photo: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A texture (a patch of ``photo`` scaled to the frame) with 1-3 square patches copied elsewhere in it,
    as a retoucher's clone tool leaves them: 40-90 px, so two parts of it share a patch, not half a part."""
    base = _patch(photo, (min(photo.width, photo.height),) * 2, rng).resize((SIZE, SIZE))
    for _ in range(int(rng.integers(1, 4))):
        side = int(rng.integers(40, 91))
        x0, y0, x1, y1 = (int(v) for v in rng.integers(0, SIZE - side, 4))
        base.paste(base.crop((x0, y0, x0 + side, y0 + side)), (x1, y1))
    return base


def _blob(size: tuple[int, int], rng: np.random.Generator) -> Image.Image:
    """A soft-edged ellipse or rounded box mask of ``size``, like a cut-out object's outline."""
    mask = Image.new("L", size, 0)
    draw = ImageDraw.Draw(mask)
    inset = (size[0] // 12, size[1] // 12, size[0] - size[0] // 12, size[1] - size[1] // 12)
    if rng.random() < 0.5:
        draw.ellipse(inset, fill=255)
    else:
        draw.rounded_rectangle(inset, radius=min(size) // 5, fill=255)
    return mask.filter(ImageFilter.GaussianBlur(2))


def _textured(
    img: Image.Image, size: tuple[int, int], rng: np.random.Generator, tries: int = 6
) -> Image.Image:
    """The most textured of a few random ``size`` crops of ``img`` (an object a camera would find corners on)."""
    crops = [_patch(img, size, rng) for _ in range(tries)]
    energy = [
        float(np.asarray(c.convert("L").filter(ImageFilter.FIND_EDGES), dtype=np.float32).mean())
        for c in crops
    ]
    return crops[int(np.argmax(energy))]


def scene_views(
    background: Image.Image, objects: Sequence[Image.Image], rng: np.random.Generator
) -> tuple[Image.Image, Image.Image, str]:
    """Two views of one scene: ``background`` a slanted plane behind, 1-3 ``objects`` (cut out) nearer.

    Between the views the camera moves sideways (and a little up or down): the plane shifts by a few pixels
    more at its near edge than at its far one (a shear: no similarity transform), each object by more the
    nearer it is (parallax 4-14% of the frame), so the views share most of the scene but no single transform
    of the definition maps one onto the other.
    """
    canvas_w = SIZE + SIZE // 3
    bg = _patch(background, (min(background.width, background.height),) * 2, rng).resize((canvas_w, SIZE))
    width = SIZE
    height = int(SIZE * float(rng.uniform(0.66, 0.8)))
    base_x, base_y = (
        int(rng.integers(SIZE // 12, canvas_w - width - SIZE // 6)),
        int(rng.integers(0, SIZE - height)),
    )
    move = int(rng.integers(6, 20))  # the plane's shift at its far (top) edge, px
    slope = float(rng.uniform(0.015, 0.05)) * (1 if rng.random() < 0.5 else -1)  # more shift per row nearer
    drift = int(rng.integers(-4, 5))
    layers = []
    for obj in objects[: int(rng.integers(1, 4))]:
        ow, oh = int(width * float(rng.uniform(0.3, 0.55))), int(height * float(rng.uniform(0.35, 0.7)))
        cut = _textured(obj, (ow, oh), rng)
        parallax = int(width * float(rng.uniform(0.04, 0.14)))
        x = int(rng.integers(parallax, max(parallax + 1, width - ow)))
        y = int(rng.integers(0, max(1, height - oh)))
        layers.append((cut, _blob((ow, oh), rng), x, y, parallax))
    views = []
    for v in (0, 1):
        # the view's pixel (x, y) shows the canvas at (base_x + x + v * (move + slope * y), base_y + y + v * drift)
        coeffs = (1, v * slope, base_x + v * move, 0, 1, base_y + v * drift)
        view = bg.transform((width, height), Image.Transform.AFFINE, coeffs, Image.Resampling.BICUBIC)
        for cut, mask, x, y, parallax in layers:
            view.paste(cut, (x - v * parallax, y), mask)
        views.append(view)
    what = f"move {move}px slope {slope:+.3f}, parallax " + ",".join(str(p[4]) for p in layers)
    return views[0], views[1], what


def _parts(
    name: str, photo: str, kind: str, img: Image.Image, n: int, rng: np.random.Generator
) -> Iterator[Pair]:
    """``n`` pairs of parts of ``img`` that share no pixel, each side mildly edited (as ``part_pairs``)."""
    fixed = [p for options in layouts(img.width, img.height).values() for p in options]
    for i in range(n):
        boxes = fixed[int(rng.integers(len(fixed)))] if i % 2 else random_parts(img.width, img.height, rng)
        a, b = mild(img.crop(boxes[0]), rng), mild(img.crop(boxes[1]), rng)
        yield Pair(kind, f"{name} {boxes} | {a.what} | {b.what}", False, True, photo, a.image, b.image)


def _copies(name: str, photo: str, img: Image.Image, n: int, rng: np.random.Generator) -> Iterator[Pair]:
    """``n`` copies of a synthetic image by the definition's edits (crop, re-encode, tone, combinations)."""
    edits = (crop, jpeg, tone, combined)
    for i in range(n):
        b: Edited = edits[i % len(edits)](img, rng)
        yield Pair("copy_synthetic", f"{name} | {b.what}", True, False, photo, img, b.image)


def synthetic_pairs(names: Sequence[str], counts: Counts, seed: int) -> Iterator[Pair]:
    """The synthetic hard negatives and their copies, from the photos ``names`` (the tuning split's)."""
    photos = {n: source(n) for n in names}
    per = max(1, counts.quadrants)  # pairs of each synthetic kind per source photo
    for name in names:
        rng = _rng(seed, name, "synthetic")
        wall = periodic(photos[name], rng)
        yield from _parts(f"periodic({name})", name, "texture_parts", wall, per, rng)
        yield from _copies(f"periodic({name})", name, wall, max(1, per // 2), rng)
        texture = cloned(photos[name], rng)
        yield from _parts(f"cloned({name})", name, "texture_parts", texture, per, rng)
        yield from _copies(f"cloned({name})", name, texture, max(1, per // 2), rng)
        others = [photos[o] for o in names if o != name]
        for _ in range(per):
            order = rng.permutation(len(others))
            a, b, what = scene_views(photos[name], [others[i] for i in order[:3]], rng)
            ea, eb = mild(a, rng), mild(b, rng)
            yield Pair(
                "same_scene",
                f"scene({name}) {what} | {ea.what} | {eb.what}",
                False,
                True,
                name,
                ea.image,
                eb.image,
            )
            yield Pair(
                "copy_synthetic", f"scene({name}) view | crop", True, False, name, a, crop(a, rng).image
            )
