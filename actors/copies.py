"""Copy verification: is one image an edited copy of the other, or do they merely look alike?

Embedding similarity finds pictures that *look* alike, which includes pictures that share no pixel: two
halves of one panorama, two patches of one brick wall. A copy is stricter: one image can be obtained from the
other by re-encoding, resizing, cropping that keeps at least half of the picture, mirroring, a rotation by a
few degrees, or a change of tone and colour. This module checks that definition for one candidate pair.

Method (classic local-feature verification, all in OpenCV):

1. :func:`features`, once per image: grayscale, scaled so the long side is :data:`LONG_SIDE` pixels (resizing
   is then invisible), ORB keypoints and 256-bit descriptors, for the image and for its mirror image (ORB
   descriptors are not mirror-invariant, and mirroring is one of the edits), and a small grayscale frame for
   step 4. The result serializes to at most 45.2 KB (:meth:`Features.to_bytes`: 2 x 400 keypoints x 36
   bytes, plus 128 x 128 pixels), so a pair check never decodes.
2. :func:`verify`, per candidate pair: nearest-neighbour descriptor matching with Lowe's ratio test (a match
   counts only when clearly better than the runner-up, which discards repeated texture), then RANSAC fits a
   similarity transform (rotation, uniform scale, translation: exactly what the edits do) to the matches.
   When that is no copy, the same is done with the first image mirrored, and the better of the two wins (a
   copy as it is never needs its mirror image tried: half the work for most copies).
3. The decision first uses what the transform says. ``inliers``: how many matches it explains (two pictures that
   share nothing get a handful by chance, a copy gets dozens to hundreds). ``coverage``: the area both
   frames share under the transform, as a fraction of the image it covers *least*: a crop keeping 60% of a
   photo covers all of the crop and 60% of the photo, so 0.6; two frames of a burst that overlap by a fifth
   score 0.2, however many matches their shared strip has. ``inlier_ratio``: the share of the reliable
   matches the transform explains (one transform explains nearly all of a copy's). A pair is a copy when
   all three reach their thresholds. A transform scaling by more than :data:`MAX_SCALE` is discarded
   outright: no edit of the definition does that between two frames of the same long side.
4. Then the pixels (:func:`agreement`): the first image's small frame (:data:`PIXEL_SIDE` px, kept in the
   features) is warped by the transform onto the second's, and the shared area is cut into blocks. A copy
   agrees everywhere: nearly every textured block correlates with its counterpart. Pictures that merely share
   *features* do not: two views of one scene (the background and the nearer objects move differently, so one
   transform aligns one and not the other), a brick wall's parts aligned on their mortar corners, a texture
   with a cloned patch. ``agreement`` is the share of textured blocks that correlate; a pair with too few
   textured blocks to say is decided on the keypoints alone (so are features stored before the frame was).

Why a similarity transform: it is what the edits do, and its 4 degrees of freedom leave chance matches
little room. On the tuning split (ratio 0.8, 5 px, 8 inliers, coverage 0.4) it kept 99.1% of the copies, a
full affine transform 99.6%, a homography 94.6% (its extra freedom bends the frame on few matches), all three
with no false positive; the similarity is also what makes ``coverage`` exact.

The thresholds below were chosen on the tuning split of ``ops/bench/copies.py`` only (source photos disjoint
from its evaluation split), by ``python -m ops.bench.copies --tune``. The pixel check (orb-2) came after the
first evaluation showed views of one scene, brick walls and a cloned texture passing the keypoint check; its
tuning data are synthetic cases of those kinds made from tuning photos only (``ops/bench/copy_synthetic.py``).
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, replace

import cv2
import numpy as np
from PIL import Image

# --- features (chosen on the tuning split only: frames of 384-640 px with 300-500 keypoints all separated it
# within a pair or two; this one kept the most copies at strict thresholds for its size)
LONG_SIDE = 384  # pixels of the frame's long side: enough detail for ORB, small enough to stay fast
MAX_KEYPOINTS = 400  # per variant (plain, mirrored): the strongest by ORB's Harris score
FAST_THRESHOLD = 8  # below ORB's 20, so low-contrast photos (moon, cells, a blurred clock) get corners

# --- decision (chosen on the tuning split only, by ``python -m ops.bench.copies --tune``) ----------------
RATIO = 0.8  # Lowe's ratio test: best match distance below this fraction of the second best
RANSAC_PX = 5.0  # reprojection tolerance, in pixels of the LONG_SIDE frame
MIN_INLIERS = 8  # matches the transform must explain; pictures sharing nothing got at most 5 on tuning
MIN_COVERAGE = 0.45  # shared area over the area of the image it covers least: a crop keeps half, less slack
MIN_INLIER_RATIO = 0.2  # inliers over the reliable matches: one transform explains nearly all of a copy's
MAX_SCALE = 3.0  # not tuned: frames share a long side and a crop keeps half, so a copy's scale is near 1..2

# --- the pixel check (orb-2; its threshold chosen on the tuning split and its synthetic cases only)
PIXEL_SIDE = 128  # long side of the small grayscale frame kept for it (at most 16 KB, ~12 KB for a 4:3 photo)
BLOCK = 8  # block side, pixels of that frame
MIN_BLOCK_STD = 4.0  # grey levels: a flatter block (sky, a wall, a filled border) says nothing either way
BLOCK_NCC = 0.5  # a block agrees when its normalized cross-correlation with its counterpart reaches this
MIN_BLOCKS = 8  # textured blocks needed for the check to count; fewer: the keypoints decide alone
MIN_AGREEMENT = 0.93  # share of textured blocks that agree

# what the copy checker (actors/copy_check.py) writes into a record it verified: a change of the features or
# the decision bumps it, and the reconciler queues every image checked by an older version again
COPY_CHECK_VERSION = "orb-2"

_MAGIC_V1 = b"CPF1"  # keypoints only (orb-1): still read, decided on the keypoints alone
_MAGIC = b"CPF2"  # keypoints, then the small frame
_HEADER = struct.Struct("<4sHHHH")  # magic, width, height, keypoints plain, keypoints mirrored
_PIXELS = struct.Struct("<HH")  # the small frame's width, height (CPF2)


@dataclass(frozen=True)
class Keypoints:
    """Keypoint positions (``float32 [n, 2]``, frame pixels) and ORB descriptors (``uint8 [n, 32]``)."""

    points: np.ndarray
    descriptors: np.ndarray

    def __len__(self) -> int:
        return int(self.points.shape[0])


@dataclass(frozen=True)
class Features:
    """What :func:`verify` needs of one image: its frame size, the keypoints of it and of its mirror, and
    its small grayscale frame (``uint8 [h, w]``, long side :data:`PIXEL_SIDE`; None in orb-1 features)."""

    width: int
    height: int
    plain: Keypoints
    mirrored: Keypoints
    pixels: np.ndarray | None = None

    def to_bytes(self) -> bytes:
        """Header, then per variant float16 positions and raw descriptors (36 bytes a keypoint), then the
        small frame's size and its raw bytes.

        float16 keeps a position within 0.25 px in a 384 px frame, far inside the RANSAC tolerance.
        """
        magic = _MAGIC if self.pixels is not None else _MAGIC_V1
        parts = [_HEADER.pack(magic, self.width, self.height, len(self.plain), len(self.mirrored))]
        for kp in (self.plain, self.mirrored):
            parts.append(kp.points.astype("<f2").tobytes())
            parts.append(np.ascontiguousarray(kp.descriptors, dtype=np.uint8).tobytes())
        if self.pixels is not None:
            h, w = self.pixels.shape
            parts += [_PIXELS.pack(w, h), np.ascontiguousarray(self.pixels, dtype=np.uint8).tobytes()]
        return b"".join(parts)

    @classmethod
    def from_bytes(cls, data: bytes) -> Features:
        """The inverse of :meth:`to_bytes`; ``ValueError`` for bytes it did not write."""
        if len(data) < _HEADER.size:
            raise ValueError("copy features: too short")
        magic, width, height, n_plain, n_mirrored = _HEADER.unpack_from(data)
        if magic not in (_MAGIC, _MAGIC_V1):
            raise ValueError("copy features: unknown format")
        keypoints_end = _HEADER.size + 36 * (n_plain + n_mirrored)
        pixels: np.ndarray | None = None
        if magic == _MAGIC:
            if len(data) < keypoints_end + _PIXELS.size:
                raise ValueError("copy features: wrong length")
            pw, ph = _PIXELS.unpack_from(data, keypoints_end)
            if len(data) != keypoints_end + _PIXELS.size + pw * ph:
                raise ValueError("copy features: wrong length")
            pixels = np.frombuffer(data, np.uint8, pw * ph, keypoints_end + _PIXELS.size).reshape(ph, pw)
        elif len(data) != keypoints_end:
            raise ValueError("copy features: wrong length")
        offset = _HEADER.size
        variants = []
        for n in (n_plain, n_mirrored):
            points = np.frombuffer(data, "<f2", 2 * n, offset).reshape(n, 2).astype(np.float32)
            offset += 4 * n
            descriptors = np.frombuffer(data, np.uint8, 32 * n, offset).reshape(n, 32)
            offset += 32 * n
            variants.append(Keypoints(points, descriptors))
        return cls(width, height, variants[0], variants[1], pixels)


@dataclass(frozen=True)
class Verdict:
    """The answer for one pair, with the scores it rests on.

    ``inliers``: matches the fitted transform explains (0 when none was found); ``mirrored``: the transform
    maps the mirror image of the first image onto the second; ``coverage``: shared area over the area of the
    image it covers least; ``inlier_ratio``: inliers over the reliable matches the transform was fitted to;
    ``agreement``: the share of textured blocks whose pixels agree under the transform (None: not measured,
    because the keypoints already said no, a side has no small frame, or too few blocks are textured).
    """

    is_copy: bool
    inliers: int
    mirrored: bool
    coverage: float
    inlier_ratio: float
    agreement: float | None = None


@dataclass(frozen=True)
class Thresholds:
    """The decision's parameters; :data:`DEFAULT` holds the module constants. The bench sweeps others."""

    ratio: float = RATIO
    ransac_px: float = RANSAC_PX
    min_inliers: int = MIN_INLIERS
    min_coverage: float = MIN_COVERAGE
    min_inlier_ratio: float = MIN_INLIER_RATIO
    min_agreement: float = MIN_AGREEMENT


