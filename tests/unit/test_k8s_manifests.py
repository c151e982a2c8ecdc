"""The cluster deployments hold together without Docker or a cluster: compose.cluster.yaml and deploy/k8s/.

deploy/k8s/ is checked against the Kubernetes API's JSON schemas of one pinned version in strict mode (a misspelt
field fails), which kubernetes-validate bundles: no cluster, no network. compose.cluster.yaml is checked against the
Compose Specification's schema as compose.yaml is. Then what an operator relies on: settings, images, commands,
ports and probes agree with compose.yaml and actors/settings.py, each pod holds only its own credentials, NATS is
a three-server JetStream cluster, Triton asks for a GPU and scales on its queue, Sentinels watch the primary.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from actors.settings import Settings
from ops.stack.privileges import SERVICE_USERS, redis_acl_lines
from tests.unit.test_deploy_files import (
    COMPOSE_NAMES,
    OWN_SECRETS,
    interpolate,
    load_yaml,
    one_shot,
    published,
)

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
CLUSTER = ROOT / "compose.cluster.yaml"
# the oldest Kubernetes the manifests are meant for (kubernetes-validate 1.37 bundles 1.25 to 1.37)
KUBERNETES_VERSION = "1.32"
# variables the cluster files set that actors/settings.py does not read yet (issue #13, point 1 adds them)
PENDING_SETTINGS = {"MESH_REDIS_SENTINELS", "MESH_REDIS_SENTINEL_MASTER"}  # issue #13 point 1: not read yet
KNOWN_SETTINGS = {f"MESH_{name.upper()}" for name in Settings.model_fields} | PENDING_SETTINGS
PROCESSES = ("gateway", "coordinator", "config", "indexer")
REPLICAS = {"gateway": 2, "coordinator": 2, "config": 1, "indexer": 2}
HTTP_PORTS = {"gateway": 8080, "coordinator": 8091, "config": 8092, "indexer": 8093}
SECRET = "mesh-credentials"  # the one Secret, made by the operator from .env (kustomization.yaml)
Doc = dict[str, Any]
Objects = dict[tuple[str, str], Any]  # deploy/k8s's objects by (kind, name)


def docs(path: Path) -> list[Doc]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def latest(image: str) -> str:
    """compose's ``image-mesh:${MESH_IMAGE_TAG:-latest}`` as the manifests spell it."""
    return interpolate(image, {})


def env_names(text: str) -> set[str]:
    return set(re.findall(r"^#?\s*(\w+)=", text, flags=re.M))


@pytest.fixture(scope="module")
def compose() -> Doc:
    return load_yaml(ROOT / "compose.yaml")


@pytest.fixture(scope="module")
def cluster() -> Doc:
    return load_yaml(CLUSTER)


@pytest.fixture(scope="module")
def k8s() -> Objects:
    """Every object of the kustomization, by (kind, name)."""
    kustomization = load_yaml(K8S / "kustomization.yaml")
    objects = [d for f in kustomization["resources"] for d in docs(K8S / f)]
    by_key = {(d["kind"], d["metadata"]["name"]): d for d in objects}
    assert len(by_key) == len(objects), "two objects share a kind and a name"
    return by_key


def container(k8s: Objects, kind: str, name: str) -> Doc:
    (c,) = k8s[kind, name]["spec"]["template"]["spec"]["containers"]
    return dict(c)


def pod_env(k8s: Objects, c: Doc) -> dict[str, str]:
    """The container's environment as the kubelet builds it (``env`` over ``envFrom``); a Secret's key reads
    ``<secret KEY>``."""
    env: dict[str, str] = {}
    for source in c.get("envFrom", []):
        env |= k8s["ConfigMap", source["configMapRef"]["name"]]["data"]
    for e in c.get("env", []):
        ref = e.get("valueFrom", {}).get("secretKeyRef")
        env[e["name"]] = f"<secret {ref['key']}>" if ref else str(e.get("value", "<field>"))
    return env


# --- Kubernetes ---------------------------------------------------------------------------------------------
def test_kustomization_lists_every_manifest() -> None:
    kustomization = load_yaml(K8S / "kustomization.yaml")
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(kustomization["resources"]) == sorted(on_disk)
    assert kustomization["namespace"] == "image-mesh"
    assert {i["name"] for i in kustomization["images"]} == {"image-mesh", "image-mesh-triton"}


