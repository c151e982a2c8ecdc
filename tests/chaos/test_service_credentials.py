"""Least privilege per service (issue 12, point 7): Redis ACL users, S3 identities, API-key scopes and rate
limits, and the production profile's admin port.

Each test holds one service's credentials, as an attacker who took that process would, and shows every
operation the service does not need refused with no effect (checked afterwards as the operators' user), and
the ones it needs allowed. The rules come from ``ops/stack/privileges.py`` through the chaos stack, started by
the code ``make run`` uses. Dangerous commands (``SHUTDOWN``, ``FLUSHALL``, ...) are asked with ``ACL DRYRUN``,
never run: a wrong rule must fail this test, not take Redis from under the others.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
import redis
from botocore.config import Config
from botocore.exceptions import ClientError

from actors.adapters.object_store import DERIVED_PREFIX, object_key
from actors.settings import SECRET_FIELDS, RedisUser, S3Identity, Settings
from ops.stack.supervisor import Stack
from tests.chaos.test_least_privilege import private_gateway
from tests.conftest import free_port
from tests.corpus import jpeg
from tests.helpers import running_stack, s3_client, upload_id, wait_status

MODEL = "efficientnet_lite0"
# never run against the shared stack: asked with ACL DRYRUN only
DANGEROUS = [
    ["FLUSHALL"],
    ["FLUSHDB"],
    ["SHUTDOWN"],
    ["CONFIG", "SET", "appendonly", "no"],
    ["DEBUG", "SLEEP", "0"],
    ["ACL", "SETUSER", "mallory", "on", "nopass", "+@all"],
    ["MODULE", "UNLOAD", "search"],
    ["CLIENT", "KILL", "ID", "1"],
    ["KEYS", "*"],
    ["EVAL", "return 1", "0"],
    ["SCRIPT", "FLUSH"],
    ["FUNCTION", "FLUSH"],
    ["MONITOR"],
    ["REPLICAOF", "127.0.0.1", "1"],
    ["BGREWRITEAOF"],
]


def as_user(s: Settings, user: RedisUser) -> redis.Redis:
    return redis.Redis.from_url(s.redis_url_for(user))


def refused(r: redis.Redis, *command: Any) -> str:
    with pytest.raises(redis.exceptions.NoPermissionError) as e:
        r.execute_command(*command)
    return str(e.value)


def allowed(r: redis.Redis, *command: Any) -> None:
    """Runs, or fails for a reason other than permissions (an index not created yet)."""
    try:
        r.execute_command(*command)
    except redis.exceptions.ResponseError as e:
        assert not isinstance(e, redis.exceptions.NoPermissionError), (command, e)
        assert "unknown index" in str(e).lower() or "no such index" in str(e).lower(), (command, e)


# --- Redis --------------------------------------------------------------------------------------------------
async def test_each_service_connects_as_its_own_redis_user(
    chaos_settings: Settings, gw: httpx.AsyncClient
) -> None:
    """One image through the whole pipeline (so every service has used Redis), then ``CLIENT LIST``; the image
    reaching ``done``, with not one refusal in Redis's ACL log meanwhile, is the proof that the rules let each
    service do all of its work."""
    with redis.Redis.from_url(chaos_settings.redis_server_url) as ops:
        ops.acl_log_reset()
        image_id = await upload_id(gw, jpeg(9401, (40, 40)), expect=(200, 202))
        records = await wait_status(gw, [image_id], {"done", "error"}, timeout_s=120)
        assert records[image_id]["status"] == "done", records[image_id]
        for read in ("", "/similar", "/content"):
            assert (await gw.get(f"/images/{image_id}{read}")).status_code == 200, read
        assert (await gw.delete(f"/images/{image_id}")).status_code == 204
        denials = [(e["username"], e["object"], e["reason"]) for e in ops.acl_log()]
        users = {c["user"] for c in ops.client_list()}
    assert not denials, f"a service was refused what it needs: {denials}"
    print(f"\nRedis connections by user: {sorted(users)}")
    assert {"gateway", "coordinator", "indexer"} <= users
    assert "default" not in users


@pytest.mark.parametrize("user", ["gateway", "coordinator", "indexer"])
def test_no_service_user_may_run_a_dangerous_command(chaos_settings: Settings, user: RedisUser) -> None:
    with redis.Redis.from_url(chaos_settings.redis_server_url) as ops:
        for command in DANGEROUS:
            answer = ops.execute_command("ACL", "DRYRUN", user, *command)
            text = answer.decode() if isinstance(answer, bytes) else str(answer)
            assert text != "OK" and "no permissions" in text.lower(), (user, command, text)


def test_gateway_reads_the_index_but_writes_only_its_own_keys(chaos_settings: Settings) -> None:
    s = chaos_settings
    p, probe = s.redis_prefix, uuid.uuid4().hex
    with as_user(s, "gateway") as gw, redis.Redis.from_url(s.redis_server_url) as ops:
        switch_before = ops.get(f"{p}:switch:last")
        # what it needs: the KNN read path, its own records, the switch's progress (read)
        allowed(gw, "FT.INFO", f"{p}_idx_{MODEL}")
        allowed(gw, "FT.SEARCH", f"{p}_idx_{MODEL}", "*", "LIMIT", "0", "1")
        gw.hget(f"{p}:vec:{MODEL}:{probe}", "vector")
        gw.get(f"{p}:switch:last")
        assert "used_memory" in gw.info("memory")  # admission: refuse uploads before Redis is full
        gw.hset(f"{p}:image:{probe}", "status", "pending")
        assert gw.delete(f"{p}:image:{probe}") == 1
        # a vector key, an index, the model switch, the reconciler: refused
        reasons = [
            refused(gw, "HSET", f"{p}:vec:{MODEL}:{probe}", "vector", b"\0" * 16),
            refused(gw, "DEL", f"{p}:vec:{MODEL}:{probe}"),
            refused(
                gw,
                "FT.CREATE",
                f"{p}_idx_evil",
                "ON",
                "HASH",
                "PREFIX",
                "1",
                f"{p}:image:",
                "SCHEMA",
                "x",
                "TAG",
            ),
            refused(gw, "FT.DROPINDEX", f"{p}_idx_{MODEL}"),
            refused(gw, "SET", f"{p}:switch:last", "evil"),
            refused(gw, "HSET", f"{p}:switch:{MODEL}", "state", "done"),
            refused(gw, "DEL", f"{p}:switch:lease"),
            refused(gw, "HSET", f"{p}:reconcile:cursors", "records", "0"),
            refused(gw, "SET", f"{p}_idx_{MODEL}", "x"),  # an index name is not a key it may write
            refused(gw, "SET", "elsewhere", "x"),
        ]
        # a script runs with the caller's rights: no way around the key patterns
        sha = gw.script_load("return redis.call('HSET', KEYS[1], 'vector', 'x')")
        reasons.append(refused(gw, "EVALSHA", sha, 1, f"{p}:vec:{MODEL}:{probe}"))
        assert not ops.exists(f"{p}:vec:{MODEL}:{probe}", f"{p}_idx_evil", "elsewhere", f"{p}_idx_{MODEL}")
        assert ops.get(f"{p}:switch:last") == switch_before
        assert f"{p}_idx_evil" not in {n.decode() for n in ops.execute_command("FT._LIST")}
    print(f"\ngateway refused {len(reasons)} operations: {sorted(set(reasons))}")


def test_indexer_cannot_read_or_write_records(chaos_settings: Settings) -> None:
    s = chaos_settings
    p, probe = s.redis_prefix, uuid.uuid4().hex
    with as_user(s, "indexer") as ix, redis.Redis.from_url(s.redis_server_url) as ops:
        ops.hset(f"{p}:image:{probe}", mapping={"status": "done"})
        try:
            allowed(ix, "FT.INFO", f"{p}_idx_{MODEL}")
            ix.hget(f"{p}:vec:{MODEL}:{probe}", "vector")
            for command in (
                ["HSET", f"{p}:image:{probe}", "status", "error"],
                ["HGETALL", f"{p}:image:{probe}"],
                ["DEL", f"{p}:image:{probe}"],
                ["RPUSH", f"{p}:image:{probe}:history", "{}"],
                ["SET", f"{p}:sha:{'0' * 64}", probe],
                ["SET", f"{p}:emb:{MODEL}:{probe}", "x"],
                ["HSET", f"{p}:upload_intents", "k", "v"],
                ["SET", f"{p}:switch:last", "evil"],
                ["EVAL", "return 1", "0"],  # scripts only by their SHA (the groups' own, loaded first)
            ):
                refused(ix, *command)
            # its scripts (the near-duplicate groups') reach its keys only: a loaded script given a record
            # key is refused before it runs
            sha = ix.script_load("return redis.call('HGET', KEYS[1], 'status')")
            refused(ix, "EVALSHA", sha, "1", f"{p}:image:{probe}")
            assert ops.hgetall(f"{p}:image:{probe}") == {b"status": b"done"}
            assert not ops.exists(
                f"{p}:sha:{'0' * 64}", f"{p}:emb:{MODEL}:{probe}", f"{p}:image:{probe}:history"
            )
        finally:
            ops.delete(f"{p}:image:{probe}")


def test_coordinator_cannot_write_vectors_nor_change_indexes(chaos_settings: Settings) -> None:
    s = chaos_settings
    p, probe = s.redis_prefix, uuid.uuid4().hex
    with as_user(s, "coordinator") as co, redis.Redis.from_url(s.redis_server_url) as ops:
        allowed(co, "FT.SEARCH", f"{p}_idx_{MODEL}", "*", "LIMIT", "0", "1")
        co.hget(f"{p}:vec:{MODEL}:{probe}", "vector")
        co.hset(f"{p}:image:{probe}", "status", "processing")
        co.delete(f"{p}:image:{probe}")
        for command in (
            ["HSET", f"{p}:vec:{MODEL}:{probe}", "vector", "x"],
            ["DEL", f"{p}:vec:{MODEL}:{probe}"],
            ["FT.CREATE", f"{p}_idx_evil", "ON", "HASH", "SCHEMA", "x", "TAG"],
            ["FT.DROPINDEX", f"{p}_idx_{MODEL}"],
            ["SET", f"{p}:gateway:{probe}", "1"],  # a gateway's liveness: read only
        ):
            refused(co, *command)
        assert not ops.exists(f"{p}:vec:{MODEL}:{probe}", f"{p}:gateway:{probe}")


# --- S3 -----------------------------------------------------------------------------------------------------
def s3_as(s: Settings, identity: S3Identity) -> Any:
    access, secret = s.s3_credentials(identity)
    return boto3.client(
        "s3",
        endpoint_url=s.s3_server_url,
        aws_access_key_id=access,
        aws_secret_access_key=secret,
        region_name=s.s3_region,
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
    )


def denied(call: Any, **kw: Any) -> str:
    with pytest.raises(ClientError) as e:
        call(**kw)
    code = str(e.value.response.get("Error", {}).get("Code"))
    assert code in ("AccessDenied", "403"), (kw, e.value)
    return code


def keys_under(ops: Any, bucket: str, prefix: str) -> set[str]:
    return {o["Key"] for o in ops.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])}


def test_coordinator_reads_originals_and_writes_only_derived_objects(chaos_settings: Settings) -> None:
    s, b = chaos_settings, chaos_settings.s3_bucket
    ops, co = s3_client(s), s3_as(s, "coordinator")
    original, orphan = object_key(uuid.uuid4().hex), object_key(uuid.uuid4().hex)
    derived = f"{DERIVED_PREFIX}{uuid.uuid4().hex}.webp"
    ops.put_object(Bucket=b, Key=original, Body=b"original")
    ops.put_object(Bucket=b, Key=orphan, Body=b"orphan")
    try:
        assert co.get_object(Bucket=b, Key=original)["Body"].read() == b"original"
        assert original in keys_under(co, b, original)  # lists (the reconciler)
        co.put_object(Bucket=b, Key=derived, Body=b"thumb")  # its own prefix
        co.delete_object(Bucket=b, Key=derived)
        co.delete_object(Bucket=b, Key=orphan)  # orphaned originals: the bucket policy's delete only
        assert orphan not in keys_under(ops, b, orphan)
        for key in (original, object_key(uuid.uuid4().hex), f"elsewhere/{uuid.uuid4().hex}", "top-level"):
            denied(co.put_object, Bucket=b, Key=key, Body=b"overwritten")
        denied(co.create_bucket, Bucket=f"evil-{uuid.uuid4().hex[:8]}")
        denied(co.delete_bucket_policy, Bucket=b)
        assert ops.get_object(Bucket=b, Key=original)["Body"].read() == b"original"
    finally:
        for key in (original, orphan, derived):
            ops.delete_object(Bucket=b, Key=key)


def test_gateway_touches_originals_only(chaos_settings: Settings) -> None:
    s, b = chaos_settings, chaos_settings.s3_bucket
    ops, gw = s3_client(s), s3_as(s, "gateway")
    mine, derived = object_key(uuid.uuid4().hex), f"{DERIVED_PREFIX}{uuid.uuid4().hex}.webp"
    ops.put_object(Bucket=b, Key=derived, Body=b"thumb")
    try:
        gw.put_object(Bucket=b, Key=mine, Body=b"upload")
        assert gw.get_object(Bucket=b, Key=mine)["Body"].read() == b"upload"
        gw.delete_object(Bucket=b, Key=mine)  # DELETE /images/{id}, the upload rollback
        denied(gw.put_object, Bucket=b, Key=derived, Body=b"overwritten")
        denied(gw.delete_object, Bucket=b, Key=derived)
        denied(gw.get_object, Bucket=b, Key=derived)
        denied(gw.put_object, Bucket=b, Key=f"elsewhere/{uuid.uuid4().hex}", Body=b"x")
        gw.list_objects_v2(Bucket=b, MaxKeys=1)  # keys and sizes only: the object store's use (admission)
        denied(gw.create_bucket, Bucket=f"evil-{uuid.uuid4().hex[:8]}")
        denied(gw.put_bucket_policy, Bucket=b, Policy='{"Version":"2012-10-17","Statement":[]}')
        assert ops.get_object(Bucket=b, Key=derived)["Body"].read() == b"thumb"
        assert ops.get_bucket_policy(Bucket=b)["Policy"]  # the coordinator's delete grant is still there
    finally:
        ops.delete_object(Bucket=b, Key=derived)


# --- API keys: scopes and rate limit on a second gateway ----------------------------------------------------
@pytest.fixture(scope="module")
def scoped_gateway(chaos_mesh: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A second gateway on the chaos stack: keys with each scope; each key may make 1 request/s, bursts of 10."""
    log = tmp_path_factory.mktemp("scoped") / "gateway.log"
    keys = "r1:read,w1:write,a1:admin,slow:read"
    with private_gateway(
        chaos_mesh.settings, log, MESH_API_KEYS=keys, MESH_API_RATE_PER_S="1", MESH_API_RATE_BURST="10"
    ) as (url, _):
        yield url