DEFAULT = Thresholds()


# --- features --------------------------------------------------------------------------------------------


def frame(image: Image.Image, long_side: int = LONG_SIDE) -> np.ndarray:
    """The image as ``uint8 [h, w]`` grayscale with its long side scaled (up or down) to ``long_side``.

    A fixed scale makes a resized copy look the same as its original, and it bounds the work per image.
    """
    gray = image.convert("L")
    scale = long_side / max(gray.size)
    size = (max(1, round(gray.width * scale)), max(1, round(gray.height * scale)))
    if size != gray.size:
        gray = gray.resize(size, Image.Resampling.BILINEAR)
    return np.asarray(gray, dtype=np.uint8)


def keypoints(
    gray: np.ndarray, max_keypoints: int = MAX_KEYPOINTS, fast_threshold: int = FAST_THRESHOLD
) -> Keypoints:
    """ORB keypoints and descriptors of one grayscale frame (empty arrays when it has no corner at all)."""
    orb = cv2.ORB.create(nfeatures=max_keypoints, fastThreshold=fast_threshold)
    found, descriptors = orb.detectAndCompute(gray, np.zeros((0, 0), np.uint8))  # empty mask: all
    if descriptors is None or not found:
        return Keypoints(np.zeros((0, 2), np.float32), np.zeros((0, 32), np.uint8))
    points = np.array([kp.pt for kp in found], dtype=np.float32)
    return Keypoints(points, descriptors)


