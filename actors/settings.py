"""Environment settings for every process of the mesh, validated at start-up.

Every variable has the prefix ``MESH_`` (``MESH_GATEWAY_PORT=9090``). The defaults are the local profile: every
listener on 127.0.0.1 and development credentials. ``MESH_PROFILE=production`` refuses those unsafe defaults.
"""

from __future__ import annotations

from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Literal
from urllib.parse import quote, urlsplit, urlunsplit

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from actors.decode_budget import DEFAULT_DECODE_BUDGET_BYTES

LOCAL_SECRET_MARK = "local-"  # development credentials start with this; production refuses them

# the credentials (each service's own, and the operators') that production refuses with their local values
SECRET_FIELDS = (
    *(f"nats_password_{user}" for user in ("gateway", "coordinator", "config", "indexer", "ops")),
    *(f"redis_password{user}" for user in ("", "_gateway", "_coordinator", "_indexer")),
    *(f"s3_{key}{who}" for who in ("", "_gateway", "_coordinator") for key in ("access_key", "secret_key")),
)
RedisUser = Literal["gateway", "coordinator", "indexer", "ops"]
S3Identity = Literal["gateway", "coordinator", "ops"]
API_SCOPES = frozenset({"read", "write", "admin"})  # each implies the ones before it: admin > write > read
_IMPLIED = {"read": {"read"}, "write": {"read", "write"}, "admin": set(API_SCOPES)}


def parse_api_keys(text: str) -> dict[str, frozenset[str]]:
    """``MESH_API_KEYS`` as ``{key: scopes}``: ``k1,k2:read,k3:read+write,k4:admin``. A bare key has every
    scope (the format before scopes existed); ``admin`` implies ``write``, which implies ``read``.
    ``ValueError`` on an unknown scope or a key given twice."""
    keys: dict[str, frozenset[str]] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        key, sep, scopes_text = item.rpartition(":") if ":" in item else (item, "", "")
        scopes = frozenset(s.strip() for s in scopes_text.split("+") if s.strip()) if sep else API_SCOPES
        if not key or not scopes or scopes - API_SCOPES:
            # the message never quotes the entry: it holds a secret
            raise ValueError(
                f"MESH_API_KEYS: an entry has an empty key or scopes not among {sorted(API_SCOPES)}"
            )
        if key in keys:
            raise ValueError("MESH_API_KEYS: a key is listed twice")
        keys[key] = frozenset().union(*(_IMPLIED[scope] for scope in scopes))
    return keys


def with_credentials(url: str, user: str, password: str) -> str:
    """``url`` with these credentials instead of any it has."""
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=f"{quote(user, safe='')}:{quote(password, safe='')}@{host}"))


PACKAGE = "image-mesh"  # the distribution's name in pyproject.toml


def package_version() -> str:
    """The installed release (``mesh --version``, ``GET /status``): pyproject.toml's ``version``."""
    try:
        return importlib_metadata.version(PACKAGE)
    except importlib_metadata.PackageNotFoundError:
        return "unknown (not installed: pip install -e .)"


# hide_input_in_errors: a refused value (an API key, or every credential a model check was given) must not
# reach the start-up error and the logs
_MODEL_CONFIG = SettingsConfigDict(env_prefix="MESH_", extra="ignore", frozen=True, hide_input_in_errors=True)
WorkflowEngine = Literal["jetstream", "temporal"]


