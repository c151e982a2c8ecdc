"""API keys: who may call the API (``MESH_API_KEYS``), with which scope, and how often.

Each key has scopes (``read`` < ``write`` < ``admin``, each implying the ones before it; ``actors/settings.py``
parses them) and its own token bucket: ``MESH_API_RATE_PER_S`` requests per second with bursts of
``MESH_API_RATE_BURST``. The buckets live in this gateway process: N gateways behind a load balancer let a key
through at up to N times the rate (a shared limit would need Redis on every request's path). Only known keys
get a bucket, so a flood of invented keys costs no memory; they are refused with 401 before any bucket.

A browser page may present a session token (the ``mesh_session`` cookie, ``gateway/session_tokens.py``) instead
of the key: ``session_key`` maps it back to the key that minted it, which then has that key's scopes and bucket.

Pure: no FastAPI here (``gateway/deps.py`` turns the answers into 401, 429 and 403).
"""

from __future__ import annotations

import hmac
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from actors.settings import Settings
from gateway.session_tokens import SessionTokens


@dataclass
class TokenBucket:
    """``rate_per_s`` tokens a second, at most ``burst`` saved up; a request takes one."""

    rate_per_s: float
    burst: int
    tokens: float
    stamp: float

    def take(self, now: float) -> float:
        """0 when a token was taken, else the seconds until one is there (nothing taken)."""
        self.tokens = min(float(self.burst), self.tokens + (now - self.stamp) * self.rate_per_s)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate_per_s


class ApiKeys:
    """The gateway's keys, their scopes and their rate limits."""

    def __init__(
        self,
        scopes: Mapping[str, frozenset[str]],
        rate_per_s: float = 0.0,
        burst: int = 1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._scopes = dict(scopes)
        self._clock = clock
        now = clock()
        self._buckets = (
            {key: TokenBucket(rate_per_s, burst, float(burst), now) for key in self._scopes}
            if rate_per_s > 0
            else {}
        )
        self.sessions = SessionTokens(self._scopes)

    @classmethod
    def from_settings(cls, s: Settings) -> ApiKeys:
        return cls(s.api_key_scopes, s.api_rate_per_s, s.api_rate_burst)

    @property
    def enabled(self) -> bool:
        """False when ``MESH_API_KEYS`` is empty: every request is let through."""
        return bool(self._scopes)

    def identify(self, given: str | None) -> str | None:
        """The configured key ``given`` is, or None. Compared in constant time with every key, so the answer's
        timing tells nothing about how much of a key was right, nor which one matched."""
        if not given:
            return None
        found = None
        for key in self._scopes:
            if hmac.compare_digest(given.encode(), key.encode()):
                found = key
        return found

    def session_key(self, token: str | None) -> str | None:
        """The configured key a session token was issued for, or None (``SessionTokens.verify``)."""
        return self.sessions.verify(token) if self.enabled else None

    def allows(self, key: str, scope: str) -> bool:
        return scope in self._scopes.get(key, frozenset())

    def retry_after_s(self, key: str) -> int:
        """0 when ``key`` may make this request now (a token is taken), else whole seconds to wait (>= 1)."""
        bucket = self._buckets.get(key)
        if bucket is None:
            return 0
        wait = bucket.take(self._clock())
        return 0 if wait == 0 else max(1, math.ceil(wait))
