"""Operators and internal consumers against the whole real mesh: NATS micro discovery, the `mesh` CLI, replay,
a durable events consumer that resumes, metrics, and a trace id from the upload to the index."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import signal
import sys
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx

from actors import contract
from actors.adapters.config_client import ConfigClient
from actors.adapters.object_store import ObjectStore, object_key
from actors.settings import Settings
from ops.stack.supervisor import Stack, settings_env
from tests.helpers import jobs_service, upload, upload_id, wait_consumer_idle, wait_status
from tests.images import distinct_jpegs

ROOT = Path(__file__).resolve().parents[2]
MESH = str(Path(sys.executable).parent / "mesh")
ACTORS = ("coordinator", "config", "indexer")


async def run_cli(
    settings: Settings, *args: str, limit_s: float = 180, env: Mapping[str, str] | None = None
) -> tuple[int, str, str]:
    """Run a command the way an operator would (a subprocess with the stack's MESH_* environment, plus
    ``env``, e.g. an ``XDG_STATE_HOME`` of the test's own)."""
    env = {**os.environ, **settings_env(settings), **(env or {})}
    proc = await asyncio.create_subprocess_exec(
        *args, cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), limit_s)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def srv_replies(nc: Any, subject: str, wait_s: float = 1.0) -> list[dict[str, Any]]:
    """Every answer to one NATS micro discovery request (``$SRV.PING`` / ``.INFO`` / ``.STATS``)."""
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    replies: list[dict[str, Any]] = []
    try:
        await nc.publish(subject, b"", reply=inbox)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait_s):
                async for msg in sub.messages:
                    replies.append(json.loads(msg.data))
    finally:
        await sub.unsubscribe()
    return replies


# --- NATS micro discovery (what `nats micro ls/info/stats` shows) --------------------------------------
async def test_micro_discovery_finds_every_actor_and_its_endpoints(mesh: Stack, ops_nc: Any) -> None:
    pings = await srv_replies(ops_nc, "$SRV.PING")
    assert {p["name"] for p in pings} >= set(ACTORS)

    expected = {
        "coordinator": {contract.COORDINATOR_STATUS, contract.COORDINATOR_REPROCESS},
        "config": {contract.CONFIG_GET, contract.CONFIG_SET},
        "indexer": {contract.INDEX_UPSERT, contract.INDEX_QUERY, contract.INDEX_DELETE, contract.INDEX_STATS},
    }
    for name, subjects in expected.items():
        infos = await srv_replies(ops_nc, f"$SRV.INFO.{name}")
        assert infos, f"no $SRV.INFO answer from {name}"
        assert {e["subject"] for e in infos[0]["endpoints"]} >= subjects  # others may add endpoints
        assert infos[0]["version"] and infos[0]["id"]
        stats = await srv_replies(ops_nc, f"$SRV.STATS.{name}")
        assert stats and {e["subject"] for e in stats[0]["endpoints"]} >= subjects
        assert all("num_requests" in e and "num_errors" in e for e in stats[0]["endpoints"])
    # processes follow the Config DB with a KV watch; config.get serves operators and one-off clients
    await ops_nc.request(contract.CONFIG_GET, contract.encode(contract.ConfigGet()), timeout=5)
    config_stats = (await srv_replies(ops_nc, f"$SRV.STATS.{contract.CONFIG_SERVICE}"))[0]
    gets = next(e for e in config_stats["endpoints"] if e["subject"] == contract.CONFIG_GET)
    assert gets["num_requests"] > 0