class EngineSettings(BaseSettings):
    """Which workflow engine runs the image jobs (docs/OPERATIONS.md, "Choosing the workflow engine").

    ``jetstream`` (the default): the coordinator pulls durable jobs from a JetStream stream. ``temporal``: the
    gateway starts one Temporal workflow per image and a Temporal worker (``actors/temporal_worker.py``) runs
    it in place of the coordinator; the local stack then also runs Temporal's dev server."""

    model_config = _MODEL_CONFIG

    workflow_engine: WorkflowEngine = "jetstream"
    temporal_port: int = Field(7233, ge=1, le=65535)  # the dev server's frontend (gRPC)
    temporal_ui_port: int = Field(8233, ge=1, le=65535)  # its web UI
    temporal_http_port: int = Field(7243, ge=1, le=65535)  # its HTTP API
    temporal_metrics_port: int = Field(7244, ge=1, le=65535)  # its Prometheus metrics
    temporal_address: str | None = (
        None  # host:port of a Temporal frontend; defaults to {host}:{temporal_port}
    )
    temporal_namespace: str = "default"
    temporal_task_queue: str = "images"  # tests give themselves their own


class ClusterSettings(EngineSettings):
    """How the servers are spread over machines (docs/OPERATIONS.md, "Scaling out"; compose.cluster.yaml)."""

    model_config = _MODEL_CONFIG

    # replicas of the work and event streams and of the Config DB bucket: 3 on a three-server NATS cluster;
    # the bootstrap never lowers what an operator raised on a live stream (actors/streams.py)
    stream_replicas: int = Field(1, ge=1, le=5)


