"""One way to turn a torch module into an ONNX file, written atomically."""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

OPSET = 17


def export_onnx(
    module: torch.nn.Module,
    args: tuple[torch.Tensor, ...],
    path: Path,
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic_axes: Mapping[str, Mapping[int, str]],
) -> Path:
    """Export ``module`` (eval mode) to ``path``; a crash mid-export leaves no ``path`` behind.

    The TorchScript exporter is used on purpose: it exports EfficientNet in about a second where the
    ``torch.export``-based one takes ten, and ``make run``'s first start pays for it.
    """
    module.eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            args,
            str(tmp),
            input_names=list(input_names),
            output_names=list(output_names),
            dynamic_axes={k: dict(v) for k, v in dynamic_axes.items()},
            opset_version=OPSET,
            dynamo=False,
            do_constant_folding=True,
        )
    os.replace(tmp, path)
    return path


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    """Unit vectors along the last axis (eps keeps an all-zero row finite)."""
    return x / x.norm(p=2, dim=-1, keepdim=True).clamp_min(1e-12)


class UInt8Normalize(torch.nn.Module):
    """``uint8 [B, H, W, 3]`` -> ``float32 [B, 3, H, W]`` normalized with ``mean``/``std`` (0..1 scale).

    Folding this into the graph lets clients send raw pixels: 4x fewer bytes than float32 on the wire.
    """

    scale: torch.Tensor
    shift: torch.Tensor

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        # (x/255 - m)/s == x * scale + shift
        self.register_buffer("scale", 1.0 / (255.0 * s))
        self.register_buffer("shift", -m / s)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.permute(0, 3, 1, 2).to(torch.float32)
        return x * self.scale + self.shift
