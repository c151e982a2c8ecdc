"""Embedder: pixels or text to unit vectors, with models served by Triton (gRPC, ``tritonclient.grpc.aio``).

Concurrent image embeddings of one model go to Triton together, as one batched request
(``embed_batching.Coalescer``, no added wait); texts go one per request, batched by Triton's dynamic batcher.
What a model needs (its preprocessing, tensor names, output dimension) is read once from Triton's model config
and cached, so the model's repository is the only place it is written down (docs/MODELS.md).

Several Triton instances (``MESH_TRITON_URL=a:8001,b:8001``): calls go to them in turn; a call that finds one
``UNAVAILABLE`` is repeated at once on the next (``mesh_embedder_failovers_total``), and that instance is left
out for ``down_s`` seconds; only when every instance is down does the call back off and, in the end, raise.

Errors: :class:`EmbedderUnavailable` (Triton down, model loading, queue full or timed out: retry later) and
:class:`EmbedderError` / :class:`ModelNotFound` (bad input, unknown model: retrying will not help), all
subclasses of :class:`EmbedderException`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import partial
from types import TracebackType
from typing import Any, ClassVar, Literal, Self

import numpy as np
import structlog
from prometheus_client import Counter
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt, wait_exponential
from tritonclient.grpc import InferenceServerException, InferInput, InferRequestedOutput
from tritonclient.grpc import aio as triton

from actors.adapters.embed_batching import Coalescer
from actors.contract import PreprocessSpec
from actors.errors import MeshError, PermanentError, RetryableError
from actors.settings import Settings

log = structlog.get_logger("embedder")

# the tensors every model of the repositories has (ops/models/configs.py writes them)
IMAGE_INPUT = "IMAGE"
TEXT_INPUT = "TEXT"
EMBEDDING_OUTPUT = "EMBEDDING"
PROBS_OUTPUT = "PROBS"  # an image model with a classifier: its class probabilities (``ModelInfo.labels``)

FAILOVERS = Counter(
    "mesh_embedder_failovers_total",
    "Triton calls repeated on another instance because this one did not answer",
    ["instance"],
)
_RETRYABLE = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "ABORTED", "CANCELLED"})


class EmbedderException(MeshError):
    """Base of the embedder's errors; ``retryable`` says whether the same call may succeed later."""

    retryable: ClassVar[bool] = False

    def __init__(self, message: str, *, model: str | None = None, status: str | None = None) -> None:
        super().__init__(message)
        self.model = model
        self.status = status


class EmbedderUnavailable(EmbedderException, RetryableError):
    """Triton is unreachable, the model is not ready, or the request was shed under load: retry later."""

    retryable = True


class EmbedderError(EmbedderException, PermanentError):
    """A permanent failure for this input (invalid argument, model error): retrying will not help."""


class ModelNotFound(EmbedderError):
    """Triton does not serve this model."""


@dataclass(frozen=True)
class ModelInfo:
    """What the client needs to know about one served model, read from its Triton config."""

    name: str
    kind: Literal["image", "text"]
    dim: int
    max_batch_size: int
    spec: PreprocessSpec | None  # image models only
    classes: int = 0  # the length of ``PROBS`` (0: no classifier)
    labels: str | None = None  # the vocabulary naming those classes (``actors.labels.vocabulary``)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ModelInfo:
        """Parse the JSON form of a Triton ``ModelConfig`` (``get_model_config(as_json=True)["config"]``)."""
        name = config["name"]
        inputs = {i["name"]: i for i in config.get("input", [])}
        outputs = {o["name"]: o for o in config.get("output", [])}
        if EMBEDDING_OUTPUT not in outputs or not (IMAGE_INPUT in inputs or TEXT_INPUT in inputs):
            raise EmbedderError(
                f"model {name} does not have the embedder tensors ({IMAGE_INPUT} or {TEXT_INPUT} -> "
                f"{EMBEDDING_OUTPUT}); it has {sorted(inputs)} -> {sorted(outputs)}",
                model=name,
            )
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        spec = None
        kind: Literal["image", "text"] = "text"
        if IMAGE_INPUT in inputs:
            kind = "image"
            if "preprocess" not in params:
                raise EmbedderError(f"image model {name} has no 'preprocess' parameter", model=name)
            spec = PreprocessSpec.from_json(params["preprocess"])
        classes = int(outputs[PROBS_OUTPUT]["dims"][-1]) if PROBS_OUTPUT in outputs else 0
        if classes and not params.get("labels"):
            raise EmbedderError(f"model {name} has {PROBS_OUTPUT} but no 'labels' parameter", model=name)
        return cls(
            name=name,
            kind=kind,
            dim=int(outputs[EMBEDDING_OUTPUT]["dims"][-1]),
            max_batch_size=int(config.get("max_batch_size", 0)),
            spec=spec,
            classes=classes,
            labels=params.get("labels") if classes else None,
        )


