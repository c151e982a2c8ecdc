"""Property-based fuzzing of the gateway's live OpenAPI schema with schemathesis (issue 5, item 8).

Every operation of ``/openapi.json`` (as served by the chaos stack's gateway) gets generated requests, valid
(positive) and schema-invalid (negative), and every response must be: not a 5xx, a status the schema
documents, a documented content type, and a body that matches the documented schema. Operations with an
``{image_id}`` get a second pass on a real, indexed image, so the 200/409 paths and the index queries behind
``k``/``offset``/``filter``/``threshold`` are fuzzed too, not only the 404 of a random id.

``GET /events`` (a stream that stays open) is left out. Bounded for ``make test`` (derandomized, ``max_examples`` per operation and mode, no shrinking, a per-example
deadline); ``MESH_CHAOS_FULL=1`` runs many more examples.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.core.failures import FailureGroup

from actors.settings import Settings
from tests.chaos.conftest import FULL, size
from tests.corpus import jpeg
from tests.helpers import upload_with_retry, wait_terminal

MAX_EXAMPLES = size(400, 25)
# Per example: one request, which on two shared cores and a CPU Triton can take a few seconds (/encode).
DEADLINE = timedelta(seconds=30)
REQUEST_TIMEOUT_S = 30.0

# Statuses the gateway answers but its schema does not document yet (found by this test): each entry is a
# bug in the route's ``responses=`` (gateway/images.py, gateway/health.py), listed so that this test guards
# everything else meanwhile. `test_pending_documentation_is_still_pending` fails as soon as an entry is
# documented, so the list only shrinks. 401 (API keys on) and 503 (a dependency down) cannot happen on
# this stack and are reported separately, not listed here.
PENDING_STATUSES: dict[tuple[str, str], frozenset[int]] = {}
# Content types answered but not documented (e.g. "text/plain" on a route documented as JSON).
PENDING_CONTENT_TYPES: dict[tuple[str, str], str] = {}


def _key(case: Any) -> tuple[str, str]:
    return case.method.upper(), case.operation.path


def documented_status(ctx: Any, response: Any, case: Any) -> bool | None:
    """schemathesis' status_code_conformance, less the statuses in PENDING_STATUSES."""
    if response.status_code in PENDING_STATUSES.get(_key(case), frozenset()):
        return None
    return status_code_conformance(ctx, response, case)  # type: ignore[no-any-return]


def documented_content_type(ctx: Any, response: Any, case: Any) -> bool | None:
    """schemathesis' content_type_conformance, less PENDING_CONTENT_TYPES."""
    pending = PENDING_CONTENT_TYPES.get(_key(case))
    if pending and response.headers.get("content-type", [""])[0].startswith(pending):
        return None
    return content_type_conformance(ctx, response, case)  # type: ignore[no-any-return]


def error_body(ctx: Any, response: Any, case: Any) -> bool | None:
    """Every 4xx is the contract's ``{"error": {"code": str, "message": str}}`` (DESIGN.md section 3), whatever
    the schema says (gateway/replies.py documents it as ErrorBody on every error status)."""
    if response.status_code < 400:
        return None
    try:
        err = response.json()["error"]
    except Exception:
        raise AssertionError(
            f"{response.status_code} without the error body: {response.text[:200]!r}"
        ) from None
    assert isinstance(err.get("code"), str) and err["code"], f"error.code missing: {err!r}"
    assert isinstance(err.get("message"), str) and err["message"], f"error.message missing: {err!r}"
    return True


# What every response must satisfy. schemathesis' built-ins left out, and why:
# - positive_data_acceptance: "schema-valid input gets a 2xx" cannot hold for random ids (404 is the
#   right answer) nor for random bytes as an image file (400 is the right answer);
# - use_after_free / ensure_resource_availability: stateful links between operations, not declared here;
# - ignored_auth: API keys are off on the chaos stack (tests/chaos/test_least_privilege.py covers them);
# - max_response_time: timing on shared CI cores is not a contract.
CHECKS = [
    not_a_server_error,
    documented_status,
    documented_content_type,
    response_headers_conformance,
    response_schema_conformance,
    error_body,
]
# Schema-invalid input (a string for an integer `k`, a missing required `file`) must get a 4xx.
NEGATIVE_CHECKS = [*CHECKS, negative_data_rejection]


@dataclass
class Outcome:
    """What fuzzing one operation in one mode found."""

    label: str
    examples: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    failure: str | None = None
    note: str = ""


def fuzz_operation(
    operation: Any,
    base_url: str,
    mode: GenerationMode,
    *,
    max_examples: int,
    label: str,
    path_parameters: dict[str, str] | None = None,
    body: dict[str, Any] | None = None,
) -> Outcome:
    """Run ``max_examples`` generated requests against one operation; the first failing example is kept."""
    outcome = Outcome(label)
    checks = NEGATIVE_CHECKS if mode is GenerationMode.NEGATIVE else CHECKS
    extra: dict[str, Any] = {} if body is None else {"body": body, "media_type": "multipart/form-data"}
    strategy = operation.as_strategy(generation_mode=mode, path_parameters=path_parameters, **extra)

    @hypothesis_settings(
        max_examples=max_examples,
        derandomize=True,
        database=None,
        deadline=DEADLINE,
        # no shrinking: a failure is reported as generated (bounded time), with its curl command
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
        print_blob=False,
    )
    @given(case=strategy)
    def run(case: Any) -> None:
        outcome.examples += 1
        response = case.call_and_validate(base_url=base_url, checks=checks, timeout=REQUEST_TIMEOUT_S)
        outcome.statuses[response.status_code] = outcome.statuses.get(response.status_code, 0) + 1

    try:
        run()
    except Unsatisfiable:
        # nothing schema-invalid can be generated (no parameters, or only free-form strings): nothing to run
        outcome.note = "no invalid input exists"
    except (Exception, FailureGroup) as e:  # FailureGroup (a BaseExceptionGroup) carries the request as curl
        outcome.failure = f"{type(e).__name__}: {e}"
    return outcome


