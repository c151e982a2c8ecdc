"""Least privilege: each service's Redis ACL user and S3 identity, with only the keys, commands and objects it
uses (docs/RELIABILITY.md has the table). The local stack (``ops/stack/services.py``) and ``compose.yaml``
(checked by ``tests/unit/test_deploy_files.py``) both take their rules from here.

Redis (``P`` is ``settings.redis_prefix``; index names ``P_idx_<model>``):

- RediSearch checks an ``FT.*`` command's index name as a key (read and write), so the index names get their
  own ACL selector that allows only the ``FT.*`` commands the service uses: the name pattern grants no other
  command, and no other pattern grants an ``FT.*`` command.
- ``%R~`` patterns are read only; ``DEL`` is a write.
- Module commands have no ACL category here, and ``+@write`` would grant ``FLUSHALL`` (it has no key to
  refuse), so every service user lists its commands one by one.
- Lua scripts (the workflow store's record creation, redis-py's ``Lock``) run with the caller's permissions:
  ``EVALSHA`` and ``SCRIPT LOAD`` (redis-py loads a script the server does not know yet), never ``EVAL``.

S3 (SeaweedFS identities: ``Read``/``Write``/``List`` on ``bucket`` or ``bucket/prefix*``): ``Write`` also
deletes, so the coordinator's delete of orphaned originals is a bucket policy (``s3:DeleteObject`` on the
originals for that identity alone, put by ``ops.stack.bootstrap``), not a ``Write`` it could overwrite with.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from actors.adapters.object_store import (
    COPY_FEATURES_PREFIX,
    DERIVED_PREFIX,
    ORIGINALS_PREFIX,
    THUMBNAILS_PREFIX,
)
from actors.settings import RedisUser, S3Identity, Settings

SERVICE_USERS: tuple[RedisUser, ...] = ("gateway", "coordinator", "indexer")  # the config actor uses no Redis
S3_SERVICES: tuple[S3Identity, ...] = ("gateway", "coordinator")  # nor does the indexer use S3
OPS_RULES = ["~*", "&*", "+@all"]  # the operators' user: the CLI, the tests, the stack's probe
# SeaweedFS's account of its static identities: a bucket policy names an identity by this ARN
S3_PRINCIPAL = "arn:aws:iam::000000000000:user/{name}"

# every service: log in, ping, say who it is (redis-py's CLIENT SETINFO), transactions
_BASE = ["+ping", "+client|setinfo", "+multi", "+exec", "+discard"]
_SCRIPTS = ["+evalsha", "+script|load"]
_READER_FT = ["+ft.search", "+ft.info"]


def _cmds(names: str) -> list[str]:
    return [f"+{n}" for n in names.split()]


def redis_rules(s: Settings) -> dict[RedisUser, list[str]]:
    """Each service user's ACL rules (no password): ``{user: [rule, ...]}``."""
    p = s.redis_prefix
    # records, history, sha claims, embeddings, verified copy pairs
    records = [f"~{p}:image:*", f"~{p}:sha:*", f"~{p}:emb:*", f"~{p}:copies:*"]
    index_names = f"~{p}_idx_*"
    records_index = (
        f"~{p}_records_idx"  # the library's listing over the records (actors/adapters/record_index.py)
    )
    return {
        # writes its own keys: records (upload, delete), sha claims, upload intents, its liveness key;
        # reads the vectors (KNN straight from Redis) and the model switch's progress
        "gateway": [
            *_BASE,
            *_SCRIPTS,
            *_cmds(
                "get set exists del hget hgetall hmget hset hdel hkeys hscan lrange rpush scan zrem zcard zrangebyscore"
            ),
            "+info",  # INFO memory: uploads are refused before Redis is full (gateway/admission.py)
            *records,
            f"~{p}:copyq",
            f"~{p}:upload_intents",
            f"~{p}:gateway:*",
            f"%R~{p}:vec:*",
            f"%R~{p}:switch:*",
            f"({index_names} {' '.join(_READER_FT)})",
            f"({records_index} {' '.join([*_READER_FT, '+ft.create'])})",
        ],
        # the pipeline's records and embeddings, the model switch (its progress and lease), the reconciler's
        # cursors and repairs (stale intents, orphaned records); reads the vectors and the gateways' liveness
        "coordinator": [
            *_BASE,
            *_SCRIPTS,
            *_cmds(
                "get set exists del hget hgetall hmget hset hdel hkeys hscan lrange rpush scan pexpire pttl"
            ),
            *_cmds("zadd zrangebyscore zcard zrem"),  # the copy checker's queue (its claim script too)
            *records,
            f"~{p}:copyq",
            f"~{p}:switch:*",
            f"~{p}:reconcile:*",
            f"~{p}:upload_intents",
            f"%R~{p}:gateway:*",
            f"%R~{p}:vec:*",
            f"({index_names} {' '.join(_READER_FT)})",
        ],
        # the vector documents and the indexes over them; the near-duplicate groups kept at index time (their
        # scripts, hashes, sorted sets and sets, and the upkeep's lease: actors/adapters/group_store.py)
        "indexer": [
            *_BASE,
            *_SCRIPTS,
            *_cmds("del hget hgetall hset exists scan"),
            *_cmds(
                "hdel hincrby hmget zadd zrem zrange zrangebylex zcard zscore sadd srem smembers srandmember"
            ),
            *_cmds("incr set get pexpire"),
            f"~{p}:vec:*",
            f"~{p}:dup:*",
            f"({index_names} {' '.join([*_READER_FT, '+ft.create', '+ft.dropindex', '+ft._list'])})",
        ],
    }


