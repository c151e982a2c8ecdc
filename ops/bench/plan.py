"""How big each benchmark is: the quick default (`make bench`, under 20 minutes on 2 cores), ``--full``
(the issue's sizes: 500 images per ingest run), ``--large`` (adds 1M vectors) and the CI smoke size."""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Plan:
    name: str
    reps: int = 3
    uploaders: int = 16
    ingest_clip_n: int = 64
    ingest_default_n: int = 160
    baseline_batch: int = 16
    triton_clip_n: int = 48
    triton_default_n: int = 192
    triton_concurrency: int = 32
    preprocess_n: int = 30
    query_sizes_512: tuple[int, ...] = (10_000, 100_000)
    query_main_n: int = 100_000  # the size the summary's query figures are taken at
    query_n_1280: int = 10_000  # --full: 100k (a 100k HNSW build takes ~4 min here)
    n_queries: int = 150
    upload_n: int = 150
    upload_concurrency: int = 16
    profile: bool = True
    profile_n: int = 32
    sibling_photos: int = 8  # of ops/photos.py's PHOTOS (5 images each)
    image_size: tuple[int, int] = (1024, 768)


QUICK = Plan("quick")
FULL = replace(
    QUICK,
    name="full",
    ingest_clip_n=500,
    ingest_default_n=500,
    triton_clip_n=256,
    triton_default_n=512,
    query_n_1280=100_000,
    n_queries=500,
    upload_n=500,
)
LARGE = replace(FULL, name="large", query_sizes_512=(10_000, 100_000, 1_000_000))
SMOKE = Plan(
    "smoke",
    reps=1,
    uploaders=4,
    ingest_clip_n=12,
    ingest_default_n=12,
    baseline_batch=4,
    triton_clip_n=16,
    triton_default_n=16,
    triton_concurrency=8,
    preprocess_n=4,
    query_sizes_512=(2_000, 5_000),
    query_main_n=5_000,
    query_n_1280=2_000,
    n_queries=20,
    upload_n=12,
    upload_concurrency=4,
    profile=False,
    sibling_photos=3,
    image_size=(512, 384),
)
