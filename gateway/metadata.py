"""The optional ``metadata`` form field of an upload: a flat JSON object of short keys to strings or numbers.

``parse_metadata`` is pure (no I/O, no web framework); every rule it enforces is a ``UploadError`` 422
``invalid_metadata`` saying what is wrong. The key and value limits are shared with the search filters
(``gateway/params.py``), which match this metadata.
"""

from __future__ import annotations

import json
import math
import re
from typing import Final

from gateway.validation import UploadError, brief

__all__ = ["MAX_KEY_CHARS", "MAX_METADATA_KEYS", "MAX_VALUE_CHARS", "MetadataValue", "parse_metadata"]

MAX_METADATA_KEYS: Final = 32
MAX_KEY_CHARS: Final = 64
MAX_VALUE_CHARS: Final = 1024
# Far above any valid object (32 keys of 64 + 1024 chars), so the parser never sees a huge field.
MAX_METADATA_BYTES: Final = 64 * 1024
# Numbers must survive JSON clients that hold them as doubles (JavaScript): integers beyond 2**53 would not.
MAX_SAFE_INT: Final = 2**53 - 1
_KEY = re.compile(r"[A-Za-z0-9_.-]{1,64}")

MetadataValue = str | int | float


def parse_metadata(raw: str | bytes | None) -> dict[str, MetadataValue]:
    """Parse the optional ``metadata`` form field: a flat JSON object of short keys to strings or numbers.

    ``None``, an empty or a blank field mean no metadata (``{}``): HTML forms send empty fields. Keys are
    1-64 characters of ``[A-Za-z0-9_.-]``, at most 32 of them, no duplicates; values are strings of at most
    1024 characters or finite numbers (integers within +-(2**53-1)); no booleans, nulls, arrays or objects.
    Anything else raises :class:`UploadError` 422 ``invalid_metadata`` saying what is wrong.
    """
    if raw is None:
        return {}
    if not isinstance(raw, str | bytes):
        raise TypeError(f"parse_metadata takes str, bytes or None, not {type(raw).__name__}")
    if len(raw) > MAX_METADATA_BYTES:
        raise _bad_metadata(f"metadata is {len(raw)} long; the limit is {MAX_METADATA_BYTES}")
    if isinstance(raw, bytes):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _bad_metadata(f"metadata is not valid UTF-8 (byte {exc.start})") from None
    else:
        text = raw
    if not text.strip():
        return {}
    try:
        obj = json.loads(text, object_pairs_hook=_pairs, parse_constant=_no_constant)
    except _MetadataProblem as exc:
        raise _bad_metadata(str(exc)) from None
    except json.JSONDecodeError as exc:
        raise _bad_metadata(f"metadata is not valid JSON: {exc.msg} at character {exc.pos}") from None
    except RecursionError:
        raise _bad_metadata("metadata is nested too deeply") from None
    except ValueError as exc:  # e.g. an integer with more digits than Python converts
        raise _bad_metadata(f"metadata is not valid JSON: {brief(exc)}") from None
    if not isinstance(obj, dict):
        raise _bad_metadata(f"metadata must be a JSON object, not {_json_kind(obj)}")
    if len(obj) > MAX_METADATA_KEYS:
        raise _bad_metadata(f"metadata has {len(obj)} keys; the limit is {MAX_METADATA_KEYS}")
    out: dict[str, MetadataValue] = {}
    for key, value in obj.items():
        _check_key(key)
        out[key] = _check_value(key, value)
    return out


class _MetadataProblem(ValueError):
    """Raised from inside the JSON parser's hooks; carries the message for the uploader."""


def _pairs(pairs: list[tuple[str, object]]) -> dict[str, object]:
    # json.loads keeps the last of duplicate keys silently; two values for one key is ambiguous: refuse it
    obj: dict[str, object] = {}
    for key, value in pairs:
        if key in obj:
            raise _MetadataProblem(f"metadata key {_show(key)} appears more than once")
        obj[key] = value
    return obj


def _no_constant(name: str) -> object:
    # Python's json accepts NaN and Infinity, which are not JSON and which no other client can read back
    raise _MetadataProblem(f"metadata contains {name}, which is not a JSON number")


def _check_key(key: str) -> None:
    if not key:
        raise _bad_metadata("metadata keys must not be empty")
    if len(key) > MAX_KEY_CHARS:
        raise _bad_metadata(
            f"metadata key {_show(key)} is {len(key)} characters; the limit is {MAX_KEY_CHARS}"
        )
    if not _KEY.fullmatch(key):
        raise _bad_metadata(f"metadata key {_show(key)} may only contain letters, digits, '_', '.' and '-'")


def _check_value(key: str, value: object) -> MetadataValue:
    if isinstance(value, str):
        if len(value) > MAX_VALUE_CHARS:
            raise _bad_metadata(
                f"metadata value of {_show(key)} is {len(value)} characters; the limit is {MAX_VALUE_CHARS}"
            )
        try:
            value.encode("utf-8")  # a lone surrogate ("\ud800") parses but cannot be stored or sent on
        except UnicodeEncodeError:
            raise _bad_metadata(f"metadata value of {_show(key)} contains an unpaired surrogate") from None
        return value
    # bool is an int in Python: test it first
    if isinstance(value, bool) or value is None:
        raise _bad_metadata(
            f"metadata value of {_show(key)} must be a string or a number, not {_json_kind(value)}"
        )
    if isinstance(value, int):
        if abs(value) > MAX_SAFE_INT:
            raise _bad_metadata(f"metadata value of {_show(key)} is outside +-(2**53-1)")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):  # 1e999 parses to inf
            raise _bad_metadata(f"metadata value of {_show(key)} is not a finite number")
        return value
    raise _bad_metadata(
        f"metadata value of {_show(key)} must be a string or a number, not {_json_kind(value)} (no nesting)"
    )


def _json_kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    return "a number"


def _show(key: str) -> str:
    """A key quoted for a message, cut short and with any odd character escaped."""
    text = key if len(key) <= 40 else key[:37] + "..."
    return ascii(text)


def _bad_metadata(message: str) -> UploadError:
    return UploadError(422, "invalid_metadata", message)
