"""Settings for a private stack on free ports: tests and benchmarks run beside `make run` without clashing."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

from actors.settings import Settings

PORT_FIELDS = (
    "nats_port",
    "nats_monitor_port",
    "redis_port",
    "s3_port",
    "triton_http_port",
    "triton_grpc_port",
    "triton_metrics_port",
    "gateway_port",
    "gateway_admin_port",
    "coordinator_http_port",
    "config_http_port",
    "indexer_http_port",
    "temporal_port",
    "temporal_ui_port",
    "temporal_http_port",
    "temporal_metrics_port",
)
WEED_PORTS = 12  # SeaweedFS's internal listeners (ops.stack.services.weed_ports) take a block


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_port_block(n: int) -> int:
    """The first of ``n`` consecutive free ports."""
    for _ in range(200):
        base = free_port()
        if base + n >= 65000:
            continue
        try:
            for p in range(base, base + n):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
        except OSError:
            continue
        return base
    raise RuntimeError("no free port block")


def private_settings(data_dir: Path, **overrides: Any) -> Settings:
    """Settings for a private stack: every port free, every file under ``data_dir``."""
    values: dict[str, Any] = {name: free_port() for name in PORT_FIELDS}
    values |= {"weed_port_base": free_port_block(WEED_PORTS), "data_dir": data_dir}
    return Settings(**(values | overrides))
