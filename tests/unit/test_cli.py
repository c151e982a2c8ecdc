"""The pure parts of the operators' tools (time parsing, exit codes, the ingest state file, metrics labels) and
the `mesh` commands against a fake gateway (httpx.MockTransport)."""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

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


# --- the commands added for a complete CLI ------------------------------------------------------------------
Handler = Callable[[httpx.Request], httpx.Response]


@pytest.fixture
def gateway(monkeypatch: pytest.MonkeyPatch) -> Callable[[Handler], list[httpx.Request]]:
    """Point the CLI's HTTP client at a fake gateway (``handler``); returns the requests it gets."""

    def install(handler: Handler) -> list[httpx.Request]:
        seen: list[httpx.Request] = []

        def record(request: httpx.Request) -> httpx.Response:
            request.read()
            seen.append(request)
            return handler(request)

        def client(args: Any, timeout: float = 30.0) -> httpx.AsyncClient:
            return httpx.AsyncClient(transport=httpx.MockTransport(record), base_url=args.url)

        monkeypatch.setattr(cli, "http_client", client)
        return seen

    return install


def error(status: int, code: str, message: str) -> httpx.Response:
    return httpx.Response(status, json={"error": {"code": code, "message": message}})


def test_version_is_the_installed_packages(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"mesh {importlib.metadata.version('image-mesh')}"


def test_metadata_pairs_numbers_stay_numbers() -> None:
    pairs = ["camera=X100", "iso=200", "f=2.8", "roll=007", "flag=true", "note=a=b", "empty="]
    assert ingest.parse_metadata_pairs(pairs) == {
        "camera": "X100",
        "iso": 200,
        "f": 2.8,
        "roll": "007",  # not JSON: kept as written
        "flag": "true",  # metadata takes strings and numbers only
        "note": "a=b",
        "empty": "",
    }
    for bad in (["novalue"], ["=x"], ["a=1", "a=2"]):
        with pytest.raises(ValueError, match="--metadata"):
            ingest.parse_metadata_pairs(bad)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("12", 12),
        ("0.7", 0.7),
        ("true", True),
        ('["exif"]', ["exif"]),
        ('"12"', "12"),
        ("clip_b32", "clip_b32"),
    ],
)
def test_config_values_are_json_when_they_parse(text: str, value: object) -> None:
    assert cli.parse_config_value(text) == value


