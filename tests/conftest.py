"""Shared test helpers. Infrastructure fixtures are opt-in (never autouse): unit tests start nothing."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

from actors.settings import Settings


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_port_block(n: int) -> int:
    """The first of ``n`` consecutive free ports (SeaweedFS takes a block)."""
    for _ in range(200):
        base = free_port()
        if base + n >= 65000:
            continue
        ok = True
        for p in range(base, base + n):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", p))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise RuntimeError("no free port block")


def test_settings(data_dir: Path, **overrides: object) -> Settings:
    """Settings for a private stack: every port free, every file under ``data_dir``."""
    ports = {
        name: free_port()
        for name in (
            "nats_port",
            "nats_monitor_port",
            "redis_port",
            "s3_port",
            "triton_http_port",
            "triton_grpc_port",
            "triton_metrics_port",
            "gateway_port",
            "coordinator_http_port",
            "config_http_port",
            "indexer_http_port",
        )
    }
    values: dict[str, object] = {
        **ports,
        "weed_port_base": free_port_block(12),
        "data_dir": data_dir,
        **overrides,
    }
    return Settings(**values)  # type: ignore[arg-type]


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