def redis_user_argv(s: Settings) -> list[str]:
    """``redis-server`` arguments that create the operators' and every service's user."""
    argv = ["--user", s.redis_user, "on", f">{s.redis_password}", *OPS_RULES]
    for user, rules in redis_rules(s).items():
        password = str(getattr(s, f"redis_password_{user}"))
        argv += ["--user", user, "on", f">{password}", "resetkeys", "resetchannels", "-@all", *rules]
    return argv


def redis_grant_commands(s: Settings) -> list[list[str]]:
    """``ACL SETUSER`` commands (for the operators' user) that extend every service user to ``s.redis_prefix``
    besides the prefix Redis was started with: several meshes, or tests with their own prefix, on one Redis."""
    return [["ACL", "SETUSER", user, *rules] for user, rules in redis_rules(s).items()]


def redis_acl_lines(s: Settings, password: Mapping[RedisUser, str]) -> list[str]:
    """The service users as ACL-file lines, with ``password[user]`` (compose puts a variable there)."""
    return [
        " ".join(["user", user, "on", f">{password[user]}", "resetkeys", "resetchannels", "-@all", *rules])
        for user, rules in redis_rules(s).items()
    ]


def s3_actions(s: Settings) -> dict[str, list[str]]:
    """Each S3 identity's SeaweedFS actions (``ops`` is the operators')."""
    b = s.s3_bucket
    return {
        "ops": ["Admin", "Read", "Write", "List", "Tagging"],
        # stores originals, reads them (GET /content, pre-signed URLs), deletes them (DELETE, upload rollback);
        # reads thumbnails, writes the previews it makes, deletes both with their image
        "gateway": [
            f"Read:{b}/{ORIGINALS_PREFIX}*",
            f"Write:{b}/{ORIGINALS_PREFIX}*",
            f"Read:{b}/{THUMBNAILS_PREFIX}*",
            f"Write:{b}/{THUMBNAILS_PREFIX}*",
            f"Write:{b}/{COPY_FEATURES_PREFIX}*",  # deletes an image's copy features with it
            f"List:{b}",  # sums the bucket's bytes: object_store_max_bytes (gateway/admission.py)
        ],
        # reads originals, lists the bucket (the reconciler), writes only derived objects; its delete of
        # orphaned originals is the bucket policy below
        "coordinator": [
            f"Read:{b}/{ORIGINALS_PREFIX}*",
            f"Read:{b}/{DERIVED_PREFIX}*",
            f"Write:{b}/{DERIVED_PREFIX}*",
            f"List:{b}",
        ],
    }


def s3_identities(s: Settings, keys: dict[str, tuple[str, str]] | None = None) -> dict[str, Any]:
    """SeaweedFS's ``-s3.config`` document; ``keys`` overrides ``{identity: (access, secret)}``."""
    credentials: dict[str, tuple[str, str]] = {
        "ops": s.s3_credentials("ops"),
        "gateway": s.s3_credentials("gateway"),
        "coordinator": s.s3_credentials("coordinator"),
    } | (keys or {})
    return {
        "identities": [
            {
                "name": name,
                "credentials": [{"accessKey": credentials[name][0], "secretKey": credentials[name][1]}],
                "actions": actions,
            }
            for name, actions in s3_actions(s).items()
        ]
    }


def bucket_policy(s: Settings) -> str:
    """The bucket policy (JSON): the coordinator may delete originals (orphans), and nothing more."""
    statement = {
        "Sid": "CoordinatorDeletesOrphanedOriginals",
        "Effect": "Allow",
        "Principal": {"AWS": [S3_PRINCIPAL.format(name="coordinator")]},
        "Action": ["s3:DeleteObject"],
        "Resource": [f"arn:aws:s3:::{s.s3_bucket}/{ORIGINALS_PREFIX}*"],
    }
    return json.dumps({"Version": "2012-10-17", "Statement": [statement]})
