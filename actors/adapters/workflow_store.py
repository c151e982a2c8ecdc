"""The Workflow DB: one record per image in Redis, with its state, a timestamped history and its embedding.

Keys (``P`` is ``settings.redis_prefix``):
  ``P:image:<id>``          hash: the record's fields (see ``ImageRecord``), and ``mtags``/``ltags``: its metadata
                            and labels as tag items, for the library's listing (``record_index``)
  ``P:image:<id>:history``  list of JSON ``{"status", "at", ...}``, oldest first
  ``P:sha:<sha256>``        the image id that owns these bytes (de-duplication)
  ``P:emb:<model>:<id>``    float32 bytes of the image's embedding under a model
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from contextlib import AbstractContextManager
from typing import Any

import msgspec
import numpy as np
import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError
from redis.typing import EncodableT, FieldT

from actors.adapters.redis_client import redis_client
from actors.adapters.redis_errors import redis_errors
from actors.adapters.vector_index.names import tags_field
from actors.contract import LAYOUT, Cause, ImageRecord, Label, Status

log = structlog.get_logger("workflow_store")

# Claim the sha and write the record in one step, so two concurrent uploads of the same bytes make one record.
_CREATE = """
local owner = redis.call('GET', KEYS[1])
if owner and redis.call('EXISTS', ARGV[4] .. owner) == 1 then return owner end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[2], unpack(cjson.decode(ARGV[2])))
redis.call('RPUSH', KEYS[3], ARGV[3])
return false
"""

# Set fields of a record that exists: a late writer (a background check, a re-embed) must never bring back, as a
# hash of a few fields, a record that was deleted meanwhile.
_UPDATE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], unpack(cjson.decode(ARGV[1])))
return 1
"""

_JSON_FIELDS = ("metadata", "error", "labels")
_INT_FIELDS = ("size_bytes", "width", "height", "embedding_dim", "attempt", "job_seq")
_FLOAT_FIELDS = ("created_at", "updated_at")
_OPTIONAL_TEXT_FIELDS = ("model",)  # stored as "" when None


