"""A classifier's vocabulary: the name and synonyms of each of its classes, in the order of its outputs.

Vocabularies ship as data beside this module (``<name>.tsv``: index, WordNet id, name, synonyms joined by
``|``). ``imagenet1k`` is the ImageNet-1k class list of the default model's weights (EfficientNet-Lite0); the
test ``tests/unit/test_labels.py`` checks that it has 1,000 classes and that they match the weights' class
order on photos whose class is known.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from actors.contract import Label

HERE = Path(__file__).parent


class UnknownVocabulary(ValueError):
    """A model names a vocabulary this version does not ship."""


@dataclass(frozen=True)
class LabelClass:
    """One class: ``name`` is what records, tags and filters use; ``synonyms`` what text search matches."""

    index: int
    wnid: str
    name: str
    synonyms: tuple[str, ...]


@dataclass(frozen=True)
class Vocabulary:
    name: str
    classes: tuple[LabelClass, ...]

    def __len__(self) -> int:
        return len(self.classes)

    def top(self, probs: np.ndarray, min_score: float, max_count: int) -> list[Label]:
        """The classes with probability >= ``min_score``, most probable first, at most ``max_count``."""
        if probs.shape != (len(self.classes),):
            raise ValueError(f"{self.name} has {len(self.classes)} classes, got probabilities {probs.shape}")
        order = np.argsort(-probs, kind="stable")[: max(0, max_count)]
        return [
            Label(name=self.classes[i].name, score=round(float(probs[i]), 4))
            for i in order
            if probs[i] >= min_score
        ]


def _parse(name: str, text: str) -> Vocabulary:
    classes = []
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        index, wnid, label, synonyms = line.split("\t")
        classes.append(LabelClass(int(index), wnid, label, tuple(synonyms.split("|"))))
    if [c.index for c in classes] != list(range(len(classes))):
        raise ValueError(f"vocabulary {name}: the classes are not numbered 0..{len(classes) - 1} in order")
    if len({c.name for c in classes}) != len(classes):
        raise ValueError(f"vocabulary {name}: two classes share a name")
    return Vocabulary(name, tuple(classes))


@functools.cache
def vocabulary(name: str) -> Vocabulary:
    """The vocabulary ``name`` (loaded once per process); ``UnknownVocabulary`` when none ships."""
    path = HERE / f"{name}.tsv"
    if not name.isidentifier() or not path.is_file():
        raise UnknownVocabulary(f"no label vocabulary {name!r} ships with this version")
    return _parse(name, path.read_text(encoding="utf-8"))
