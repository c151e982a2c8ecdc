"""The typed OpenAPI document (gateway/openapi.py, gateway/replies.py, gateway/errors.py), without servers.

Every operation has a stable snake_case ``operationId`` and a tag; every JSON success is a named schema and every
error status the error body; the 400/422 rule holds in the document (no FastAPI ``HTTPValidationError``, 422 on
the upload only); the API key is a security scheme. And the typed dicts are lossless: each route's body, built
by the routes' own view functions where they have one, goes out byte for byte as it did when routes were typed
``dict[str, Any]``.
"""

from __future__ import annotations

import re
import time
from typing import Any

import pytest
from pydantic import TypeAdapter

from actors.adapters.record_index import Listed
from actors.adapters.switch_progress import Progress, SwitchState
from actors.contract import ErrorInfo, Hit, ImageRecord, Label, Status
from actors.settings import Settings
from gateway import replies
from gateway.app import create_app
from gateway.library import listed_view
from gateway.records import record_view
from gateway.search import hits_view

OPERATIONS = {
    ("POST", "/images/upload"): "upload_image",
    ("GET", "/images/{image_id}"): "get_image",
    ("GET", "/images/{image_id}/similar"): "similar_images",
    ("GET", "/images/{image_id}/content"): "get_content",
    ("POST", "/encode"): "encode_image",
    ("GET", "/images"): "list_images",
    ("GET", "/images/{image_id}/thumbnail"): "get_thumbnail",
    ("GET", "/search"): "search_text",
    ("POST", "/search/image"): "search_image",
    ("DELETE", "/images/{image_id}"): "delete_image",
    ("GET", "/images/{image_id}/duplicates"): "image_duplicates",
    ("GET", "/duplicates"): "duplicate_groups",
    ("GET", "/models"): "list_models",
    ("POST", "/models/switch"): "switch_model",
    ("POST", "/session"): "create_session",
    ("DELETE", "/session"): "delete_session",
    ("GET", "/health"): "health",
    ("GET", "/ready"): "readiness",
    ("GET", "/status"): "mesh_status",
    ("GET", "/metrics"): "metrics",
}
OPEN = {"create_session", "delete_session", "health", "readiness", "mesh_status", "metrics"}
ERROR_BODY = {"$ref": "#/components/schemas/ErrorBody"}


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    return create_app(Settings(api_keys="k:read")).openapi()


def operations(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(m.upper(), path, op) for path, item in spec["paths"].items() for m, op in item.items()]


def test_every_operation_has_its_stable_id_and_a_tag(spec: dict[str, Any]) -> None:
    ids = {(method, path): op["operationId"] for method, path, op in operations(spec)}
    assert {k: ids.get(k) for k in OPERATIONS} == OPERATIONS
    assert len(set(ids.values())) == len(ids), "operationIds must be unique"
    for (method, path), op_id in ids.items():  # routes added since (another module's) keep the rule too
        assert re.fullmatch(r"[a-z][a-z0-9_]*", op_id), (method, path, op_id)
    documented_tags = {t["name"] for t in spec["tags"]}
    for method, path, op in operations(spec):
        assert op.get("tags") and set(op["tags"]) <= documented_tags, (method, path, op.get("tags"))
    # uploaded files are binary to client generators too (FastAPI writes only contentMediaType)
    for body in ("Body_upload_image", "Body_search_image", "Body_encode_image"):
        assert spec["components"]["schemas"][body]["properties"]["file"]["format"] == "binary", body
    # the generated schemas are named after the operation, not after the path
    assert {"Body_upload_image", "Body_search_image", "Body_encode_image"} <= set(
        spec["components"]["schemas"]
    )


def test_success_bodies_are_named_schemas_and_errors_the_error_body(spec: dict[str, Any]) -> None:
    for method, path, op in operations(spec):
        for status, response in op["responses"].items():
            content = response.get("content", {})
            json_schema = content.get("application/json", {}).get("schema")
            where = (method, path, status)
            if int(status) >= 400:
                expected = "#/components/schemas/Readiness" if path == "/ready" else ERROR_BODY["$ref"]
                assert json_schema == {"$ref": expected}, where  # /ready's 503 names what failed
            elif "application/json" in content:
                assert set(json_schema) == {"$ref"}, where
            else:  # no body (204, 304, 307) or bytes (content, thumbnail, metrics, events)
                assert status in ("204", "304", "307") or content, where


