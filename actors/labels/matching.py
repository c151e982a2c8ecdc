"""Text search over labels: which classes of a vocabulary a query's words name.

Words are compared after lower-casing and a simple stemming (plurals: "cats" -> "cat", "boxes" -> "box",
"puppies" -> "puppy", a few irregular ones), the same on both sides. A class matches when the query's words end
its name or one of its synonyms (the head of an English compound says what the thing is): "cat" finds "tabby
cat" (tabby), "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat"; "tiger cat" finds only tiger cat;
"espresso" finds espresso, not "espresso maker". Only when no name ends with them do the words match
anywhere in a name ("coffee" finds "coffee mug"). When the whole query matches nothing and it has several
words, each word is tried alone and the classes any of them names match ("tabby or persian"). Small words ("a", "of", "photo"...) are left out. WordNet's hierarchy ("an espresso is
a coffee") is not used: no registry package ships it as data that this project could depend on (nltk and wn
download it at run time).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from actors.labels.vocabulary import Vocabulary

_WORD = re.compile(r"[a-z0-9]+")
STOP_WORDS = frozenset(
    "a an and any are as at by for from in is it me of on or show the to with photo photos picture pictures "
    "image images".split()
)
_IRREGULAR = {
    "children": "child",
    "feet": "foot",
    "geese": "goose",
    "knives": "knife",
    "leaves": "leaf",
    "men": "man",
    "mice": "mouse",
    "people": "person",
    "teeth": "tooth",
    "wolves": "wolf",
    "women": "woman",
}


def stem(word: str) -> str:
    """A plural as its singular (rules for English plurals; good enough for class names)."""
    if word in _IRREGULAR:
        return _IRREGULAR[word]
    if len(word) <= 3 or word.endswith(("ss", "us", "is")):
        return word
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith(("ches", "shes", "xes", "zes", "sses")):
        return word[:-2]
    if word.endswith("s"):
        return word[:-1]
    return word


def words(text: str) -> tuple[str, ...]:
    """The stemmed words of ``text`` (letters and digits; everything else separates)."""
    return tuple(stem(w) for w in _WORD.findall(text.lower()))


def _contains(haystack: tuple[str, ...], needle: tuple[str, ...], *, at_end: bool) -> bool:
    n = len(needle)
    if at_end:
        return len(haystack) >= n and haystack[len(haystack) - n :] == needle
    return any(haystack[i : i + n] == needle for i in range(len(haystack) - n + 1))


@functools.cache
def _forms(vocab: Vocabulary) -> tuple[tuple[str, tuple[tuple[str, ...], ...]], ...]:
    """Each class's name and the stemmed words of its name and synonyms (once per vocabulary)."""
    return tuple((c.name, tuple(words(s) for s in (c.name, *c.synonyms))) for c in vocab.classes)


@dataclass(frozen=True)
class LabelMatch:
    """The classes a query names (their names, vocabulary order) and the query words that were used."""

    names: tuple[str, ...]
    words: tuple[str, ...]

    @property
    def reason(self) -> str | None:
        """Why nothing matched (None when something did)."""
        if self.names:
            return None
        if not self.words:
            return "the query has no word to match against label names"
        return f"no label name or synonym has the word(s) {' '.join(self.words)!r}"


def match(vocab: Vocabulary, query: str) -> LabelMatch:
    """The classes of ``vocab`` that ``query`` names (module docstring)."""
    q = tuple(w for w in words(query) if w not in STOP_WORDS)
    if not q:
        return LabelMatch((), ())
    forms = _forms(vocab)

    def named_by(needle: tuple[str, ...]) -> list[str]:
        for at_end in (True, False):  # the head of a compound first, then anywhere
            found = [
                name for name, phrases in forms if any(_contains(p, needle, at_end=at_end) for p in phrases)
            ]
            if found:
                return found
        return []

    found = named_by(q)
    if not found and len(q) > 1:
        each = {name for w in q for name in named_by((w,))}
        found = [c.name for c in vocab.classes if c.name in each]
    return LabelMatch(tuple(found), q)
