"""ensure_models and the export CLI: whole model folders, a fast no-op when complete, exact ONNX exports."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch

from ops.models.__main__ import main
from ops.models.repository import BACKEND_MODEL, ModelRepositoryError, ensure_models, is_complete
from tests.conftest import test_settings


def test_ensure_models_exports_once_then_is_a_fast_no_op(tmp_path: Path) -> None:
    s = test_settings(tmp_path, model_repository=tmp_path / "repo")
    assert ensure_models(s) == ["efficientnet_lite0"]
    folder = tmp_path / "repo" / "efficientnet_lite0"
    assert {"config.pbtxt", "1/model.py", "1/model.onnx", "export.json"} <= {
        str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()
    }
    t0 = time.perf_counter()
    assert ensure_models(s) == []
    assert time.perf_counter() - t0 < 0.5

    # a model exported before the backend changed gets the new model.py, and keeps its weights
    (folder / "1" / "model.py").write_text("# an older backend\n")
    onnx_mtime = (folder / "1" / "model.onnx").stat().st_mtime_ns
    assert ensure_models(s) == ["efficientnet_lite0"]
    assert (folder / "1" / "model.py").read_text() == BACKEND_MODEL.read_text()
    assert (folder / "1" / "model.onnx").stat().st_mtime_ns == onnx_mtime
    assert ensure_models(s) == []

    (folder / "1" / "model.onnx").unlink()  # a half-deleted folder is made whole again
    assert not is_complete(folder)
    assert ensure_models(s) == ["efficientnet_lite0"]
    assert is_complete(folder)

    # a folder it cannot make would stop Triton at start-up: refuse it with a clear message
    (tmp_path / "repo" / "stray" / "1").mkdir(parents=True)
    (tmp_path / "repo" / "stray" / "config.pbtxt").write_text('name: "stray"\n')
    with pytest.raises(ModelRepositoryError, match="stray"):
        ensure_models(s)


def test_efficientnet_onnx_matches_pytorch(tmp_path: Path) -> None:
    from ops.models import efficientnet

    assert main(["export", "efficientnet", "--target", "gpu", "--repository", str(tmp_path)]) == 0
    onnx_path = tmp_path / "efficientnet_lite0" / "1" / "model.onnx"
    committed = Path(__file__).parents[2] / "model_repository/gpu/efficientnet_lite0/config.pbtxt"
    assert (tmp_path / "efficientnet_lite0" / "config.pbtxt").read_text() == committed.read_text()
    pixels = np.random.default_rng(0).integers(0, 256, (3, 224, 224, 3), dtype=np.uint8)
    with torch.no_grad():
        ref, ref_probs = (t.numpy() for t in efficientnet.build()(torch.from_numpy(pixels)))
    # independent of the folded normalization: the network on x/127.5 - 1, mean-pooled, normalized; its own
    # forward (pool, dropout off, linear head) and a softmax for the probabilities
    with torch.no_grad():
        x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        net: Any = efficientnet.load_network()
        f = net.extract_features(x).mean(dim=(2, 3))
        manual = torch.nn.functional.normalize(f, dim=-1).numpy()
        manual_probs = torch.softmax(net(x), dim=-1).numpy()
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["EMBEDDING", "PROBS"]
    got, probs = session.run(None, {"IMAGE": pixels})
    assert got.shape == (3, 1280) and probs.shape == (3, 1000)
    assert np.abs(got - ref).max() < 1e-4 and np.abs(manual - ref).max() < 1e-4
    assert np.abs(np.linalg.norm(got, axis=1) - 1).max() < 1e-4
    assert np.abs(probs - ref_probs).max() < 1e-4 and np.abs(manual_probs - ref_probs).max() < 1e-4
    assert np.abs(probs.sum(axis=1) - 1).max() < 1e-4


def test_vit_b32_sized_random_clip_has_the_real_models_size(tmp_path: Path) -> None:
    from transformers import CLIPModel

    from ops.models.clip import make_tokenizer, random_config

    config = random_config("vit-b32", make_tokenizer(tmp_path / "tok"))
    with torch.device("meta"):
        model = CLIPModel(config)
    n = sum(p.numel() for p in model.parameters())
    assert abs(n - 151_277_313) < 10_000  # openai/clip-vit-base-patch32
    assert (config.projection_dim, config.vision_config.patch_size, config.vision_config.image_size) == (
        512,
        32,
        224,
    )
    shutil.rmtree(tmp_path / "tok")
