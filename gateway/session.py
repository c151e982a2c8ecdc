"""Browser sessions: ``POST /session`` trades an API key for the ``mesh_session`` cookie, ``DELETE /session``
clears it.

A page cannot put ``X-API-Key`` on an ``<img src>`` or an ``EventSource``; with the cookie it does not need to.
The cookie holds a signed, expiring token naming the key (``gateway/session_tokens.py``), so its scopes and rate
limit apply unchanged (``gateway/deps.py``, ``require_api_key``, which prefers a header when there is one).

The cookie is ``HttpOnly`` (no script reads it), ``SameSite=Strict`` (no other site's page sends it), ``Path=/``,
``Max-Age`` the token's lifetime, and ``Secure`` when the request came over HTTPS. Cross-site request forgery:
besides ``SameSite=Strict``, a request authenticated by the cookie alone with an unsafe method (POST, DELETE)
must carry ``X-Requested-With``, which a page of another origin cannot add without a CORS preflight that the
gateway never grants (``require_api_key``, 403 ``csrf``).

With API keys off there is nothing to remember: ``POST /session`` answers 204 without a cookie.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field

from gateway.deps import ApiKeyParam, BearerParam, admit, api_keys, header_key
from gateway.errors import error_responses
from gateway.session_tokens import COOKIE

router = APIRouter(tags=["session"])

NO_STORE = {"Cache-Control": "no-store"}
MAX_KEY_CHARS = 1024  # far above any real key; bounds what the body may make the gateway compare


class SessionRequest(BaseModel):
    """The API key in the body, for a client that would rather not send it as a header."""

    api_key: str = Field(max_length=MAX_KEY_CHARS, description="one of the gateway's API keys")


def cookie_header(token: str, max_age_s: int, *, secure: bool) -> str:
    """The ``Set-Cookie`` value; an empty ``token`` with ``max_age_s=0`` clears the cookie."""
    return f"{COOKIE}={token}; Max-Age={max_age_s}; Path=/; HttpOnly; SameSite=Strict" + (
        "; Secure" if secure else ""
    )


@router.post(
    "/session",
    status_code=204,
    response_class=Response,
    operation_id="create_session",
    responses={
        204: {"description": f"`Set-Cookie: {COOKIE}=...` (none when API keys are off)"},
        **error_responses(400, 401, 403, 429),
    },
)
async def create_session(
    request: Request,
    x_api_key: ApiKeyParam = None,
    bearer: BearerParam = None,
    body: Annotated[SessionRequest | None, Body()] = None,
) -> Response:
    """Start a browser session: the API key (in `X-API-Key`, `Authorization: Bearer`, or the body's `api_key`;
    a header wins) is checked like on any route (401, 429), then the `mesh_session` cookie is set for 12 hours.

    Afterwards the browser's requests need no key: the cookie stands for it, with the same scopes and rate
    limit. `POST` and `DELETE` requests with the cookie alone also need an `X-Requested-With` header (any
    value), or they are refused with 403 `csrf`. The cookie itself never mints another: a session ends when
    it expires, and a new one needs the key again.
    """
    keys = api_keys(request)
    if not keys.enabled:
        return Response(status_code=204, headers=NO_STORE)
    given = header_key(x_api_key, bearer)
    key = admit(keys, keys.identify(given if given is not None else body.api_key if body else None))
    cookie = cookie_header(
        keys.sessions.issue(key), keys.sessions.ttl_s, secure=request.url.scheme == "https"
    )
    return Response(status_code=204, headers={**NO_STORE, "Set-Cookie": cookie})


@router.delete(
    "/session",
    status_code=204,
    response_class=Response,
    operation_id="delete_session",
    responses={204: {"description": f"`Set-Cookie` clears `{COOKIE}`"}},
)
async def delete_session(request: Request) -> Response:
    """End the browser's session: the cookie is cleared. Needs no key (clearing a cookie harms nobody).

    Tokens are stateless: a copy of the token taken before stays valid until it expires (at most 12 hours);
    to end every session at once, change `MESH_API_KEYS` (the tokens' secret is derived from the keys).
    """
    cookie = cookie_header("", 0, secure=request.url.scheme == "https")
    return Response(status_code=204, headers={**NO_STORE, "Set-Cookie": cookie})