def features(
    image: Image.Image,
    long_side: int = LONG_SIDE,
    max_keypoints: int = MAX_KEYPOINTS,
    fast_threshold: int = FAST_THRESHOLD,
) -> Features:
    """Everything :func:`verify` needs of ``image``, computed once (the plain and the mirrored frame).

    The parameters other than ``image`` are for the tuning sweep; the pipeline uses the module constants.
    """
    gray = frame(image, long_side)
    height, width = gray.shape
    mirrored = np.ascontiguousarray(gray[:, ::-1])
    k = PIXEL_SIDE / long_side
    small = (max(1, round(width * k)), max(1, round(height * k)))
    return Features(
        width,
        height,
        keypoints(gray, max_keypoints, fast_threshold),
        keypoints(mirrored, max_keypoints, fast_threshold),
        cv2.resize(gray, small, interpolation=cv2.INTER_AREA),
    )


# --- verification ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Fit:
    """A similarity transform from the first frame to the second, and the matched points it explains."""

    matrix: np.ndarray  # float64 [2, 3]
    src: np.ndarray  # inlier points in the first frame
    dst: np.ndarray  # the same inliers in the second frame
    matches: int  # the reliable matches the transform was fitted to


def _matches(a: Keypoints, b: Keypoints, ratio: float) -> tuple[np.ndarray, np.ndarray]:
    """Point pairs whose descriptors are mutual best matches and pass the ratio test."""
    if len(a) < 2 or len(b) < 2:
        empty = np.zeros((0, 2), np.float32)
        return empty, empty
    matcher = cv2.BFMatcher(cv2.NORM_HAMMING)
    forward = matcher.knnMatch(a.descriptors, b.descriptors, k=2)
    backward = matcher.match(b.descriptors, a.descriptors)
    best_for_b = {m.queryIdx: m.trainIdx for m in backward}
    pairs = [
        (m.queryIdx, m.trainIdx)
        for m, n in (p for p in forward if len(p) == 2)
        if m.distance < ratio * n.distance and best_for_b.get(m.trainIdx) == m.queryIdx
    ]
    if not pairs:
        empty = np.zeros((0, 2), np.float32)
        return empty, empty
    ia, ib = np.array(pairs).T
    return a.points[ia], b.points[ib]