# Streams that stay open as long as the client does (server-sent events): a generated request would hold until
# its timeout, which says nothing about the schema. Tested by the web page's tests instead.
STREAMING = frozenset({"/events"})


def operations(schema: Any) -> Iterator[Any]:
    for result in schema.get_all_operations():
        op = result.ok()
        if op.path not in STREAMING:
            yield op


def fuzz_schema(
    base_url: str,
    *,
    max_examples: int,
    known_ids: dict[str, str] | None = None,
    image: bytes | None = None,
    report: Callable[[str], None] = print,
) -> list[Outcome]:
    """Fuzz every operation of the live schema in both modes, then the ``{image_id}`` ones on real images.

    ``known_ids`` maps ``"default"`` (an indexed image, never deleted) and ``"delete"`` (one the DELETE
    operation may remove) to image ids. ``image``: a valid image, sent as the ``file`` of every multipart
    operation in a last pass (random bytes only ever reach the 400 paths), the other parameters generated.
    """
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json", timeout=REQUEST_TIMEOUT_S)
    ops = list(operations(schema))
    outcomes: list[Outcome] = []

    def record(o: Outcome) -> None:
        outcomes.append(o)
        state = "FAIL" if o.failure else "ok"
        statuses = dict(sorted(o.statuses.items()))
        report(f"  {state:4} {o.label:55} examples={o.examples:4} statuses={statuses} {o.note}".rstrip())

    for op in ops:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            label = f"{op.method.upper()} {op.path} [{mode.value}]"
            record(fuzz_operation(op, base_url, mode, max_examples=max_examples, label=label))
    if known_ids:
        # DELETE last: it removes its own image, which the other operations never use
        with_id = sorted(
            (op for op in ops if "{image_id}" in op.path), key=lambda op: op.method.upper() == "DELETE"
        )
        for op in with_id:
            image_id = known_ids["delete" if op.method.upper() == "DELETE" else "default"]
            label = f"{op.method.upper()} {op.path} [positive, real id]"
            record(
                fuzz_operation(
                    op,
                    base_url,
                    GenerationMode.POSITIVE,
                    max_examples=max_examples,
                    label=label,
                    path_parameters={"image_id": image_id},
                )
            )
    if image is not None:
        for op in ops:
            if "multipart/form-data" not in str(op.definition.raw.get("requestBody", {})):
                continue
            label = f"{op.method.upper()} {op.path} [positive, real image]"
            record(
                fuzz_operation(
                    op,
                    base_url,
                    GenerationMode.POSITIVE,
                    max_examples=max_examples,
                    label=label,
                    body={"file": image},
                )
            )
    return outcomes


@pytest.fixture
async def indexed_images(gw: httpx.AsyncClient) -> dict[str, str]:
    """Two images of this module's own, processed to ``done``: one to query, one for DELETE to remove."""
    ids = {}
    for name, seed in (("default", 7001), ("delete", 7002)):
        ids[name], _ = await upload_with_retry(gw, jpeg(seed, (64, 48)), name=f"{name}.jpg")
    records = await wait_terminal(gw, list(ids.values()), timeout_s=240)
    assert all(r["status"] == "done" for r in records.values()), records
    return ids


def test_live_openapi_schema_holds_under_fuzzing(
    chaos_settings: Settings, indexed_images: dict[str, str]
) -> None:
    base_url = f"http://{chaos_settings.host}:{chaos_settings.gateway_port}"
    started = time.monotonic()
    print(
        f"\nschemathesis {schemathesis.SCHEMATHESIS_VERSION}: {MAX_EXAMPLES} examples per operation and mode"
    )
    outcomes = fuzz_schema(
        base_url, max_examples=MAX_EXAMPLES, known_ids=indexed_images, image=jpeg(7003, (64, 48))
    )
    failed = [o for o in outcomes if o.failure]
    total = sum(o.examples for o in outcomes)
    statuses: dict[int, int] = {}
    for o in outcomes:
        for status, n in o.statuses.items():
            statuses[status] = statuses.get(status, 0) + n
    print(
        f"schemathesis figures: runs={len(outcomes)} examples={total} statuses={dict(sorted(statuses.items()))} "
        f"failed_runs={len(failed)} seconds={time.monotonic() - started:.0f} full={FULL}"
    )
    assert len({o.label.split(" [")[0] for o in outcomes}) >= 10, "the live schema lost operations"
    assert not failed, "\n\n".join(f"{o.label}:\n{o.failure}" for o in failed)
    assert not any(s >= 500 for s in statuses), statuses


async def test_pending_documentation_is_still_pending(gw: httpx.AsyncClient) -> None:
    """Each PENDING_* entry is still undocumented: once a route documents it, delete the entry."""
    paths = (await gw.get("/openapi.json")).json()["paths"]
    documented_now = [
        f"{method} {path} {status}"
        for (method, path), pending in PENDING_STATUSES.items()
        for status in pending
        if str(status) in paths[path][method.lower()]["responses"]
    ]
    for (method, path), content_type in PENDING_CONTENT_TYPES.items():
        content = paths[path][method.lower()]["responses"]["200"].get("content", {})
        if any(ct.startswith(content_type) for ct in content):
            documented_now.append(f"{method} {path} {content_type}")
    assert not documented_now, f"documented now, remove from PENDING_*: {documented_now}"
