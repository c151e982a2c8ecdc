"""The deployment files (compose.yaml, Dockerfile, ops/monitoring) hold together without Docker.

No Docker engine here: compose.yaml is checked against the Compose Specification's JSON schema (bundled in
check-jsonschema, so no network) and then for what a reviewer of a production deployment looks at.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from actors.settings import Settings
from ops.stack.privileges import S3_SERVICES, SERVICE_USERS, redis_acl_lines, s3_identities

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "ops" / "monitoring"
COMPOSE_FILES = [ROOT / "compose.yaml", MONITORING / "compose.monitoring.yaml"]
APP_SERVICES = ("gateway", "coordinator", "config", "indexer")
SERVERS = ("nats", "redis", "s3", "triton")
# the ports each app process serves /health and /metrics on (actors/settings.py defaults)
APP_PORTS = {"gateway": 8080, "coordinator": 8091, "config": 8092, "indexer": 8093}
# where Prometheus scrapes /metrics: production serves the gateway's on its admin port only
METRICS_PORTS = APP_PORTS | {"gateway": 8081}
# each service's own Redis password and S3 keys (ops/stack/privileges.py); the others get none of them
OWN_SECRETS = {
    "gateway": ("MESH_REDIS_PASSWORD_GATEWAY", "MESH_S3_ACCESS_KEY_GATEWAY", "MESH_S3_SECRET_KEY_GATEWAY"),
    "coordinator": (
        "MESH_REDIS_PASSWORD_COORDINATOR",
        "MESH_S3_ACCESS_KEY_COORDINATOR",
        "MESH_S3_SECRET_KEY_COORDINATOR",
    ),
    "indexer": ("MESH_REDIS_PASSWORD_INDEXER",),
    "config": (),
}
# compose.yaml's key prefix and bucket (the defaults)
COMPOSE_NAMES = Settings(redis_prefix="mesh", s3_bucket="images")


def required(name: str) -> str:
    """How compose.yaml spells a variable .env must set."""
    return f"${{{name}:?set {name} in .env}}"


# images without a shell or HTTP client, watched by Prometheus `up` instead (said in the compose file)
NO_HEALTHCHECK_POSSIBLE = {"nats-exporter"}


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_yaml(ROOT / "compose.yaml")


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


@pytest.fixture(scope="module")
def all_services(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """compose.yaml merged with the monitoring overlay, as `docker compose -f a -f b` would see them."""
    overlay = load_yaml(MONITORING / "compose.monitoring.yaml")["services"]
    assert not set(overlay) & set(services), "the overlay adds services, it does not override them"
    return {**services, **overlay}


def one_shot(svc: dict[str, Any]) -> bool:
    return str(svc.get("restart", "no")) == "no"


def published(svc: dict[str, Any]) -> list[tuple[str, str]]:
    """(host_ip, container_port) for each published port; host_ip '' means every interface."""
    out = []
    for p in svc.get("ports", []):
        if isinstance(p, dict):
            out.append((str(p.get("host_ip", "")), str(p["target"])))
            continue
        parts = str(p).split(":")
        host_ip = parts[0] if len(parts) == 3 else ""
        out.append((host_ip, parts[-1].split("/")[0]))
    return out


# --- compose.yaml -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_compose_file_matches_the_compose_specification(path: Path) -> None:
    # the venv's own copy (the dev extra), else whatever is on PATH
    tool = Path(sys.executable).parent / "check-jsonschema"
    exe = str(tool) if tool.exists() else shutil.which("check-jsonschema")
    assert exe, "check-jsonschema is missing: install the dev extra"
    result = subprocess.run(
        [exe, "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_long_running_service_has_a_healthcheck(all_services: dict[str, dict[str, Any]]) -> None:
    missing = [
        name
        for name, svc in all_services.items()
        if not one_shot(svc)
        and name not in NO_HEALTHCHECK_POSSIBLE
        and (not svc.get("healthcheck", {}).get("test") or svc["healthcheck"].get("disable"))
    ]
    assert not missing, f"no healthcheck: {missing}"
    for name, svc in all_services.items():
        assert svc.get("restart"), f"{name} has no restart policy"


def test_depends_on_waits_for_health_or_completion(all_services: dict[str, dict[str, Any]]) -> None:
    for name, svc in all_services.items():
        deps = svc.get("depends_on", {})
        assert isinstance(deps, dict), f"{name}: short depends_on syntax only waits for start"
        for dep, how in deps.items():
            condition = how.get("condition")
            if one_shot(all_services[dep]):
                assert condition == "service_completed_successfully", f"{name} -> {dep}"
            else:
                assert condition == "service_healthy", f"{name} -> {dep}: {condition}"
                assert all_services[dep].get("healthcheck") or dep in NO_HEALTHCHECK_POSSIBLE


def test_start_order(services: dict[str, dict[str, Any]]) -> None:
    deps = {name: set(svc.get("depends_on", {})) for name, svc in services.items()}
    assert {"nats", "redis", "s3", "config", "bootstrap"} <= deps["gateway"]
    assert {"config", "nats", "redis"} <= deps["indexer"]
    assert {"config", "indexer", "nats", "redis", "s3", "triton", "bootstrap"} <= deps["coordinator"]
    assert "nats" in deps["config"]
    # no cycles: a topological order exists
    order: list[str] = []
    pending = dict(deps)
    while pending:
        ready = [n for n, d in pending.items() if d <= set(order)]
        assert ready, f"depends_on cycle among {sorted(pending)}"
        order += ready
        for n in ready:
            del pending[n]


def test_the_four_app_services_share_one_build(services: dict[str, dict[str, Any]]) -> None:
    builds = {json.dumps(services[name].get("build"), sort_keys=True) for name in APP_SERVICES}
    images = {services[name].get("image") for name in APP_SERVICES}
    assert len(builds) == 1 and json.loads(builds.pop()) in (".", {"context": "."})
    assert len(images) == 1
    commands = {name: services[name]["command"] for name in APP_SERVICES}
    assert commands["gateway"] == ["python", "-m", "gateway"]
    for actor in ("coordinator", "config", "indexer"):
        assert commands[actor] == ["python", "-m", "actors", actor]


def test_app_services_are_configured_for_production(services: dict[str, dict[str, Any]]) -> None:
    for name in APP_SERVICES:
        env = services[name]["environment"]
        assert env["MESH_PROFILE"] == "production"
        assert env["MESH_HOST"] == "0.0.0.0", "HTTP /health must answer from outside the container"
        assert env["MESH_NATS_URL"] == "nats://nats:4222"
        assert env["MESH_S3_ENDPOINT"] == "http://s3:8333"
        assert env["MESH_TRITON_URL"] == "triton:8001"
        # its own NATS password comes from .env and must be set; nobody else's is handed to it
        own = env[f"MESH_NATS_PASSWORD_{name.upper()}"]
        assert re.fullmatch(rf"\$\{{MESH_NATS_PASSWORD_{name.upper()}:\?.*\}}", own), own
        others = [k for k, v in env.items() if k.startswith("MESH_NATS_PASSWORD_") and "${" in str(v)]
        assert others == [f"MESH_NATS_PASSWORD_{name.upper()}"], f"{name} holds {others}"
        assert re.fullmatch(r"\$\{MESH_API_KEYS:\?.*\}", env["MESH_API_KEYS"]), (
            f"{name}: keys must be required"
        )
        # its own Redis user and S3 identity only; the operators' (`mesh`, MESH_S3_ACCESS_KEY) nobody's
        held = sorted(
            k for k, v in env.items() if k.startswith(("MESH_REDIS_PASSWORD", "MESH_S3_")) and "${" in str(v)
        )
        assert held == sorted(OWN_SECRETS[name]), f"{name} holds {held}"
        for secret in held:
            assert re.fullmatch(rf"\$\{{{secret}:\?.*\}}", env[secret]), f"{name}: {secret} must be required"
        assert env["MESH_REDIS_URL"] == "redis://redis:6379/0", "credentials come from each service's own"
        # healthcheck probes this process's own HTTP port
        probe = " ".join(services[name]["healthcheck"]["test"])
        assert f"127.0.0.1:{APP_PORTS[name]}/" in probe and "urllib" in probe


def test_every_required_variable_is_in_env_example(compose: dict[str, Any]) -> None:
    text = (ROOT / "compose.yaml").read_text()
    required = set(re.findall(r"\$\{(\w+):\?", text))
    overlay_required = set(re.findall(r"\$\{(\w+):\?", (MONITORING / "compose.monitoring.yaml").read_text()))
    example = (ROOT / ".env.example").read_text()
    listed = set(re.findall(r"^#?\s*(\w+)=", example, flags=re.M))
    assert required <= listed, f"missing from .env.example: {sorted(required - listed)}"
    assert overlay_required <= listed
    # an example value must not pass for a local development secret
    values = re.findall(r"^#?\s*\w+=(.*)$", example, flags=re.M)
    assert values and not [v for v in values if v.startswith("local-")]


def test_coordinator_can_be_scaled(services: dict[str, dict[str, Any]]) -> None:
    for name in ("coordinator", "config", "indexer"):
        assert "container_name" not in services[name]
        assert "ports" not in services[name], f"{name} publishes a port: --scale would collide"


def test_only_the_gateway_is_published_on_every_interface(all_services: dict[str, dict[str, Any]]) -> None:
    for name, svc in all_services.items():
        for host_ip, port in published(svc):
            if name == "gateway" and port == "8080":
                continue  # the public API
            assert host_ip == "127.0.0.1", f"{name} publishes {port} on {host_ip or 'every interface'}"
    for name in ("redis", "s3", "triton"):
        assert not published(all_services[name]), f"{name} has no reason to be reachable from the host"


def test_triton_serves_the_gpu_repository_on_a_reserved_gpu(services: dict[str, dict[str, Any]]) -> None:
    triton = services["triton"]
    base = re.search(r"^FROM (\S+)", triton["build"]["dockerfile_inline"], flags=re.M)
    assert base and re.fullmatch(r"nvcr\.io/nvidia/tritonserver:\d\d\.\d\d-py3", base.group(1))
    devices = triton["deploy"]["resources"]["reservations"]["devices"]
    assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices)
    assert "./model_repository/gpu:/models:ro" in triton["volumes"]
    args = triton["command"]
    assert "--model-repository=/models" in args
    assert "--model-control-mode=none" in args
    assert "--metrics-port=8002" in args
    for flag in ("--http-restricted-api=", "--grpc-restricted-protocol="):
        (value,) = [a for a in args if a.startswith(flag)]
        assert "model-repository" in value and "${TRITON_ADMIN_KEY:?" in value
    assert "/v2/health/ready" in " ".join(triton["healthcheck"]["test"])


def test_servers_keep_their_data_in_named_volumes(compose: dict[str, Any]) -> None:
    services, volumes = compose["services"], compose["volumes"]
    for name, path in (("nats", "/data"), ("redis", "/data"), ("s3", "/data")):
        mounts = [v for v in services[name]["volumes"] if v.endswith(":" + path)]
        assert mounts and mounts[0].split(":")[0] in volumes, f"{name} {path} is not a named volume"


def test_nats_runs_our_config_with_jetstream(services: dict[str, dict[str, Any]]) -> None:
    nats = services["nats"]
    assert "./nats.conf:/etc/nats/nats.conf:ro" in nats["volumes"]
    cmd = nats["command"]
    assert cmd[cmd.index("-c") + 1] == "/etc/nats/nats.conf" and cmd[cmd.index("-sd") + 1] == "/data"
    assert "healthz?js-enabled-only=true" in " ".join(nats["healthcheck"]["test"])
    conf = (ROOT / "nats.conf").read_text()
    for var in set(re.findall(r"\$(MESH_NATS_PASSWORD_\w+)", conf)):
        assert var in nats["environment"], f"nats.conf reads {var}"


def test_redis_has_aof_and_acl_users_only(compose: dict[str, Any]) -> None:
    redis = compose["services"]["redis"]
    args = redis["environment"]["REDIS_ARGS"]
    assert "--appendonly yes" in args and "--aclfile" in args
    acl = compose["configs"]["redis-acl"]["content"]
    # the default user keeps a password (Redis replays the AOF as it) but is never `nopass`
    assert re.search(r"user default on >\$\{MESH_REDIS_ADMIN_PASSWORD:\?", acl) and "nopass" not in acl
    assert re.search(r"user mesh on >\$\{MESH_REDIS_PASSWORD:\?", acl)
    # the service users are exactly the local stack's (one source: ops/stack/privileges.py)
    password = {u: required(f"MESH_REDIS_PASSWORD_{u.upper()}") for u in SERVICE_USERS}
    lines = [line.strip() for line in acl.splitlines() if line.strip().startswith("user ")]
    assert lines[2:] == redis_acl_lines(COMPOSE_NAMES, password)
    test = " ".join(redis["healthcheck"]["test"])
    assert "--user mesh" in test and "REDISCLI_AUTH" in redis["environment"]


def test_s3_has_one_identity_per_service_and_bootstrap_puts_the_bucket_policy(
    compose: dict[str, Any],
) -> None:
    content = json.loads(compose["configs"]["s3-identities"]["content"])
    keys = {"ops": (required("MESH_S3_ACCESS_KEY"), required("MESH_S3_SECRET_KEY"))} | {
        n: (required(f"MESH_S3_ACCESS_KEY_{n.upper()}"), required(f"MESH_S3_SECRET_KEY_{n.upper()}"))
        for n in S3_SERVICES
    }
    assert content == s3_identities(COMPOSE_NAMES, keys)  # the local stack's (ops/stack/privileges.py)
    bootstrap = compose["services"]["bootstrap"]
    assert "s3" in bootstrap["depends_on"] and "bootstrap(Settings())" in " ".join(bootstrap["command"])


# --- Dockerfile ---------------------------------------------------------------------------------------------
def test_dockerfile_installs_core_deps_and_runs_as_a_user() -> None:
    text = (ROOT / "Dockerfile").read_text()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    froms = [ln for ln in lines if ln.upper().startswith("FROM ")]
    assert froms and all("python:3.11-slim" in ln for ln in froms)
    installs = [ln for ln in lines if "pip install" in ln]
    assert any(re.search(r"pip install \.(\s|$)", ln) for ln in installs), installs
    assert not any(re.search(r"\.\[", ln) for ln in installs), "no extras: servers/models stay out"
    users = [ln.split(None, 1)[1] for ln in lines if ln.upper().startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    for src in ("actors/", "gateway/", "ops/", "nats.conf"):
        assert any(ln.startswith("COPY") and src in ln for ln in lines), f"{src} is not copied"
    assert lines[-1] == 'CMD ["python", "-m", "gateway"]'


def test_dockerignore_keeps_the_context_small_and_secret_free() -> None:
    entries = {ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()}
    for entry in (".git", ".venv", "var", ".env", "**/__pycache__", "**/*.onnx", "**/*.pth"):
        assert entry in entries, entry


# --- monitoring ---------------------------------------------------------------------------------------------
def test_prometheus_scrapes_every_service() -> None:
    config = load_yaml(MONITORING / "prometheus.yml")
    targets: dict[str, set[str]] = {}
    for job in config["scrape_configs"]:
        found = targets.setdefault(job["job_name"], set())
        for sc in job.get("static_configs", []):
            found.update(sc["targets"])
        for dns in job.get("dns_sd_configs", []):
            found.update(f"{n}:{dns['port']}" for n in dns["names"])
        assert job.get("metrics_path", "/metrics") == "/metrics"
    for name, port in METRICS_PORTS.items():
        assert f"{name}:{port}" in targets[name], f"{name} is not scraped on {port}"
    assert "triton:8002" in targets["triton"]
    assert any(t.startswith("nats-exporter:") for t in targets["nats"])
    assert config["rule_files"] == ["/etc/prometheus/alerts.yml"]


def test_alert_rules_watch_triton_queue_time_and_pending_requests() -> None:
    rules = [r for g in load_yaml(MONITORING / "alerts.yml")["groups"] for r in g["rules"]]
    exprs = " ".join(r["expr"] for r in rules)
    assert "rate(nv_inference_queue_duration_us" in exprs and "rate(nv_inference_request_success" in exprs
    assert "nv_inference_pending_request_count" in exprs
    alerts = {r["alert"] for r in rules if "alert" in r}
    assert {"TritonQueueTimeHigh", "TritonPendingRequestsHigh"} <= alerts


def test_dashboard_shows_stages_triton_and_errors() -> None:
    dashboard = json.loads((MONITORING / "grafana" / "dashboard.json").read_text())
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p.get("targets", []))
    for metric in (
        "mesh_stage_seconds_bucket",
        "mesh_jobs_pending",
        "mesh_errors_total",
        "nv_inference_queue_duration_us",
        "nv_inference_pending_request_count",
        "nv_inference_exec_count",
        "nv_inference_request_success",
        "nv_inference_count",  # images, not requests: a request carries several (the embedder coalesces)
    ):
        assert metric in exprs, metric
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    uids = {
        t["datasource"]["uid"] for p in dashboard["panels"] for t in p.get("targets", []) if "datasource" in t
    }
    provisioned = load_yaml(MONITORING / "grafana" / "provisioning" / "datasources" / "datasources.yml")
    assert uids <= {d["uid"] for d in provisioned["datasources"]}
    provider = load_yaml(MONITORING / "grafana" / "provisioning" / "dashboards" / "dashboards.yml")
    assert provider["providers"][0]["options"]["path"]


def test_promtail_labels_by_service_and_level_not_by_image() -> None:
    config = load_yaml(MONITORING / "promtail.yml")
    (job,) = config["scrape_configs"]
    assert job["static_configs"][0]["labels"]["__path__"].endswith("var/log}/*.log")
    stages = {next(iter(s)): s[next(iter(s))] for s in job["pipeline_stages"]}
    assert set(stages["labels"]) == {"service", "level"}
    assert {"image_id", "trace_id"} <= set(stages["json"]["expressions"])
    assert {"image_id", "trace_id"} <= set(stages["structured_metadata"])
    for s in job["static_configs"]:
        assert not {"image_id", "trace_id"} & set(s["labels"])


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ``${VAR:?msg}`` / ``${VAR:-default}`` interpolation, enough for these files."""

    def sub(m: re.Match[str]) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3)
        if name in env:
            return env[name]
        assert op != ":?", f"{name} is required"
        return arg or ""

    return re.sub(r"\$\{(\w+)(?:(:\?|:-)([^}]*))?\}", sub, value)


