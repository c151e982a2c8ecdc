"""The adapters' retries (tenacity): what the embedder and the object store repeat, how often, and the logs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from tritonclient.grpc import InferenceServerException

import actors.adapters.embedder as embedder_module
import actors.adapters.object_store as object_store_module
from actors.adapters.embedder import Embedder, EmbedderError, EmbedderUnavailable
from actors.adapters.object_store import ObjectStore, ObjectStoreUnavailable
from actors.errors import RetryableError
from actors.settings import Settings
from ops.stack.ports import free_port


class Logs:
    """Stands in for a module's structlog logger: the events it was given, in order."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def _record(self, event: str, **kw: Any) -> None:
        self.events.append((event, kw))

    info = warning = error = _record


class Triton:
    """A client method that fails with the given gRPC statuses, then answers "ok"."""

    def __init__(self, *statuses: str) -> None:
        self.statuses = list(statuses)
        self.calls = 0

    async def __call__(self, *args: Any, client_timeout: float, **kwargs: Any) -> str:
        self.calls += 1
        if self.statuses:
            status = self.statuses.pop(0)
            raise InferenceServerException(f"{status} from the fake", status=f"StatusCode.{status}")
        return "ok"


@pytest.fixture
def embedder_logs(monkeypatch: pytest.MonkeyPatch) -> Logs:
    logs = Logs()
    monkeypatch.setattr(embedder_module, "log", logs)
    return logs


async def test_embedder_retries_unavailable_with_backoff(
    embedder_logs: Logs, monkeypatch: pytest.MonkeyPatch
) -> None:
    sleeps: list[float] = []

    async def sleep(s: float) -> None:
        sleeps.append(s)

    monkeypatch.setattr("asyncio.sleep", sleep)
    e = Embedder("127.0.0.1:1", retries=2, backoff_s=0.25)
    fn = Triton("UNAVAILABLE", "UNAVAILABLE")
    assert await e._call("infer", "m", fn) == "ok"
    assert fn.calls == 3
    assert sleeps == [0.25, 0.5]
    assert [(ev, kw["attempt"], kw["call"], kw["model"]) for ev, kw in embedder_logs.events] == [
        ("embedder.retry", 1, "infer", "m"),
        ("embedder.retry", 2, "infer", "m"),
    ]


async def test_embedder_gives_up_after_its_retries(embedder_logs: Logs) -> None:
    e = Embedder("127.0.0.1:1", retries=1, backoff_s=0.001)
    fn = Triton("UNAVAILABLE", "UNAVAILABLE", "UNAVAILABLE")
    with pytest.raises(EmbedderUnavailable) as raised:
        await e._call("infer", "m", fn)
    assert fn.calls == 2 and raised.value.status == "UNAVAILABLE"
    assert len(embedder_logs.events) == 1


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        ("DEADLINE_EXCEEDED", EmbedderUnavailable),
        ("RESOURCE_EXHAUSTED", EmbedderUnavailable),
        ("INVALID_ARGUMENT", EmbedderError),
    ],
)
async def test_embedder_does_not_repeat_other_failures(
    embedder_logs: Logs, status: str, kind: type[Exception]
) -> None:
    e = Embedder("127.0.0.1:1", retries=3, backoff_s=0.001)
    fn = Triton(status)
    with pytest.raises(kind):
        await e._call("infer", "m", fn)
    assert fn.calls == 1 and embedder_logs.events == []


async def test_embedder_unknown_model_while_triton_is_not_ready_is_an_outage(
    embedder_logs: Logs, monkeypatch: pytest.MonkeyPatch
) -> None:
    e = Embedder("127.0.0.1:1", retries=1, backoff_s=0.001)
    ready = [False]

    async def is_ready(model: str | None = None) -> bool:
        return ready.pop(0) if ready else True

    monkeypatch.setattr(e, "_ready", lambda inst, model=None: is_ready(model))  # a Triton still starting
    fn = Triton("NOT_FOUND", "NOT_FOUND")
    with pytest.raises(embedder_module.ModelNotFound):  # ready the second time: the model really is unknown
        await e._call("config", "m", fn)
    assert fn.calls == 2 and len(embedder_logs.events) == 1


class FakeClient:
    """One Triton instance's client: ``infer`` fails with the queued statuses, then answers "ok"."""

    def __init__(self) -> None:
        self.infer = Triton()

    async def close(self) -> None:
        return None


