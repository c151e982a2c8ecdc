"""The Config DB's rules, pure (no I/O): what a ``MeshConfig`` field accepts, how a change is validated, how
the bucket's raw values become a ``MeshConfig``, and how settings are shown with their secrets redacted.

The config actor validates ``config.set`` with them (``apply_change``); every reader that assembles the
document from the bucket (``ConfigStore`` in the config actor, the watch of ``ConfigClient``) uses
``assemble_entries``, so a bad value written straight into the bucket means the same everywhere: that key's
default, reported once per revision.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import msgspec

from actors.contract import MeshConfig
from actors.errors import PermanentError
from actors.settings import Settings
from actors.steps import STEPS
from actors.steps.moderation import rules_problem

FIELDS: dict[str, Any] = {f.name: f.type for f in msgspec.structs.fields(MeshConfig)}
REDACTED = "***"
SECRET_WORDS = ("password", "secret", "api_key", "access_key", "token")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")  # model and step names end up in index names


class InvalidConfig(PermanentError):
    """A config value the actor refuses (answered as a 400 service error naming the key and the reason)."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"invalid config {key!r}: {reason}")
        self.key = key
        self.reason = reason


Rule = Callable[[Any], str | None]


def _int_range(lo: int, hi: int) -> Rule:
    return lambda v: None if lo <= v <= hi else f"must be between {lo} and {hi}, got {v}"


def _name(v: str) -> str | None:
    return None if NAME_RE.match(v) else f"must be 1-64 letters, digits, '_', '.' or '-', got {v!r}"


def _threshold(v: float) -> str | None:
    return None if 0.0 < v <= 1.0 else f"must be > 0 and <= 1, got {v}"


def _backoff(v: list[float]) -> str | None:
    if not v:
        return "must not be empty"
    bad = [b for b in v if not (math.isfinite(b) and 0.0 < b <= 3600.0)]
    return f"every step must be > 0 and <= 3600 seconds, got {bad}" if bad else None


def _steps(v: list[str]) -> str | None:
    for step in v:
        if problem := _name(step):
            return f"step {problem}"
        if step not in STEPS:
            return f"unknown step {step!r}; known steps: {', '.join(STEPS)}"
    return f"must not repeat a step, got {v}" if len(set(v)) != len(v) else None


def _next_model(v: str) -> str | None:
    # "" means no switch; whether Triton serves the model is checked by the coordinator's switcher
    return None if v == "" else _name(v)


def _period(v: float) -> str | None:
    if v == 0:  # the reconciler is off
        return None
    ok = math.isfinite(v) and 1.0 <= v <= 86_400.0
    return None if ok else f"must be 0 (off) or 1..86400 seconds, got {v}"


def _grace(v: float) -> str | None:
    ok = math.isfinite(v) and 1.0 <= v <= 30 * 86_400.0
    return None if ok else f"must be 1 second .. 30 days, got {v}"


def _any(_: Any) -> str | None:
    return None


# one rule per field: the type is already checked by msgspec; these are the limits that keep the mesh sane
RULES: dict[str, Rule] = {
    "active_model": _name,
    "max_upload_bytes": _int_range(1, 1 << 40),
    "max_pixels": _int_range(1, 1 << 36),
    "default_k": _int_range(1, 10_000),
    "max_k": _int_range(1, 10_000),
    "coordinator_concurrency": _int_range(1, 1024),
    "max_deliver": _int_range(1, 100),
    "backoff_s": _backoff,
    "ef_runtime": _int_range(1, 100_000),
    "near_duplicate_threshold": _threshold,
    "pipeline_steps": _steps,
    "next_model": _next_model,
    "exif_keep_gps": _any,  # a bool: the type check is the whole rule
    "moderation_rules": rules_problem,
    "label_min_score": _threshold,  # > 0: a label needs some evidence
    "label_max_count": _int_range(0, 100),  # 0: no labels kept
    "reconcile_period_s": _period,
    "reconcile_grace_s": _grace,
    "max_backlog": _int_range(0, 1 << 40),  # 0: no limit
}


def _type_reason(e: msgspec.ValidationError, key: str) -> str:
    # msgspec says "Expected `int`, got `str` - at `$.max_k`": the key is named already; keep a deeper path
    reason, _, where = str(e).partition(" - at ")
    return reason if where in ("", f"`$.{key}`") else f"{reason} at {where}"


