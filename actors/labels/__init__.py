"""Words for images: the class names of an image model's classifier (``vocabulary``) and text search over them
(``matching``).

A model with a classifier returns ``PROBS`` beside its vector (one inference) and names its vocabulary in its
Triton config (``labels`` parameter); the pipeline keeps an image's most probable classes as its labels
(``MeshConfig.label_min_score``, ``label_max_count``), in the record and as ``label=<name>`` tags of every
model's index (``filter=label:tabby``). ``GET /search?q=`` on a model without a text tower matches the query's
words against the label names and their synonyms (``matching.match``).
"""

from __future__ import annotations

from actors.labels.matching import LabelMatch, match, stem, words
from actors.labels.vocabulary import LabelClass, UnknownVocabulary, Vocabulary, vocabulary

__all__ = [
    "LabelClass",
    "LabelMatch",
    "UnknownVocabulary",
    "Vocabulary",
    "match",
    "stem",
    "vocabulary",
    "words",
]
