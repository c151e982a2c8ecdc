"""The models served by the local CPU Triton, called through the ``Embedder``.

The repository is exported into a temporary folder by ``ensure_models``: the real EfficientNet-Lite0 weights,
and a random-weight CLIP saved with ``save_pretrained`` and loaded back through ``CLIPModel.from_pretrained``.
Triton is started by the same code as ``make run``."""

from __future__ import annotations

import asyncio
import io
import os
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import torch
from PIL import Image

from actors.adapters.embedder import (
    Embedder,
    EmbedderError,
    EmbedderException,
    EmbedderUnavailable,
    ModelNotFound,
)
from actors.preprocess import decode_image, to_pixels
from actors.settings import Settings
from ops.models.repository import ensure_models, manifest
from ops.stack.supervisor import Stack
from tests.conftest import free_port
from tests.helpers import running_stack, test_settings

EFFICIENTNET, CLIP_IMAGE, CLIP_TEXT = "efficientnet_lite0", "clip_image", "clip_text"
TEXTS = ["a photo of a cat", "Two RED bicycles near the sea!", "astronaut", ""]


def _shm() -> set[str]:
    return set(os.listdir("/dev/shm"))


def _in_use(name: str) -> bool:
    target = f"/dev/shm/{name}"
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/maps") as f:
                if target in f.read():
                    return True
        except OSError:
            continue
    return False


