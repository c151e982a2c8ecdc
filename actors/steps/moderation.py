"""The ``moderation`` step: rules from the config (``moderation_rules``) that reject or flag an image.

A rule is ``[flag:]<kind>:<argument>``:

| kind | argument | matches when |
| --- | --- | --- |
| ``min_side`` | pixels | the shorter side is below it |
| ``max_side`` | pixels | the longer side is above it |
| ``max_aspect_ratio`` | a number >= 1 | long side / short side is above it |
| ``reject_metadata`` | ``key=value`` | the metadata (upload's, plus earlier steps', e.g. ``exif.make``) has it |

A match rejects the image (it ends in ``error``, code ``moderation``, the message naming the rule) unless the
rule starts with ``flag:``: then the image goes on, the step's history note lists the rule and the index gets
the tag ``moderation.flagged=true`` (so ``filter=moderation.flagged:true`` finds flagged images). This is a
rule-based hook: a classifier would be another step in the same registry.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from actors.steps.base import StepContext, StepResult

FLAG_PREFIX = "flag:"
MAX_RULES = 100
KINDS = ("min_side", "max_side", "max_aspect_ratio", "reject_metadata")


@dataclass(frozen=True)
class Rule:
    """One parsed rule; ``text`` is how the config wrote it (what errors and notes name)."""

    text: str
    kind: str
    number: float = 0.0
    key: str = ""
    value: str = ""
    flag: bool = False

    def match(self, width: int, height: int, metadata: Mapping[str, Any]) -> str | None:
        """Why the image matches this rule, or None."""
        short, long = min(width, height), max(width, height)
        if self.kind == "min_side" and short < self.number:
            return f"the shorter side is {short} px (< {self.number:g})"
        if self.kind == "max_side" and long > self.number:
            return f"the longer side is {long} px (> {self.number:g})"
        if self.kind == "max_aspect_ratio" and long > self.number * max(short, 1):
            return f"the aspect ratio is {long / max(short, 1):.2f} (> {self.number:g})"
        if self.kind == "reject_metadata" and self.key in metadata and str(metadata[self.key]) == self.value:
            return f"metadata {self.key} is {self.value!r}"
        return None


def parse_rule(text: str) -> Rule:
    """A rule from its text; ``ValueError`` saying what is wrong (the config actor refuses the value)."""
    body = text.removeprefix(FLAG_PREFIX)
    flag = body != text
    kind, sep, arg = body.partition(":")
    if not sep or kind not in KINDS:
        raise ValueError(f"rule {text!r} must be [flag:]<kind>:<argument> with a kind of {', '.join(KINDS)}")
    if kind == "reject_metadata":
        key, eq, value = arg.partition("=")
        if not eq or not key:
            raise ValueError(f"rule {text!r}: the argument must be key=value")
        return Rule(text=text, kind=kind, key=key, value=value, flag=flag)
    try:
        number = float(arg)
    except ValueError:
        raise ValueError(f"rule {text!r}: {arg!r} is not a number") from None
    if not 1.0 <= number <= 1e9:  # NaN and infinities fail this too
        raise ValueError(f"rule {text!r}: the argument must be between 1 and 1e9")
    return Rule(text=text, kind=kind, number=number, flag=flag)


def rules_problem(texts: list[str]) -> str | None:
    """What is wrong with a list of rules (for the config actor's validation), or None."""
    if len(texts) > MAX_RULES:
        return f"at most {MAX_RULES} rules, got {len(texts)}"
    if len(set(texts)) != len(texts):
        return f"must not repeat a rule, got {texts}"
    for text in texts:
        try:
            parse_rule(text)
        except ValueError as e:
            return str(e)
    return None


def evaluate(rules: list[Rule], width: int, height: int, metadata: Mapping[str, Any]) -> StepResult:
    """The step's answer: reject at the first rejecting match; otherwise note (and tag) the flagging ones."""
    flagged: list[dict[str, str]] = []
    for rule in rules:
        why = rule.match(width, height, metadata)
        if why is None:
            continue
        if not rule.flag:
            return StepResult(
                reject=f"rejected by moderation rule {rule.text!r}: {why}",
                note={"outcome": "rejected", "rule": rule.text, "reason": why},
            )
        flagged.append({"rule": rule.text, "reason": why})
    if flagged:
        return StepResult(tags={"moderation.flagged": "true"}, note={"outcome": "flagged", "flags": flagged})
    return StepResult(note={"outcome": "passed", "rules": len(rules)})


class ModerationStep:
    """Applies ``config.moderation_rules`` to the decoded image and its metadata."""

    async def run(self, ctx: StepContext) -> StepResult:
        rules = []
        for text in ctx.config.moderation_rules:
            try:
                rules.append(parse_rule(text))
            except ValueError:  # the config actor refuses these; a hand-edited bucket falls back to defaults
                continue
        width, height = ctx.image.size
        return evaluate(rules, width, height, ctx.metadata)
