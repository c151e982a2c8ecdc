"""Session tokens: what the ``mesh_session`` cookie carries, so a browser page authenticates once (``POST
/session``) and then loads ``<img src>`` and ``EventSource`` URLs, which cannot send ``X-API-Key``.

A token is ``v1.<key id>.<expires>.<mac>``, four dot-separated fields, all URL- and cookie-safe:

- ``key id``: which configured API key minted it, as ``HMAC(secret, key)`` (16 bytes, base64url); never the key
  itself, so a leaked cookie does not leak the key. The key's scopes and rate limit apply to the cookie.
- ``expires``: Unix time (seconds, wall clock: tokens outlive a process and travel between gateways), at most
  ``SESSION_TTL_S`` after it was issued.
- ``mac``: ``HMAC-SHA256(secret, "v1.<key id>.<expires>")``, base64url, compared in constant time.

The secret is derived from the configured keys (every gateway with the same ``MESH_API_KEYS`` derives the same
one: no new setting to distribute). Whoever could forge a token holds every key already. Changing the keys
changes the secret and ends every session; removing one key ends its sessions in any case (its id no longer
maps to a key). Tokens are stateless: ``DELETE /session`` clears the browser's cookie but cannot revoke a copy
of the token, which stays valid until it expires.

Pure: no FastAPI here (``gateway/deps.py`` reads the cookie, ``gateway/session.py`` sets it).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Callable, Iterable
from typing import Final

COOKIE: Final = "mesh_session"
VERSION: Final = "v1"
SESSION_TTL_S: Final = 12 * 3600
MAX_TOKEN_CHARS: Final = 200  # a real token is about 80; anything longer is refused before any HMAC
_DERIVE: Final = b"image-mesh session secret v1"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def derive_secret(keys: Iterable[str]) -> bytes:
    """The HMAC secret of the sessions, from the configured API keys (order does not matter)."""
    material = b"\0".join(sorted(k.encode() for k in keys))
    return hmac.new(material, _DERIVE, hashlib.sha256).digest()


class SessionTokens:
    """Issues and checks session tokens for a set of API keys (module docstring)."""

    def __init__(
        self,
        keys: Iterable[str],
        *,
        secret: bytes | None = None,
        ttl_s: int = SESSION_TTL_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        keys = list(keys)
        self._secret = secret if secret is not None else derive_secret(keys)
        self.ttl_s = ttl_s
        self._clock = clock
        self._by_id = {self.key_id(k): k for k in keys}

    def key_id(self, key: str) -> str:
        """The public identity of ``key`` in a token."""
        return _b64(hmac.new(self._secret, b"key\0" + key.encode(), hashlib.sha256).digest()[:16])

    def _mac(self, payload: str) -> str:
        return _b64(hmac.new(self._secret, payload.encode(), hashlib.sha256).digest())

    def issue(self, key: str) -> str:
        """A token for ``key`` (one of the configured keys), valid for ``ttl_s`` seconds from now."""
        if key not in self._by_id.values():
            raise ValueError("not a configured API key")
        payload = f"{VERSION}.{self.key_id(key)}.{int(self._clock()) + self.ttl_s}"
        return f"{payload}.{self._mac(payload)}"

    def verify(self, token: str | None) -> str | None:
        """The API key a token was issued for, or None: malformed, tampered with, expired, issued further ahead
        than ``ttl_s`` (a clock or a secret gone wrong), or for a key no longer configured."""
        if not token or len(token) > MAX_TOKEN_CHARS:
            return None
        parts = token.split(".")
        if len(parts) != 4 or parts[0] != VERSION or not (parts[2].isascii() and parts[2].isdigit()):
            return None
        version, kid, expires, mac = parts
        if not hmac.compare_digest(mac.encode(), self._mac(f"{version}.{kid}.{expires}").encode()):
            return None
        now = self._clock()
        if not now < int(expires) <= now + self.ttl_s + 60:  # a minute of slack between gateways' clocks
            return None
        return self._by_id.get(kid)
