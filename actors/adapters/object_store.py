"""The object store, as the mesh uses it: put, get, delete and pre-sign image bytes by a key we generate.

A thin adapter over aioboto3 (any S3; SeaweedFS locally). Connection failures and missing objects are
``RetryableError`` (object stores can lag behind a write); a key is never built from a user's file name.

``put`` and ``get`` are on every image's path (the gateway stores, the coordinator fetches), so they skip
aioboto3's client pipeline (endpoint rules, event hooks, response parsing: about 1.6 ms of CPU a call):
botocore's own SigV4 signer signs a plain request that one aiohttp session sends (about 0.55 ms; measured
against SeaweedFS with 100 KB bodies). The rest (delete, head, list, pre-signed URLs) goes through aioboto3.

Each service opens the store as its own S3 identity (``identity``: ``gateway``, ``coordinator``; ``ops`` is
the operators'), which may touch only its prefixes (``ops/stack/privileges.py``): originals under
``ORIGINALS_PREFIX``, derived objects (thumbnails and the like) under ``DERIVED_PREFIX``.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any
from urllib.parse import quote

import aioboto3
import aiohttp
import structlog
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import BotoCoreError, ClientError
from tenacity import RetryCallState, retry, retry_if_exception_type, stop_after_attempt

from actors.errors import RetryableError
from actors.settings import S3Identity, Settings

log = structlog.get_logger("object_store")


class ObjectMissing(RetryableError):
    """No object under the key (yet): retried, and an image whose object stays missing ends in ``error``."""

    code = "object_missing"


class ObjectStoreUnavailable(RetryableError):
    """A signed request found the store unreachable or answering 5xx (tried twice, see ``_signed``)."""

    def __init__(self, method: str, key: str, problem: str) -> None:
        super().__init__(f"object store {method.lower()} failed: {problem}")
        self.method, self.key, self.problem = method, key, problem


def _log_retry(state: RetryCallState) -> None:
    error = state.outcome.exception() if state.outcome is not None else None
    if isinstance(error, ObjectStoreUnavailable):
        log.info("object_store.retry", method=error.method, key=error.key, problem=error.problem)


ORIGINALS_PREFIX = "images/"  # the uploaded bytes (the gateway writes them)
DERIVED_PREFIX = "derived/"  # what the pipeline makes from them (the coordinator writes them)
# never an object: readiness GETs it, and "no such key" proves the store answers to this identity
PROBE_KEY = f"{ORIGINALS_PREFIX}.probe"


def object_key(image_id: str) -> str:
    """The object key of an image: derived from the service's own id only (never from a file name)."""
    return f"{ORIGINALS_PREFIX}{image_id[:2]}/{image_id}"


THUMBNAILS_PREFIX = f"{DERIVED_PREFIX}thumbs/"
COPY_FEATURES_PREFIX = f"{DERIVED_PREFIX}copies/"


def copy_features_key(image_id: str) -> str:
    """The object key of an image's copy-detection features (``actors.copies.Features.to_bytes``)."""
    return f"{COPY_FEATURES_PREFIX}{image_id[:2]}/{image_id}.orb"


def thumbnail_key(image_id: str, side: int) -> str:
    """The object key of an image's WebP thumbnail ``side`` px on its long side (the pipeline's 256, the
    gateway's 1024 preview)."""
    return f"{THUMBNAILS_PREFIX}{side}/{image_id[:2]}/{image_id}.webp"


def _excerpt(body: bytes) -> str:
    return body[:300].decode(errors="replace")


def _next_token(resp: dict[str, Any]) -> str:
    """A listing's continuation token ("" after the last page)."""
    return str(resp.get("NextContinuationToken") or "") if resp.get("IsTruncated") else ""


