"""The config actor: owner of the Config DB, a NATS KV bucket with one JSON value per ``MeshConfig`` field.

- On start it creates the bucket if missing and seeds every absent key from settings (never overwriting).
- ``config.get`` answers the current ``MeshConfig``; ``config.set`` changes one key after validating it
  (types from the msgspec schema, then the sanity rules below) and refuses a bad value with a 400 naming the
  key and the reason; nothing is written then.
- ``GET /config`` on its HTTP port shows the config and this process's settings, secrets redacted.

Every read goes to the bucket (one direct get per key, a few ms), so an operator's
``nats kv put config max_k 50`` is seen at once and replicas never disagree; readers cache through
``ConfigClient``. A bad value written there directly is logged and replaced by that key's default: it never
crashes a reader.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import msgspec
import structlog
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from actors import contract
from actors.adapters.config_client import mesh_config_defaults
from actors.contract import ConfigGet, ConfigSet, MeshConfig
from actors.errors import PermanentError, RetryableError
from actors.runtime import ActorProcess, typed
from actors.settings import Settings
from actors.steps import STEPS
from actors.steps.moderation import rules_problem

log = structlog.get_logger("config")

FIELDS: dict[str, Any] = {f.name: f.type for f in msgspec.structs.fields(MeshConfig)}
BUCKET_HISTORY = 10  # enough to see (and restore by hand) the last few changes of each key
SET_ATTEMPTS = 3
REDACTED = "***"
SECRET_WORDS = ("password", "secret", "api_key", "access_key", "token")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")  # model and step names end up in index names


class InvalidConfig(PermanentError):
    """A config value the actor refuses (answered as a 400 service error naming the key and the reason)."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"invalid config {key!r}: {reason}")
        self.key = key
        self.reason = reason


# --- validation (pure) ------------------------------------------------------------------------------------
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


def assemble(stored: dict[str, bytes], defaults: MeshConfig) -> tuple[MeshConfig, list[InvalidConfig]]:
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


# --- the Config DB ------------------------------------------------------------------------------------------
class ConfigStore:
    """The Config DB in a NATS KV bucket: one key per ``MeshConfig`` field, JSON values."""

    def __init__(self, kv: KeyValue, defaults: MeshConfig) -> None:
        self.kv = kv
        self.defaults = defaults
        self._write_lock = asyncio.Lock()  # sets in this process validate against each other's result
        self._reported: set[tuple[str, int]] = set()  # (key, revision) of bad stored values already logged

    @classmethod
    async def open(cls, js: JetStreamContext, bucket: str, defaults: MeshConfig) -> ConfigStore:
        """The bucket, created (file storage, with history) when missing."""
        try:
            kv = await js.key_value(bucket)
        except BucketNotFoundError:
            kv = await js.create_key_value(
                KeyValueConfig(
                    bucket=bucket,
                    description="image mesh runtime configuration (config actor)",
                    history=BUCKET_HISTORY,
                    storage=StorageType.FILE,
                    direct=True,
                )
            )
            log.info("config.bucket_created", bucket=bucket)
        return cls(kv, defaults)

    async def seed(self) -> list[str]:
        """Write the defaults of the keys that are absent; returns the keys written."""
        seeded = []
        for key, value in msgspec.structs.asdict(self.defaults).items():
            try:
                await self.kv.create(key, msgspec.json.encode(value))
            except KeyWrongLastSequenceError:
                continue  # already set (by an earlier start or an operator): never overwrite
            seeded.append(key)
        return seeded

    async def _entries(self) -> dict[str, tuple[bytes, int]]:
        async def one(key: str) -> tuple[str, bytes | None, int]:
            try:
                entry = await self.kv.get(key)
            except KeyNotFoundError:
                return key, None, 0
            return key, entry.value or b"", entry.revision or 0

        try:
            got = await asyncio.gather(*(one(k) for k in FIELDS))
        except NatsError as e:
            raise RetryableError(f"config bucket unavailable: {e!r}") from e
        return {key: (raw, rev) for key, raw, rev in got if raw is not None}

    def _assemble(self, entries: dict[str, tuple[bytes, int]]) -> MeshConfig:
        cfg, problems = assemble({k: raw for k, (raw, _) in entries.items()}, self.defaults)
        for p in problems:
            mark = (p.key, entries.get(p.key, (b"", 0))[1])
            if mark not in self._reported:  # once per bad revision, not on every read
                self._reported.add(mark)
                log.warning("config.invalid_stored_value", key=p.key, reason=p.reason, using="default")
        return cfg

    async def read(self) -> MeshConfig:
        """The current configuration (missing or invalid keys at their defaults)."""
        return self._assemble(await self._entries())

    async def set(self, key: str, value: Any) -> MeshConfig:
        """Validate and write one key; the write only lands if nobody changed that key since it was read."""
        async with self._write_lock:
            for _ in range(SET_ATTEMPTS):
                entries = await self._entries()
                cfg = apply_change(self._assemble(entries), key, value)
                data = msgspec.json.encode(getattr(cfg, key))
                revision = entries.get(key, (b"", 0))[1]
                try:
                    if revision:
                        await self.kv.update(key, data, last=revision)
                    else:
                        await self.kv.create(key, data)
                except KeyWrongLastSequenceError:
                    continue  # another writer (an operator, a replica) got there first: validate again
                except NatsError as e:
                    raise RetryableError(f"config bucket unavailable: {e!r}") from e
                log.info("config.set", key=key, value=getattr(cfg, key))
                return cfg
        raise RetryableError(f"config.set {key}: the key kept changing under concurrent writers; try again")


# --- the actor ----------------------------------------------------------------------------------------------
def add_routes(app: FastAPI, store: ConfigStore, settings: Settings) -> None:
    """``GET /config``: the current configuration and this process's settings, secrets redacted."""

    @app.get("/config")
    async def get_config() -> Any:
        try:
            cfg = await store.read()
        except RetryableError as e:
            return JSONResponse({"error": {"code": e.code, "message": e.message}}, status_code=503)
        return {
            "bucket": settings.config_bucket,
            "config": msgspec.to_builtins(cfg),
            "settings": redacted_settings(settings),
        }


async def start(proc: ActorProcess) -> ConfigStore:
    """Open and seed the Config DB, then serve ``config.get``/``config.set`` and ``GET /config``."""
    s = proc.settings
    store = await ConfigStore.open(proc.nc.jetstream(), s.config_bucket, mesh_config_defaults(s))
    seeded = await store.seed()
    log.info("config.seeded", bucket=s.config_bucket, keys=seeded)

    async def handle_get(_: ConfigGet) -> MeshConfig:
        return await store.read()

    async def handle_set(req: ConfigSet) -> MeshConfig:
        return await store.set(req.key, req.value)

    add_routes(proc.http, store, s)
    await proc.add_service(
        contract.CONFIG_SERVICE,
        "Runtime configuration of the mesh (Config DB in NATS KV)",
        {
            contract.CONFIG_GET: typed(handle_get, ConfigGet),
            contract.CONFIG_SET: typed(handle_set, ConfigSet),
        },
    )
    return store


async def main(settings: Settings) -> None:
    """``python -m actors config``: run until SIGTERM, then drain."""
    async with ActorProcess("config", settings, settings.config_http_port) as proc:
        await start(proc)
        await proc.stopped()