def check_field(key: str, value: Any, base: MeshConfig) -> MeshConfig:
    """``base`` with ``key`` set to ``value`` if the value has the field's type and passes its rule.

    Raises ``InvalidConfig`` otherwise. Cross-field rules are not checked here (see ``check_document``).
    """
    if key not in FIELDS:
        raise InvalidConfig(key, f"unknown key; known keys: {', '.join(FIELDS)}")
    try:
        cfg = msgspec.convert(msgspec.structs.asdict(base) | {key: value}, MeshConfig, strict=True)
    except msgspec.ValidationError as e:
        raise InvalidConfig(key, _type_reason(e, key)) from None
    rule = RULES.get(key)
    if rule is not None and (problem := rule(getattr(cfg, key))):
        raise InvalidConfig(key, problem)
    return cfg


def check_document(cfg: MeshConfig) -> list[str]:
    """Problems between fields (each field on its own being valid)."""
    problems = []
    if cfg.default_k > cfg.max_k:
        problems.append(f"default_k ({cfg.default_k}) must not exceed max_k ({cfg.max_k})")
    return problems


def apply_change(current: MeshConfig, key: str, value: Any) -> MeshConfig:
    """The configuration after ``config.set key value``, or ``InvalidConfig`` with the reason."""
    cfg = check_field(key, value, current)
    if problems := check_document(cfg):
        raise InvalidConfig(key, "; ".join(problems))
    if key == "next_model" and cfg.next_model == cfg.active_model:
        # only when setting next_model: the switch's swap writes active_model = next_model, then clears it
        raise InvalidConfig(key, f"{cfg.next_model!r} is already the active model")
    return cfg


def decode_stored(key: str, raw: bytes) -> Any:
    """A value as stored in the bucket (JSON); a bare word is taken as a string for string fields."""
    try:
        return msgspec.json.decode(raw)
    except msgspec.DecodeError:
        if FIELDS.get(key) is str:  # operators forget the quotes: nats kv put config active_model clip
            return raw.decode("utf-8", "replace").strip()
        raise InvalidConfig(key, f"stored value is not JSON: {raw[:64]!r}") from None


def assemble(stored: Mapping[str, bytes], defaults: MeshConfig) -> tuple[MeshConfig, list[InvalidConfig]]:
    """The configuration from the bucket's raw values; a missing or invalid key falls back to its default.

    Returns the configuration and the problems found (for the caller to log).
    """
    values = msgspec.structs.asdict(defaults)
    problems: list[InvalidConfig] = []
    for key, raw in stored.items():
        try:
            values[key] = getattr(check_field(key, decode_stored(key, raw), defaults), key)
        except InvalidConfig as e:
            problems.append(e)
    cfg = msgspec.convert(values, MeshConfig, strict=True)
    if cfg.default_k > cfg.max_k:  # the only cross-field rule; clamping keeps both operator values meaningful
        problems.append(InvalidConfig("default_k", check_document(cfg)[0] + "; using max_k"))
        cfg = msgspec.structs.replace(cfg, default_k=cfg.max_k)
    return cfg, problems


def assemble_entries(
    entries: Mapping[str, tuple[bytes, int]], defaults: MeshConfig, reported: set[tuple[str, int]]
) -> tuple[MeshConfig, list[InvalidConfig]]:
    """``assemble`` over ``{key: (raw value, revision)}``, returning only the problems not reported yet.

    ``reported`` holds the ``(key, revision)`` of the bad values already returned; the new ones are added, so
    a reader that assembles on every read or every change logs each bad revision once.
    """
    cfg, problems = assemble({k: raw for k, (raw, _) in entries.items()}, defaults)
    fresh = []
    for p in problems:
        mark = (p.key, entries.get(p.key, (b"", 0))[1])
        if mark not in reported:
            reported.add(mark)
            fresh.append(p)
    return cfg, fresh


def redact(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` with secrets replaced by ``***``: secret-named keys and the credentials inside URLs."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if value and any(word in key.lower() for word in SECRET_WORDS):
            out[key] = REDACTED
        elif isinstance(value, str) and "://" in value:
            parts = urlsplit(value)
            if parts.username or parts.password:
                host = parts.netloc.rsplit("@", 1)[-1]
                value = urlunsplit(parts._replace(netloc=f"{REDACTED}@{host}"))
            out[key] = value
        else:
            out[key] = value
    return out


def redacted_settings(s: Settings) -> dict[str, Any]:
    """This process's settings (with the derived server addresses), secrets redacted."""
    values = s.model_dump(mode="json") | {
        "nats_server_url": s.nats_server_url,
        "redis_server_url": s.redis_server_url,
        "s3_server_url": s.s3_server_url,
        "triton_grpc_url": s.triton_grpc_url,
    }
    return redact(values)
