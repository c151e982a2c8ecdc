"""Model repository configs: every config.pbtxt (cpu and gpu) parses with Triton's own protobuf, has dynamic
batching and a fail-fast queue policy, and the committed files are what ``ops/models`` renders."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from actors.adapters.embedder import (
    EMBEDDING_OUTPUT,
    IMAGE_INPUT,
    PROBS_OUTPUT,
    TEXT_INPUT,
    EmbedderError,
    ModelInfo,
)
from actors.contract import PreprocessSpec
from actors.labels import vocabulary
from ops.models import configs
from ops.models.clip import CLIP_MEAN, CLIP_STD
from ops.models.efficientnet import CLASSIFIER, DIM, NAME, SPEC
from ops.models.repository import BACKEND_MODEL, ROOT

REPO = ROOT / "model_repository"
CLIP_SPEC = PreprocessSpec(resize=224, crop=224, resample="bicubic", mean=CLIP_MEAN, std=CLIP_STD)


def parse(text: str) -> mc.ModelConfig:
    return text_format.Parse(text, mc.ModelConfig())


def rendered() -> dict[str, str]:
    """Every config this code writes, for the committed models and for CPU CLIP (generated on export)."""
    out = {
        f"cpu/{NAME}": configs.cpu_image_config(NAME, DIM, SPEC, classifier=CLASSIFIER),
        f"gpu/{NAME}": configs.gpu_image_config(NAME, DIM, SPEC, classifier=CLASSIFIER),
        "cpu/clip_image": configs.cpu_image_config("clip_image", 512, CLIP_SPEC),
        "cpu/clip_text": configs.cpu_text_config("clip_text", 512, 77),
        "gpu/clip_image": configs.gpu_image_config("clip_image", 512, CLIP_SPEC),
    }
    out.update({f"gpu/{k}": v for k, v in configs.gpu_text_configs("clip_text", 512, 77).items()})
    return out


COMMITTED = sorted(str(p.relative_to(REPO)) for p in REPO.glob("*/*/config.pbtxt"))


def test_the_committed_repositories_hold_the_contract_models() -> None:
    assert f"cpu/{NAME}/config.pbtxt" in COMMITTED
    for name in (NAME, "clip_image", "clip_text", "clip_text_tokenizer", "clip_text_encoder"):
        assert f"gpu/{name}/config.pbtxt" in COMMITTED


@pytest.mark.parametrize("path", COMMITTED)
def test_committed_config_parses_with_tritons_protobuf(path: str) -> None:
    config = parse((REPO / path).read_text())
    assert config.name == Path(path).parent.name
    check_config(config)


@pytest.mark.parametrize("key", sorted(rendered()))
def test_rendered_config_parses_and_is_what_is_committed(key: str) -> None:
    text = rendered()[key]
    check_config(parse(text))
    committed = REPO / key / "config.pbtxt"
    if key.startswith("gpu/") or key == f"cpu/{NAME}":
        assert committed.read_text() == text, f"{committed} drifted from ops/models/configs.py: re-export"


def test_committed_python_models_are_the_backend_source() -> None:
    for model_py in REPO.glob("*/*/1/model.py"):
        assert model_py.read_text() == BACKEND_MODEL.read_text(), model_py


def check_config(config: mc.ModelConfig) -> None:
    """What every model of the mesh needs: batching, a queue that sheds load, the embedder's tensors."""
    assert config.max_batch_size >= 8
    if config.platform == "ensemble":
        assert [s.model_name for s in config.ensemble_scheduling.step]  # the steps carry the batching
    else:
        assert config.HasField("dynamic_batching")
        db = config.dynamic_batching
        assert list(db.preferred_batch_size) and db.max_queue_delay_microseconds > 0
        policy = db.default_queue_policy
        assert policy.timeout_action == mc.ModelQueuePolicy.REJECT
        assert 0 < policy.default_timeout_microseconds <= 10_000_000 and 0 < policy.max_queue_size <= 1024
        assert config.backend == "python" or config.platform == "onnxruntime_onnx"
    if config.platform == "onnxruntime_onnx":
        accel = config.optimization.execution_accelerators.gpu_execution_accelerator
        assert accel[0].name == "tensorrt" and accel[0].parameters["precision_mode"] == "FP16"
    inputs = {i.name: i for i in config.input}
    outputs = {o.name: o for o in config.output}
    if IMAGE_INPUT in inputs:
        assert inputs[IMAGE_INPUT].data_type == mc.TYPE_UINT8
        spec = PreprocessSpec.from_json(config.parameters["preprocess"].string_value)
        assert list(inputs[IMAGE_INPUT].dims) == list(spec.shape)
    if TEXT_INPUT in inputs:
        assert inputs[TEXT_INPUT].data_type == mc.TYPE_STRING
    if EMBEDDING_OUTPUT in outputs:
        assert outputs[EMBEDDING_OUTPUT].data_type == mc.TYPE_FP32
    if PROBS_OUTPUT in outputs:  # a classifier names the vocabulary of its classes, which must ship
        assert len(vocabulary(config.parameters["labels"].string_value)) == outputs[PROBS_OUTPUT].dims[-1]


def test_the_client_reads_dim_and_preprocess_from_the_config() -> None:
    from google.protobuf.json_format import MessageToDict

    as_json = MessageToDict(parse(rendered()[f"cpu/{NAME}"]), preserving_proto_field_name=True)
    info = ModelInfo.from_config(as_json)
    assert (info.name, info.kind, info.dim, info.spec) == (NAME, "image", DIM, SPEC)
    assert (info.classes, info.labels) == (1000, "imagenet1k")  # the classifier's output and its names
    clip = ModelInfo.from_config(
        MessageToDict(parse(rendered()["cpu/clip_image"]), preserving_proto_field_name=True)
    )
    assert (clip.classes, clip.labels) == (0, None)  # no classifier: no labels
    text = ModelInfo.from_config(
        MessageToDict(parse(rendered()["gpu/clip_text"]), preserving_proto_field_name=True)
    )
    assert (text.kind, text.dim, text.spec) == ("text", 512, None)
    tok = MessageToDict(parse(rendered()["gpu/clip_text_tokenizer"]), preserving_proto_field_name=True)
    with pytest.raises(EmbedderError, match="embedder tensors"):
        ModelInfo.from_config(tok)