def _fit(src: np.ndarray, dst: np.ndarray, ransac_px: float) -> _Fit | None:
    """RANSAC similarity transform ``src -> dst``; None when there are too few matches or no model."""
    if len(src) < 3:
        return None
    matrix, mask = cv2.estimateAffinePartial2D(
        src, dst, method=cv2.RANSAC, ransacReprojThreshold=ransac_px, maxIters=2000, confidence=0.995
    )
    if matrix is None or mask is None:
        return None
    scale = math.sqrt(abs(float(np.linalg.det(matrix[:, :2]))))
    if not 1 / MAX_SCALE <= scale <= MAX_SCALE:
        return None  # a chance model: no edit of the definition scales that much
    keep = mask.ravel().astype(bool)
    return _Fit(matrix, src[keep], dst[keep], len(src))


def _rectangle(width: int, height: int) -> np.ndarray:
    return np.array([[0, 0], [width, 0], [width, height], [0, height]], dtype=np.float32)


def _coverage(fit: _Fit, a: Features, b: Features) -> float:
    """The area both frames share under the transform, as a fraction of the frame it covers least."""
    corners = cv2.transform(_rectangle(a.width, a.height)[None], fit.matrix)[0]
    shared, _ = cv2.intersectConvexConvex(corners, _rectangle(b.width, b.height))
    area_factor = abs(float(np.linalg.det(fit.matrix[:, :2])))  # a's areas, measured in b's frame
    if shared <= 0 or area_factor <= 0:
        return 0.0
    of_b = shared / (b.width * b.height)
    of_a = shared / area_factor / (a.width * a.height)
    return float(min(of_a, of_b, 1.0))


