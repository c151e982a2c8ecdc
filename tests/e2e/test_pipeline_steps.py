"""Pipeline steps from the Config DB, against the whole real mesh: ``exif`` and ``moderation``.

Each test sets ``pipeline_steps`` (and ``moderation_rules``) through the config service and restores them in
``finally``; the makes are unique per run, so filters only ever see this run's images.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import uuid
from collections.abc import AsyncIterator
from fractions import Fraction
from typing import Any

import httpx
import numpy as np
from nats.aio.client import Client
from PIL import ExifTags, Image

from actors.adapters.config_client import ConfigClient
from actors.errors import ServiceCallError
from tests.helpers import upload_id, wait_status

SEED_STATES = ["pending", "processing", "embedded", "indexed", "done"]


def photo_with_exif(
    seed: int, make: str, model: str, taken: str, size: tuple[int, int] = (256, 192)
) -> bytes:
    """A JPEG with a camera, a time and a GPS position in its EXIF (built with Pillow's ``Image.Exif``)."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 255, (size[1] // 16, size[0] // 16, 3), dtype="uint8")
    img = Image.fromarray(pixels).resize(size, Image.Resampling.BICUBIC)
    exif = Image.Exif()
    exif[ExifTags.Base.Make] = make
    exif[ExifTags.Base.Model] = model
    exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.DateTimeOriginal] = taken
    exif.get_ifd(ExifTags.IFD.GPSInfo).update(
        {
            ExifTags.GPS.GPSLatitudeRef: "N",
            ExifTags.GPS.GPSLatitude: (Fraction(48), Fraction(51), Fraction(24)),
            ExifTags.GPS.GPSLongitudeRef: "E",
            ExifTags.GPS.GPSLongitude: (Fraction(2), Fraction(21), Fraction(3)),
        }
    )
    out = io.BytesIO()
    img.save(out, "JPEG", quality=90, exif=exif)
    return out.getvalue()


@contextlib.asynccontextmanager
async def config_values(nc: Client, **values: Any) -> AsyncIterator[None]:
    """Set config keys for a test; restore their previous values after.

    No wait: the coordinator follows the Config DB with a KV watch, so a value written here reaches it long
    before a job of an upload made after ``config.set`` returned (a browser-form upload, an S3 put, a record
    and a JetStream round trip later)."""
    config = ConfigClient(nc)
    before = await config.get()
    try:
        for key, value in values.items():
            await config.set(key, value)
        yield
    finally:
        for key in reversed(values):
            await config.set(key, getattr(before, key))


async def test_exif_step_records_the_camera_not_the_place(client: httpx.AsyncClient, ops_nc: Client) -> None:
    run = uuid.uuid4().hex[:8]
    make, other = f"Canon-{run}", f"Nikon-{run}"
    images = [
        photo_with_exif(1, make, "EOS R5", "2023:06:01 10:00:00"),
        photo_with_exif(2, make, "EOS R6", "2023:06:02 11:30:15"),
        photo_with_exif(3, other, "Z 9", "2022:01:31 23:59:59"),
    ]
    async with config_values(ops_nc, pipeline_steps=["exif"]):
        ids = await asyncio.gather(*(upload_id(client, d, metadata={"run": run}) for d in images))
        records = await wait_status(client, list(ids), {"done"})

    rec = records[ids[0]]
    assert rec["metadata"] == {
        "run": run,
        "exif.make": make,
        "exif.model": "EOS R5",
        "exif.taken_at": "2023-06-01T10:00:00",
    }
    assert not any("gps" in key.lower() for key in rec["metadata"]), rec["metadata"]
    # the step's own history entry sits between processing and embedded; the seed's states keep their order
    history = rec["history"]
    assert [h["status"] for h in history if "status" in h] == SEED_STATES
    where = [h.get("status") or f"step:{h['step']}" for h in history]
    assert where.index("step:exif") == where.index("processing") + 1, where
    assert "step:exif" in where and where.index("step:exif") < where.index("embedded")

    # the stored bytes are the uploaded ones, GPS included: the step never changes them
    content = await client.get(f"/images/{ids[0]}/content")
    assert content.content == images[0]
    assert Image.open(io.BytesIO(content.content)).getexif().get_ifd(ExifTags.IFD.GPSInfo)

    # the EXIF fields are index tags: a filter on the make returns only images of that make
    r = await client.get(f"/images/{ids[0]}/similar", params={"k": 50, "filter": f"exif.make:{make}"})
    assert r.status_code == 200, r.text
    assert [h["image_id"] for h in r.json()["results"]] == [ids[1]]
    r = await client.get(f"/images/{ids[0]}/similar", params={"k": 50, "filter": f"exif.make:{other}"})
    assert [h["image_id"] for h in r.json()["results"]] == [ids[2]]
    r = await client.get(f"/images/{ids[0]}/similar", params={"k": 50, "filter": "exif.model:Z 9"})
    assert ids[2] in [h["image_id"] for h in r.json()["results"]]

    # steps run only when listed: an image uploaded now gets no EXIF fields
    later = await upload_id(
        client, photo_with_exif(4, make, "EOS R7", "2024:01:01 00:00:00"), metadata={"run": run}
    )
    assert (await wait_status(client, [later], {"done"}))[later]["metadata"] == {"run": run}


