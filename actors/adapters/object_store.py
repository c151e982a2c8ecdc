"""The object store, as the mesh uses it: put, get, delete and pre-sign image bytes by a key we generate.

A thin adapter over aioboto3 (any S3; SeaweedFS locally). Connection failures and missing objects are
``RetryableError`` (object stores can lag behind a write); a key is never built from a user's file name.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any

import aioboto3
import structlog
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from actors.errors import RetryableError
from actors.settings import Settings

log = structlog.get_logger("object_store")


class ObjectMissing(RetryableError):
    """No object under the key (yet): retried, and an image whose object stays missing ends in ``error``."""

    code = "object_missing"


def object_key(image_id: str) -> str:
    """The object key of an image: derived from the service's own id only (never from a file name)."""
    return f"images/{image_id[:2]}/{image_id}"


class ObjectStore:
    """An S3 bucket, opened as an async context manager."""

    def __init__(self, settings: Settings, *, timeout_s: float = 10.0) -> None:
        self._settings = settings
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

    async def __aenter__(self) -> ObjectStore:
        s = self._settings
        self._cm = self._session.client(
            "s3",
            endpoint_url=s.s3_server_url,
            aws_access_key_id=s.s3_access_key,
            aws_secret_access_key=s.s3_secret_key,
            region_name=s.s3_region,
            config=self._config,
        )
        self._client = await self._cm.__aenter__()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._cm is not None:
            await self._cm.__aexit__(exc_type, exc, tb)

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        try:
            await self._client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=content_type)
        except (BotoCoreError, ClientError, OSError) as e:
            raise RetryableError(f"object store put failed: {e}") from e

    async def get(self, key: str) -> bytes:
        try:
            resp = await self._client.get_object(Bucket=self.bucket, Key=key)
            async with resp["Body"] as body:
                return bytes(await body.read())
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise ObjectMissing(f"no object {key}") from e
            raise RetryableError(f"object store get failed: {e}") from e
        except (BotoCoreError, OSError) as e:
            raise RetryableError(f"object store get failed: {e}") from e

    async def delete(self, key: str) -> None:
        """Delete an object; deleting a missing key succeeds (S3 semantics), so this is idempotent."""
        try:
            await self._client.delete_object(Bucket=self.bucket, Key=key)
        except (BotoCoreError, ClientError, OSError) as e:
            raise RetryableError(f"object store delete failed: {e}") from e

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
        """None when the bucket answers, else what is wrong (for readiness)."""
        try:
            await self._client.head_bucket(Bucket=self.bucket)
        except (BotoCoreError, ClientError, OSError) as e:
            return f"s3: {type(e).__name__}"
        return None
