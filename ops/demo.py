"""``mesh demo``: a first look at a running mesh, with the photos that ship inside scikit-image (no download).

The demo writes the photos (``ops.photos``: PHOTOS in colour, GREY_PHOTOS in grey) as JPEGs into a folder of
the user's cache (``$XDG_CACHE_HOME/mesh/demo``, by default ``~/.cache/mesh/demo``; ``--dir`` names another),
plus two altered copies (a cropped cat, a recoloured coffee cup) so that ``mesh duplicates`` has something
to find. Then it ingests the folder the way ``mesh ingest --wait`` does (resumable: a second ``mesh demo``
uploads nothing), and prints a few commands to try on the result.

This module makes the photos and the suggestions; ``ops.cli`` runs the ingest and prints (it imports this
module, never the other way round). scikit-image is a dev dependency: without it the demo says how to get it.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping
from pathlib import Path

# (photo, alteration of ops.photos.ALTERATIONS): near-duplicates of two demo photos
ALTERED = (("chelsea", "crop"), ("coffee", "colour"))
METADATA = {"source": "scikit-image"}  # every demo upload carries it: `mesh search ... --filter source:...`


class PhotosUnavailable(RuntimeError):
    """scikit-image (which ships the photos) is not installed."""


def default_folder(env: Mapping[str, str] = os.environ) -> Path:
    """Where the demo photos go: ``$XDG_CACHE_HOME/mesh/demo``, else ``~/.cache/mesh/demo``."""
    xdg = env.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path(env.get("HOME") or Path.home()) / ".cache"
    return base / "mesh" / "demo"


def file_names() -> list[str]:
    """The demo's file names, in the order they are written: the photos, then the altered copies."""
    from ops.photos import GREY_PHOTOS, PHOTOS

    return [f"{name}.jpg" for name in (*PHOTOS, *GREY_PHOTOS)] + [f"{n}-{alt}.jpg" for n, alt in ALTERED]


def write_photos(folder: Path) -> list[Path]:
    """Write the demo JPEGs into ``folder`` (created), each only when it is missing: a rerun leaves the files
    (and their mtimes, so the ingest state skips them without hashing) as they are. Returns every file.

    Raises :class:`PhotosUnavailable` without scikit-image, ``OSError`` when the folder is not writable.
    """
    try:
        import skimage.data  # noqa: F401  # only to say early and clearly what is missing
    except ImportError as e:
        raise PhotosUnavailable(
            "mesh demo uses the photos that ship with scikit-image, which is not installed: "
            "pip install scikit-image (it comes with the dev extra: pip install -e '.[dev]')"
        ) from e
    from ops.photos import ALTERATIONS, jpeg, photo

    folder.mkdir(parents=True, exist_ok=True)
    names = file_names()
    paths = [folder / name for name in names]
    for path in paths:
        if path.exists():
            continue
        stem = path.stem
        base, _, alteration = stem.partition("-")
        img = photo(base)
        if alteration:
            img = ALTERATIONS[alteration](img)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(jpeg(img, quality=92))  # not the bytes the tests upload (they would be duplicates)
        tmp.replace(path)
    return paths


def example_commands(images: Mapping[str, str], folder: Path) -> list[tuple[str, str]]:
    """(command, what it shows) to try after the demo, with real image ids from ``images`` (file -> id)."""
    cat = images.get("chelsea.jpg", "IMAGE_ID")
    coffee_file = shlex.quote(str(folder / "coffee.jpg"))
    return [
        (f"mesh similar {cat}", "the stored photos most like the cat (its cropped copy first)"),
        (f"mesh search --image {coffee_file}", "search by a local file, without storing it"),
        ("mesh search cat", "search by words (the model's labels, or CLIP's text tower)"),
        ("mesh duplicates", "near-duplicate groups: the cropped cat, the recoloured coffee"),
        (f"mesh status {cat}", "an image's record and history"),
        ("mesh models", "the models, which one is active, a switch's progress"),
    ]