@dataclass(frozen=True)
class ImageEmbedding:
    """One image's answer: its unit vector and, from a model with a classifier, its class probabilities."""

    vector: np.ndarray  # float32 [dim]
    probs: np.ndarray | None = None  # float32 [classes]
    labels: str | None = None  # the vocabulary naming the classes (``ModelInfo.labels``)


def _server_unavailable(e: BaseException) -> bool:
    """Whether a failed call is worth repeating at once: Triton down or not ready (not a timeout, not load
    shedding: those are ``EmbedderUnavailable`` too, but repeating them here would only add load)."""
    return isinstance(e, EmbedderException) and e.status == "UNAVAILABLE"


def _classify(e: InferenceServerException, model: str | None) -> EmbedderException:
    status = str(e.status() or "").removeprefix("StatusCode.")
    message = f"triton: {status or 'error'}: {e.message()}"
    if "no available versions" in (e.message() or "").lower():  # loading or unloading: not ready yet
        return EmbedderUnavailable(message, model=model, status="UNAVAILABLE")
    if status == "NOT_FOUND" or "unknown model" in (e.message() or "").lower():
        return ModelNotFound(message, model=model, status=status)
    if status in _RETRYABLE:
        return EmbedderUnavailable(message, model=model, status=status)
    return EmbedderError(message, model=model, status=status)


@dataclass
class _Instance:
    """One Triton server: its address, its gRPC client (made on first use) and until when it is left out."""

    url: str
    client: triton.InferenceServerClient | None = None
    down_until: float = 0.0

    def connected(self) -> triton.InferenceServerClient:
        if self.client is None:  # created lazily: the gRPC channel belongs to the running event loop
            self.client = triton.InferenceServerClient(self.url)
        return self.client


class _Pool:
    """The Triton instances of a comma-separated address, taken in turn; one that did not answer is left out
    for ``down_s`` seconds (all are taken again when every one is out)."""

    def __init__(self, url: str, down_s: float) -> None:
        self.instances = [_Instance(u.strip()) for u in url.split(",") if u.strip()] or [_Instance(url)]
        self.down_s = down_s
        self._turn = 0

    def pick(self) -> _Instance:
        now, n = time.monotonic(), len(self.instances)
        order = [self.instances[(self._turn + k) % n] for k in range(n)]
        inst = next((i for i in order if i.down_until <= now), order[0])
        self._turn = (self.instances.index(inst) + 1) % n
        return inst

    def down(self, inst: _Instance) -> None:
        """``inst`` did not answer: the others take its calls for a while (nothing to fail over to alone)."""
        if len(self.instances) > 1:
            inst.down_until = time.monotonic() + self.down_s
            FAILOVERS.labels(inst.url).inc()

    def another_up(self) -> bool:
        now = time.monotonic()
        return len(self.instances) > 1 and any(i.down_until <= now for i in self.instances)

    async def close(self) -> None:
        for inst in self.instances:
            client, inst.client = inst.client, None
            if client is not None:
                await client.close()