async def test_scopes_read_key_403_on_upload_delete_and_switch(
    scoped_gateway: str, chaos_settings: Settings
) -> None:
    image = jpeg(9411, (40, 40))
    upload: dict[str, Any] = {"files": {"file": ("s.jpg", image, "image/jpeg")}}
    async with httpx.AsyncClient(base_url=scoped_gateway, timeout=60) as c:
        for method, path, kw in (
            ("POST", "/images/upload", upload),
            ("POST", "/encode", upload),
            ("DELETE", f"/images/{'0' * 32}", {}),
            ("POST", "/models/switch", {"json": {"model": MODEL}}),
        ):
            r = await c.request(method, path, headers={"X-API-Key": "r1"}, **kw)
            assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden", (path, r.text)
        switch = await c.post("/models/switch", json={"model": MODEL}, headers={"X-API-Key": "w1"})
        assert switch.status_code == 403
        with redis.Redis.from_url(chaos_settings.redis_server_url) as ops:
            sha = hashlib.sha256(image).hexdigest()
            assert not ops.exists(f"{chaos_settings.redis_prefix}:sha:{sha}"), "a refused upload left a claim"
        up = await c.post("/images/upload", headers={"X-API-Key": "w1"}, **upload)
        assert up.status_code in (200, 202), up.text
        read = await c.get(f"/images/{up.json()['image_id']}", headers={"X-API-Key": "r1"})
        assert read.status_code == 200
        admin = await c.post("/models/switch", json={"model": "no_such_model"}, headers={"X-API-Key": "a1"})
        assert admin.status_code == 400, admin.text  # past the scope check: Triton does not serve it