def test_request_errors_are_documented_as_400_and_422_only_for_metadata(spec: dict[str, Any]) -> None:
    assert "HTTPValidationError" not in str(spec) and "ValidationError" not in spec["components"]["schemas"]
    with_422 = [op["operationId"] for _, _, op in operations(spec) if "422" in op["responses"]]
    assert with_422 == ["upload_image"]
    for method, path, op in operations(spec):
        if op.get("parameters") or op.get("requestBody"):
            assert "400" in op["responses"], (method, path)


def test_the_api_key_is_a_security_scheme_on_every_protected_operation(spec: dict[str, Any]) -> None:
    schemes = spec["components"]["securitySchemes"]
    assert schemes["ApiKeyHeader"] == {**schemes["ApiKeyHeader"], "type": "apiKey", "in": "header"}
    assert schemes["ApiKeyHeader"]["name"] == "X-API-Key"
    assert schemes["BearerKey"]["scheme"] == "bearer"
    assert (schemes["SessionCookie"]["in"], schemes["SessionCookie"]["name"]) == ("cookie", "mesh_session")
    for method, path, op in operations(spec):
        security = {name for requirement in op.get("security", []) for name in requirement}
        if op["operationId"] in OPEN:
            expected = {"ApiKeyHeader", "BearerKey"} if op["operationId"] == "create_session" else set()
        else:
            expected = {"ApiKeyHeader", "BearerKey", "SessionCookie"}
        assert security == expected, (method, path, security)


# --- the typed dicts are lossless -----------------------------------------------------------------------------
def full_record() -> ImageRecord:
    return ImageRecord(
        image_id="a" * 32,
        status=Status.ERROR,
        sha256="f" * 64,
        object_key="originals/a",
        content_type="image/jpeg",
        size_bytes=12345,
        width=640,
        height=480,
        metadata={"album": "2024:summer", "n": 3, "ratio": 1.5},
        created_at=1712345678.25,
        updated_at=1712345679.5,
        model="efficientnet_lite0",
        embedding_dim=1280,
        error=ErrorInfo(code="broken_image", message="truncated"),
        labels=[Label(name="tabby", score=0.62), Label(name="tiger cat", score=0.2)],
        thumbnail_key="thumbnails/a",
        copy_features_key="copyfeatures/a",
        copy_check="1",
        filename="cat.jpg",
        trace_id="t" * 32,
        attempt=2,
        job_seq=7,
        history=[{"status": "pending", "at": 1712345678.25}, {"status": "error", "at": 1.0, "cause": "x"}],
    )