class Embedder:
    """Thin async client of Triton for embeddings. Use as ``async with Embedder(url) as e: ...``.

    ``url`` is one ``host:port`` or several, comma-separated (one per Triton instance). ``timeout_s`` bounds
    each gRPC call; a call that finds Triton ``UNAVAILABLE`` moves on to the next instance at once, and when
    none answers it is retried ``retries`` times with exponential backoff from ``backoff_s`` before
    :class:`EmbedderUnavailable` is raised.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = 30.0,
        retries: int = 2,
        backoff_s: float = 0.2,
        down_s: float = 5.0,
    ) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self._pool = _Pool(url, down_s)
        self._models: dict[str, ModelInfo] = {}
        self._coalescers: dict[str, Coalescer[ImageEmbedding]] = {}

    @classmethod
    def from_settings(cls, s: Settings) -> Embedder:
        return cls(s.triton_grpc_url, timeout_s=s.triton_timeout_s)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    @property
    def urls(self) -> list[str]:
        return [i.url for i in self._pool.instances]

    @property
    def client(self) -> triton.InferenceServerClient:
        """The first instance's client."""
        return self._pool.instances[0].connected()

    async def close(self) -> None:
        """Close the gRPC channels (safe to call twice)."""
        await self._pool.close()

    async def _call(self, what: str, model: str | None, method: Any, *args: Any, **kwargs: Any) -> Any:
        """The client method ``method`` (its name; or a callable) with the call timeout, on the next instance;
        repeated on another instance, then with backoff, while Triton is unavailable."""

        def log_retry(state: RetryCallState) -> None:
            error = state.outcome.exception() if state.outcome is not None else None
            log.warning(
                "embedder.retry", call=what, model=model, attempt=state.attempt_number, error=str(error)
            )

        backoff = wait_exponential(multiplier=self.backoff_s)  # backoff_s, then doubling

        def wait(state: RetryCallState) -> float:
            return 0.0 if self._pool.another_up() else float(backoff(state))

        retrying = AsyncRetrying(
            retry=retry_if_exception(_server_unavailable),
            stop=stop_after_attempt(self.retries + len(self._pool.instances)),
            wait=wait,
            before_sleep=log_retry,
            reraise=True,
        )
        return await retrying(self._call_once, model, method, *args, **kwargs)

    async def _call_once(self, model: str | None, method: Any, *args: Any, **kwargs: Any) -> Any:
        inst = self._pool.pick()
        fn = getattr(inst.connected(), method) if isinstance(method, str) else method
        try:
            return await fn(*args, client_timeout=self.timeout_s, **kwargs)
        except InferenceServerException as e:
            err = _classify(e, model)
            if isinstance(err, ModelNotFound) and not await self._ready(inst):
                # a Triton that is starting or stopping answers "unknown model" / "no available versions"
                # for models it does serve: an outage, not a missing model
                err = EmbedderUnavailable(str(err), model=model, status="UNAVAILABLE")
            if err.status == "UNAVAILABLE":
                self._pool.down(inst)
            raise err from e

    async def _ready(self, inst: _Instance, model: str | None = None) -> bool:
        try:
            client = inst.connected()
            if model is None:
                return bool(await client.is_server_ready(client_timeout=self.timeout_s))
            return bool(await client.is_model_ready(model, client_timeout=self.timeout_s))
        except InferenceServerException:
            return False

    async def ready(self, model: str | None = None) -> bool:
        """Whether a Triton instance (serving ``model``, when given) is ready; never raises for a down one."""
        for inst in self._pool.instances:
            if await self._ready(inst, model):
                return True
        return False

    async def model_info(self, model: str) -> ModelInfo:
        """The model's tensors, output dimension and preprocessing (cached after the first call)."""
        info = self._models.get(model)
        if info is None:
            response = await self._call("config", model, "get_model_config", model, as_json=True)
            info = ModelInfo.from_config(response["config"])
            self._models[model] = info
        return info

    async def classifies(self, model: str) -> bool:
        """Whether ``model`` has a classifier (``PROBS``: it labels images); False while Triton cannot say."""
        try:
            return (await self.model_info(model)).classes > 0
        except EmbedderException:
            return False

    async def preprocess_spec(self, model: str) -> PreprocessSpec:
        """How to turn an image into the pixels ``model`` takes (``actors.preprocess.to_pixels``)."""
        info = await self.model_info(model)
        if info.spec is None:
            raise EmbedderError(f"model {model} is a text model: it has no image preprocessing", model=model)
        return info.spec

    async def _infer(self, info: ModelInfo, inp: InferInput, rows: int = 1) -> dict[str, np.ndarray]:
        """The outputs of one request of ``rows`` inputs: ``EMBEDDING`` ``float32 [rows, dim]``, and ``PROBS``
        ``float32 [rows, classes]`` from a model with a classifier."""
        shapes = {EMBEDDING_OUTPUT: (rows, info.dim)}
        if info.classes:
            shapes[PROBS_OUTPUT] = (rows, info.classes)
        out = [InferRequestedOutput(name) for name in shapes]
        result = await self._call("infer", info.name, "infer", info.name, [inp], outputs=out)
        arrays = {name: result.as_numpy(name) for name in shapes}
        for name, array in arrays.items():
            if array is None or array.shape != shapes[name]:
                raise EmbedderError(f"model {info.name} returned an unexpected {name}", model=info.name)
        return {name: np.asarray(array, dtype=np.float32) for name, array in arrays.items()}

    async def _embed_images(self, info: ModelInfo, pixels: np.ndarray) -> list[ImageEmbedding]:
        """One request for a stack of images (``uint8 [N, H, W, 3]``, N at most the model's batch size)."""
        inp = InferInput(IMAGE_INPUT, list(pixels.shape), "UINT8")
        inp.set_data_from_numpy(np.ascontiguousarray(pixels))
        outs = await self._infer(info, inp, rows=len(pixels))
        probs = outs.get(PROBS_OUTPUT)
        return [
            ImageEmbedding(vector, None, None)
            if probs is None
            else ImageEmbedding(vector, probs[i], info.labels)
            for i, vector in enumerate(outs[EMBEDDING_OUTPUT])
        ]

    def _coalescer(self, info: ModelInfo) -> Coalescer[ImageEmbedding]:
        coalescer = self._coalescers.get(info.name)
        if coalescer is None:
            coalescer = Coalescer(
                info.name, partial(self._embed_images, info), max_batch=max(1, info.max_batch_size)
            )
            self._coalescers[info.name] = coalescer
        return coalescer

    async def embed_image(self, model: str, pixels: np.ndarray) -> np.ndarray:
        """The unit ``float32 [dim]`` embedding of one image: ``uint8 [H, W, 3]`` from ``to_pixels``."""
        return (await self.embed_image_full(model, pixels)).vector

    async def embed_image_full(self, model: str, pixels: np.ndarray) -> ImageEmbedding:
        """One image's embedding and, from a model with a classifier, its class probabilities (same pass)."""
        info = await self.model_info(model)
        if info.kind != "image" or info.spec is None:
            raise EmbedderError(f"model {model} does not take images", model=model)
        if pixels.dtype != np.uint8 or pixels.shape != info.spec.shape:
            raise EmbedderError(
                f"model {model} takes uint8 {list(info.spec.shape)}, got {pixels.dtype} {list(pixels.shape)}",
                model=model,
            )
        return await self._coalescer(info).embed(pixels)

    async def embed_text(self, model: str, text: str) -> np.ndarray:
        """The unit ``float32 [dim]`` embedding of one text (tokenized inside the model)."""
        info = await self.model_info(model)
        if info.kind != "text":
            raise EmbedderError(f"model {model} does not take text", model=model)
        inp = InferInput(TEXT_INPUT, [1, 1], "BYTES")
        inp.set_data_from_numpy(np.array([[text.encode("utf-8")]], dtype=np.object_))
        return (await self._infer(info, inp))[EMBEDDING_OUTPUT][0]