class ObjectStore:
    """An S3 bucket, opened as an async context manager."""

    def __init__(self, settings: Settings, *, identity: S3Identity = "ops", timeout_s: float = 10.0) -> None:
        self._settings = settings
        self.identity = identity
        self._access_key, self._secret_key = settings.s3_credentials(identity)
        self.bucket = settings.s3_bucket
        self._session = aioboto3.Session()
        self._config = Config(
            connect_timeout=timeout_s,
            read_timeout=timeout_s,
            retries={"max_attempts": 2, "mode": "standard"},
            signature_version="s3v4",
            s3={"addressing_style": "path"},
        )
        self._cm: Any = None
        self._client: Any = None
        # SigV4 for put/get: stateless between requests (each call dates and signs the request it is given)
        self._signer = S3SigV4Auth(Credentials(self._access_key, self._secret_key), "s3", settings.s3_region)
        self._timeout = aiohttp.ClientTimeout(total=2 * timeout_s, connect=timeout_s, sock_read=timeout_s)
        self._http: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> ObjectStore:
        s = self._settings
        self._cm = self._session.client(
            "s3",
            endpoint_url=s.s3_server_url,
            aws_access_key_id=self._access_key,
            aws_secret_access_key=self._secret_key,
            region_name=s.s3_region,
            config=self._config,
        )
        self._client = await self._cm.__aenter__()
        self._http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=64), timeout=self._timeout, skip_auto_headers=["User-Agent"]
        )
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._http is not None:
            await self._http.close()
        if self._cm is not None:
            await self._cm.__aexit__(exc_type, exc, tb)

    def object_url(self, key: str) -> str:
        """The object's path-style URL (what ``addressing_style: path`` gives aioboto3 too)."""
        return f"{self._settings.s3_server_url.rstrip('/')}/{self.bucket}/{quote(key, safe='/~')}"

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        """Store ``data`` under ``key`` (a signed ``PUT``, see the module docstring)."""
        status, body = await self._signed("PUT", key, data, {"Content-Type": content_type})
        if status != 200:
            raise RetryableError(f"object store put failed: HTTP {status}: {_excerpt(body)}")

    async def get(self, key: str) -> bytes:
        """The object's bytes (a signed ``GET``); ``ObjectMissing`` when there is none under ``key``."""
        status, body = await self._signed("GET", key)
        if status == 404:
            raise ObjectMissing(f"no object {key}")
        if status != 200:
            raise RetryableError(f"object store get failed: HTTP {status}: {_excerpt(body)}")
        return body

    @retry(
        retry=retry_if_exception_type(ObjectStoreUnavailable),
        stop=stop_after_attempt(2),  # like aioboto3's ``max_attempts: 2``; no wait between the two
        before_sleep=_log_retry,
        reraise=True,
    )
    async def _signed(
        self, method: str, key: str, data: bytes = b"", headers: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        """One SigV4-signed request for ``key``: its status and body. Tried twice when the connection drops or
        S3 answers 5xx (PUT and GET are idempotent); ``ObjectStoreUnavailable`` when both tries fail so."""
        assert self._http is not None, "use ObjectStore as an async context manager"
        url = self.object_url(key)
        req = AWSRequest(method=method, url=url, data=data, headers=dict(headers or {}))
        self._signer.add_auth(req)  # signed again on the second try: SigV4 dates each request
        try:
            async with self._http.request(
                method, url, data=data or None, headers=dict(req.headers.items())
            ) as resp:
                body = await resp.read()
        except (TimeoutError, aiohttp.ClientError, OSError) as e:
            raise ObjectStoreUnavailable(method, key, f"{type(e).__name__}: {e}") from e
        if resp.status >= 500:
            raise ObjectStoreUnavailable(method, key, f"HTTP {resp.status}: {_excerpt(body)}")
        return resp.status, body

    async def delete(self, key: str) -> None:
        """Delete an object; deleting a missing key succeeds (S3 semantics), so this is idempotent."""
        try:
            await self._client.delete_object(Bucket=self.bucket, Key=key)
        except (BotoCoreError, ClientError, OSError) as e:
            raise RetryableError(f"object store delete failed: {e}") from e

    async def list_page(self, prefix: str, token: str, max_keys: int) -> tuple[list[tuple[str, float]], str]:
        """One page of the keys under ``prefix`` (``ListObjectsV2``), each with its last-modified time (Unix
        seconds), and the continuation token of the next page ("" after the last): a bounded, resumable walk
        of the bucket for the reconciler and ``mesh check``."""
        resp = await self._list(prefix, token, max_keys)
        items = [(str(o["Key"]), o["LastModified"].timestamp()) for o in resp.get("Contents", [])]
        return items, _next_token(resp)

    async def total_bytes(self) -> int:
        """The bytes the whole bucket holds: its objects' sizes summed over a listing (``ListObjectsV2``, one
        request per 1000 objects; S3 has no cheaper "bytes used" call). ``RetryableError`` when a page fails."""
        total, token = 0, ""
        while True:
            resp = await self._list("", token, 1000)
            total += sum(int(o.get("Size", 0)) for o in resp.get("Contents", []))
            token = _next_token(resp)
            if not token:
                return total

    async def _list(self, prefix: str, token: str, max_keys: int) -> dict[str, Any]:
        """One ``ListObjectsV2`` answer (``RetryableError`` when it fails)."""
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix, "MaxKeys": max_keys}
        if token:
            kwargs["ContinuationToken"] = token
        try:
            resp: dict[str, Any] = await self._client.list_objects_v2(**kwargs)
        except (BotoCoreError, ClientError, OSError) as e:
            raise RetryableError(f"object store list failed: {e}") from e
        return resp

    async def exists(self, key: str) -> bool:
        try:
            await self._client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
                return False
            raise RetryableError(f"object store head failed: {e}") from e
        except (BotoCoreError, OSError) as e:
            raise RetryableError(f"object store head failed: {e}") from e
        return True

    async def presigned_url(self, key: str, expires_s: int = 300) -> str:
        url: str = await self._client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=expires_s
        )
        return url

    async def ping(self) -> str | None:
        """None when the bucket answers this identity, else what is wrong (for readiness).

        A GET of ``PROBE_KEY`` (never stored), not ``HEAD`` of the bucket: SeaweedFS wants ``Read`` on the whole
        bucket for that, and a service may read only its prefixes. ``NoSuchKey`` is the healthy answer; a
        missing bucket (``NoSuchBucket``) or a refused identity (403) is not."""
        try:
            status, body = await self._signed("GET", PROBE_KEY)
        except ObjectStoreUnavailable as e:
            return f"s3: {e.problem}"
        if status == 200 or (status == 404 and b"NoSuchKey" in body):
            return None
        return f"s3: HTTP {status}: {_excerpt(body)[:120]}"
