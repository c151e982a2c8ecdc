"""Environment settings for every process of the mesh, validated at start-up.

Every variable has the prefix ``MESH_`` (``MESH_GATEWAY_PORT=9090``). The defaults are the local profile: every
listener on 127.0.0.1 and development credentials. ``MESH_PROFILE=production`` refuses those unsafe defaults.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

LOCAL_SECRET_MARK = "local-"  # development credentials start with this; production refuses them


class Settings(BaseSettings):
    """All settings. Field ``x`` is read from ``MESH_X``."""

    model_config = SettingsConfigDict(env_prefix="MESH_", extra="ignore", frozen=True)

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
    redis_user: str = "mesh"
    redis_password: str = "local-redis-pw"
    redis_url: str | None = None  # defaults to redis://{user}:{password}@{host}:{redis_port}/0

    # --- S3 object store ----------------------------------------------------------------------
    s3_port: int = Field(8333, ge=1, le=65535)
    s3_endpoint: str | None = None  # defaults to http://{host}:{s3_port}
    s3_bucket: str = "images"
    s3_region: str = "us-east-1"
    s3_access_key: str = "local-mesh-access"
    s3_secret_key: str = "local-mesh-secret"
    # SeaweedFS (`weed mini`) internal listeners, moved off their defaults so tests can run beside `make run`
    weed_port_base: int = Field(19300, ge=1024, le=65000)

    # --- Triton -------------------------------------------------------------------------------
    triton_http_port: int = Field(8000, ge=1, le=65535)
    triton_grpc_port: int = Field(8001, ge=1, le=65535)
    triton_metrics_port: int = Field(8002, ge=1, le=65535)
    triton_url: str | None = None  # gRPC address, defaults to {host}:{triton_grpc_port}
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

    # --- seeds for the Config DB (the live values are in the NATS KV bucket) -----------------
    default_model: str = "efficientnet_lite0"
    max_upload_bytes: int = Field(25 * 1024 * 1024, ge=1)
    max_pixels: int = Field(50_000_000, ge=1)

    # --- gateway ------------------------------------------------------------------------------
    api_keys: str = ""  # comma-separated; empty means API keys are off
    content_presigned: bool = False  # GET /images/{id}/content redirects to a pre-signed URL

    @model_validator(mode="after")
    def _refuse_unsafe_production(self) -> Settings:
        if self.profile != "production":
            return self
        problems = [
            f"MESH_{name.upper()} still has its local development value"
            for name in (
                "nats_password_gateway",
                "nats_password_coordinator",
                "nats_password_config",
                "nats_password_indexer",
                "nats_password_ops",
                "redis_password",
                "s3_access_key",
                "s3_secret_key",
            )
            if str(getattr(self, name)).startswith(LOCAL_SECRET_MARK)
        ]
        if not self.api_keys:
            problems.append("MESH_API_KEYS is empty: production needs API keys on the gateway")
        if problems:
            raise ValueError("unsafe settings for MESH_PROFILE=production: " + "; ".join(problems))
        return self

    # --- derived addresses ----------------------------------------------------------------------
    @property
    def nats_server_url(self) -> str:
        return self.nats_url or f"nats://{self.host}:{self.nats_port}"

    @property
    def redis_server_url(self) -> str:
        return self.redis_url or (
            f"redis://{self.redis_user}:{self.redis_password}@{self.host}:{self.redis_port}/0"
        )

    @property
    def s3_server_url(self) -> str:
        return self.s3_endpoint or f"http://{self.host}:{self.s3_port}"

    @property
    def triton_grpc_url(self) -> str:
        return self.triton_url or f"{self.host}:{self.triton_grpc_port}"

    def nats_password(self, user: str) -> str:
        """The password of one NATS user (``gateway``, ``coordinator``, ``config``, ``indexer``, ``ops``)."""
        return str(getattr(self, f"nats_password_{user}"))

    @property
    def api_key_set(self) -> frozenset[str]:
        return frozenset(k.strip() for k in self.api_keys.split(",") if k.strip())

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