@pytest.mark.parametrize("name", [*APP_SERVICES, "bootstrap", "worker"])
def test_app_environment_passes_the_production_settings_check(
    name: str, services: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    from actors.settings import Settings

    example = (ROOT / ".env.example").read_text()
    # every secret a value of its own; the choices (COMPOSE_PROFILES, MESH_WORKFLOW_ENGINE) as the example has them
    dotenv = {
        k: f"{k.lower()}-secret" if v.startswith("change-me") else v
        for k, v in re.findall(r"^(\w+)=(.*)$", example, flags=re.M)
    }
    for key in list(Settings.model_fields):
        monkeypatch.delenv(f"MESH_{key.upper()}", raising=False)
    for key, value in services[name]["environment"].items():
        monkeypatch.setenv(key, interpolate(str(value), dotenv))
    s = Settings()  # raises if a production check fails
    assert s.profile == "production"
    for redis_user in SERVICE_USERS:
        if redis_user == name:
            own = f"mesh_redis_password_{name}-secret"
            assert s.redis_url_for(redis_user) == f"redis://{name}:{own}@redis:6379/0"
    for identity in S3_SERVICES:
        if identity == name:
            keys = (f"mesh_s3_access_key_{name}-secret", f"mesh_s3_secret_key_{name}-secret")
            assert s.s3_credentials(identity) == keys
    if name == "bootstrap":  # puts the bucket policy as the operators' S3 identity
        assert s.s3_credentials("ops") == ("mesh_s3_access_key-secret", "mesh_s3_secret_key-secret")
    assert s.nats_server_url == "nats://nats:4222"
    user = {"bootstrap": "ops", "worker": "coordinator"}.get(name, name)  # the worker is the coordinator's
    assert s.nats_password(user) == f"mesh_nats_password_{user}-secret"
    if name == "worker":
        assert s.workflow_engine == "temporal" and s.temporal_server_address == "temporal:7233"
        assert s.redis_url_for("coordinator").startswith(
            "redis://coordinator:mesh_redis_password_coordinator-secret@"
        )


def test_the_workflow_engine_is_a_profile_chosen_in_env(compose: dict[str, Any]) -> None:
    """jetstream: the coordinator; temporal: Temporal's own server image on PostgreSQL, its UI on loopback,
    and the worker in the coordinator's place; .env.example picks jetstream for both switches."""
    services = compose["services"]
    profiles = {name: svc.get("profiles", []) for name, svc in services.items()}
    assert profiles["coordinator"] == ["jetstream"]
    assert {n for n, p in profiles.items() if p == ["temporal"]} == {
        "temporal-db",
        "temporal",
        "temporal-ui",
        "worker",
    }
    assert all(
        not p
        for n, p in profiles.items()
        if n not in {"coordinator", "temporal-db", "temporal", "temporal-ui", "worker"}
    )
    assert services["temporal"]["image"].startswith("temporalio/")
    assert services["temporal"]["environment"]["DB"].startswith("postgres")
    assert services["temporal-db"]["image"].startswith("postgres:")
    assert "temporal-db-data" in compose["volumes"]
    assert published(services["temporal-ui"]) == [("127.0.0.1", "8080")]
    worker = services["worker"]
    assert (
        worker["command"] == ["python", "-m", "actors", "worker"]
        and worker["build"] == services["gateway"]["build"]
    )
    assert worker["environment"]["MESH_WORKFLOW_ENGINE"] == "temporal"
    assert worker["depends_on"]["temporal"] == {"condition": "service_healthy"}
    example = dict(re.findall(r"^(\w+)=(.*)$", (ROOT / ".env.example").read_text(), flags=re.M))
    assert example["COMPOSE_PROFILES"] == "jetstream" and example["MESH_WORKFLOW_ENGINE"] == "jetstream"


def test_alert_rules_warn_before_each_admission_refusal() -> None:
    """gateway/admission.py refuses uploads per resource; an alert for each fires at 80% of its limit."""
    from gateway.admission import RESOURCE_LIMIT, RESOURCE_USED

    rules = {
        r["alert"]: r
        for g in load_yaml(MONITORING / "alerts.yml")["groups"]
        for r in g["rules"]
        if "alert" in r
    }
    names = (RESOURCE_USED._name, RESOURCE_LIMIT._name)
    for alert, resource in (
        ("MeshBacklogNearLimit", "backlog"),
        ("MeshJetStreamStoreNearLimit", "jetstream"),
        ("MeshRedisMemoryNearLimit", "redis"),
        ("MeshObjectStoreNearLimit", "object_store"),
    ):
        expr = rules[alert]["expr"]
        assert all(f'{n}{{resource="{resource}"}}' in expr for n in names), alert
        assert "> 0.8" in expr, alert
