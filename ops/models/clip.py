"""CLIP: export the image and text towers (with their projections) of a Hugging Face checkpoint to ONNX.

Every checkpoint goes through ``CLIPModel.from_pretrained`` (a local folder or a hub name), including the
random-weight CLIPs built here for tests and benchmarks: they are saved with ``save_pretrained`` first, so the
path the tests cover is the path a real checkpoint takes.
"""

from __future__ import annotations

import itertools
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import torch

from actors.contract import PreprocessSpec
from ops.models.configs import ATTENTION_MASK, IMAGE_INPUT, INPUT_IDS, OUTPUT
from ops.models.onnx_export import UInt8Normalize, export_onnx, l2_normalize

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
Resample = Literal["nearest", "bilinear", "bicubic", "lanczos"]
_PIL_RESAMPLE: dict[int, Resample] = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic"}

RandomSize = Literal["tiny", "vit-b32"]


@dataclass
class Clip:
    """A loaded checkpoint: the model, its tokenizer and what the towers need."""

    model: Any  # transformers.CLIPModel
    tokenizer: Any  # a CLIP tokenizer (tokenizers-backed)
    spec: PreprocessSpec
    seq_len: int
    dim: int


def _output_tensor(out: Any) -> torch.Tensor:
    # transformers 4.x returns the projected tensor, 5.x an output object with it in pooler_output
    return out if isinstance(out, torch.Tensor) else out.pooler_output


class ImageTower(torch.nn.Module):
    """``uint8 [B, H, W, 3]`` -> unit ``float32 [B, dim]``: CLIP normalization, vision tower, projection."""

    def __init__(self, model: Any, spec: PreprocessSpec) -> None:
        super().__init__()
        self.normalize = UInt8Normalize(spec.mean, spec.std)
        self.model = model

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return l2_normalize(
            _output_tensor(self.model.get_image_features(pixel_values=self.normalize(pixels)))
        )


class TextTower(torch.nn.Module):
    """``int64 [B, L]`` token ids and attention mask -> unit ``float32 [B, dim]``."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask)
        return l2_normalize(_output_tensor(out))


def read_spec(checkpoint: str | Path, image_size: int) -> PreprocessSpec:
    """The checkpoint's own ``preprocessor_config.json`` when it has one, else CLIP's defaults."""
    from transformers.utils import cached_file

    path = None
    try:
        path = cached_file(
            str(checkpoint), "preprocessor_config.json", _raise_exceptions_for_missing_entries=False
        )
    except OSError:
        path = None
    cfg: dict[str, Any] = json.loads(Path(path).read_text()) if path else {}
    size = cfg.get("size", {})
    size = size.get("shortest_edge", image_size) if isinstance(size, dict) else int(size)
    crop = cfg.get("crop_size", {})
    crop = crop.get("height", image_size) if isinstance(crop, dict) else int(crop)
    return PreprocessSpec(
        resize=int(size),
        crop=int(crop),
        resample=_PIL_RESAMPLE.get(int(cfg.get("resample", 3)), "bicubic"),
        mean=_rgb(cfg.get("image_mean", CLIP_MEAN)),
        std=_rgb(cfg.get("image_std", CLIP_STD)),
    )


def _rgb(values: Any) -> tuple[float, float, float]:
    """A per-channel (R, G, B) triple from a processor config's list."""
    r, g, b = (float(v) for v in values)
    return (r, g, b)


def load(checkpoint: str | Path) -> Clip:
    """Load a CLIP checkpoint (folder or hub name) and its tokenizer, in eval mode, eager attention."""
    from transformers import AutoTokenizer, CLIPModel

    model = CLIPModel.from_pretrained(str(checkpoint), attn_implementation="eager").eval()
    tokenizer = AutoTokenizer.from_pretrained(str(checkpoint))
    cfg = model.config
    return Clip(
        model=model,
        tokenizer=tokenizer,
        spec=read_spec(checkpoint, cfg.vision_config.image_size),
        seq_len=int(cfg.text_config.max_position_embeddings),
        dim=int(cfg.projection_dim),
    )


def export_image(clip: Clip, path: Path) -> Path:
    example = torch.zeros((2, *clip.spec.shape), dtype=torch.uint8)
    return export_onnx(
        ImageTower(clip.model, clip.spec),
        (example,),
        path,
        [IMAGE_INPUT],
        [OUTPUT],
        {IMAGE_INPUT: {0: "batch"}, OUTPUT: {0: "batch"}},
    )


