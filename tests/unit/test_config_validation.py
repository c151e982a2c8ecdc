"""The config actor's pure validation: what ``config.set`` accepts, what it refuses and how it says so."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from actors.adapters.config_client import mesh_config_defaults
from actors.config_rules import (
    FIELDS,
    RULES,
    InvalidConfig,
    apply_change,
    assemble,
    assemble_entries,
    decode_stored,
    redact,
    redacted_settings,
)
from actors.contract import MeshConfig
from actors.rpc import service_error
from actors.settings import Settings

BASE = MeshConfig()


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("active_model", "clip_vit_b32"),
        ("max_upload_bytes", 1),
        ("max_pixels", 10_000_000),
        ("default_k", 100),
        ("max_k", 10),
        ("coordinator_concurrency", 1),
        ("max_deliver", 1),
        ("backoff_s", [0.5, 1, 30]),  # ints are fine where floats are expected
        ("ef_runtime", 10),
        ("near_duplicate_threshold", 1),
        ("near_duplicate_threshold", 0.01),
        ("pipeline_steps", ["exif", "moderation"]),
        ("pipeline_steps", []),
    ],
)
def test_valid_values_are_applied(key: str, value: Any) -> None:
    cfg = apply_change(BASE, key, value)
    assert getattr(cfg, key) == value
    # nothing else moves
    others = {k: v for k, v in msgspec.structs.asdict(cfg).items() if k != key}
    assert others == {k: v for k, v in msgspec.structs.asdict(BASE).items() if k != key}


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        ("max_k", "50", "Expected `int`, got `str`"),
        ("max_k", 50.0, "Expected `int`, got `float`"),
        ("max_k", True, "Expected `int`, got `bool`"),
        ("max_k", 0, "must be between 1 and 10000, got 0"),
        ("max_k", 5, "default_k (10) must not exceed max_k (5)"),
        ("default_k", 101, "default_k (101) must not exceed max_k (100)"),
        ("default_k", -1, "must be between 1 and 10000, got -1"),
        ("max_upload_bytes", 0, "must be between 1 and"),
        ("max_pixels", -5, "must be between 1 and"),
        ("coordinator_concurrency", 0, "must be between 1 and 1024, got 0"),
        ("max_deliver", 0, "must be between 1 and 100, got 0"),
        ("ef_runtime", 0, "must be between 1 and"),
        ("backoff_s", [], "must not be empty"),
        ("backoff_s", [1.0, -2.0], "every step must be > 0"),
        ("backoff_s", [1.0, "2"], "Expected `float`, got `str` at `$.backoff_s[1]`"),
        ("backoff_s", 5, "Expected `array`, got `int`"),
        ("near_duplicate_threshold", 0, "must be > 0 and <= 1, got 0"),
        ("near_duplicate_threshold", 1.5, "must be > 0 and <= 1, got 1.5"),
        ("active_model", "", "must be 1-64 letters"),
        ("active_model", "../etc", "must be 1-64 letters"),
        ("active_model", None, "Expected `str`, got `null`"),
        ("pipeline_steps", ["exif", "exif"], "must not repeat a step"),
        ("pipeline_steps", ["has space"], "step must be 1-64 letters"),
    ],
)
def test_invalid_values_are_refused_with_key_and_reason(key: str, value: Any, reason: str) -> None:
    with pytest.raises(InvalidConfig) as info:
        apply_change(BASE, key, value)
    assert info.value.key == key
    assert reason in info.value.reason
    assert info.value.message.startswith(f"invalid config {key!r}: ")


def test_unknown_key_lists_the_known_ones() -> None:
    with pytest.raises(InvalidConfig) as info:
        apply_change(BASE, "max_kk", 5)
    assert "unknown key" in info.value.reason
    assert "max_k" in info.value.reason


def test_refusal_becomes_a_400_service_error() -> None:
    with pytest.raises(InvalidConfig) as info:
        apply_change(BASE, "max_k", 0)
    err = service_error(info.value)
    assert err.code == "400"
    assert "max_k" in err.description and "between 1 and 10000" in err.description


def test_every_field_has_a_sanity_rule() -> None:
    # a new MeshConfig field must say what values are sane
    assert set(RULES) == set(FIELDS)


def test_defaults_pass_their_own_rules() -> None:
    s = Settings(max_upload_bytes=1234, max_pixels=5678, default_model="clip")
    defaults = mesh_config_defaults(s)
    assert (defaults.active_model, defaults.max_upload_bytes, defaults.max_pixels) == ("clip", 1234, 5678)
    for key, value in msgspec.structs.asdict(defaults).items():
        apply_change(defaults, key, value)


def test_stored_values_decode_as_json_and_bare_words_as_strings() -> None:
    assert decode_stored("max_k", b"50") == 50
    assert decode_stored("backoff_s", b"[1, 2]") == [1, 2]
    assert decode_stored("active_model", b'"clip"') == "clip"
    assert decode_stored("active_model", b"clip\n") == "clip"  # nats kv put config active_model clip
    with pytest.raises(InvalidConfig, match="not JSON"):
        decode_stored("max_k", b"fifty")


def test_assemble_falls_back_per_key_and_reports() -> None:
    stored = {
        "max_k": b"50",
        "default_k": b"20",
        "ef_runtime": b'"lots"',  # wrong type
        "near_duplicate_threshold": b"7",  # out of range
        "max_deliver": b"{",  # not JSON
    }
    cfg, problems = assemble(stored, BASE)
    assert (cfg.max_k, cfg.default_k) == (50, 20)
    assert (cfg.ef_runtime, cfg.near_duplicate_threshold, cfg.max_deliver) == (
        BASE.ef_runtime,
        BASE.near_duplicate_threshold,
        BASE.max_deliver,
    )
    assert sorted(p.key for p in problems) == ["ef_runtime", "max_deliver", "near_duplicate_threshold"]


def test_assemble_entries_reports_each_bad_revision_once() -> None:
    reported: set[tuple[str, int]] = set()
    entries = {"max_k": (b"50", 3), "ef_runtime": (b'"lots"', 4)}
    cfg, problems = assemble_entries(entries, BASE, reported)
    assert (cfg.max_k, cfg.ef_runtime, [p.key for p in problems]) == (50, BASE.ef_runtime, ["ef_runtime"])
    assert assemble_entries(entries, BASE, reported)[1] == []  # read again (or the next change): quiet
    rewritten = entries | {"ef_runtime": (b'"still bad"', 9)}  # a new bad revision is news
    assert [p.key for p in assemble_entries(rewritten, BASE, reported)[1]] == ["ef_runtime"]


def test_assemble_accepts_values_valid_only_together() -> None:
    # default_k above the default max_k is fine when the stored max_k is higher still
    cfg, problems = assemble({"default_k": b"150", "max_k": b"200"}, BASE)
    assert (cfg.default_k, cfg.max_k, problems) == (150, 200, [])


def test_assemble_clamps_default_k_to_max_k() -> None:
    cfg, problems = assemble({"max_k": b"5"}, BASE)
    assert (cfg.default_k, cfg.max_k) == (5, 5)
    assert [p.key for p in problems] == ["default_k"]


def test_redact_hides_secrets_and_url_credentials() -> None:
    out = redact(
        {
            "redis_password": "hunter2",
            "nats_password_ops": "pw",
            "s3_secret_key": "sk",
            "s3_access_key": "ak",
            "api_keys": "k1,k2",
            "redis_url": "redis://mesh:hunter2@127.0.0.1:6379/0",
            "s3_endpoint": "http://127.0.0.1:8333",
            "empty_api_keys": "",
            "port": 4222,
        }
    )
    assert out == {
        "redis_password": "***",
        "nats_password_ops": "***",
        "s3_secret_key": "***",
        "s3_access_key": "***",
        "api_keys": "***",
        "redis_url": "redis://***@127.0.0.1:6379/0",
        "s3_endpoint": "http://127.0.0.1:8333",
        "empty_api_keys": "",
        "port": 4222,
    }


def test_redacted_settings_contain_no_secret() -> None:
    s = Settings(redis_password="r-secret-1", s3_secret_key="s3-secret-2", api_keys="key-3")
    text = msgspec.json.encode(redacted_settings(s)).decode()
    for secret in ("r-secret-1", "s3-secret-2", "key-3", s.nats_password_config, s.s3_access_key):
        assert secret not in text
    assert "redis://***@" in text