def two_instances() -> tuple[Embedder, FakeClient, FakeClient]:
    e = Embedder("triton-a:8001, triton-b:8001", retries=1, backoff_s=0.001)
    a, b = FakeClient(), FakeClient()
    e._pool.instances[0].client, e._pool.instances[1].client = a, b  # type: ignore[assignment]
    return e, a, b


async def test_calls_go_to_every_instance_in_turn_and_move_on_when_one_is_down(embedder_logs: Logs) -> None:
    e, a, b = two_instances()
    assert e.urls == ["triton-a:8001", "triton-b:8001"]
    for _ in range(4):
        assert await e._call("infer", "m", "infer") == "ok"
    assert (a.infer.calls, b.infer.calls) == (2, 2)  # in turn

    failovers = embedder_module.FAILOVERS.labels("triton-a:8001")
    before = failovers._value.get()
    a.infer.statuses = ["UNAVAILABLE"]  # instance a goes down
    for _ in range(4):
        assert await e._call("infer", "m", "infer") == "ok"  # no call lost
    # the call that met a went on to b at once; a is left out for down_s: b took the others
    assert (a.infer.calls, b.infer.calls) == (3, 6)
    assert failovers._value.get() == before + 1
    assert [ev for ev, _ in embedder_logs.events] == ["embedder.retry"]


async def test_when_every_instance_is_down_the_call_backs_off_then_gives_up(embedder_logs: Logs) -> None:
    e, a, b = two_instances()
    a.infer.statuses = ["UNAVAILABLE"] * 5
    b.infer.statuses = ["UNAVAILABLE"] * 5
    with pytest.raises(EmbedderUnavailable):
        await e._call("infer", "m", "infer")
    assert a.infer.calls + b.infer.calls == 3  # retries (1) + one per instance (2)


# --- the object store's signed requests -------------------------------------------------------------------
@pytest.fixture
async def s3() -> AsyncIterator[tuple[list[int], ObjectStore]]:
    """A fake S3 answering the queued statuses (then 200 "body"), and an ObjectStore pointed at it."""
    statuses: list[int] = []

    async def handler(request: web.Request) -> web.Response:
        status = statuses.pop(0) if statuses else 200
        return web.Response(status=status, body=b"body" if status == 200 else b"oops")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        async with ObjectStore(Settings(s3_endpoint=f"http://127.0.0.1:{port}")) as store:
            yield statuses, store
    finally:
        await runner.cleanup()


@pytest.fixture
def store_logs(monkeypatch: pytest.MonkeyPatch) -> Logs:
    logs = Logs()
    monkeypatch.setattr(object_store_module, "log", logs)
    return logs


async def test_object_store_repeats_a_5xx_once(s3: tuple[list[int], ObjectStore], store_logs: Logs) -> None:
    statuses, store = s3
    statuses.append(503)
    assert await store.get("images/ab/abc") == b"body"
    assert statuses == []
    assert [(ev, kw["method"], kw["key"]) for ev, kw in store_logs.events] == [
        ("object_store.retry", "GET", "images/ab/abc")
    ]
    assert store_logs.events[0][1]["problem"].startswith("HTTP 503")


async def test_object_store_gives_up_after_two_tries(
    s3: tuple[list[int], ObjectStore], store_logs: Logs
) -> None:
    statuses, store = s3
    statuses.extend([500, 502, 503])
    with pytest.raises(ObjectStoreUnavailable, match=r"^object store put failed: HTTP 502") as raised:
        await store.put("images/ab/abc", b"x", "image/png")
    assert isinstance(raised.value, RetryableError)
    assert statuses == [503] and len(store_logs.events) == 1


async def test_object_store_does_not_repeat_a_4xx(
    s3: tuple[list[int], ObjectStore], store_logs: Logs
) -> None:
    statuses, store = s3
    statuses.extend([403, 500])
    with pytest.raises(RetryableError, match="HTTP 403"):
        await store.get("images/ab/abc")
    assert statuses == [500] and store_logs.events == []


async def test_object_store_repeats_a_refused_connection(store_logs: Logs) -> None:
    async with ObjectStore(Settings(s3_endpoint=f"http://127.0.0.1:{free_port()}"), timeout_s=2) as store:
        with pytest.raises(ObjectStoreUnavailable, match="ClientConnectorError"):
            await store.get("images/ab/abc")
    assert len(store_logs.events) == 1
