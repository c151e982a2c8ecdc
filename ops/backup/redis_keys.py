"""The Redis half of a backup: every image's keys dumped together, atomically, and restored as they were.

An image's keys (``P`` is ``settings.redis_prefix``; ``actors/adapters/workflow_store.py`` has the layout) are
its record ``P:image:<id>``, its history, its sha claim, its copy verdicts, and its embedding and vector under
each model. One Lua script dumps a batch of images (``DUMP``, Redis's own serialisation, which ``RESTORE``
takes back), so each image is copied at one instant: its record and its vector agree. Besides the images, the
copy checker's queue, the model switches' progress and the layout hash are kept; what only describes running
processes (leases, upload intents, gateways' liveness, reconcile cursors) is not.

The file is a sequence of frames: a 4-byte big-endian length, then a msgpack ``[key, payload]``.
"""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import msgspec
import redis.asyncio as aioredis

from actors.contract import layout_key

BATCH = 50  # images per script call: a few hundred KB of reply
THUMBNAIL_TYPE, FEATURES_TYPE = (
    "image/webp",
    "application/octet-stream",
)  # as actors/pipeline_io.py stores them
_FRAME = struct.Struct(">I")

# KEYS: record keys; ARGV[1]: the prefix, ARGV[2..]: the models. Per image: id, status, the three object keys
# it names, its model and content type, then (key, dump) pairs of the keys that exist. A key that vanished
# since the SCAN is skipped.
_DUMP_IMAGES = """
local prefix = ARGV[1]
local out = {}
for _, rec in ipairs(KEYS) do
  if redis.call('TYPE', rec).ok == 'hash' then
    local id = string.sub(rec, #prefix + 8)
    local f = redis.call('HMGET', rec, 'status', 'sha256', 'object_key', 'thumbnail_key', 'copy_features_key',
                         'model', 'content_type')
    local keys = {rec, rec .. ':history', prefix .. ':copies:' .. id}
    if f[2] then table.insert(keys, prefix .. ':sha:' .. f[2]) end
    for m = 2, #ARGV do
      table.insert(keys, prefix .. ':emb:' .. ARGV[m] .. ':' .. id)
      table.insert(keys, prefix .. ':vec:' .. ARGV[m] .. ':' .. id)
    end
    local entry = {id, f[1] or '', f[3] or '', f[4] or '', f[5] or '', f[6] or '', f[7] or ''}
    for _, k in ipairs(keys) do
      local d = redis.call('DUMP', k)
      if d then
        table.insert(entry, k)
        table.insert(entry, d)
      end
    end
    table.insert(out, entry)
  end
end
return out
"""


@dataclass
class ImageDump:
    """One image as the script saw it: its state, the objects its record names, and its keys' dumps."""

    image_id: str
    status: str
    model: str
    objects: dict[str, str]  # object key -> its content type
    keys: list[tuple[bytes, bytes]]

    def has_key(self, key: str) -> bool:
        return any(k == key.encode() for k, _ in self.keys)


def _text(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v


async def dump_images(redis: aioredis.Redis, prefix: str, models: list[str]) -> AsyncIterator[ImageDump]:
    """Every image record under ``prefix``, batch by batch, each image's keys dumped at one instant."""
    script = redis.register_script(_DUMP_IMAGES)
    batch: list[bytes] = []
    async for key in redis.scan_iter(match=f"{prefix}:image:*", count=500, _type="hash"):
        batch.append(key)
        if len(batch) >= BATCH:
            for image in await _dump_batch(script, batch, prefix, models):
                yield image
            batch = []
    if batch:
        for image in await _dump_batch(script, batch, prefix, models):
            yield image


async def _dump_batch(script: object, keys: list[bytes], prefix: str, models: list[str]) -> list[ImageDump]:
    rows = await script(keys=keys, args=[prefix, *models])  # type: ignore[operator]
    out = []
    for row in rows:
        image_id, status, original, thumb, features, model, content_type = (_text(v) for v in row[:7])
        pairs = row[7:]
        objects = {original: content_type, thumb: THUMBNAIL_TYPE, features: FEATURES_TYPE}
        out.append(
            ImageDump(
                image_id=image_id,
                status=status,
                model=model,
                objects={k: t for k, t in objects.items() if k},
                keys=[(bytes(pairs[i]), bytes(pairs[i + 1])) for i in range(0, len(pairs), 2)],
            )
        )
    return out


async def dump_others(redis: aioredis.Redis, prefix: str) -> list[tuple[bytes, bytes]]:
    """The keys kept besides the images': the copy checker's queue, the switches' progress, the layout."""
    keys = [f"{prefix}:copyq".encode(), layout_key(prefix).encode()]
    async for key in redis.scan_iter(match=f"{prefix}:switch:*", count=500):
        if not key.endswith(b":lease"):
            keys.append(key)
    out = []
    for key in keys:
        payload = await redis.dump(key)
        if payload is not None:
            out.append((key, bytes(payload)))
    return out


class FrameWriter:
    """Appends ``[key, payload]`` frames to a file."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self._enc = msgspec.msgpack.Encoder()
        self.count = 0

    def write(self, key: bytes, payload: bytes) -> None:
        data = self._enc.encode([key, payload])
        self._f.write(_FRAME.pack(len(data)))
        self._f.write(data)
        self.count += 1


def read_frames(path: Path) -> Iterator[tuple[bytes, bytes]]:
    """The frames of a file written by ``FrameWriter``; a cut file raises ``ValueError``."""
    dec = msgspec.msgpack.Decoder(tuple[bytes, bytes])
    with path.open("rb") as f:
        while head := f.read(_FRAME.size):
            if len(head) < _FRAME.size:
                raise ValueError(f"{path}: cut in a frame header")
            (n,) = _FRAME.unpack(head)
            data = f.read(n)
            if len(data) < n:
                raise ValueError(f"{path}: cut in a frame")
            yield dec.decode(data)


async def restore_keys(redis: aioredis.Redis, path: Path, *, batch: int = 200) -> int:
    """``RESTORE`` every frame of ``path`` (replacing a key that exists: the layout hash a fresh stack's
    start-up wrote); returns how many keys."""
    n = 0
    pipe = redis.pipeline(transaction=False)
    for key, payload in read_frames(path):
        pipe.restore(key, 0, payload, replace=True)
        n += 1
        if n % batch == 0:
            await pipe.execute()
    await pipe.execute()
    return n
