"""The library through the whole mesh: the listing (newest first, cursor pages, filters, file names) and the
thumbnails (made by the pipeline, served with ETag / immutable / 304, the 1024 px preview made on first
request, both deleted with their image)."""

from __future__ import annotations

import io
import uuid

import httpx
from PIL import Image

from actors.adapters.object_store import thumbnail_key
from actors.settings import Settings
from tests.helpers import s3_client, upload, wait_status
from tests.images import jpeg, photo


def big_photo(name: str, quality: int) -> bytes:
    """A photo larger than the preview (1500 px wide), bytes no other test sends."""
    img = photo(name)
    return jpeg(img.resize((1500, int(1500 * img.height / img.width))), quality=quality)


async def test_the_listing_pages_newest_first_with_names_sizes_and_thumbnails(
    client: httpx.AsyncClient,
) -> None:
    run = uuid.uuid4().hex[:12]
    ids = []
    for i, name in enumerate(("astronaut", "coffee", "chelsea")):
        r = await upload(client, big_photo(name, 80 + i), f"holiday/{name}.jpg", metadata={"run": run})
        assert r.status_code == 202, r.text
        ids.append(r.json()["image_id"])
    await wait_status(client, ids, {"done"}, timeout_s=120)

    r = await client.get("/images", params={"filter": f"run:{run}", "limit": 2})
    assert r.status_code == 200, r.text
    first = r.json()
    assert [i["image_id"] for i in first["images"]] == [ids[2], ids[1]]  # newest first
    item = first["images"][0]
    assert item["filename"] == "chelsea.jpg"  # the name as uploaded, its folder dropped
    assert item["status"] == "done" and item["size_bytes"] > 0 and item["width"] == 1500
    assert item["thumbnail_url"] == f"images/{ids[2]}/thumbnail" and item["created_at"] > 0
    assert first["next_cursor"]
    r = await client.get(
        "/images", params={"filter": f"run:{run}", "limit": 2, "cursor": first["next_cursor"]}
    )
    second = r.json()
    assert [i["image_id"] for i in second["images"]] == [ids[0]] and second["next_cursor"] is None
    r = await client.get("/images", params={"filter": f"run:{run}", "status": "error"})
    assert r.json()["images"] == []
    assert (await client.get("/images", params={"cursor": "garbage!"})).status_code == 400

    rec = (await client.get(f"/images/{ids[2]}")).json()
    assert rec["filename"] == "chelsea.jpg" and rec["thumbnail_url"] == f"images/{ids[2]}/thumbnail"
    assert "thumbnail_key" not in rec and "object_key" not in rec


async def test_thumbnails_are_cached_forever_and_deleted_with_their_image(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    r = await upload(client, big_photo("rocket", 83), "rocket.jpg")
    image_id = r.json()["image_id"]
    await wait_status(client, [image_id], {"done"}, timeout_s=120)

    r = await client.get(f"/images/{image_id}/thumbnail")
    assert r.status_code == 200 and r.headers["content-type"] == "image/webp"
    assert "immutable" in r.headers["cache-control"] and r.headers["etag"]
    with Image.open(io.BytesIO(r.content)) as img:
        assert img.format == "WEBP" and max(img.size) == 256
    again = await client.get(f"/images/{image_id}/thumbnail", headers={"If-None-Match": r.headers["etag"]})
    assert again.status_code == 304 and again.content == b""

    s3 = s3_client(settings)
    preview_key = thumbnail_key(image_id, 1024)
    assert s3.list_objects_v2(Bucket=settings.s3_bucket, Prefix=preview_key).get("KeyCount") == 0
    big = await client.get(f"/images/{image_id}/thumbnail", params={"size": 1024})
    assert big.status_code == 200
    with Image.open(io.BytesIO(big.content)) as img:
        assert max(img.size) == 1024
    assert s3.list_objects_v2(Bucket=settings.s3_bucket, Prefix=preview_key).get("KeyCount") == 1  # kept
    assert (await client.get(f"/images/{image_id}/thumbnail", params={"size": 512})).status_code == 400
    cached = await client.get(f"/images/{image_id}/thumbnail", params={"size": 1024})
    assert cached.content == big.content and cached.headers["etag"] == big.headers["etag"]

    assert (await client.delete(f"/images/{image_id}")).status_code == 204
    for side in (256, 1024):
        key = thumbnail_key(image_id, side)
        assert s3.list_objects_v2(Bucket=settings.s3_bucket, Prefix=key).get("KeyCount") == 0, key
    assert (await client.get(f"/images/{image_id}/thumbnail")).status_code == 404
