"""Each real server answers its own probe, started by the stack's code."""

from __future__ import annotations

import httpx
import redis

from ops.stack.supervisor import Stack


def test_nats_jetstream_healthy(servers: Stack) -> None:
    s = servers.settings
    r = httpx.get(f"http://{s.host}:{s.nats_monitor_port}/healthz?js-enabled-only=true")
    assert r.status_code == 200


def test_redis_has_search_and_acl(servers: Stack) -> None:
    s = servers.settings
    with redis.Redis.from_url(s.redis_server_url) as r:
        assert r.ping()
        modules = {m[b"name"].decode().lower() for m in r.execute_command("MODULE LIST")}
        assert {"search", "rejson"} <= modules
    # the default user has a secret password (never nopass): an unauthenticated client is refused
    with redis.Redis(host=s.host, port=s.redis_port) as anon:
        try:
            anon.ping()
            refused = False
        except redis.exceptions.AuthenticationError:
            refused = True
        except redis.exceptions.ResponseError as e:
            refused = "NOAUTH" in str(e) or "auth" in str(e).lower()
    assert refused


def test_s3_bucket_listed(servers: Stack) -> None:
    s = servers.settings
    import boto3

    client = boto3.client(
        "s3",
        endpoint_url=s.s3_server_url,
        aws_access_key_id=s.s3_access_key,
        aws_secret_access_key=s.s3_secret_key,
        region_name=s.s3_region,
    )
    names = [b["Name"] for b in client.list_buckets()["Buckets"]]
    assert s.s3_bucket in names
