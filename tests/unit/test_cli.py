"""The pure parts of the operators' tools: time parsing, exit codes, the ingest state file, metrics labels."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import httpx
import pytest

from gateway.metrics import upload_outcome
from ops import cli, ingest
from ops.replay import parse_since

NOW = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("15m", NOW - dt.timedelta(minutes=15)),
        ("2h", NOW - dt.timedelta(hours=2)),
        ("1.5d", NOW - dt.timedelta(hours=36)),
        ("90s", NOW - dt.timedelta(seconds=90)),
        ("2024-04-30T08:00:00Z", dt.datetime(2024, 4, 30, 8, tzinfo=dt.UTC)),
        ("2024-04-30T10:00:00+02:00", dt.datetime(2024, 4, 30, 8, tzinfo=dt.UTC)),
        ("2024-04-30", dt.datetime(2024, 4, 30, tzinfo=dt.UTC)),
        ("1714550400", dt.datetime(2024, 5, 1, 8, tzinfo=dt.UTC)),
    ],
)
def test_parse_since(text: str, expected: dt.datetime) -> None:
    assert parse_since(text, NOW) == expected


def test_parse_since_refuses_nonsense_with_what_it_accepts() -> None:
    with pytest.raises(ValueError, match="duration like 15m") as info:
        parse_since("yesterday-ish", NOW)
    assert "yesterday-ish" in str(info.value)


@pytest.mark.parametrize(
    ("status", "code"),
    [(401, cli.EXIT_UNAUTHORIZED), (404, cli.EXIT_NOT_FOUND), (409, cli.EXIT_CONFLICT), (503, 4), (400, 1)],
)
def test_exit_code_for_http_status(status: int, code: int) -> None:
    assert cli.exit_code_for(status) == code


@pytest.mark.parametrize(
    ("status", "outcome"),
    [(202, "accepted"), (200, "duplicate"), (400, "refused"), (413, "refused"), (503, "unavailable")],
)
def test_upload_outcome(status: int, outcome: str) -> None:
    assert upload_outcome(status) == outcome


def test_default_url_from_settings_env() -> None:
    assert cli.default_url({}) == "http://127.0.0.1:8080"
    assert cli.default_url({"MESH_HOST": "10.0.0.5", "MESH_GATEWAY_PORT": "9090"}) == "http://10.0.0.5:9090"
    assert cli.default_url({"MESH_HOST": "0.0.0.0"}) == "http://127.0.0.1:8080"


def test_parser_defaults_and_api_key_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESH_API_KEY", "k1")
    args = cli.build_parser().parse_args(["ingest", "photos"])
    assert (args.concurrency, args.api_key, args.dir) == (8, "k1", "photos")
    args = cli.build_parser().parse_args(["replay", "--dead-since", "2h", "--dry-run"])
    assert args.dead_since == "2h" and args.dry_run and args.image_ids == []
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["replay", "--errored", "--since", "1h"])
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["ingest", "photos", "-c", "0"])


def test_refusal_reason_reads_the_error_body() -> None:
    r = httpx.Response(415, json={"error": {"code": "unsupported_type", "message": "EPS is not allowed"}})
    assert ingest.refusal_reason(r) == "unsupported_type: EPS is not allowed"
    assert ingest.refusal_reason(httpx.Response(502, text="bad gateway")) == "HTTP 502: bad gateway"


def test_retry_delay_honours_retry_after() -> None:
    assert ingest.retry_delay(httpx.Response(503, headers={"Retry-After": "2"}), 0) == 2.0
    assert 0 < ingest.retry_delay(None, 3) <= 4.0


def test_find_files_skips_hidden_and_non_image_names(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / ".cache").mkdir()
    for rel in ("x.jpg", "a/y.PNG", "a/notes.txt", ".hidden.jpg", ".cache/z.jpg", ingest.STATE_FILE):
        (tmp_path / rel).write_bytes(b"1")
    assert [p.relative_to(tmp_path).as_posix() for p in ingest.find_files(tmp_path)] == ["x.jpg", "a/y.PNG"]
    assert "a/notes.txt" in [p.relative_to(tmp_path).as_posix() for p in ingest.find_files(tmp_path, True)]


def test_state_remembers_images_per_gateway_and_hashes_by_size_and_mtime(tmp_path: Path) -> None:
    photo = tmp_path / "p.jpg"
    photo.write_bytes(b"bytes")
    path = tmp_path / ingest.STATE_FILE
    state = ingest.IngestState(path, "http://gw:8080/")
    st = photo.stat()
    assert state.cached_sha("p.jpg", st) is None
    sha = ingest.sha256_file(photo)
    state.remember_sha("p.jpg", st, sha)
    state.remember_image(sha, "img1")
    state.save()

    again = ingest.IngestState(path, "http://gw:8080")
    assert again.cached_sha("p.jpg", st) == sha and again.image_for(sha) == "img1"
    # another mesh does not have it, but the file's hash is still cached
    other = ingest.IngestState(path, "http://elsewhere:8080")
    assert other.image_for(sha) is None and other.cached_sha("p.jpg", st) == sha
    photo.write_bytes(b"changed bytes")
    assert again.cached_sha("p.jpg", photo.stat()) is None
    assert json.loads(path.read_text())["version"] == ingest.STATE_VERSION


def test_a_broken_state_file_starts_fresh(tmp_path: Path) -> None:
    path = tmp_path / ingest.STATE_FILE
    path.write_text("{not json")
    assert ingest.IngestState(path, "http://gw").known == {}


def test_summary_counts_and_lines() -> None:
    s = ingest.Summary(
        [
            ingest.Outcome("a.jpg", "accepted", image_id="1"),
            ingest.Outcome("b.jpg", "duplicate", image_id="2"),
            ingest.Outcome("c.jpg", "skipped", image_id="3"),
            ingest.Outcome("d.jpg", "refused", reason="not_an_image: the bytes are not an image"),
        ]
    )
    body = s.as_dict()
    assert (body["accepted"], body["duplicates"], body["skipped"]) == (1, 1, 1)
    assert body["refused"] == [{"path": "d.jpg", "reason": "not_an_image: the bytes are not an image"}]
    assert not s.ok
    lines = list(ingest.summary_lines(s))
    assert lines[0].startswith("accepted 1, duplicates 1, already ingested 1, refused 1, failed 0")
    assert "d.jpg: not_an_image" in lines[1]


async def test_ingest_against_a_fake_gateway(tmp_path: Path) -> None:
    """Concurrent uploads, a 503 retried, a refusal reported, and a rerun that uploads nothing."""
    for name in ("a.jpg", "b.jpg", "c.jpg", "bad.jpg"):
        (tmp_path / name).write_bytes(name.encode())
    calls: list[str] = []
    flaky = {"b.jpg": 1}

    def handler(request: httpx.Request) -> httpx.Response:
        body = request.read()
        name = next(n for n in ("a.jpg", "b.jpg", "c.jpg", "bad.jpg") if f'filename="{n}"'.encode() in body)
        calls.append(name)
        if name == "bad.jpg":
            return httpx.Response(400, json={"error": {"code": "not_an_image", "message": "no"}})
        if flaky.get(name):
            flaky[name] -= 1
            return httpx.Response(
                503, headers={"Retry-After": "0"}, json={"error": {"code": "x", "message": "y"}}
            )
        status = 200 if name == "c.jpg" else 202
        return httpx.Response(status, json={"image_id": f"id-{name}", "status": "pending", "sha256": "s"})

    transport = httpx.MockTransport(handler)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
        state = ingest.IngestState(tmp_path / ingest.STATE_FILE, "http://gw")
        summary = await ingest.ingest(client, tmp_path, state, concurrency=3, retries=2)
        assert {r.path: r.outcome for r in summary.results} == {
            "a.jpg": "accepted",
            "b.jpg": "accepted",
            "bad.jpg": "refused",
            "c.jpg": "duplicate",
        }
        assert calls.count("b.jpg") == 2
        calls.clear()
        state = ingest.IngestState(tmp_path / ingest.STATE_FILE, "http://gw")
        rerun = await ingest.ingest(client, tmp_path, state)
    assert calls == ["bad.jpg"]  # only the refused file is tried again
    assert rerun.count("skipped") == 3


async def test_metrics_middleware_labels_route_templates_and_counts_refusals_before_routing() -> None:
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse, Response
    from prometheus_client import REGISTRY

    from gateway import metrics

    app = FastAPI()

    @app.post(metrics.UPLOAD_ROUTE)
    async def upload() -> JSONResponse:
        return JSONResponse({"image_id": "x"}, status_code=202)

    @app.get("/images/{image_id}")
    async def get(image_id: str) -> dict[str, str]:
        return {"image_id": image_id}

    @app.middleware("http")
    async def guard(request, call_next):  # type: ignore[no-untyped-def]  # like gateway/forms.py
        if request.headers.get("x-too-big"):
            return Response(status_code=413)
        return await call_next(request)

    metrics.install(app)

    def value(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    before = {o: value("mesh_uploads_total", outcome=o) for o in ("accepted", "refused")}
    route = {"route": "/images/{image_id}", "method": "GET", "status": "200"}
    seen = value("mesh_http_request_seconds_count", **route)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        assert (await c.post("/images/upload")).status_code == 202
        assert (await c.post("/images/upload", headers={"x-too-big": "1"})).status_code == 413
        await c.get("/images/abc")
        await c.get("/images/def")
    assert value("mesh_uploads_total", outcome="accepted") == before["accepted"] + 1
    assert value("mesh_uploads_total", outcome="refused") == before["refused"] + 1
    assert value("mesh_http_request_seconds_count", **route) == seen + 2
