"""``python -m ops.models``: export models into a Triton repository (see docs/MODELS.md).

python -m ops.models export efficientnet [--target cpu|gpu] [--repository DIR]
python -m ops.models export clip --checkpoint openai/clip-vit-base-patch32 [--target gpu] [--prefix clip]
python -m ops.models export clip --random tiny|vit-b32 [--cache DIR]   # random weights, same load path
python -m ops.models random-clip DIR [--size tiny|vit-b32] [--seed 0]  # only build + save_pretrained
python -m ops.models ensure                                            # what `make run` does (MESH_*)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ops.models.repository import ROOT


def _quiet() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ops.models", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)

    ex = sub.add_parser("export", help="export a model into a Triton repository")
    ex.add_argument("model", choices=["efficientnet", "clip"])
    ex.add_argument("--target", choices=["cpu", "gpu"], default="cpu")
    ex.add_argument("--repository", type=Path, help="default: model_repository/<target>")
    ex.add_argument(
        "--checkpoint", help="CLIP: a Hugging Face folder or hub name (CLIPModel.from_pretrained)"
    )
    ex.add_argument("--random", choices=["tiny", "vit-b32"], help="CLIP: build a random-weight CLIP first")
    ex.add_argument("--cache", type=Path, default=Path("var/models"), help="where random CLIPs are saved")
    ex.add_argument("--prefix", default="clip", help="CLIP: Triton model names <prefix>_image, <prefix>_text")

    rc = sub.add_parser("random-clip", help="build a random-weight CLIP and save_pretrained it to a folder")
    rc.add_argument("folder", type=Path)
    rc.add_argument("--size", choices=["tiny", "vit-b32"], default="tiny")
    rc.add_argument("--seed", type=int, default=0)

    sub.add_parser("ensure", help="export what the CPU repository of the settings (MESH_*) lacks")

    args = p.parse_args(argv)
    t0 = time.monotonic()
    if args.cmd == "ensure":
        from actors.settings import Settings
        from ops.models.repository import ensure_models

        written = ensure_models(Settings.model_validate({}))  # every value from MESH_* or defaults
        print(f"exported {written or 'nothing (complete)'} in {time.monotonic() - t0:.1f}s")
        return 0
    _quiet()
    if args.cmd == "random-clip":
        from ops.models.clip import make_random_clip

        print(make_random_clip(args.folder, args.size, args.seed))
        return 0

    from ops.models import repository

    repo = args.repository or ROOT / "model_repository" / args.target
    if args.model == "efficientnet":
        written = repository.export_efficientnet(repo, args.target)
    else:
        if bool(args.checkpoint) == bool(args.random):
            p.error("export clip needs exactly one of --checkpoint or --random")
        checkpoint = args.checkpoint or repository.random_clip(args.cache.resolve(), args.random)
        written = repository.export_clip(repo, checkpoint, args.target, args.prefix)
    print(f"exported {written} into {repo} in {time.monotonic() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
