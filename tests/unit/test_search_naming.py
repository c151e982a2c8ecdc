"""The image tower -> text tower naming rule (gateway/search.py)."""

from __future__ import annotations

import pytest

from gateway.search import text_model_for


@pytest.mark.parametrize(
    ("image_model", "text_model"),
    [
        ("clip_image", "clip_text"),
        ("openclip-vit-b32_image", "openclip-vit-b32_text"),
        ("my_image_image", "my_image_text"),
        ("efficientnet_lite0", None),
        ("_image", None),
        ("clip_imagex", None),
        ("clip_text", None),
        ("image", None),
    ],
)
def test_text_model_for(image_model: str, text_model: str | None) -> None:
    assert text_model_for(image_model) == text_model
