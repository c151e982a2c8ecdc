"""The gateway's OpenAPI document: ``MeshApi`` is FastAPI with the document made to match what the gateway
answers (``gateway.errors.request_errors_as_400``), its tags described, and each operation's ``operationId``
also naming its generated schemas (``Body_upload_image``, not ``Body_upload_images_upload_post``).

Uploaded files are also marked ``format: binary``: FastAPI writes them the OpenAPI 3.1 way only
(``contentMediaType``), which client generators (openapi-python-client, datamodel-code-generator) and older
tools read as a plain string field, and then send the file as text.

Every route declares a stable snake_case ``operation_id`` (``upload_image``, ``similar_images``...): generated
clients name their functions after it, so renaming a Python function never breaks a client.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute

from gateway.errors import request_errors_as_400

TAGS: list[dict[str, Any]] = [
    {"name": "images", "description": "Upload, read, similar images, the original bytes, /encode."},
    {"name": "library", "description": "Browse the uploads: pages of images, thumbnails, live events."},
    {"name": "search", "description": "Text to image, query by an image that is not stored, delete."},
    {"name": "duplicates", "description": "Verified copies and look-alikes, per image and as groups."},
    {"name": "models", "description": "The served models and the switch of the active one."},
    {"name": "session", "description": "A browser's session cookie, in place of the API key header."},
    {"name": "health", "description": "Liveness, readiness, the mesh's status and metrics (no key)."},
]


def unique_id(route: APIRoute) -> str:
    """FastAPI's ``generate_unique_id_function``: the route's ``operation_id`` (or its function's name)."""
    return route.operation_id or route.name


def binary_files(node: Any) -> None:
    """Add ``format: binary`` to every file field of ``node`` (an OpenAPI document or part of one), in place."""
    if isinstance(node, dict):
        if node.get("type") == "string" and node.get("contentMediaType") == "application/octet-stream":
            node.setdefault("format", "binary")
        for value in node.values():
            binary_files(value)
    elif isinstance(node, list):
        for value in node:
            binary_files(value)


class MeshApi(FastAPI):
    """FastAPI, with the OpenAPI document post-processed once (module docstring)."""

    def openapi(self) -> dict[str, Any]:
        if self.openapi_schema is None:
            schema = request_errors_as_400(super().openapi())
            binary_files(schema.get("components", {}))
            self.openapi_schema = schema
        return self.openapi_schema