class Settings(ClusterSettings):
    """All settings. Field ``x`` is read from ``MESH_X``."""

    model_config = _MODEL_CONFIG

    profile: Literal["local", "production"] = "local"
    data_dir: Path = Path("var")
    host: str = "127.0.0.1"
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    # --- NATS ---------------------------------------------------------------------------------
    nats_port: int = Field(4222, ge=1, le=65535)
    nats_monitor_port: int = Field(8222, ge=1, le=65535)
    nats_url: str | None = None  # defaults to nats://{host}:{nats_port}
    # one NATS user per service (nats.conf); passwords come from the environment
    nats_password_gateway: str = "local-gateway-pw"
    nats_password_coordinator: str = "local-coordinator-pw"
    nats_password_config: str = "local-config-pw"
    nats_password_indexer: str = "local-indexer-pw"
    nats_password_ops: str = "local-ops-pw"

    # --- Redis --------------------------------------------------------------------------------
    redis_port: int = Field(6379, ge=1, le=65535)
    redis_user: str = "mesh"  # the operators' ACL user (the CLI, the tests): every permission, no service's
    redis_password: str = "local-redis-pw"
    # one ACL user per service, named after it, with only its keys and commands (ops/stack/privileges.py)
    redis_password_gateway: str = "local-redis-gateway-pw"
    redis_password_coordinator: str = "local-redis-coordinator-pw"
    redis_password_indexer: str = "local-redis-indexer-pw"
    redis_url: str | None = None  # defaults to redis://{host}:{redis_port}/0; see redis_url_for

    # --- S3 object store ----------------------------------------------------------------------
    s3_port: int = Field(8333, ge=1, le=65535)
    s3_endpoint: str | None = None  # defaults to http://{host}:{s3_port}
    s3_bucket: str = "images"
    s3_region: str = "us-east-1"
    s3_access_key: str = "local-mesh-access"  # the operators' S3 identity (the CLI, the tests, bootstrap)
    s3_secret_key: str = "local-mesh-secret"
    # one S3 identity per service that uses the store (ops/stack/privileges.py)
    s3_access_key_gateway: str = "local-gateway-access"
    s3_secret_key_gateway: str = "local-gateway-secret"
    s3_access_key_coordinator: str = "local-coordinator-access"
    s3_secret_key_coordinator: str = "local-coordinator-secret"
    # SeaweedFS (`weed mini`) internal listeners, moved off their defaults so tests can run beside `make run`
    weed_port_base: int = Field(19300, ge=1024, le=65000)

    # --- Triton -------------------------------------------------------------------------------
    triton_http_port: int = Field(8000, ge=1, le=65535)
    triton_grpc_port: int = Field(8001, ge=1, le=65535)
    triton_metrics_port: int = Field(8002, ge=1, le=65535)
    triton_url: str | None = None  # gRPC, {host}:{triton_grpc_port} by default; several: comma-separated
    triton_timeout_s: float = 30.0
    model_repository: Path = Path("model_repository/cpu")

    # --- processes ----------------------------------------------------------------------------
    gateway_port: int = Field(8080, ge=1, le=65535)
    coordinator_http_port: int = Field(8091, ge=1, le=65535)
    config_http_port: int = Field(8092, ge=1, le=65535)
    indexer_http_port: int = Field(8093, ge=1, le=65535)
    # readers follow the Config DB with a NATS KV watch (changes arrive at once); while the watch is down
    # (NATS outage, bucket not created yet) they ask config.get at most this often (ConfigClient)
    config_poll_s: float = Field(5.0, gt=0)

    # --- names (tests give themselves their own) ---------------------------------------------
    stream: str = "IMAGES"
    events_stream: str = "IMAGE_EVENTS"
    consumer: str = "coordinator"
    config_bucket: str = "config"
    redis_prefix: str = "mesh"
    # the stack's start-up (ops/stack/bootstrap.py) upgrades stored data to this release's layout (ops/migrate.py)
    migrate_on_start: bool = True

    # --- seeds for the Config DB (the live values are in the NATS KV bucket) -----------------
    default_model: str = "efficientnet_lite0"
    max_upload_bytes: int = Field(25 * 1024 * 1024, ge=1)
    max_pixels: int = Field(50_000_000, ge=1)
    # not a seed: bytes of decoded pixels a gateway or coordinator holds at once (actors/decode_budget.py)
    decode_budget_bytes: int = Field(DEFAULT_DECODE_BUDGET_BYTES, ge=1)

    # --- gateway ------------------------------------------------------------------------------
    # comma-separated ``key`` (every scope) or ``key:scope+scope`` (read, write, admin); empty: keys are off
    api_keys: str = ""
    # each key's token bucket (per gateway process): requests per second and burst; 0 turns the limit off
    api_rate_per_s: float = Field(20.0, ge=0)
    api_rate_burst: int = Field(40, ge=1)
    # production: /status, /metrics, /docs and /openapi.json answer only here, not on gateway_port
    gateway_admin_port: int = Field(8081, ge=1, le=65535)
    content_presigned: bool = False  # GET /images/{id}/content redirects to a pre-signed URL
    # admission (gateway/admission.py): JetStream's store limit, as nats.conf's max_file_store (0: the NATS
    # account's own limit, if it has one), and the share of a store's limit at which uploads get 507
    jetstream_max_bytes: int = Field(10 * 1024**3, ge=0)
    # Redis's memory limit for the same check (0: Redis's own maxmemory, if set)
    redis_max_bytes: int = Field(0, ge=0)
    # the object store's limit for the same check, on its bucket's listed bytes (0: no limit, nothing listed)
    object_store_max_bytes: int = Field(0, ge=0)
    object_store_usage_refresh_s: float = Field(30.0, gt=0)  # at most how often a gateway lists the bucket
    storage_refuse_at: float = Field(0.95, gt=0, le=1)

    @model_validator(mode="after")
    def _refuse_unsafe_production(self) -> Settings:
        problems = production_problems(self) if self.profile == "production" else []
        if problems:
            raise ValueError("unsafe settings for MESH_PROFILE=production: " + "; ".join(problems))
        return self

    # --- derived addresses ----------------------------------------------------------------------
    @property
    def nats_server_url(self) -> str:
        return self.nats_url or f"nats://{self.host}:{self.nats_port}"

    @property
    def redis_server_url(self) -> str:
        """The operators' Redis URL (``redis_user``); services connect with ``redis_url_for(service)``."""
        return self.redis_url_for("ops")

    def redis_url_for(self, service: RedisUser) -> str:
        """One ACL user's URL (``ops``: ``redis_user``) at ``MESH_REDIS_URL``'s address; only ``ops`` keeps the
        credentials that URL may hold."""
        url = self.redis_url or f"redis://{self.host}:{self.redis_port}/0"
        if service == "ops":
            return (
                url if urlsplit(url).username else with_credentials(url, self.redis_user, self.redis_password)
            )
        return with_credentials(url, service, str(getattr(self, f"redis_password_{service}")))

    def s3_credentials(self, identity: S3Identity) -> tuple[str, str]:
        """Access key and secret of one S3 identity: ``gateway``, ``coordinator`` or ``ops`` (the operators')."""
        if identity == "ops":
            return self.s3_access_key, self.s3_secret_key
        return str(getattr(self, f"s3_access_key_{identity}")), str(
            getattr(self, f"s3_secret_key_{identity}")
        )

    @property
    def s3_server_url(self) -> str:
        return self.s3_endpoint or f"http://{self.host}:{self.s3_port}"

    @property
    def temporal_server_address(self) -> str:
        return self.temporal_address or f"{self.host}:{self.temporal_port}"

    @property
    def triton_grpc_url(self) -> str:
        return self.triton_url or f"{self.host}:{self.triton_grpc_port}"

    def nats_password(self, user: str) -> str:
        """The password of one NATS user (``gateway``, ``coordinator``, ``config``, ``indexer``, ``ops``)."""
        return str(getattr(self, f"nats_password_{user}"))

    @property
    def api_key_set(self) -> frozenset[str]:
        return frozenset(self.api_key_scopes)

    @property
    def api_key_scopes(self) -> dict[str, frozenset[str]]:
        """Each API key and its scopes (``MESH_API_KEYS``)."""
        return parse_api_keys(self.api_keys)

    @property
    def admin_port_split(self) -> bool:
        """Whether /status, /metrics, /docs and /openapi.json move to ``gateway_admin_port`` (production)."""
        return self.profile == "production"

    @property
    def run_dir(self) -> Path:
        return self.data_dir / "run"

    @property
    def log_dir(self) -> Path:
        return self.data_dir / "log"

    # --- models (ops/models, docs/MODELS.md) -----------------------------------------------------
    # What the CPU model repository holds; `ensure_models` exports what is missing before Triton starts.
    # A comma list of: efficientnet_lite0 (always there: real offline weights), clip (image + text towers).
    models: str = "efficientnet_lite0"
    # a Hugging Face CLIP folder or hub name; empty means the small random-weight test CLIP built locally
    clip_checkpoint: str = ""
    # CLIP's Triton models are <prefix>_image and <prefix>_text
    clip_prefix: str = Field(default="clip", pattern=r"^[a-z][a-z0-9_]*$")

    @field_validator("api_keys")
    @classmethod
    def _valid_api_keys(cls, value: str) -> str:
        parse_api_keys(value)
        return value

    @field_validator("models")
    @classmethod
    def _known_models(cls, value: str) -> str:
        unknown = {m.strip() for m in value.split(",") if m.strip()} - {"efficientnet_lite0", "clip"}
        if unknown:
            raise ValueError(
                f"MESH_MODELS: unknown model(s) {sorted(unknown)}; known: efficientnet_lite0, clip"
            )
        return value

    @property
    def model_set(self) -> frozenset[str]:
        """The models the repository should hold (``efficientnet_lite0`` always)."""
        return frozenset({"efficientnet_lite0", *(m.strip() for m in self.models.split(",") if m.strip())})


def production_problems(s: Settings) -> list[str]:
    """What makes ``s`` unsafe for ``MESH_PROFILE=production``: local secrets, no API keys, one port."""
    problems = [
        f"MESH_{name.upper()} still has its local development value"
        for name in SECRET_FIELDS
        if str(getattr(s, name)).startswith(LOCAL_SECRET_MARK)
    ]
    if not s.api_keys:
        problems.append("MESH_API_KEYS is empty: production needs API keys on the gateway")
    if s.gateway_admin_port == s.gateway_port:
        problems.append("MESH_GATEWAY_ADMIN_PORT equals MESH_GATEWAY_PORT: production splits them")
    return problems
