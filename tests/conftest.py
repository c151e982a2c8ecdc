"""Shared test helpers. Infrastructure fixtures are opt-in (never autouse): unit tests start nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

from actors.settings import Settings
from ops.stack.ports import free_port, free_port_block, private_settings

__all__ = ["free_port", "free_port_block", "s3_client", "test_settings"]


def test_settings(data_dir: Path, **overrides: object) -> Settings:
    """Settings for a private stack: every port free, every file under ``data_dir``."""
    return private_settings(data_dir, **overrides)


test_settings.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test


def s3_client(settings: Settings) -> Any:
    """A plain (sync) S3 client on the stack's bucket, for tests that look behind the mesh's back."""
    return boto3.client(
        "s3",
        endpoint_url=settings.s3_server_url,
        aws_access_key_id=settings.s3_access_key,
        aws_secret_access_key=settings.s3_secret_key,
        region_name=settings.s3_region,
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 3}),
    )
