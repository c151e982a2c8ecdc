"""A Python client generated from the live ``/openapi.json`` (openapi-python-client) drives the real stack:
upload, get, similar, search by text and by image, delete.

What it shows: the document is complete enough for a generator (no warning: ``--fail-on-warning``), the
``operationId``s name the client's functions, and every reply parses into its generated model with nothing
left over (``additional_properties`` empty) and nothing lost (``to_dict()`` is the JSON the gateway sent).
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.corpus import jpeg
from tests.helpers import wait_until

PACKAGE = "generated_mesh_client"
CONFIG = f"""\
project_name_override: {PACKAGE}
package_name_override: {PACKAGE}
post_hooks: []
content_type_overrides:
  "image/*": application/octet-stream
  image/webp: application/octet-stream
"""


@pytest.fixture(scope="module")
def generated(base_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The client package, generated into a temporary folder from the running gateway's document."""
    root = tmp_path_factory.mktemp("openapi-client")
    (root / "openapi.json").write_text(json.dumps(httpx.get(f"{base_url}/openapi.json", timeout=30).json()))
    (root / "config.yaml").write_text(CONFIG)
    started = time.monotonic()
    generate = ["generate", "--path", "openapi.json", "--output-path", PACKAGE, "--meta", "none"]
    subprocess.run(
        [
            sys.executable,
            "-m",
            "openapi_python_client",
            *generate,
            "--config",
            "config.yaml",
            "--fail-on-warning",
        ],
        cwd=root,
        check=True,
        capture_output=True,
        timeout=120,
    )
    print(
        f"\nclient generated in {time.monotonic() - started:.1f} s: {sorted(p.name for p in root.iterdir())}"
    )
    sys.path.insert(0, str(root))
    try:
        yield importlib.import_module(PACKAGE)
    finally:
        sys.path.remove(str(root))
        for name in [m for m in sys.modules if m == PACKAGE or m.startswith(PACKAGE + ".")]:
            del sys.modules[name]


def api(operation: str) -> Any:
    """The generated module of one operation, e.g. ``api("images.upload_image")``."""
    return importlib.import_module(f"{PACKAGE}.api.{operation}")


def parsed(response: Any, status: int, model: str) -> Any:
    """The reply, checked: ``status``, parsed as the generated ``model``, losslessly."""
    assert response.status_code == status, (response.status_code, response.content[:300])
    reply = response.parsed
    assert type(reply).__name__ == model, (type(reply).__name__, response.content[:300])
    assert reply.to_dict() == json.loads(response.content), "the generated model lost or changed something"
    assert not reply.additional_properties, f"keys the schema does not name: {reply.additional_properties}"
    return reply


async def test_generated_client_uploads_reads_searches_and_deletes(generated: Any, base_url: str) -> None:
    models = importlib.import_module(f"{PACKAGE}.models")
    types = importlib.import_module(f"{PACKAGE}.types")
    # keys are off on this stack: the token is sent as `Authorization: Bearer` and ignored
    client = generated.AuthenticatedClient(
        base_url=base_url, token="unused", timeout=httpx.Timeout(60.0), raise_on_unexpected_status=True
    )

    def image_file(data: bytes, name: str) -> Any:
        from io import BytesIO

        return types.File(payload=BytesIO(data), file_name=name, mime_type="image/jpeg")

    async with client:
        # one picture encoded two ways (chroma subsampling): different bytes, nearly the same vector
        pictures = [jpeg(14051, (64, 48)), jpeg(14051, (64, 48), subsampling=0)]
        ids = []
        for n, data in enumerate(pictures):
            body = models.BodyUploadImage(file=image_file(data, f"gen-{n}.jpg"))
            r = await api("images.upload_image").asyncio_detailed(client=client, body=body)
            accepted = parsed(r, 202, "UploadAccepted")
            assert accepted.status.value == "pending" and accepted.duplicate is types.UNSET
            ids.append(accepted.image_id)
        first, second = ids

        for image_id in ids:

            async def settled(image_id: str = image_id) -> bool:
                r = await api("images.get_image").asyncio_detailed(image_id, client=client)
                return parsed(r, 200, "ImageRecordView").status.value in ("done", "error")

            await wait_until(f"{image_id} done or error", settled, timeout_s=180, every_s=0.2)
            r = await api("images.get_image").asyncio_detailed(image_id, client=client)
            record = parsed(r, 200, "ImageRecordView")
            assert record.status.value == "done", record.to_dict()
            assert record.filename.startswith("gen-") and record.model and record.embedding is types.UNSET

        r = await api("images.get_image").asyncio_detailed(first, client=client, include="embedding")
        assert len(parsed(r, 200, "ImageRecordView").embedding) == record.embedding_dim

        r = await api("images.similar_images").asyncio_detailed(first, client=client, k=5)
        similar = parsed(r, 200, "SimilarReply")
        assert similar.image_id == first and first not in {h.image_id for h in similar.results}
        assert similar.results[0].image_id == second, similar.to_dict()

        r = await api("search.search_text").asyncio_detailed(client=client, q="a photo of a cat", k=5)
        assert parsed(r, 200, "SearchReply").mode.value in ("embedding", "labels")

        body = models.BodySearchImage(file=image_file(pictures[1], "query.jpg"))
        r = await api("search.search_image").asyncio_detailed(client=client, body=body, k=3)
        found = parsed(r, 200, "ImageSearchReply")
        assert found.results[0].image_id == second and found.results[0].score > 0.999, found.to_dict()
        assert {h.image_id for h in found.results[:2]} == set(ids)

        for image_id in ids:
            r = await api("search.delete_image").asyncio_detailed(image_id, client=client)
            assert r.status_code == 204, r.content
        r = await api("images.get_image").asyncio_detailed(first, client=client)
        gone = parsed(r, 404, "ErrorBody")
        assert gone.error.code == "not_found"