def agreement(fit: _Fit, a: Features, b: Features, mirrored: bool) -> float | None:
    """The share of textured blocks of the shared area whose pixels agree when ``a``'s small frame is warped
    onto ``b``'s by the fitted transform; None when a side has no small frame or too few blocks are textured.

    Agreement is normalized cross-correlation per :data:`BLOCK`-pixel block, so tone, contrast and a re-encode
    keep it; a block is left out when either side is flat (it says nothing). Its magnitude counts, since a
    change of hue can turn a block's light-dark order round without moving anything.
    """
    if a.pixels is None or b.pixels is None:
        return None
    source = np.ascontiguousarray(a.pixels[:, ::-1]) if mirrored else a.pixels
    matrix = fit.matrix.copy()
    matrix[:, 2] *= b.pixels.shape[1] / b.width  # both frames shrink by the same factor: the shift scales
    h, w = b.pixels.shape
    warped = cv2.warpAffine(source.astype(np.float32), matrix, (w, h), flags=cv2.INTER_LINEAR)
    inside = cv2.warpAffine(np.full(source.shape, 255, np.uint8), matrix, (w, h), flags=cv2.INTER_NEAREST)
    inside = cv2.erode(inside, np.ones((3, 3), np.uint8))  # interpolation blurs the frame's edge
    hb, wb = h // BLOCK, w // BLOCK
    if hb == 0 or wb == 0:
        return None

    def blocks(img: np.ndarray) -> np.ndarray:
        cut = img[: hb * BLOCK, : wb * BLOCK].astype(np.float32)
        return cut.reshape(hb, BLOCK, wb, BLOCK).transpose(0, 2, 1, 3).reshape(hb * wb, BLOCK * BLOCK)

    p, q, valid = blocks(warped), blocks(b.pixels), blocks(inside).min(axis=1) > 0
    sp, sq = p.std(axis=1), q.std(axis=1)
    textured = valid & (sp >= MIN_BLOCK_STD) & (sq >= MIN_BLOCK_STD)
    if int(textured.sum()) < MIN_BLOCKS:
        return None
    p, q = p[textured], q[textured]
    ncc = ((p - p.mean(axis=1, keepdims=True)) * (q - q.mean(axis=1, keepdims=True))).mean(axis=1)
    ncc /= sp[textured] * sq[textured]
    return float(np.mean(np.abs(ncc) >= BLOCK_NCC))


def _score(a: Features, b: Features, mirrored: bool, t: Thresholds) -> Verdict:
    """Match one variant of ``a`` (plain or mirrored) against ``b`` and measure the fitted transform; the
    pixels are compared only when the keypoints say copy (the check costs a warp)."""
    src, dst = _matches(a.mirrored if mirrored else a.plain, b.plain, t.ratio)
    fit = _fit(src, dst, t.ransac_px)
    if fit is None:
        return Verdict(False, 0, mirrored, 0.0, 0.0)
    inliers = len(fit.src)
    scores = Verdict(False, inliers, mirrored, _coverage(fit, a, b), inliers / fit.matches)
    if decide(scores, t):
        scores = replace(scores, agreement=agreement(fit, a, b, mirrored))
    return replace(scores, is_copy=decide(scores, t))


def decide(v: Verdict, t: Thresholds = DEFAULT) -> bool:
    """The decision on a pair's scores (see the module docstring); an unmeasured agreement does not count."""
    return (
        v.inliers >= t.min_inliers
        and v.coverage >= t.min_coverage
        and v.inlier_ratio >= t.min_inlier_ratio
        and (v.agreement is None or v.agreement >= t.min_agreement)
    )


def verify(a: Features, b: Features, thresholds: Thresholds = DEFAULT) -> Verdict:
    """Whether ``a`` and ``b`` are copies of each other (see the module docstring), with the scores.

    ``a`` as it is first; when that is no copy, ``a`` mirrored too, and the orientation whose transform explains
    more matches wins.
    """
    plain = _score(a, b, False, thresholds)
    if plain.is_copy:
        return plain
    mirrored = _score(a, b, True, thresholds)
    return mirrored if mirrored.inliers > plain.inliers else plain