@pytest.mark.parametrize("path", sorted(K8S.glob("*.yaml")), ids=lambda p: p.name)
def test_manifest_matches_the_kubernetes_schema_offline(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("schema validation tried the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    for doc in docs(path):
        if doc["kind"] == "Kustomization":  # kustomize's own file, not an API object
            continue
        try:
            version = kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            where = ".".join(str(p) for p in e.path)
            pytest.fail(f"{path.name}: {doc['kind']}/{doc['metadata']['name']}: {where}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError as e:  # a wrong apiVersion or kind
            pytest.fail(f"{path.name}: {e.message}")
        assert version == KUBERNETES_VERSION


def find(obj: Any, key: str) -> list[Any]:
    """Every value under ``key`` anywhere in ``obj``."""
    if isinstance(obj, dict):
        return [v for k, v in obj.items() if k == key] + [x for v in obj.values() for x in find(v, key)]
    return [x for v in obj for x in find(v, key)] if isinstance(obj, list) else []


def test_secrets_are_referenced_by_name_never_committed(k8s: Objects) -> None:
    assert not [key for key in k8s if key[0] == "Secret"], "a Secret object holds values: make it from .env"
    refs = find(list(k8s.values()), "secretKeyRef")
    assert refs and {r["name"] for r in refs} == {SECRET}
    assert {r["key"] for r in refs} <= env_names((ROOT / ".env.example").read_text()), "keys of .env"
    spelt = [e["name"] for env in find(list(k8s.values()), "env") for e in env if "value" in e]
    assert not [n for n in spelt if re.search("PASSWORD|KEY|AUTH", n)], "a credential is spelt out"
    data = k8s["ConfigMap", "mesh-settings"]["data"]
    assert {v for k, v in data.items() if re.search("PASSWORD|_KEY", k)} == {"not-this-service"}


def mesh_containers(k8s: Objects) -> dict[str, Doc]:
    out = {name: container(k8s, "Deployment", name) for name in PROCESSES}
    return out | {"bootstrap": container(k8s, "Job", "bootstrap")}


def test_every_variable_a_mesh_process_reads_is_a_setting(k8s: Objects, cluster: Doc, compose: Doc) -> None:
    assert set(compose["x-app-env"]) <= set(cluster["x-app-env"]), "a setting of compose.yaml is missing"
    for name, c in mesh_containers(k8s).items():
        unknown = set(pod_env(k8s, c)) - KNOWN_SETTINGS
        assert not unknown, f"{name}: actors/settings.py reads no {sorted(unknown)}"
    for name, svc in cluster["services"].items():
        if svc["image"].startswith("image-mesh:"):
            unknown = set(svc["environment"]) - KNOWN_SETTINGS
            assert not unknown, f"compose.cluster.yaml {name}: no setting {sorted(unknown)}"


def test_mesh_processes_are_compose_images_commands_ports_and_probes(k8s: Objects, compose: Doc) -> None:
    services = compose["services"]
    for name in PROCESSES:
        c, svc = container(k8s, "Deployment", name), services[name]
        assert c["image"] == latest(svc["image"]) and c["command"] == svc["command"], name
        assert k8s["Deployment", name]["spec"]["replicas"] == REPLICAS[name]
        setting = "MESH_GATEWAY_PORT" if name == "gateway" else f"MESH_{name.upper()}_HTTP_PORT"
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        assert ports["http"] == HTTP_PORTS[name] == int(k8s["ConfigMap", "mesh-settings"]["data"][setting])
        # the probe asks what compose's healthcheck asks, on the same port
        probe = " ".join(svc["healthcheck"]["test"])
        compose_path = re.search(rf"127\.0\.0\.1:{HTTP_PORTS[name]}(/\w+)", probe)
        assert compose_path and c["readinessProbe"]["httpGet"] == {"path": compose_path[1], "port": "http"}
        assert c["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
        service = k8s["Service", name]["spec"]
        assert service["selector"] == k8s["Deployment", name]["spec"]["selector"]["matchLabels"]
        assert {(p["port"], p["targetPort"]) for p in service["ports"]} >= {(HTTP_PORTS[name], "http")}
    assert {p["containerPort"] for p in container(k8s, "Deployment", "gateway")["ports"]} == {8080, 8081}
    job = container(k8s, "Job", "bootstrap")
    assert job["image"] == latest(services["bootstrap"]["image"])
    assert job["command"] == services["bootstrap"]["command"]


@pytest.mark.parametrize("name", [*PROCESSES, "bootstrap"])
def test_each_pod_holds_its_own_credentials_and_passes_the_production_check(
    name: str, k8s: Objects, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = pod_env(k8s, mesh_containers(k8s)[name])
    held = {k for k, v in env.items() if v.startswith("<secret ")}
    # bootstrap: the operators' NATS user, Redis user and S3 identity
    ops = ("MESH_NATS_PASSWORD_OPS", "MESH_REDIS_PASSWORD", "MESH_S3_ACCESS_KEY", "MESH_S3_SECRET_KEY")
    own = {"MESH_API_KEYS", *OWN_SECRETS.get(name, ())}
    own |= set(ops) if name == "bootstrap" else {f"MESH_NATS_PASSWORD_{name.upper()}"}
    assert held == own, f"{name} holds {sorted(held)}"
    assert all(env[k] == f"<secret {k}>" for k in held), "each variable takes its own Secret key"
    for key in Settings.model_fields:
        monkeypatch.delenv(f"MESH_{key.upper()}", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    s = Settings()  # raises if the production check fails
    user = "ops" if name == "bootstrap" else name
    assert s.profile == "production"
    assert s.nats_password(user) == f"<secret MESH_NATS_PASSWORD_{user.upper()}>"
    # the addresses are the Services'
    assert s.nats_server_url == "nats://nats:4222" and s.triton_grpc_url == "triton:8001"
    assert s.redis_url_for("gateway").endswith("@redis:6379/0")
    for service, port in (("nats", 4222), ("triton", 8001), ("redis", 6379)):
        assert port in [p["port"] for p in k8s["Service", service]["spec"]["ports"]]


def test_nats_is_a_three_server_jetstream_cluster(k8s: Objects, compose: Doc) -> None:
    sts = k8s["StatefulSet", "nats"]["spec"]
    assert sts["replicas"] == 3
    headless = k8s["Service", sts["serviceName"]]["spec"]
    assert headless["clusterIP"] == "None" and headless["publishNotReadyAddresses"] is True
    data = k8s["ConfigMap", "nats-config"]["data"]
    nats_conf = (ROOT / "nats.conf").read_text()
    assert data["nats.conf"] == nats_conf, "copy nats.conf into deploy/k8s/nats-config.yaml (indented)"
    assert re.search(r"^jetstream \{", nats_conf, flags=re.M) and "jetstream: enabled" in nats_conf
    cluster_conf = data["cluster.conf"]
    assert "include ./nats.conf" in cluster_conf and re.search(r"name: mesh", cluster_conf)
    routes = set(re.findall(r"nats-route://([\w.-]+):6222", cluster_conf))
    assert routes == {f"nats-{i}.{sts['serviceName']}" for i in range(3)}
    c = container(k8s, "StatefulSet", "nats")
    assert c["image"] == compose["services"]["nats"]["image"]
    args = c["args"]
    assert args[args.index("-c") + 1] == "/etc/nats/cluster.conf" and args[args.index("-sd") + 1] == "/data"
    assert args[args.index("--name") + 1] == "$(POD_NAME)", "clustered JetStream needs a name per server"
    data_volume = sts["volumeClaimTemplates"][0]["metadata"]["name"]
    assert {"name": data_volume, "mountPath": "/data"} in c["volumeMounts"], "the store is on its own volume"
    env = {e["name"] for e in c["env"]} - {"POD_NAME"}
    assert env == set(re.findall(r"\$(MESH_NATS_PASSWORD_\w+)", nats_conf)), "nats.conf's passwords, no more"
    assert {p["containerPort"] for p in c["ports"]} == {4222, 6222, 8222}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert re.fullmatch(r"/healthz\?js-[a-z-]+=true", c[probe]["httpGet"]["path"]), probe


def test_triton_asks_for_a_gpu_and_runs_compose_command(k8s: Objects, compose: Doc) -> None:
    c, triton = container(k8s, "Deployment", "triton"), compose["services"]["triton"]
    for part in ("requests", "limits"):  # the device plugin schedules on limits; requests must equal them
        assert int(c["resources"][part]["nvidia.com/gpu"]) >= 1, part
    assert c["image"] == latest(triton["image"])

    def admin_key(args: list[str]) -> list[str]:
        return [re.sub(r"\$[({]TRITON_ADMIN_KEY[^)}]*[)}]", "<key>", a) for a in args]

    assert admin_key(c["command"]) == admin_key(triton["command"])
    assert c["env"][0]["valueFrom"]["secretKeyRef"] == {"name": SECRET, "key": "TRITON_ADMIN_KEY"}
    assert {"mountPath": "/models", "name": "models", "readOnly": True} in c["volumeMounts"]
    assert c["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert {p["containerPort"] for p in c["ports"]} == {8000, 8001, 8002}


def test_triton_scales_on_its_queue_metric(k8s: Objects) -> None:
    (hpa,) = [obj["spec"] for (kind, _), obj in k8s.items() if kind == "HorizontalPodAutoscaler"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "triton"}
    assert 2 <= hpa["minReplicas"] < hpa["maxReplicas"]
    metrics = [m[m["type"].lower()] for m in hpa["metrics"] if m["type"] in ("Pods", "External")]
    names = [m["metric"]["name"] for m in metrics]
    assert names and all(re.fullmatch(r"nv_inference_(queue|pending)\w*", n) for n in names), names
    assert "replicas" not in k8s["Deployment", "triton"]["spec"], "the autoscaler owns the replica count"


def test_redis_acl_is_compose_acl_rendered_from_the_secret(
    k8s: Objects, compose: Doc, tmp_path: Path
) -> None:
    template = k8s["ConfigMap", "redis-acl-template"]["data"]["users.acl"]
    compose_acl = compose["configs"]["redis-acl"]["content"]
    compose_lines = [re.sub(r"\$\{(\w+):\?[^}]*\}", r"${\1}", ln) for ln in compose_acl.splitlines()]
    assert template.splitlines() == [ln for ln in compose_lines if ln.startswith("user ")]
    passwords = {u: f"${{MESH_REDIS_PASSWORD_{u.upper()}}}" for u in SERVICE_USERS}
    assert template.splitlines()[2:] == redis_acl_lines(COMPOSE_NAMES, passwords)
    (init,) = k8s["StatefulSet", "redis"]["spec"]["template"]["spec"]["initContainers"]
    variables = set(re.findall(r"\$\{(\w+)\}", template))
    assert {e["name"] for e in init["env"]} == variables
    redis = container(k8s, "StatefulSet", "redis")
    assert redis["image"] == init["image"] == compose["services"]["redis"]["image"]
    args = next(e["value"] for e in redis["env"] if e["name"] == "REDIS_ARGS")
    assert "--aclfile /acl/users.acl" in args and "--appendonly yes" in args
    awk = shutil.which("awk")
    if awk is None:
        pytest.skip("no awk here to run the init container's program")
    (tmp_path / "users.acl").write_text(template)
    program = init["command"][1].replace('"/acl/users.acl"', f'"{tmp_path / "out.acl"}"')
    env = {v: f"{v.lower()}-pw" for v in variables}
    subprocess.run([awk, program, str(tmp_path / "users.acl")], env=env, check=True, timeout=10)
    assert (tmp_path / "out.acl").read_text() == re.sub(r"\$\{(\w+)\}", lambda m: env[m[1]], template)
    missing = subprocess.run([awk, program, str(tmp_path / "users.acl")], env={}, capture_output=True)
    assert missing.returncode != 0, "an unset password must stop the pod, not become an empty one"


# --- compose.cluster.yaml -----------------------------------------------------------------------------------
def test_cluster_compose_matches_the_compose_specification() -> None:
    # the dev extra's copy, else the one on PATH, as test_deploy_files.py runs it
    tool = Path(sys.executable).parent / "check-jsonschema"
    exe = str(tool) if tool.exists() else shutil.which("check-jsonschema")
    assert exe, "check-jsonschema is missing: install the dev extra"
    args = [exe, "--builtin-schema", "vendor.compose-spec", str(CLUSTER)]
    result = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_cluster_nats_servers_route_to_each_other(cluster: Doc, compose: Doc) -> None:
    image = compose["services"]["nats"]["image"]
    servers = {n: s for n, s in cluster["services"].items() if s["image"] == image}
    assert len(servers) == 3
    conf = (ROOT / "ops" / "deploy" / "nats-cluster" / "cluster.conf").read_text()
    assert set(re.findall(r"nats-route://([\w.-]+):6222", conf)) == set(servers)
    for name, svc in servers.items():
        cmd = svc["command"]
        assert cmd[cmd.index("--name") + 1] == name and cmd[cmd.index("-c") + 1] == "/etc/nats/cluster.conf"
        assert "./nats.conf:/etc/nats/nats.conf:ro" in svc["volumes"]
        assert "./ops/deploy/nats-cluster/cluster.conf:/etc/nats/cluster.conf:ro" in svc["volumes"]
        assert "nats" in svc["networks"]["default"]["aliases"], "clients find any server as `nats`"
    # the compose cluster block and the StatefulSet's differ in their routes only
    k8s_conf = docs(K8S / "nats-config.yaml")[0]["data"]["cluster.conf"]

    def block(text: str) -> list[str]:
        lines = (ln.strip() for ln in text.splitlines())
        return [ln for ln in lines if ln and not ln.startswith(("#", "nats-route"))]

    assert block(conf) == block(k8s_conf)


def test_cluster_sentinels_watch_the_primary(cluster: Doc, compose: Doc) -> None:
    services, configs = cluster["services"], cluster["configs"]
    sentinels = {n: s for n, s in services.items() if "redis-sentinel" in str(s.get("command"))}
    assert len(sentinels) == 3
    sentinel_conf = configs["redis-sentinel"]["content"]
    monitor = re.search(r"^sentinel monitor (\w+) ([\w-]+) (\d+) (\d+)$", sentinel_conf, re.M)
    assert monitor, "no `sentinel monitor` line"
    master, host, port, quorum = monitor[1], monitor[2], int(monitor[3]), int(monitor[4])
    assert host == "redis-primary" and port == 6379 and quorum == len(sentinels) // 2 + 1
    for name, svc in sentinels.items():
        assert svc["configs"][0]["source"] == "redis-sentinel"
        assert f"announce-ip {name}" in svc["command"][-1]
    assert "--replicaof redis-primary 6379" in services["redis-replica"]["environment"]["REDIS_ARGS"]
    env = cluster["x-app-env"]
    assert env["MESH_REDIS_SENTINELS"].split(",") == [f"{n}:26379" for n in sorted(sentinels)]
    assert env["MESH_REDIS_SENTINEL_MASTER"] == master
    for name in ("redis-acl", "s3-identities"):  # the same users and identities as the single-server stack
        assert configs[name]["content"] == compose["configs"][name]["content"], name


def test_cluster_runs_two_of_each_process(cluster: Doc, compose: Doc) -> None:
    count: dict[str, int] = {}
    for svc in cluster["services"].values():
        for name in (*PROCESSES, "triton", "s3", "bootstrap"):
            if svc.get("command") == compose["services"][name]["command"]:
                count[name] = count.get(name, 0) + svc.get("deploy", {}).get("replicas", 1)
                assert svc["image"] == compose["services"][name]["image"], name
    assert count == {**REPLICAS, "triton": 2, "s3": 1, "bootstrap": 1}
    gpus = [
        d["device_ids"][0]
        for svc in cluster["services"].values()
        for d in svc.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
    ]
    assert len(gpus) == 2 and len({interpolate(g, {}) for g in gpus}) == 2, "one GPU each by default"


def test_cluster_services_wait_for_health_and_publish_little(cluster: Doc) -> None:
    services = cluster["services"]
    for name, svc in services.items():
        assert one_shot(svc) or svc.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
        for dep, how in svc.get("depends_on", {}).items():
            want = "service_completed_successfully" if one_shot(services[dep]) else "service_healthy"
            assert how["condition"] == want, f"{name} -> {dep}"
        for host_ip, port in published({"ports": [interpolate(str(p), {}) for p in svc.get("ports", [])]}):
            assert host_ip == "127.0.0.1" or (name.startswith("gateway-") and port == "8080"), (name, port)
    text = CLUSTER.read_text()
    assert set(re.findall(r"\$\{(\w+):\?", text)) <= env_names((ROOT / ".env.example").read_text())


@pytest.mark.parametrize("name", ["gateway-1", "gateway-2", "coordinator", "config", "indexer", "bootstrap"])
def test_cluster_environment_passes_the_production_check(
    name: str, cluster: Doc, monkeypatch: pytest.MonkeyPatch
) -> None:
    example = re.findall(r"^(\w+)=", (ROOT / ".env.example").read_text(), re.M)
    dotenv = {k: f"{k.lower()}-secret" for k in example}
    for key in Settings.model_fields:
        monkeypatch.delenv(f"MESH_{key.upper()}", raising=False)
    env = {k: interpolate(str(v), dotenv) for k, v in cluster["services"][name]["environment"].items()}
    process = name.split("-")[0]
    held = {k for k, v in env.items() if v.endswith("-secret") and k != "MESH_API_KEYS"}
    ops = {"MESH_NATS_PASSWORD_OPS", "MESH_REDIS_PASSWORD", "MESH_S3_ACCESS_KEY", "MESH_S3_SECRET_KEY"}
    own = ops if name == "bootstrap" else {f"MESH_NATS_PASSWORD_{process.upper()}", *OWN_SECRETS[process]}
    assert held == own, f"{name} holds {sorted(held)}"
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    s = Settings()
    assert s.nats_server_url == "nats://nats:4222" and s.triton_grpc_url == "triton-1:8001,triton-2:8001"
    assert env["MESH_STREAM_REPLICAS"] == "3"
    user = "ops" if name == "bootstrap" else process
    assert s.nats_password(user) == f"mesh_nats_password_{user}-secret"
