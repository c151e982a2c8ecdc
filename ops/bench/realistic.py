"""Realistic vectors for recall: the default model's embeddings of composites of scikit-image's photos, cached.

Random vectors (or clustered low-rank ones) say little about an HNSW index's recall on real embeddings, so the
query benchmark indexes what the mesh would index: the pretrained default model's vectors of photographs. No
corpus of photos ships with a registry package here, so the photographs are composites of the ones inside
scikit-image (``ops/photos.py``): random crops at random scales and aspect ratios, rotations, flips, 2x2 and
1x2 mosaics of crops of different photos, colour gain, saturation, contrast, greyscale, blur and noise. Image
``i`` depends only on ``(seed, i)``, so any prefix of the sequence is the same images whatever its length.

Each composite goes through the coordinator's preprocessing (``actors.preprocess.to_pixels`` with the model's
spec) and in-process ONNX Runtime on the model's ONNX file (the file Triton serves): a thread pool makes the
pixels while ONNX Runtime embeds the previous batch. The vectors are cached under the work directory, keyed by
the model file's sha256, the spec and ``GENERATOR_VERSION``: a later run reads them back (a longer run
embeds only the images the cache lacks). A JSON file beside the vectors records what the embedding cost.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

from actors import preprocess
from actors.contract import PreprocessSpec

GENERATOR_VERSION = 1
OUT_SIDE = 256  # a composite's shorter side is 256-288 pixels; it is then preprocessed like an upload
GREY = ("camera", "moon", "coins", "brick", "grass", "gravel", "page", "text", "cell", "clock")
COLOUR = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "colorwheel",
    "logo",
)


@cache
def sources() -> tuple[tuple[Image.Image, ...], tuple[Image.Image, ...]]:
    """The photos (RGB, longest side at most 640) and the 200 small face crops of ``lfw_subset``."""
    import skimage.data  # a dev dependency, like the benchmarks

    photos: list[Image.Image] = []
    for name in (*COLOUR, *GREY, "stereo_motorcycle"):
        arr = getattr(skimage.data, name)()
        for a in arr[:2] if isinstance(arr, tuple) else (arr,):
            img = Image.fromarray(np.asarray(a)).convert("RGB")
            if max(img.size) > 640:
                img.thumbnail((640, 640), Image.Resampling.BILINEAR)
            photos.append(img)
    faces = skimage.data.lfw_subset()
    face_imgs = tuple(Image.fromarray((f * 255).astype(np.uint8)).convert("RGB") for f in faces)
    return tuple(photos), face_imgs


@cache
def _noise() -> np.ndarray:
    return np.random.default_rng(7).normal(0, 6, (OUT_SIDE + 96, OUT_SIDE + 192, 3)).astype(np.int16)


def _crop(rng: np.random.Generator, src: Image.Image, size: tuple[int, int]) -> Image.Image:
    """A random crop of ``src`` (10-100 % of its shorter side, aspect 3:4..4:3), maybe rotated or flipped."""
    w, h = src.size
    side = min(w, h) * float(rng.uniform(0.1, 1.0))
    aspect = float(rng.uniform(0.75, 1.33))
    cw, ch = max(8, min(w, int(side * aspect))), max(8, min(h, int(side / aspect)))
    x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    img = src.resize(size, Image.Resampling.BOX, box=(x0, y0, x0 + cw, y0 + ch))
    if rng.random() < 0.3:
        img = img.rotate(float(rng.uniform(-35, 35)), Image.Resampling.BILINEAR, expand=False)
    if rng.random() < 0.5:
        img = ImageOps.mirror(img)
    return img


def _colour(rng: np.random.Generator, img: Image.Image) -> Image.Image:
    if rng.random() < 0.1:
        return ImageOps.grayscale(img).convert("RGB")
    arr = np.asarray(img, dtype=np.float32)
    gain = rng.uniform(0.7, 1.3, 3).astype(np.float32)
    arr = arr * gain * float(rng.uniform(0.7, 1.25))
    out = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    out = ImageEnhance.Color(out).enhance(float(rng.uniform(0.4, 1.6)))
    return ImageEnhance.Contrast(out).enhance(float(rng.uniform(0.7, 1.4)))


def composite(seed: int, i: int) -> Image.Image:
    """Composite ``i`` of the sequence ``seed``: an RGB image a little larger than ``OUT_SIDE``."""
    photos, faces = sources()
    rng = np.random.default_rng([seed, i])
    w = OUT_SIDE + int(rng.integers(0, 129))
    h = OUT_SIDE + int(rng.integers(0, 33))

    def tile(size: tuple[int, int]) -> Image.Image:
        pool = faces if rng.random() < 0.1 else photos
        return _crop(rng, pool[int(rng.integers(0, len(pool)))], size)

    layout = rng.random()
    if layout < 0.6:
        img = tile((w, h))
    elif layout < 0.8:  # two crops side by side
        img = Image.new("RGB", (w, h))
        img.paste(tile((w // 2, h)), (0, 0))
        img.paste(tile((w - w // 2, h)), (w // 2, 0))
    else:  # a 2x2 mosaic
        img = Image.new("RGB", (w, h))
        xs, ys = (0, w // 2, w), (0, h // 2, h)
        for x in (0, 1):
            for y in (0, 1):
                img.paste(tile((xs[x + 1] - xs[x], ys[y + 1] - ys[y])), (xs[x], ys[y]))
    img = _colour(rng, img)
    if rng.random() < 0.15:
        img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.5, 2.0))))
    if rng.random() < 0.3:  # sensor-like noise: a window of one fixed noise field
        dx, dy = int(rng.integers(0, 64)), int(rng.integers(0, 64))
        arr = np.asarray(img, dtype=np.int16) + _noise()[dy : dy + h, dx : dx + w]
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    return img


def _pixels(spec: PreprocessSpec, seed: int, i: int) -> np.ndarray:
    return preprocess.to_pixels(composite(seed, i), spec)


def embed_range(
    session: Any, spec: PreprocessSpec, start: int, stop: int, seed: int = 0, batch: int = 32
) -> np.ndarray:
    """The embeddings of composites ``start..stop``: a thread per core makes the next batch's pixels while
    ONNX Runtime embeds this one."""
    name = session.get_inputs()[0].name
    out: list[np.ndarray] = []
    with ThreadPoolExecutor(os.cpu_count() or 2, thread_name_prefix="composite") as pool:

        def submit(lo: int) -> list[Future[np.ndarray]]:
            return [pool.submit(_pixels, spec, seed, i) for i in range(lo, min(stop, lo + batch))]

        lo, current = start, submit(start)
        while current:
            lo += batch
            following = submit(lo) if lo < stop else []
            px = np.stack([f.result() for f in current])
            out.append(np.asarray(session.run(None, {name: px})[0], dtype=np.float32))
            current = following
    return np.concatenate(out) if out else np.empty((0, 0), dtype=np.float32)


def _chunks(start: int, stop: int, size: int) -> Iterator[tuple[int, int]]:
    for lo in range(start, stop, size):
        yield lo, min(stop, lo + size)


@dataclass(frozen=True)
class Vectors:
    """``n`` embeddings and where they came from: ``cached`` (read back, nothing embedded), ``embed_s``
    (seconds this run spent embedding) and ``first_embed`` (what the cache's first fill cost, from its JSON)."""

    vectors: np.ndarray
    path: Path
    cached: bool
    embed_s: float
    first_embed: dict[str, Any]


def cache_key(model_file: Path, spec: PreprocessSpec, seed: int) -> str:
    h = hashlib.sha256()
    with model_file.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    h.update(json.dumps([GENERATOR_VERSION, seed, spec.resize, spec.crop, spec.resample]).encode())
    h.update(spec.channel_order.encode())
    return h.hexdigest()[:20]


def _save(path: Path, vectors: np.ndarray, runs: list[dict[str, Any]], seed: int) -> dict[str, Any]:
    """Write the vectors and their JSON (what filling the cache cost) atomically; returns the JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, vectors)
    tmp.replace(path)
    meta = {
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "n": len(vectors),
        "runs": runs,
        "embed_seconds_total": round(sum(r["seconds"] for r in runs), 1),
        "cores": os.cpu_count(),
    }
    path.with_suffix(".json").write_text(json.dumps(meta, indent=1) + "\n")
    return meta


def realistic_vectors(
    model_file: Path, spec: PreprocessSpec, n: int, cache_dir: Path, seed: int = 0, batch: int = 32
) -> Vectors:
    """The first ``n`` composites' embeddings, read from the cache or embedded (only the rows it lacks)."""
    from ops.bench.ingest import ort_session

    key = cache_key(model_file, spec, seed)
    path = cache_dir / f"realistic-{key}.npy"
    meta_path = path.with_suffix(".json")
    have = np.load(path, mmap_mode="r") if path.exists() else None
    meta: dict[str, Any] = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    if have is not None and len(have) >= n:
        return Vectors(np.array(have[:n]), path, True, 0.0, meta)
    start = 0 if have is None else len(have)
    session = ort_session(model_file)
    t0 = time.perf_counter()
    vectors = np.empty((0, 0), dtype=np.float32) if have is None else np.array(have)
    del have
    runs = list(meta.get("runs", []))
    seconds = 0.0
    for lo, hi in _chunks(start, n, 20_000):
        part = embed_range(session, spec, lo, hi, seed, batch)
        vectors = np.concatenate([vectors, part]) if len(vectors) else part
        seconds = time.perf_counter() - t0
        # saved after every chunk: an interrupted first run keeps what it embedded
        meta = _save(path, vectors, [*runs, {"from": start, "to": hi, "seconds": round(seconds, 1)}], seed)
        print(
            f"[bench] realistic vectors: {hi} of {n} embedded ({(hi - start) / seconds:.0f}/s), in {path}",
            flush=True,
        )
    return Vectors(vectors, path, False, seconds, meta)