async def test_a_key_over_its_rate_gets_429_with_retry_after(scoped_gateway: str) -> None:
    async with httpx.AsyncClient(base_url=scoped_gateway, timeout=30) as c:
        slow = {"X-API-Key": "slow"}
        statuses = [(await c.get(f"/images/{'1' * 32}", headers=slow)).status_code for _ in range(13)]
        assert statuses[:10] == [404] * 10 and 429 in statuses[10:], statuses
        limited = await c.get(f"/images/{'1' * 32}", headers=slow)
        assert limited.status_code == 429 and limited.json()["error"]["code"] == "rate_limited"
        wait_s = int(limited.headers["Retry-After"])
        assert 1 <= wait_s <= 2
        assert (await c.get(f"/images/{'1' * 32}", headers={"X-API-Key": "r1"})).status_code == 404
        await asyncio.sleep(wait_s)
        assert (await c.get(f"/images/{'1' * 32}", headers=slow)).status_code == 404
    print(f"\nrate limit: statuses {statuses}, then 429 with Retry-After {wait_s}")


# --- the production profile: the admin port -----------------------------------------------------------------
@pytest.fixture(scope="module")
def production_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """NATS, Redis and S3 with credentials production accepts (none is a local-* default)."""
    creds: dict[str, Any] = {name: f"test-{secrets.token_hex(12)}" for name in SECRET_FIELDS}
    with running_stack(
        tmp_path_factory.mktemp("prod"), only=("nats", "redis", "s3"), export_models=False, **creds
    ) as stack:
        yield stack


def test_production_serves_status_metrics_and_docs_on_the_admin_port_only(
    production_servers: Stack, tmp_path: Path
) -> None:
    admin_port = free_port()
    with private_gateway(
        production_servers.settings,
        tmp_path / "gateway-production.log",
        MESH_PROFILE="production",
        MESH_API_KEYS="prod-key",
        MESH_GATEWAY_ADMIN_PORT=str(admin_port),
    ) as (url, _):
        admin = f"http://{production_servers.settings.host}:{admin_port}"
        public_status = {p: httpx.get(url + p, timeout=10).status_code for p in PATHS}
        admin_status = {p: httpx.get(admin + p, timeout=30).status_code for p in PATHS}
        assert httpx.get(url + "/health", timeout=10).status_code == 200
        assert httpx.get(url + "/images/" + "0" * 32, timeout=10).status_code == 401
    print(f"\nproduction public port: {public_status}; admin port: {admin_status}")
    assert public_status == dict.fromkeys(PATHS, 404)
    assert admin_status == dict.fromkeys(PATHS, 200)


PATHS = ("/metrics", "/status", "/docs", "/openapi.json")
