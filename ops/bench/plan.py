"""How big each benchmark is: the quick default (`make bench`, under 20 minutes on 2 cores once the realistic
vectors are cached), ``--full`` (500 images per ingest run, more queries), ``--large`` (1M realistic vectors: the
first run embeds them for hours) and the CI smoke size."""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Plan:
    name: str
    reps: int = 3
    uploaders: int = 16
    ingest_clip_n: int = 64
    ingest_default_n: int = 160
    triton_clip_n: int = 48
    triton_default_n: int = 192
    triton_concurrency: int = 32
    preprocess_n: int = 30
    realistic_n: int = 100_000  # vectors in the query index (the default model's, ops/bench/realistic.py)
    tune_queries: int = 200  # held-out queries that choose the shipped EF_RUNTIME
    eval_queries: int = 300  # other held-out queries: every query figure
    upload_n: int = 150
    upload_concurrency: int = 16
    profile: bool = True
    profile_n: int = 32
    sibling_photos: int = 8  # of ops/photos.py's PHOTOS (5 images each)
    image_size: tuple[int, int] = (1024, 768)
    label_copies: int = 9  # variants of each photo with a known ImageNet class (ops/bench/labels.py)
    label_distractor_copies: int = 3  # variants of each other photo
    copies_size: str = "full"  # the copy-detection evaluation set (ops/bench/copies.py): "full" or "reduced"


QUICK = Plan("quick")
FULL = replace(
    QUICK,
    name="full",
    ingest_clip_n=500,
    ingest_default_n=500,
    triton_clip_n=256,
    triton_default_n=512,
    eval_queries=500,
    upload_n=500,
)
LARGE = replace(FULL, name="large", realistic_n=1_000_000)
SMOKE = Plan(
    "smoke",
    reps=1,
    uploaders=4,
    ingest_clip_n=12,
    ingest_default_n=12,
    triton_clip_n=16,
    triton_default_n=16,
    triton_concurrency=8,
    preprocess_n=4,
    realistic_n=1_000,
    tune_queries=20,
    eval_queries=20,
    upload_n=12,
    upload_concurrency=4,
    profile=False,
    sibling_photos=3,
    image_size=(512, 384),
    label_copies=3,
    label_distractor_copies=1,
    copies_size="reduced",
)
