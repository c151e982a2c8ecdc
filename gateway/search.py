"""Search beyond the seed: text, query by upload, near-duplicates, delete (filled in by the search work)."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from gateway.images import require_api_key

router = APIRouter(dependencies=[Depends(require_api_key)])