# --- the mesh CLI -----------------------------------------------------------------------------------------
async def test_cli_ingest_is_resumable_then_status_and_similar(
    client: httpx.AsyncClient, settings: Settings, base_url: str, tmp_path: Path
) -> None:
    images = distinct_jpegs(10, seed=7001)
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    for i, data in enumerate(images):
        (folder / ("sub" if i % 2 else ".") / f"img{i:02d}.jpg").write_bytes(data)
    (folder / "broken.jpg").write_bytes(b"this is no image")
    (folder / "notes.txt").write_text("not sent: not an image file name")
    already = await upload_id(client, images[0])  # the gateway has this one: a 200 duplicate

    state_home = {"XDG_STATE_HOME": str(tmp_path / "state")}  # the user's state folder, not the photos'
    code, out, err = await run_cli(
        settings, MESH, "ingest", str(folder), "--url", base_url, "--json", env=state_home
    )
    assert code == 1, (out, err)  # one file refused
    first = json.loads(out)
    assert first["accepted"] == 9 and first["duplicates"] == 1 and first["skipped"] == 0
    assert [r["path"] for r in first["refused"]] == ["broken.jpg"]
    assert first["refused"][0]["reason"].startswith("not_an_image: ")
    assert first["failed"] == []
    assert first["images"]["img00.jpg"] == already
    assert not (folder / ".mesh-ingest.json").exists()
    assert [p.parent for p in (tmp_path / "state").rglob("ingest-*.json")] == [tmp_path / "state" / "mesh"]

    code, out, err = await run_cli(
        settings, MESH, "ingest", str(folder), "--url", base_url, "--json", env=state_home
    )
    again = json.loads(out)
    assert (again["accepted"], again["duplicates"], again["skipped"]) == (0, 0, 10), (out, err)
    assert again["images"] == first["images"] and code == 1  # broken.jpg is still refused

    ids = list(first["images"].values())
    await wait_status(client, ids, {"done"}, timeout_s=180)
    code, out, _ = await run_cli(settings, MESH, "status", ids[1], "--url", base_url, "--json")
    assert code == 0 and json.loads(out)["status"] == "done"
    code, out, _ = await run_cli(settings, MESH, "status", ids[1], "--url", base_url)
    assert code == 0 and "done" in out and ids[1] in out
    code, _, err = await run_cli(settings, MESH, "status", "no-such-image", "--url", base_url)
    assert code == 3 and "no image" in err

    code, out, err = await run_cli(settings, MESH, "similar", ids[1], "-k", "3", "--url", base_url, "--json")
    assert code == 0, err
    body = json.loads(out)
    assert len(body["results"]) == 3 and ids[1] not in {h["image_id"] for h in body["results"]}
    code, out, err = await run_cli(settings, MESH, "similar", ids[1], "-k", "3", "--url", base_url)
    assert code == 0 and body["results"][0]["image_id"] in out

    # words: the default model has no text tower, so the search says it used the labels
    code, out, err = await run_cli(settings, MESH, "search", "cat", "--url", base_url, "--json")
    assert code == 0 and json.loads(out)["mode"] == "labels" and "tabby" in json.loads(out)["labels"], err
    code, out, err = await run_cli(settings, MESH, "search", "xylophonist", "--url", base_url)
    assert code == 0 and "mode: labels" in out and "xylophonist" in out, (out, err)


# --- replay -----------------------------------------------------------------------------------------------
async def test_replay_brings_an_errored_image_to_done(
    client: httpx.AsyncClient, settings: Settings, mesh: Stack, ops_nc: Any
) -> None:
    config = ConfigClient(ops_nc)
    before = await config.get()
    started = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    data = distinct_jpegs(1, seed=7101)[0]
    jobs = jobs_service(settings)  # the coordinator, or Temporal's worker in its place
    mesh.stop_service(jobs)  # the job waits while its object disappears behind the pipeline's back
    try:
        await config.set("max_deliver", 2)
        await config.set("backoff_s", [0.2])
        image_id = await upload_id(client, data)
        async with ObjectStore(settings) as objects:
            await objects.delete(object_key(image_id))
            mesh.start_service(jobs)
            rec = (await wait_status(client, [image_id], {"error", "done"}, timeout_s=90))[image_id]
            assert rec["status"] == "error" and rec["error"]["code"] == "object_missing", rec

            # the dead letter is in the stream: a dry run of "dead letters since" lists it
            code, out, err = await run_cli(
                settings, sys.executable, "-m", "ops.replay", "--dead-since", started.isoformat(),
                "--dry-run", "--json",
            )  # fmt: skip
            assert code == 0, err
            listed = {row["image_id"]: row for row in json.loads(out)["would_replay"]}
            assert listed[image_id]["code"] == "object_missing"

            await objects.put(object_key(image_id), data, "image/jpeg")  # the operator fixed the cause
        code, out, err = await run_cli(settings, MESH, "replay", image_id, "--json")
        assert code == 0, (out, err)
        assert json.loads(out) == {"requeued": [image_id], "unknown": []}
        # as soon as the replay returns, the image is queued again: no client sees the old error any more
        now = (await client.get(f"/images/{image_id}")).json()
        assert now["status"] != "error" and now["error"] is None, now
        rec = (await wait_status(client, [image_id], {"done"}, timeout_s=90))[image_id]
        assert rec["error"] is None
        states = [h["status"] for h in rec["history"] if "status" in h]
        assert states[-1] == "done" and states[states.index("error") + 1] == "pending", states

        code, out, _ = await run_cli(settings, MESH, "replay", "no-such-image", "--json")
        assert code == 1 and json.loads(out)["unknown"] == ["no-such-image"]
    finally:
        await config.set("max_deliver", before.max_deliver)
        await config.set("backoff_s", before.backoff_s)
        # the coordinator wrote max_deliver into its durable consumer at start: start it again on the old one
        mesh.stop_service(jobs)
        mesh.start_service(jobs)