def _text(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v


METADATA_TAGS, LABEL_TAGS = "mtags", "ltags"  # the record's tag items (``record_index``'s filters)


def _label_names(labels: list[Label] | list[dict[str, Any]] | None) -> list[str]:
    return [x.name if isinstance(x, Label) else str(x["name"]) for x in labels or []]


def _dump(fields: dict[str, Any]) -> dict[FieldT, EncodableT]:
    out: dict[FieldT, EncodableT] = {}
    if "metadata" in fields:
        out[METADATA_TAGS] = tags_field({str(k): str(v) for k, v in (fields["metadata"] or {}).items()})
    if "labels" in fields:
        out[LABEL_TAGS] = tags_field({}, _label_names(fields["labels"]))
    for k, v in fields.items():
        if k in _JSON_FIELDS:
            out[k] = json.dumps(msgspec.to_builtins(v))
        elif v is None:
            out[k] = ""
        else:
            out[k] = str(v.value if isinstance(v, Status) else v)
    return out


def _vector(raw: bytes | str | None) -> np.ndarray | None:
    return None if raw is None else np.frombuffer(raw if isinstance(raw, bytes) else raw.encode(), np.float32)


def _load(raw: dict[bytes, bytes]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kb, vb in raw.items():
        k, v = kb.decode(), vb.decode()
        if k in (METADATA_TAGS, LABEL_TAGS):
            continue
        if k in _JSON_FIELDS:
            out[k] = json.loads(v) if v else None
        elif k in _INT_FIELDS:
            out[k] = int(v) if v else None
        elif k in _FLOAT_FIELDS:
            out[k] = float(v)
        elif k in _OPTIONAL_TEXT_FIELDS:
            out[k] = v or None
        else:
            out[k] = v
    return out


def _store_errors(op: str) -> AbstractContextManager[None]:
    """Redis failures as the coordinator must see them: an outage, or a permission refused (an operator's ACL
    fix away: the jobs wait instead of being dead-lettered), is ``RetryableError``; a bug (wrong type, bad
    command) propagates as it is (the coordinator's "crashed" path: redelivered, dead-lettered at the end)."""
    return redis_errors(f"workflow store {op}", permission_is_outage=True)


class WorkflowStore:
    """Image records in Redis. Outages and permission refusals surface as ``RetryableError``."""

    def __init__(self, url: str, prefix: str = "mesh") -> None:
        self._redis: aioredis.Redis = redis_client(url)
        self._p = prefix
        self._create = self._redis.register_script(_CREATE)
        self._update = self._redis.register_script(_UPDATE)

    async def close(self) -> None:
        await self._redis.aclose()

    def _key(self, image_id: str) -> str:
        return f"{self._p}:image:{image_id}"

    def _sha_key(self, sha256: str) -> str:
        return f"{self._p}:sha:{sha256}"

    def _emb_key(self, model: str, image_id: str) -> str:
        return f"{self._p}:emb:{model}:{image_id}"

    async def ping(self) -> str | None:
        try:
            await self._redis.ping()
        except RedisError as e:
            return f"redis: {type(e).__name__}"
        return None

    async def create(self, rec: ImageRecord) -> str | None:
        """Store a new pending record unless these bytes already have one; returns the owner's id if so."""
        fields = _dump(msgspec.structs.asdict(rec) | {"history": None, "layout": LAYOUT})
        fields.pop("history")
        flat = [x for kv in fields.items() for x in kv]
        entry = json.dumps(
            {
                "status": rec.status.value,
                "at": rec.created_at,
                "cause": Cause.UPLOAD.value,
                "attempt": rec.attempt,
            }
        )
        keys = [self._sha_key(rec.sha256), self._key(rec.image_id), self._key(rec.image_id) + ":history"]
        with _store_errors("create"):
            owner = await self._create(
                keys=keys, args=[rec.image_id, json.dumps(flat), entry, f"{self._p}:image:"]
            )
        return _text(owner) if owner else None

    async def owner_of(self, sha256: str) -> str | None:
        with _store_errors("owner_of"):
            owner = await self._redis.get(self._sha_key(sha256))
        return _text(owner) if owner else None

    async def get(self, image_id: str) -> ImageRecord | None:
        with _store_errors("get"):
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.hgetall(self._key(image_id))
                pipe.lrange(self._key(image_id) + ":history", 0, -1)
                raw, history = await pipe.execute()
        if not raw:
            return None
        fields = _load(raw)
        fields["history"] = [json.loads(h) for h in history]
        try:
            return msgspec.convert(fields, ImageRecord, strict=False)
        except msgspec.ValidationError as e:  # a hash that is no whole record (an older writer's leftover)
            log.warning("workflow_store.bad_record", image_id=image_id, error=str(e), fields=sorted(fields))
            return None

    async def transition(
        self, image_id: str, status: Status, *, provenance: Mapping[str, Any] | None = None, **fields: Any
    ) -> float:
        """Move a record to ``status`` (with extra fields) and append to its history; returns the time.

        ``provenance`` (``cause``, ``attempt``, ``delivery``, ``job_seq``) goes into the history entry only."""
        at = time.time()
        entry: dict[str, Any] = {"status": status.value, "at": at}
        if fields.get("error") is not None:
            entry["error"] = msgspec.to_builtins(fields["error"])
        entry.update(provenance or {})
        return await self._write(image_id, {"status": status, "updated_at": at, **fields}, entry)

    async def note(self, image_id: str, step: str, **detail: Any) -> float:
        """Append a pipeline step's own entry to the history without changing the state."""
        at = time.time()
        return await self._write(image_id, {"updated_at": at}, {"step": step, "at": at, **detail})

    async def update(self, image_id: str, **fields: Any) -> None:
        """Set fields without a history entry, on a record that exists (a deleted one stays deleted)."""
        flat = [x for kv in _dump(fields).items() for x in kv]
        if not flat:
            return
        with _store_errors("update"):
            await self._update(
                keys=[self._key(image_id)],
                args=[json.dumps([_text(x) if isinstance(x, bytes) else x for x in flat])],
            )

    async def _write(self, image_id: str, fields: dict[str, Any], entry: dict[str, Any] | None) -> float:
        with _store_errors("write"):
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hset(self._key(image_id), mapping=_dump(fields))
                if entry is not None:
                    pipe.rpush(self._key(image_id) + ":history", json.dumps(entry))
                await pipe.execute()
        return float(fields.get("updated_at", time.time()))

    async def set_embedding(self, model: str, image_id: str, vector: np.ndarray) -> None:
        with _store_errors("set_embedding"):
            await self._redis.set(self._emb_key(model, image_id), vector.astype(np.float32).tobytes())

    async def get_embedding(self, model: str, image_id: str) -> np.ndarray | None:
        with _store_errors("get_embedding"):
            raw = await self._redis.get(self._emb_key(model, image_id))
        return _vector(raw)

    async def status_and_embedding(
        self, image_id: str, model: str
    ) -> tuple[Status | None, np.ndarray | None]:
        """The image's state (None: no such image) and its vector under ``model``, in one round trip: all
        that a similarity query by image needs (``get`` would also read every field and the history)."""
        with _store_errors("status_and_embedding"):
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.hget(self._key(image_id), "status")
                pipe.get(self._emb_key(model, image_id))
                status, raw = await pipe.execute()
        return (None if status is None else Status(status.decode()), _vector(raw))

    def status_and_embedding_keys(self, image_id: str, model: str) -> tuple[str, str]:
        """The keys ``status_and_embedding`` reads (the record's hash, the vector): for a reader that reads
        them in Redis itself (the vector index's search by a stored image, ``VectorIndex.similar_to_stored``)."""
        return self._key(image_id), self._emb_key(model, image_id)

    async def delete(self, image_id: str, sha256: str | None = None) -> None:
        """Remove a record, its history, its embeddings and (when it owns it) its sha claim."""
        with _store_errors("delete"):
            keys = [self._key(image_id), self._key(image_id) + ":history"]
            async for k in self._redis.scan_iter(match=f"{self._p}:emb:*:{image_id}", count=500):
                keys.append(_text(k))
            if sha256 and await self.owner_of(sha256) == image_id:
                keys.append(self._sha_key(sha256))
            await self._redis.delete(*keys)

    async def scan_ids(self, cursor: int, count: int) -> tuple[int, list[str]]:
        """One ``SCAN`` step over the records: the next cursor (0: the scan is complete) and the ids found.
        A bounded, resumable walk for the reconciler; an id may come twice in one walk (SCAN's guarantee)."""
        with _store_errors("scan_ids"):
            nxt, keys = await self._redis.scan(cursor, match=f"{self._p}:image:*", count=count, _type="hash")
        return int(nxt), [_text(k).rsplit(":", 1)[1] for k in keys]

    async def existing(self, image_ids: Iterable[str]) -> set[str]:
        """Which of these images have a record (one pipelined round trip)."""
        ids = list(image_ids)
        if not ids:
            return set()
        with _store_errors("existing"):
            async with self._redis.pipeline(transaction=False) as pipe:
                for image_id in ids:
                    pipe.exists(self._key(image_id))
                found = await pipe.execute()
        return {i for i, n in zip(ids, found, strict=True) if n}

    async def ids_in_status(self, status: Status, limit: int = 10_000) -> list[str]:
        """Image ids whose record is in ``status`` (a scan: for operators' replay, not a hot path)."""
        found: list[str] = []
        with _store_errors("ids_in_status"):
            async for key in self._redis.scan_iter(match=f"{self._p}:image:*", count=1000):
                k = _text(key)
                if k.endswith(":history"):
                    continue
                st = await self._redis.hget(k, "status")
                if st is not None and _text(st) == status.value:
                    found.append(k.rsplit(":", 1)[1])
                    if len(found) >= limit:
                        break
        return found