def export_text(clip: Clip, path: Path) -> Path:
    enc = clip.tokenizer(
        ["a photo of a cat", "two dogs"], padding="max_length", max_length=clip.seq_len, truncation=True
    )
    ids = torch.tensor(enc["input_ids"], dtype=torch.int64)
    mask = torch.tensor(enc["attention_mask"], dtype=torch.int64)
    return export_onnx(
        TextTower(clip.model),
        (ids, mask),
        path,
        [INPUT_IDS, ATTENTION_MASK],
        [OUTPUT],
        {INPUT_IDS: {0: "batch"}, ATTENTION_MASK: {0: "batch"}, OUTPUT: {0: "batch"}},
    )


# --- random-weight CLIPs (tests, benchmarks) --------------------------------------------------------------
_WORDS = (
    "a an the photo picture image drawing painting of one two three small big red green blue yellow black "
    "white "
    "cat dog bird horse car bus bicycle rocket coffee cup astronaut man woman child tree flower house street "
    "beach mountain sky sea night day sitting running flying on in at with near under"
).split()


def training_text(n: int = 4000, seed: int = 0) -> list[str]:
    """Sentences made from a fixed word list: enough for a small BPE with real merges."""
    rng = random.Random(seed)
    return [
        " ".join(rng.choice(_WORDS) for _ in range(rng.randint(3, 10))) + rng.choice(".!?,") for _ in range(n)
    ]


def make_tokenizer(folder: Path, vocab_size: int = 1000) -> Any:
    """Train a byte-level BPE the way CLIP's tokenizer is built and save it as a ``CLIPTokenizer`` folder."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import CLIPTokenizer

    specials = ["<|startoftext|>", "<|endoftext|>"]
    tok = Tokenizer(
        models.BPE(continuing_subword_prefix="", end_of_word_suffix="</w>", unk_token=specials[1])
    )
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(
                Regex(r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""),
                behavior="removed",
                invert=True,
            ),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        end_of_word_suffix="</w>",
        show_progress=False,
    )
    tok.train_from_iterator(training_text(), trainer=trainer)
    bpe = json.loads(tok.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in bpe["merges"]]
    # tokenizers wants (left, right) pairs; transformers' annotation says list[str]
    clip_tok = CLIPTokenizer(vocab=bpe["vocab"], merges=cast(Any, merges), model_max_length=77)
    clip_tok.save_pretrained(str(folder))
    return clip_tok


def random_config(size: RandomSize, tokenizer: Any) -> Any:
    """A CLIPConfig: ``tiny`` for tests (seconds to export), ``vit-b32`` the compute of openai's ViT-B/32."""
    from transformers import CLIPConfig

    ids = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    if size == "vit-b32":
        text = {"vocab_size": max(49408, len(tokenizer)), "max_position_embeddings": 77, **ids}
        return CLIPConfig(
            text_config=text, vision_config={"image_size": 224, "patch_size": 32}, projection_dim=512
        )
    text = {
        "vocab_size": len(tokenizer),
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "max_position_embeddings": 77,
        **ids,
    }
    vision = {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "image_size": 224,
        "patch_size": 32,
    }
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=32)


def make_random_clip(folder: Path, size: RandomSize = "tiny", seed: int = 0) -> Path:
    """Build a random-weight CLIP (and a locally trained tokenizer); ``save_pretrained`` it to ``folder``."""
    from transformers import CLIPModel

    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = make_tokenizer(folder)
    torch.manual_seed(seed)
    model = CLIPModel(random_config(size, tokenizer)).eval()
    model.save_pretrained(str(folder))
    processor = {
        "crop_size": {"height": 224, "width": 224},
        "do_center_crop": True,
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": list(CLIP_MEAN),
        "image_std": list(CLIP_STD),
        "image_processor_type": "CLIPImageProcessor",
        "resample": 3,
        "rescale_factor": 1 / 255,
        "size": {"shortest_edge": 224},
    }
    (folder / "preprocessor_config.json").write_text(json.dumps(processor, indent=2))
    return folder


def is_checkpoint(folder: Path) -> bool:
    """A folder ``make_random_clip`` finished writing (weights, tokenizer and preprocessing)."""
    names = ("config.json", "tokenizer.json", "preprocessor_config.json")
    weights = itertools.chain(folder.glob("*.safetensors"), folder.glob("*.bin"))
    return all((folder / n).exists() for n in names) and any(True for _ in weights)