# --- internal consumers -----------------------------------------------------------------------------------
class ConsumerProcess:
    """``python -m ops.consumer_example`` as a subprocess, collecting the events it prints."""

    def __init__(self, settings: Settings, name: str) -> None:
        self.settings, self.name = settings, name
        self.events: list[dict[str, Any]] = []
        self.proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        env = {**os.environ, **settings_env(self.settings)}
        argv = [sys.executable, "-m", "ops.consumer_example", self.name, "--status", "done"]
        self.proc = await asyncio.create_subprocess_exec(
            *argv, cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        assert self.proc.stderr is not None
        ready = await asyncio.wait_for(self.proc.stderr.readline(), 60)
        assert b'"ready": true' in ready, ready
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        async for line in self.proc.stdout:
            self.events.append(json.loads(line))

    async def wait_for(self, image_ids: set[str], timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while not image_ids <= {e["image_id"] for e in self.events}:
            assert time.monotonic() < deadline, f"consumer saw {len(self.events)} events, not all of ours"
            await asyncio.sleep(0.2)

    async def stop(self) -> int:
        """SIGTERM: the consumer finishes (and acks) what it holds, then exits."""
        assert self.proc is not None and self._reader is not None
        self.proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(self.proc.wait(), 30)
        await asyncio.wait_for(self._reader, 10)
        return code


async def test_durable_consumer_resumes_after_restart_without_missing_or_repeating(
    client: httpx.AsyncClient, settings: Settings, ops_nc: Any
) -> None:
    name = f"test-resume-{uuid.uuid4().hex[:8]}"
    first = ConsumerProcess(settings, name)
    await first.start()
    try:
        before = {await upload_id(client, d) for d in distinct_jpegs(3, seed=7201)}
        await first.wait_for(before)
        assert await first.stop() == 0

        missed = {await upload_id(client, d) for d in distinct_jpegs(3, seed=7202)}
        await wait_status(client, list(missed), {"done"})  # their events happen while nobody consumes

        second = ConsumerProcess(settings, name)
        await second.start()
        await second.wait_for(missed)
        # every event it matches was delivered and acked: nothing is left that could come again
        await wait_consumer_idle(ops_nc, settings.events_stream, name)
        assert await second.stop() == 0
    finally:
        with contextlib.suppress(Exception):
            await ops_nc.jetstream().delete_consumer(settings.events_stream, name)

    ours = before | missed
    got_second = [e["image_id"] for e in second.events if e["image_id"] in ours]
    assert sorted(got_second) == sorted(missed), "the restarted consumer must get exactly the missed events"
    every = [(e["image_id"], e["status"]) for e in first.events + second.events]
    assert len(every) == len(set(every)), "an event was delivered twice"
    assert all(e["status"] == "done" for e in first.events + second.events)


# --- metrics and tracing ----------------------------------------------------------------------------------
async def test_metrics_on_the_gateway_and_every_actor(client: httpx.AsyncClient, settings: Settings) -> None:
    await wait_status(client, [await upload_id(client, distinct_jpegs(1, seed=7301)[0])], {"done"})
    await upload(client, b"no image")
    gateway = (await client.get("/metrics")).text
    assert 'mesh_uploads_total{outcome="accepted"}' in gateway
    assert 'mesh_uploads_total{outcome="refused"}' in gateway
    assert 'mesh_http_request_seconds_count{method="POST",route="/images/upload",status="202"}' in gateway
    assert 'route="/images/{image_id}"' in gateway  # route templates, never raw ids

    def scrape(port: int) -> str:
        return httpx.get(f"http://{settings.host}:{port}/metrics", timeout=10).text

    coordinator = await asyncio.to_thread(scrape, settings.coordinator_http_port)
    assert 'mesh_stage_seconds_count{stage="embed"}' in coordinator
    assert "mesh_jobs_pending" in coordinator
    indexer = await asyncio.to_thread(scrape, settings.indexer_http_port)
    assert 'mesh_service_requests_total{endpoint="index.upsert",outcome="ok"}' in indexer
    config = await asyncio.to_thread(scrape, settings.config_http_port)
    assert 'mesh_service_requests_total{endpoint="config.get",outcome="ok"}' in config


def log_lines_with(path: Path, trace_id: str) -> list[dict[str, Any]]:
    found = []
    for line in path.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if isinstance(entry, dict) and entry.get("trace_id") == trace_id:
                found.append(entry)
    return found


async def test_trace_id_travels_from_upload_to_the_index(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    image_id = await upload_id(client, distinct_jpegs(1, seed=7401)[0])
    rec = (await wait_status(client, [image_id], {"done"}))[image_id]
    trace_id = rec["trace_id"]
    assert trace_id
    logs = settings.log_dir.resolve()
    deadline = time.monotonic() + 20  # supervisord copies the actors' stdout into the files
    while True:
        coordinator = log_lines_with(logs / "coordinator.log", trace_id)
        indexer = log_lines_with(logs / "indexer.log", trace_id)
        if (coordinator and indexer) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    assert any(e.get("image_id") == image_id for e in coordinator), "no coordinator line with the trace id"
    assert any(e.get("event") == "index.upserted" and e.get("image_id") == image_id for e in indexer)