def test_state_lives_in_the_users_state_folder_one_file_per_folder(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    (tmp_path / "link").symlink_to(photos)
    env = {"XDG_STATE_HOME": str(tmp_path / "state"), "HOME": str(tmp_path / "home")}
    path = ingest.state_path(photos, env)
    assert path.parent == tmp_path / "state" / "mesh" and path.name.startswith("ingest-")
    assert ingest.state_path(tmp_path / "link", env) == path  # the same folder, however it is named
    assert ingest.state_path(tmp_path, env) != path
    # no (or a relative) XDG_STATE_HOME: the XDG default under HOME
    for home_only in (
        {"HOME": str(tmp_path / "home")},
        {"HOME": str(tmp_path / "home"), "XDG_STATE_HOME": "rel"},
    ):
        assert ingest.state_path(photos, home_only).parent == tmp_path / "home" / ".local" / "state" / "mesh"


def test_an_old_state_in_the_folder_is_read_once_and_never_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    photos = tmp_path / "photos"
    photos.mkdir()
    legacy = photos / ingest.LEGACY_STATE_FILE
    old = ingest.IngestState(legacy, "http://gw")
    old.remember_image("sha1", "img1")
    old.save()
    before = legacy.read_text()

    state = ingest.IngestState.for_folder(photos, "http://gw")
    assert state.image_for("sha1") == "img1" and state.migrated_from == legacy
    state.remember_image("sha2", "img2")
    state.save()
    assert state.path == ingest.state_path(photos) and state.path.exists()
    assert legacy.read_text() == before  # left alone
    again = ingest.IngestState.for_folder(photos, "http://gw")
    assert again.migrated_from is None and again.image_for("sha2") == "img2"
    assert json.loads(state.path.read_text())["folder"] == str(photos.resolve())
    # --state still names the file
    other = ingest.IngestState.for_folder(photos, "http://gw", tmp_path / "mine.json")
    assert other.path == tmp_path / "mine.json" and other.image_for("sha1") is None


def test_search_takes_text_or_an_image_not_both(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["search", "--url", "http://gw"]) == cli.EXIT_USAGE
    assert cli.main(["search", "cat", "--image", "x.jpg", "--url", "http://gw"]) == cli.EXIT_USAGE
    assert "TEXT or --image" in capsys.readouterr().err


def test_search_by_image_posts_the_file(
    gateway: Callable[[Handler], list[httpx.Request]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    photo = tmp_path / "cat.jpg"
    photo.write_bytes(b"jpeg bytes")
    body = {"model": "m", "results": [{"image_id": "a1", "score": 0.93}]}
    seen = gateway(lambda r: httpx.Response(200, json=body))
    argv = ["search", "--image", str(photo), "-k", "3", "--filter", "camera:x", "--url", "http://gw"]
    assert cli.main([*argv, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == body
    (request,) = seen
    assert (request.method, request.url.path) == ("POST", "/search/image")
    assert request.url.params.get_list("filter") == ["camera:x"] and request.url.params["k"] == "3"
    assert b'filename="cat.jpg"' in request.content and b"jpeg bytes" in request.content
    assert cli.main(argv) == 0
    assert "a1" in capsys.readouterr().out


def test_delete_says_which_were_not_found(
    gateway: Callable[[Handler], list[httpx.Request]], capsys: pytest.CaptureFixture[str]
) -> None:
    def handler(r: httpx.Request) -> httpx.Response:
        image_id = r.url.path.rsplit("/", 1)[1]
        if image_id == "gone":
            return error(404, "not_found", "no image gone")
        return httpx.Response(204)

    seen = gateway(handler)
    assert cli.main(["delete", "a", "gone", "b", "a", "--url", "http://gw", "--json"]) == cli.EXIT_NOT_FOUND
    assert json.loads(capsys.readouterr().out) == {"deleted": ["a", "b"], "not_found": ["gone"], "failed": []}
    assert sorted(r.url.path for r in seen) == ["/images/a", "/images/b", "/images/gone"]  # each id once
    assert all(r.method == "DELETE" for r in seen)
    assert cli.main(["delete", "a", "--url", "http://gw"]) == 0
    assert cli.main(["delete", "gone", "--url", "http://gw"]) == cli.EXIT_NOT_FOUND
    assert "not found: gone" in capsys.readouterr().out


def test_delete_reports_the_first_failure_in_order(gateway: Callable[[Handler], list[httpx.Request]]) -> None:
    gateway(lambda r: error(401, "unauthorized", "no key") if "x" in r.url.path else error(503, "u", "down"))
    assert cli.main(["delete", "x1", "y1", "--url", "http://gw", "--json"]) == cli.EXIT_UNAUTHORIZED
    assert cli.main(["delete", "y1", "x1", "--url", "http://gw", "--json"]) == cli.EXIT_UNAVAILABLE


def groups_page(first: int, n: int, next_cursor: str | None) -> dict[str, Any]:
    groups = [{"image_ids": [f"g{i}a", f"g{i}b"], "size": 2} for i in range(first, first + n)]
    return {
        "model": "m",
        "threshold": 0.7,
        "images": 50,
        "total_groups": 5,
        "groups": groups,
        "next_cursor": next_cursor,
    }


def test_duplicates_follows_every_page(
    gateway: Callable[[Handler], list[httpx.Request]], capsys: pytest.CaptureFixture[str]
) -> None:
    pages = {"": groups_page(0, 2, "c2"), "c2": groups_page(2, 2, "c4"), "c4": groups_page(4, 1, None)}
    seen = gateway(lambda r: httpx.Response(200, json=pages[r.url.params["cursor"]]))
    assert cli.main(["duplicates", "--threshold", "0.7", "--url", "http://gw", "--json"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert [g["image_ids"][0] for g in body["groups"]] == ["g0a", "g1a", "g2a", "g3a", "g4a"]
    assert "next_cursor" not in body and body["total_groups"] == 5
    assert [r.url.params["cursor"] for r in seen] == ["", "c2", "c4"]
    assert {r.url.params["threshold"] for r in seen} == {"0.7"}

    seen.clear()  # --limit: at most that many groups, asked in pages no larger than what is left
    assert cli.main(["duplicates", "--limit", "3", "--url", "http://gw", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["groups"]) >= 3
    assert [r.url.params["limit"] for r in seen] == ["3", "1"]
    assert cli.main(["duplicates", "--url", "http://gw"]) == 0
    assert "g4a g4b" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["duplicates", "--threshold", "1.5"])


def test_duplicates_of_one_image(
    gateway: Callable[[Handler], list[httpx.Request]], capsys: pytest.CaptureFixture[str]
) -> None:
    body = {"image_id": "a", "model": "m", "threshold": 0.6, "results": [{"image_id": "b", "score": 0.9}]}

    def handler(r: httpx.Request) -> httpx.Response:
        if r.url.path == "/images/a/duplicates":
            return httpx.Response(200, json=body)
        if r.url.path == "/images/new/duplicates":
            return error(409, "not_indexed", "image new is pending, not indexed yet")
        return error(404, "not_found", "no image")

    seen = gateway(handler)
    assert (
        cli.main(["duplicates", "a", "--limit", "5", "--threshold", "0.6", "--url", "http://gw", "--json"])
        == 0
    )
    assert json.loads(capsys.readouterr().out) == body
    assert dict(seen[0].url.params) == {"mode": "copies", "k": "5", "threshold": "0.6"}
    assert cli.main(["duplicates", "new", "--url", "http://gw"]) == cli.EXIT_CONFLICT
    assert cli.main(["duplicates", "nope", "--url", "http://gw"]) == cli.EXIT_NOT_FOUND


def models_body(active: str, switch: dict[str, Any] | None, next_model: str | None = None) -> dict[str, Any]:
    models = [
        {"name": "efficientnet_lite0", "kind": "image", "dim": 1280, "ready": True, "vectors": 4},
        {"name": "clip_image", "kind": "image", "dim": 512, "ready": True, "vectors": 2},
    ]
    return {
        "active": active,
        "next": next_model,
        "requested": None,
        "models": [m | {"active": m["name"] == active} for m in models],
        "switch": switch,
    }


def test_models_lists_them_and_the_active_one(
    gateway: Callable[[Handler], list[httpx.Request]], capsys: pytest.CaptureFixture[str]
) -> None:
    sw = {
        "model": "clip_image",
        "state": "building",
        "done": 1,
        "total": 4,
        "from_model": "efficientnet_lite0",
    }
    gateway(lambda r: httpx.Response(200, json=models_body("efficientnet_lite0", sw, "clip_image")))
    assert cli.main(["models", "--url", "http://gw", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["active"] == "efficientnet_lite0"
    assert cli.main(["models", "--url", "http://gw"]) == 0
    out = capsys.readouterr().out
    assert "active model: efficientnet_lite0" in out and "clip_image" in out
    assert "switch to clip_image: building, 1/4 images" in out


def test_models_switch_waits_and_shows_progress(
    gateway: Callable[[Handler], list[httpx.Request]],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = time.time()
    states = [
        # an earlier switch to the same model that failed: not this one's
        models_body(
            "efficientnet_lite0", {"model": "clip_image", "state": "failed", "started_at": now - 3600}
        ),
        models_body(
            "efficientnet_lite0",
            {"model": "clip_image", "state": "building", "done": 0, "total": 4, "started_at": now},
            "clip_image",
        ),
        models_body(
            "efficientnet_lite0",
            {"model": "clip_image", "state": "building", "done": 3, "total": 4, "started_at": now},
            "clip_image",
        ),
        models_body(
            "clip_image", {"model": "clip_image", "state": "done", "done": 4, "total": 4, "started_at": now}
        ),
    ]

    def handler(r: httpx.Request) -> httpx.Response:
        if r.method == "POST":
            assert json.loads(r.content) == {"model": "clip_image"}
            return httpx.Response(202, json={"active": "efficientnet_lite0", "requested": "clip_image"})
        return httpx.Response(200, json=states.pop(0) if len(states) > 1 else states[0])

    async def no_wait(_s: float) -> None:
        return None

    monkeypatch.setattr(cli.asyncio, "sleep", no_wait)
    gateway(handler)
    assert cli.main(["models", "switch", "clip_image", "--wait", "--url", "http://gw", "--json"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert body["active"] == "clip_image" and body["switch"]["state"] == "done"

    failing = [models_body("efficientnet_lite0", {"model": "clip_image", "state": "failed", "started_at": now + 1,
                                                  "reason": "clip_image is not an image model"})]  # fmt: skip
    gateway(
        lambda r: httpx.Response(202, json={}) if r.method == "POST" else httpx.Response(200, json=failing[0])
    )
    assert cli.main(["models", "switch", "clip_image", "--wait", "--url", "http://gw"]) == cli.EXIT_PARTIAL
    assert "not an image model" in capsys.readouterr().err


def test_models_switch_to_the_active_model_does_nothing(
    gateway: Callable[[Handler], list[httpx.Request]], capsys: pytest.CaptureFixture[str]
) -> None:
    seen = gateway(lambda r: httpx.Response(200, json={"active": "efficientnet_lite0", "requested": None}))
    assert cli.main(["models", "switch", "efficientnet_lite0", "--wait", "--url", "http://gw"]) == 0
    assert "already the active model" in capsys.readouterr().out and len(seen) == 1
    gateway(lambda r: error(400, "unknown_model", "Triton does not serve nope"))
    assert cli.main(["models", "--json", "switch", "nope", "--url", "http://gw"]) == cli.EXIT_PARTIAL
    assert "Triton does not serve nope" in capsys.readouterr().err


def test_ingest_waits_reports_errors_and_sends_metadata(
    gateway: Callable[[Handler], list[httpx.Request]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("a.jpg", "b.heic", "c.avif"):
        (photos / name).write_bytes(name.encode())
    polls: dict[str, int] = {}
    metadata: list[dict[str, Any]] = []

    def handler(r: httpx.Request) -> httpx.Response:
        if r.method == "POST":
            name = next(n for n in ("a.jpg", "b.heic", "c.avif") if f'filename="{n}"'.encode() in r.content)
            field = r.content.split(b'name="metadata"\r\n\r\n', 1)[1].split(b"\r\n", 1)[0]
            metadata.append(json.loads(field))
            return httpx.Response(202, json={"image_id": f"id-{name}", "status": "pending", "sha256": "s"})
        image_id = r.url.path.rsplit("/", 1)[1]
        polls[image_id] = polls.get(image_id, 0) + 1
        if polls[image_id] < 2:
            return httpx.Response(200, json={"image_id": image_id, "status": "processing", "error": None})
        if image_id == "id-c.avif":
            return httpx.Response(
                200,
                json={"image_id": image_id, "status": "error",
                      "error": {"code": "moderation", "message": "the shorter side is 8 px (< 32)"}},
            )  # fmt: skip
        if image_id == "id-b.heic":
            return error(404, "not_found", "deleted")
        return httpx.Response(200, json={"image_id": image_id, "status": "done", "error": None})

    async def no_wait(_s: float) -> None:
        return None

    monkeypatch.setattr(ingest.asyncio, "sleep", no_wait)
    gateway(handler)
    argv = [
        "ingest",
        str(photos),
        "--wait",
        "--metadata",
        "camera=X",
        "--metadata",
        "iso=200",
        "--url",
        "http://gw",
    ]
    assert cli.main([*argv, "--json"]) == cli.EXIT_PARTIAL
    body = json.loads(capsys.readouterr().out)
    assert body["accepted"] == 3 and metadata == [{"camera": "X", "iso": 200}] * 3
    assert body["processed"]["done"] == 1 and body["processed"]["pending"] == []
    errors = {e["path"]: (e["code"], e["message"]) for e in body["processed"]["errors"]}
    assert errors == {
        "b.heic": ("not_found", "deleted from the mesh; the next ingest uploads it again"),
        "c.avif": ("moderation", "the shorter side is 8 px (< 32)"),
    }
    assert sorted(p.name for p in photos.iterdir()) == ["a.jpg", "b.heic", "c.avif"]  # nothing written there
    assert Path(body["state"]).parent == tmp_path / "state" / "mesh"

    # the rerun skips what the mesh has (the deleted one is uploaded again) and reports the same error
    assert cli.main(argv) == cli.EXIT_PARTIAL
    out = capsys.readouterr().out
    assert "accepted 1, duplicates 0, already ingested 2" in out
    assert "error: c.avif (id-c.avif): moderation: the shorter side is 8 px (< 32)" in out
    assert cli.main(["ingest", str(photos), "--metadata", "novalue", "--url", "http://gw"]) == cli.EXIT_USAGE


def test_demo_photos_and_suggestions(tmp_path: Path) -> None:
    pytest.importorskip("skimage")
    from ops import demo

    paths = demo.write_photos(tmp_path / "demo")
    assert [p.name for p in paths] == demo.file_names()
    assert {"chelsea.jpg", "chelsea-crop.jpg", "coffee-colour.jpg", "camera.jpg"} <= {p.name for p in paths}
    assert all(p.read_bytes()[:3] == b"\xff\xd8\xff" for p in paths)
    mtime = paths[0].stat().st_mtime_ns
    demo.write_photos(tmp_path / "demo")  # a rerun leaves the files alone
    assert paths[0].stat().st_mtime_ns == mtime
    commands = [c for c, _ in demo.example_commands({"chelsea.jpg": "abc"}, tmp_path / "demo")]
    assert "mesh similar abc" in commands and "mesh search cat" in commands
    assert demo.default_folder({"XDG_CACHE_HOME": "/c"}) == Path("/c/mesh/demo")
    assert demo.default_folder({"HOME": "/h"}) == Path("/h/.cache/mesh/demo")