@pytest.fixture(scope="module")
def triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Triton alone, over a repository exported for this module (efficientnet_lite0 + the test CLIP)."""
    data = tmp_path_factory.mktemp("models")
    models: dict[str, object] = {"model_repository": data / "repo", "models": "efficientnet_lite0,clip"}
    assert sorted(ensure_models(test_settings(data, **models))) == [CLIP_IMAGE, CLIP_TEXT, EFFICIENTNET]
    shm_before = _shm()
    try:
        # a model that fails to load keeps Triton "loading": never wait forever
        with running_stack(data, only=("triton",), export_models=False, timeout_s=90, **models) as stack:
            yield stack
    finally:
        # a Python-backend stub that died leaves its shared-memory region behind: remove only ours
        for name in _shm() - shm_before:
            if name.startswith("triton_python_backend") and not _in_use(name):
                Path("/dev/shm", name).unlink(missing_ok=True)


@pytest.fixture(scope="module")
def settings(triton: Stack) -> Settings:
    return triton.settings


@pytest.fixture(scope="module")
async def embedder(settings: Settings) -> AsyncIterator[Embedder]:
    async with Embedder.from_settings(settings) as e:
        yield e


@pytest.fixture(scope="module")
def clip_checkpoint(settings: Settings) -> Path:
    """The random CLIP folder ensure_models saved with save_pretrained and exported from."""
    folder = settings.data_dir.resolve() / "models" / "clip-random-tiny"
    assert (folder / "model.safetensors").exists() and (folder / "tokenizer.json").exists()
    return folder


@pytest.fixture(scope="module")
def clip_torch(clip_checkpoint: Path) -> tuple[object, object]:
    from transformers import CLIPModel, CLIPTokenizer

    model = CLIPModel.from_pretrained(str(clip_checkpoint)).eval()
    return model, CLIPTokenizer.from_pretrained(str(clip_checkpoint))


def repo(settings: Settings) -> Path:
    return settings.model_repository


def onnx_session(settings: Settings, model: str) -> ort.InferenceSession:
    return ort.InferenceSession(
        str(repo(settings) / model / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )


def photo(name: str) -> Image.Image:
    import skimage.data

    arr = getattr(skimage.data, name)()
    arr = arr[0] if isinstance(arr, tuple) else arr
    return Image.fromarray(arr).convert("RGB")


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


# --- every model is served --------------------------------------------------------------------------------
async def test_every_model_of_the_repository_is_ready_and_batched(
    embedder: Embedder, settings: Settings
) -> None:
    models = sorted(p.name for p in repo(settings).iterdir() if p.is_dir())
    assert models == [CLIP_IMAGE, CLIP_TEXT, EFFICIENTNET]
    assert await embedder.ready()
    for model in models:
        assert await embedder.ready(model), model
        config = (await embedder.client.get_model_config(model, as_json=True))["config"]
        assert config["dynamic_batching"]["preferred_batch_size"], model
        assert config["dynamic_batching"]["default_queue_policy"]["max_queue_size"] > 0
        info = await embedder.model_info(model)
        declared = onnx_session(settings, model).get_outputs()[0].shape[-1]
        assert info.dim == declared == int(config["output"][0]["dims"][-1])
    assert (await embedder.model_info(EFFICIENTNET)).dim == 1280


@pytest.mark.parametrize("model", [EFFICIENTNET, CLIP_IMAGE])
async def test_image_model_matches_onnxruntime_in_process(
    embedder: Embedder, settings: Settings, model: str
) -> None:
    spec = await embedder.preprocess_spec(model)
    session = onnx_session(settings, model)
    for name in ("astronaut", "coffee"):
        pixels = to_pixels(photo(name), spec)
        got = await embedder.embed_image(model, pixels)
        want = session.run(None, {"IMAGE": pixels[None]})[0][0]
        assert got.dtype == np.float32 and got.shape == want.shape
        assert abs(float(np.linalg.norm(got)) - 1) < 1e-4
        assert float(np.abs(got - want).max()) < 1e-4


async def test_text_model_matches_onnxruntime_in_process(embedder: Embedder, settings: Settings) -> None:
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(str(repo(settings) / CLIP_TEXT / "1" / "tokenizer"))
    session = onnx_session(settings, CLIP_TEXT)
    for text in TEXTS:
        enc = tok([text], padding="max_length", max_length=77, truncation=True, return_tensors="np")
        want = session.run(None, {"INPUT_IDS": enc["input_ids"], "ATTENTION_MASK": enc["attention_mask"]})[0][
            0
        ]
        got = await embedder.embed_text(CLIP_TEXT, text)
        assert abs(float(np.linalg.norm(got)) - 1) < 1e-4
        assert float(np.abs(got - want).max()) < 1e-4


# --- CLIP export is exact -----------------------------------------------------------------------------------
async def test_clip_towers_match_pytorch(
    embedder: Embedder, settings: Settings, clip_checkpoint: Path, clip_torch: tuple
) -> None:
    model, tok = clip_torch
    assert manifest(repo(settings) / CLIP_IMAGE)["source"] == "random:tiny"  # type: ignore[index]
    spec = await embedder.preprocess_spec(CLIP_IMAGE)
    pixels = np.stack([to_pixels(photo(n), spec) for n in ("astronaut", "rocket", "chelsea")])
    # reference: the normalization written out by hand, then transformers' own forward pass
    x = (pixels.astype(np.float32) / 255 - np.array(spec.mean, np.float32)) / np.array(spec.std, np.float32)
    with torch.no_grad():
        out = model.get_image_features(pixel_values=torch.from_numpy(x).permute(0, 3, 1, 2).contiguous())
        want = unit((out if isinstance(out, torch.Tensor) else out.pooler_output).numpy())
    onnx = onnx_session(settings, CLIP_IMAGE).run(None, {"IMAGE": pixels})[0]
    served = np.stack([await embedder.embed_image(CLIP_IMAGE, p) for p in pixels])
    assert float(np.abs(onnx - want).max()) < 1e-4
    assert float(np.abs(served - want).max()) < 1e-4

    enc = tok(TEXTS, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    with torch.no_grad():
        out = model.get_text_features(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
        want_t = unit((out if isinstance(out, torch.Tensor) else out.pooler_output).numpy())
    served_t = np.stack([await embedder.embed_text(CLIP_TEXT, t) for t in TEXTS])
    assert float(np.abs(served_t - want_t).max()) < 1e-4
    assert (await embedder.model_info(CLIP_TEXT)).dim == model.config.projection_dim


# --- batching ---------------------------------------------------------------------------------------------
def metric(text: str, name: str, model: str) -> float:
    m = re.search(rf'^{name}\{{model="{model}",version="1"\}} (\S+)$', text, re.MULTILINE)
    assert m, f"{name} for {model} not in metrics"
    return float(m.group(1))


async def test_concurrent_single_image_requests_are_batched(embedder: Embedder, settings: Settings) -> None:
    """32 concurrent ``embed_image`` calls reach Triton as a few batched requests (the embedder coalesces
    them: two requests out at a time, the rest waiting for the next one), and Triton counts all 32 images."""
    url = f"http://{settings.host}:{settings.triton_metrics_port}/metrics"
    spec = await embedder.preprocess_spec(EFFICIENTNET)
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, spec.shape, dtype=np.uint8) for _ in range(32)]

    def delta(after: str, before: str, name: str) -> float:
        return metric(after, name, EFFICIENTNET) - metric(before, name, EFFICIENTNET)

    async with httpx.AsyncClient() as http:
        before = (await http.get(url)).text
        vectors = await asyncio.gather(*(embedder.embed_image(EFFICIENTNET, p) for p in images))
        deadline = asyncio.get_running_loop().time() + 15
        while True:  # Triton refreshes its metrics every few seconds: wait for all 32 to be counted
            after = (await http.get(url)).text
            inferences = delta(after, before, "nv_inference_count")
            if inferences >= 32 or asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.5)
    assert all(abs(float(np.linalg.norm(v)) - 1) < 1e-4 for v in vectors)
    assert [
        round(float(v @ single), 4)
        for v, single in zip(
            vectors[:3], [await embedder.embed_image(EFFICIENTNET, p) for p in images[:3]], strict=True
        )
    ] == [1.0, 1.0, 1.0]  # a batched image gets the vector it gets alone
    requests = delta(after, before, "nv_inference_request_success")
    assert inferences == 32
    assert requests <= 4, f"{requests} requests for 32 images: the embedder did not coalesce them"


# --- the real weights find altered copies -------------------------------------------------------------------
PHOTOS = [
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "camera",
    "coins",
    "moon",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "stereo_motorcycle",
    "clock",
]


def altered(img: Image.Image, i: int) -> bytes:
    """Resized, off-center cropped and re-compressed as a low-quality JPEG."""
    w, h = img.size
    small = img.resize((int(w * 0.6), int(h * 0.6)), Image.Resampling.BILINEAR)
    sw, sh = small.size
    dx, dy = (int(sw * 0.12), 0) if i % 2 else (0, int(sh * 0.12))
    cropped = small.crop((dx, dy, dx + int(sw * 0.85), dy + int(sh * 0.85)))
    buf = io.BytesIO()
    cropped.save(buf, "JPEG", quality=45)
    return buf.getvalue()


async def test_real_weights_find_the_original_of_every_altered_photo(embedder: Embedder) -> None:
    spec = await embedder.preprocess_spec(EFFICIENTNET)
    originals, copies = [], []
    for i, name in enumerate(PHOTOS):
        img = photo(name)
        png = io.BytesIO()
        img.save(png, "PNG")
        originals.append(to_pixels(decode_image(png.getvalue(), spec.resize), spec))
        copies.append(to_pixels(decode_image(altered(img, i), spec.resize), spec))
    orig = np.stack(await asyncio.gather(*(embedder.embed_image(EFFICIENTNET, p) for p in originals)))
    copy = np.stack(await asyncio.gather(*(embedder.embed_image(EFFICIENTNET, p) for p in copies)))
    cosine = copy @ orig.T  # unit vectors: dot product is cosine similarity
    for i, name in enumerate(PHOTOS):
        others = np.delete(cosine[i], i)
        assert cosine[i, i] > others.max(), (
            f"{name}: {cosine[i, i]:.3f} vs {PHOTOS[int(np.argmax(cosine[i]))]}"
        )


# --- errors are typed -------------------------------------------------------------------------------------
async def test_errors_are_typed(embedder: Embedder) -> None:
    with pytest.raises(ModelNotFound) as not_found:
        await embedder.embed_image("no_such_model", np.zeros((224, 224, 3), np.uint8))
    assert not not_found.value.retryable and isinstance(not_found.value, EmbedderException)
    assert not await embedder.ready("no_such_model")
    with pytest.raises(EmbedderError, match="takes uint8"):
        await embedder.embed_image(EFFICIENTNET, np.zeros((100, 100, 3), np.uint8))
    with pytest.raises(EmbedderError, match="does not take text"):
        await embedder.embed_text(EFFICIENTNET, "hello")

    async with Embedder(f"127.0.0.1:{free_port()}", timeout_s=2, retries=1, backoff_s=0.05) as down:
        assert not await down.ready()
        with pytest.raises(EmbedderUnavailable) as unavailable:
            await down.embed_text(CLIP_TEXT, "hello")
        assert unavailable.value.retryable and unavailable.value.status == "UNAVAILABLE"