async def test_moderation_rejects_by_rule_and_flags_with_a_note(
    client: httpx.AsyncClient, ops_nc: Client
) -> None:
    run = uuid.uuid4().hex[:8]
    rules = ["max_aspect_ratio:4", f"reject_metadata:exif.make=Banned-{run}", "flag:min_side:1000"]
    async with config_values(ops_nc, pipeline_steps=["exif", "moderation"], moderation_rules=rules):
        wide = await upload_id(
            client, photo_with_exif(10, f"Ok-{run}", "m", "2020:01:01 00:00:00", size=(900, 200))
        )
        banned = await upload_id(client, photo_with_exif(11, f"Banned-{run}", "m", "2020:01:01 00:00:00"))
        flagged = await upload_id(client, photo_with_exif(12, f"Ok-{run}", "m", "2020:01:01 00:00:00"))
        records = await wait_status(client, [wide, banned, flagged], {"done", "error"})

    for image_id, rule in ((wide, "max_aspect_ratio:4"), (banned, f"reject_metadata:exif.make=Banned-{run}")):
        rec = records[image_id]
        assert rec["status"] == "error", rec
        assert rec["error"]["code"] == "moderation" and rule in rec["error"]["message"], rec["error"]
        notes = [h for h in rec["history"] if h.get("step") == "moderation"]
        assert notes and notes[-1]["outcome"] == "rejected" and notes[-1]["rule"] == rule
        r = await client.get(f"/images/{image_id}/similar")
        assert r.status_code == 409
    print(f"\nrejected: {records[wide]['error']['message']!r}")

    rec = records[flagged]
    assert rec["status"] == "done"
    note = next(h for h in rec["history"] if h.get("step") == "moderation")
    assert note["outcome"] == "flagged" and note["flags"][0]["rule"] == "flag:min_side:1000"
    assert [h["status"] for h in rec["history"] if "status" in h] == SEED_STATES


async def test_unknown_steps_and_bad_rules_are_refused_by_the_config_service(ops_nc: Client) -> None:
    config = ConfigClient(ops_nc)
    for key, value, says in (
        ("pipeline_steps", ["exif", "watermark"], "unknown step 'watermark'"),
        ("moderation_rules", ["min_side:tiny"], "is not a number"),
        ("next_model", "efficientnet_lite0", "already the active model"),
    ):
        try:
            await config.set(key, value)
        except ServiceCallError as e:
            assert e.code == "400" and says in e.description, e.description
        else:
            raise AssertionError(f"config.set {key}={value!r} was accepted")