def bodies() -> list[tuple[Any, Any]]:
    """(typed dict, a body a route answers), covering every optional key present and absent."""
    hits = hits_view([Hit(image_id="b" * 32, score=0.91), Hit(image_id="c" * 32, score=-0.25)])
    bare = record_view(
        ImageRecord(**{**_fields(full_record()), "error": None, "labels": None, "model": None})
    )
    progress = Progress(
        model="clip_image", state=SwitchState.BUILDING, from_model="efficientnet_lite0", done=3
    )
    model_view = {"name": "efficientnet_lite0", "kind": "image", "dim": 1280, "ready": True, "vectors": 12}
    return [
        (replies.ImageRecordView, record_view(full_record())),
        (replies.ImageRecordView, bare | {"embedding": [0.5, -0.25, 1.0]}),
        (replies.ImageRecordView, bare | {"embedding": None}),
        (replies.UploadAccepted, {"image_id": "a" * 32, "status": "pending", "sha256": "f" * 64}),
        (
            replies.UploadAccepted,
            {"image_id": "a" * 32, "status": "done", "sha256": "f" * 64, "duplicate": True},
        ),
        (replies.SimilarReply, {"image_id": "a" * 32, "model": "efficientnet_lite0", "results": hits}),
        (replies.EncodeReply, {"model": "m", "embedding_dim": 3, "embedding": [0.1, 0.2, 1e-05]}),
        (
            replies.ImageList,
            {
                "images": [
                    listed_view(Listed("a" * 32, "done", 1712345678.25, {"filename": "x.jpg", "width": "4"})),
                    listed_view(Listed("b" * 32, "pending", 1.0, {"thumbnail_key": "t", "size_bytes": "9"})),
                ],
                "next_cursor": "MTcxMjM0NTY3OC4yNXxh",
            },
        ),
        (replies.ImageList, {"images": [], "next_cursor": None}),
        (replies.SearchReply, {"model": "clip_image", "mode": "embedding", "results": hits}),
        (
            replies.SearchReply,
            {
                "model": "e",
                "mode": "labels",
                "labels": ["tabby"],
                "matched": 40,
                "results": hits,
                "truncated": True,
            },
        ),
        (
            replies.SearchReply,
            {"model": "e", "mode": "labels", "labels": [], "matched": 0, "results": [], "reason": "no label"},
        ),
        (replies.ImageSearchReply, {"model": "m", "results": hits}),
        (
            replies.DuplicatesReply,
            {
                "image_id": "a" * 32,
                "model": "m",
                "mode": "copies",
                "checked": True,
                "results": [{"image_id": "b" * 32, "score": 0.97, "tier": "copy"}],
            },
        ),
        (
            replies.DuplicatesReply,
            {"image_id": "a" * 32, "model": "m", "mode": "similar", "threshold": 0.92, "results": []},
        ),
        (
            replies.DuplicateGroupsReply,
            {
                "model": "m",
                "mode": "copies",
                "pending": 2,
                "total_groups": 1,
                "groups": [{"image_ids": ["a", "b"], "size": 2, "tier": "copy"}],
                "next_cursor": None,
            },
        ),
        (
            replies.DuplicateGroupsReply,
            {
                "model": "m",
                "mode": "similar",
                "threshold": 0.9,
                "images": 10,
                "total_groups": 0,
                "groups": [],
                "next_cursor": "a",
            },
        ),
        (
            replies.ModelsReply,
            {
                "active": "efficientnet_lite0",
                "next": "clip_image",
                "requested": None,
                "models": [
                    model_view | {"active": True},
                    {"name": "clip_text", "kind": "text", "dim": 512, "ready": True, "active": False},
                    {"name": "x", "kind": None, "dim": None, "ready": False, "active": False},
                ],
                "switch": _builtins(progress),
            },
        ),
        (replies.ModelsReply, {"active": "m", "next": None, "requested": None, "models": [], "switch": None}),
        (replies.SwitchAccepted, {"active": "m", "requested": "clip_image"}),
        (replies.Health, {"status": "ok"}),
        (replies.Readiness, {"status": "unavailable", "failed": {"redis": "down"}}),
        (
            replies.MeshStatus,
            {
                "version": "0.2.0",
                "workflow_engine": "jetstream",
                "servers": {"nats": "ok", "redis": "ok", "s3": "ok", "triton": "down"},
                "services": {"indexer": 1},
                "active_model": "m",
                "triton": {"error": "x"},
                "index": {"model": "m", "num_docs": 3, "percent_indexed": 1.0, "state": "ready"},
                "resources": {"backlog": {"used": 0, "limit": 50_000, "unit": "jobs"}},
            },
        ),
    ]


def _fields(rec: ImageRecord) -> dict[str, Any]:
    return {f: getattr(rec, f) for f in rec.__struct_fields__}


def _builtins(x: Any) -> Any:
    import msgspec

    return msgspec.to_builtins(x)


UNTYPED = TypeAdapter(dict[str, Any])  # what FastAPI checked and wrote before the routes were typed


@pytest.mark.parametrize("kind, body", bodies(), ids=lambda x: getattr(x, "__name__", ""))
def test_each_reply_goes_out_byte_for_byte_as_before(kind: Any, body: Any) -> None:
    typed = TypeAdapter(kind)
    assert typed.dump_json(typed.validate_python(body)) == UNTYPED.dump_json(body)


def test_the_record_view_names_every_field_of_the_record() -> None:
    """A field added to ``ImageRecord`` must be added to ``ImageRecordView`` (or made internal in
    ``record_view``): a typed dict drops a key it does not declare."""
    view = replies.ImageRecordView
    assert set(record_view(full_record())) | {"embedding"} == view.__required_keys__ | view.__optional_keys__


def test_a_typed_reply_costs_microseconds() -> None:
    """The price of the typed ``/similar`` reply over the untyped one, as FastAPI pays it (check, then write
    JSON): printed for the report; bounded loosely (shared cores), the request itself takes milliseconds."""
    body = {
        "image_id": "a" * 32,
        "model": "efficientnet_lite0",
        "results": [{"image_id": f"{i:032x}", "score": 0.5 + i / 100} for i in range(10)],
    }
    typed = TypeAdapter(replies.SimilarReply)

    def per_call_us(adapter: TypeAdapter[Any]) -> float:
        n = 2000
        started = time.perf_counter()
        for _ in range(n):
            adapter.dump_json(adapter.validate_python(body))
        return (time.perf_counter() - started) / n * 1e6

    untyped_us, typed_us = (
        min(per_call_us(UNTYPED) for _ in range(3)),
        min(per_call_us(typed) for _ in range(3)),
    )
    print(f"\n/similar k=10 reply: untyped {untyped_us:.1f} µs, typed {typed_us:.1f} µs")
    assert typed_us < 4 * untyped_us + 50
