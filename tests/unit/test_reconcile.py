"""The reconciler's decisions and repairs over fakes, and the provenance every history entry carries.

The rules are pure (``actors/reconcile_rules.py``); the inspector (``reconcile_scan``) walks fake stores in
small batches, so resuming from a cursor is exercised; the repairer (``reconcile_repairs``) acts on fakes that
record what it did. The same code runs against the real stack in ``tests/e2e/test_reconcile.py``.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from prometheus_client import REGISTRY

from actors import contract
from actors.adapters.job_queue import JobQueue, Published
from actors.config_rules import InvalidConfig, apply_change
from actors.contract import Cause, DeadLetter, ImageRecord, Label, MeshConfig, ProcessJob, Status
from actors.coordinator import Coordinator
from actors.copies import COPY_CHECK_VERSION
from actors.reconcile_repairs import Repairer
from actors.reconcile_rules import (
    ConsumerFacts,
    JobState,
    Kind,
    Policy,
    duplicate_done,
    indexed_twice,
    is_orphan_object,
    is_stale_intent,
    job_state,
    policy_for,
    record_kind,
    republish_attempt,
    stuck_after_s,
)
from actors.reconcile_scan import START, Finding, Inspector, Source
from actors.reconciler import due
from actors.recorder import Provenance, Recorder, job_provenance
from ops import check as ops_check
from tests.unit.workflow_fakes import FakeEvents, FakeJetStream, FakeMsg, FakeStore, World

NOW = 1_000_000.0
GRACE = 60.0
POLICY = Policy(grace_s=GRACE, stuck_after_s=3_000.0, active_model="m1")
OLD = NOW - 10 * GRACE  # past the grace, not yet stuck
ANCIENT = NOW - 10_000.0  # past what the delivery policy allows


def rec(image_id: str, status: Status, at: float = OLD, **fields: Any) -> ImageRecord:
    # made and checked by this version
    fields.setdefault("thumbnail_key", f"derived/thumbs/256/{image_id}.webp")
    fields.setdefault("copy_features_key", f"derived/copies/{image_id}.orb")
    fields.setdefault("copy_check", COPY_CHECK_VERSION)
    return ImageRecord(
        image_id=image_id,
        status=status,
        sha256="0" * 64,
        object_key=f"images/{image_id[:2]}/{image_id}",
        content_type="image/jpeg",
        size_bytes=1,
        width=1,
        height=1,
        created_at=at,
        updated_at=at,
        trace_id=f"t-{image_id}",
        **fields,
    )


def repairs(kind: Kind) -> float:
    return REGISTRY.get_sample_value("mesh_reconcile_repairs_total", {"kind": kind.value}) or 0.0


# --- the rules ----------------------------------------------------------------------------------------------
def test_stuck_after_is_every_delivery_with_its_outage_wait_and_the_backoff_between() -> None:
    assert stuck_after_s(3, [1.0, 2.0, 5.0], ack_wait_s=30.0, outage_budget_s=600.0) == 3 * 630 + 1 + 2
    assert stuck_after_s(1, [1.0], ack_wait_s=30.0, outage_budget_s=0.0) == 30.0
    cfg = MeshConfig(max_deliver=5, backoff_s=[1.0], reconcile_grace_s=120.0)
    # the consumer's smaller max_deliver wins (the coordinator's rule); --grace overrides the config's
    policy = policy_for(cfg, ConsumerFacts(max_deliver=2, ack_wait_s=10.0), grace_s=5.0, outage_budget_s=0.0)
    assert (policy.grace_s, policy.stuck_after_s, policy.active_model) == (5.0, 21.0, cfg.active_model)
    assert policy_for(cfg, ConsumerFacts(), outage_budget_s=0.0).grace_s == 120.0


def test_a_records_anomaly_needs_its_age_past_the_grace() -> None:
    young = NOW - GRACE / 2
    for status in Status:
        r = rec("a1", status, at=young)
        assert record_kind(r, NOW, POLICY, job=JobState.MISSING, has_vector=False) is None, status


@pytest.mark.parametrize(
    ("status", "at", "job", "delivered", "has_vector", "kind"),
    [
        (Status.PENDING, OLD, JobState.MISSING, False, None, Kind.PENDING_WITHOUT_JOB),
        (Status.PENDING, OLD, JobState.CONSUMED, False, None, Kind.PENDING_WITHOUT_JOB),
        (Status.PENDING, OLD, JobState.LIVE, False, None, None),  # queued behind others: fine
        (Status.PENDING, ANCIENT, JobState.LIVE, False, None, None),  # a long backlog, never delivered
        (Status.PENDING, ANCIENT, JobState.LIVE, True, None, Kind.STUCK),  # delivered, never moved on
        (Status.PENDING, OLD, None, False, None, None),  # not looked up: no verdict
        (Status.PROCESSING, OLD, None, False, None, None),  # may still wait out an outage
        (Status.PROCESSING, ANCIENT, None, False, None, Kind.STUCK),
        (Status.EMBEDDED, ANCIENT, None, False, None, Kind.STUCK),
        (Status.INDEXED, ANCIENT, None, False, None, Kind.STUCK),
        (Status.DONE, ANCIENT, None, False, False, Kind.DONE_WITHOUT_VECTOR),
        (Status.DONE, ANCIENT, None, False, True, None),
        (Status.DONE, ANCIENT, None, False, None, None),
        (Status.ERROR, ANCIENT, None, False, False, None),
    ],
)
def test_record_kind(
    status: Status,
    at: float,
    job: JobState | None,
    delivered: bool,
    has_vector: bool | None,
    kind: Kind | None,
) -> None:
    r = rec("a1", status, at=at)
    assert record_kind(r, NOW, POLICY, job=job, job_delivered=delivered, has_vector=has_vector) == kind


def test_job_state_from_the_stream_and_the_consumers_ack_floor() -> None:
    facts = ConsumerFacts(ack_floor=10)
    assert job_state("a", 0, None, facts) is JobState.MISSING  # no sequence recorded
    assert job_state("a", 12, None, facts) is JobState.MISSING  # nothing at that sequence (any more)
    assert job_state("a", 12, "b", facts) is JobState.MISSING  # another image's job there
    assert job_state("a", 9, "a", facts) is JobState.CONSUMED
    assert job_state("a", 12, "a", facts) is JobState.LIVE
    r = rec("a", Status.PENDING, attempt=2)
    assert republish_attempt(r, JobState.MISSING) == 2  # same Nats-Msg-Id: dropped if the job is there
    assert republish_attempt(r, JobState.CONSUMED) == 3  # the stream settled it: a fresh attempt


def test_orphan_objects_and_stale_intents() -> None:
    assert is_orphan_object(OLD, NOW, GRACE, recorded=False, has_intent=False)
    assert not is_orphan_object(NOW - 1, NOW, GRACE, recorded=False, has_intent=False)  # an upload in flight
    assert not is_orphan_object(OLD, NOW, GRACE, recorded=True, has_intent=False)
    assert not is_orphan_object(OLD, NOW, GRACE, recorded=False, has_intent=True)  # the intent's to settle
    assert is_stale_intent(owner_alive=False, recorded=False)  # its gateway died mid-upload
    assert is_stale_intent(owner_alive=True, recorded=True)  # the upload finished, its removal was lost
    assert not is_stale_intent(owner_alive=True, recorded=False)  # a live upload, however slow


def test_two_done_entries_from_one_delivery_are_counted_and_others_are_not() -> None:
    def done(seq: int, delivery: int | None, attempt: int = 0) -> dict[str, Any]:
        entry: dict[str, Any] = {"status": "done", "at": 1.0, "job_seq": seq, "attempt": attempt}
        return entry if delivery is None else entry | {"delivery": delivery}

    assert duplicate_done([done(5, 1), done(5, 1)]) == 1
    assert duplicate_done([done(5, 1), done(5, 1), done(5, 1)]) == 2
    assert duplicate_done([done(5, 1), done(5, 2)]) == 0  # a redelivery: repeated work, not the same one
    assert duplicate_done([done(5, 1), done(9, 1)]) == 0  # another job (a replay, a reconcile)
    assert duplicate_done([done(5, None), done(5, None)]) == 0  # older entries: undecidable, not counted
    assert duplicate_done([{"status": "processing", "delivery": 1}] * 2) == 0


def test_a_vector_indexed_twice_is_a_stray_document_beside_its_own_or_another_stray() -> None:
    assert indexed_twice([("m", "a")], {("m", "a")}) == 1
    assert indexed_twice([("m", "a"), ("m", "a")], set()) == 1
    assert indexed_twice([("m", "a")], set()) == 0
    assert indexed_twice([("m", "")], {("m", "")}) == 0  # a document holding no id


def test_the_reconcile_config_keys_have_rules() -> None:
    base = MeshConfig()
    assert apply_change(base, "reconcile_period_s", 0).reconcile_period_s == 0  # off
    assert apply_change(base, "reconcile_period_s", 30).reconcile_period_s == 30
    assert apply_change(base, "reconcile_grace_s", 5).reconcile_grace_s == 5
    for key, bad in [("reconcile_period_s", 0.5), ("reconcile_period_s", -1), ("reconcile_grace_s", 0)]:
        with pytest.raises(InvalidConfig, match=key):
            apply_change(base, key, bad)


def test_a_periodic_step_is_due_once_a_period_by_any_replica() -> None:
    assert due(None, NOW, 60.0)
    assert not due(NOW - 10, NOW, 60.0)
    assert due(NOW - 60, NOW, 60.0)
    assert not due(None, NOW, 0.0)  # off


# --- fakes of what the inspector and the repairer talk to -----------------------------------------------
class Store(FakeStore):
    """The workflow store: the fake records plus the scans and lookups the reconciler uses."""

    async def scan_ids(self, cursor: int, count: int) -> tuple[int, list[str]]:
        ids = sorted(self.records)
        page = ids[cursor : cursor + count]
        nxt = cursor + count
        return (0 if nxt >= len(ids) else nxt), page

    async def existing(self, image_ids: list[str]) -> set[str]:
        return {i for i in image_ids if i in self.records}

    async def get_embedding(self, model: str, image_id: str) -> np.ndarray | None:
        return self.embeddings.get((model, image_id))


@dataclass
class Vectors:
    docs: dict[tuple[str, str], str] = field(default_factory=dict)  # (model, key id) -> image id held

    async def present(self, model: str, image_ids: list[str]) -> set[str]:
        return {i for i in image_ids if (model, i) in self.docs}

    async def scan_docs(self, cursor: int, count: int) -> tuple[int, list[tuple[str, str, str]]]:
        keys = sorted(self.docs)[cursor : cursor + count]
        nxt = cursor + count
        return (0 if nxt >= len(self.docs) else nxt), [(m, i, self.docs[(m, i)]) for m, i in keys]


@dataclass
class Objects:
    objects: dict[str, float] = field(default_factory=dict)  # key -> last modified
    deleted: list[str] = field(default_factory=list)

    async def list_page(self, prefix: str, token: str, max_keys: int) -> tuple[list[tuple[str, float]], str]:
        keys = sorted(k for k in self.objects if k.startswith(prefix) and k > token)
        page = keys[:max_keys]
        more = len(keys) > max_keys
        return [(k, self.objects[k]) for k in page], (page[-1] if more else "")

    async def delete(self, key: str) -> None:
        self.deleted.append(key)
        self.objects.pop(key, None)


@dataclass
class Intents:
    intents: dict[str, str] = field(default_factory=dict)  # object key -> owner
    alive_owners: set[str] = field(default_factory=set)

    async def page(self, cursor: int, count: int) -> tuple[int, dict[str, str]]:
        keys = sorted(self.intents)[cursor : cursor + count]
        nxt = cursor + count
        return (0 if nxt >= len(self.intents) else nxt), {k: self.intents[k] for k in keys}

    async def owners(self, keys: list[str]) -> dict[str, str]:
        return {k: self.intents[k] for k in keys if k in self.intents}

    async def alive(self, owners: list[str]) -> set[str]:
        return set(owners) & self.alive_owners

    async def forget(self, object_key: str) -> None:
        self.intents.pop(object_key, None)


@dataclass
class Jobs:
    """The work stream: the job image at each sequence, the consumer's state; publishing de-duplicates by
    ``Nats-Msg-Id`` like JetStream (the repeat's ack names the first one's sequence)."""

    at: dict[int, str] = field(default_factory=dict)
    consumer: ConsumerFacts = field(default_factory=ConsumerFacts)
    ids: dict[str, int] = field(default_factory=dict)
    published: list[tuple[str, bytes, dict[str, str]]] = field(default_factory=list)

    async def facts(self) -> ConsumerFacts:
        return self.consumer

    async def image_of(self, seq: int) -> str | None:
        return self.at.get(seq)

    async def publish(
        self,
        subject: str,
        payload: bytes,
        timeout: float | None = None,  # noqa: ASYNC109 - nats-py's signature
        headers: dict[str, str] | None = None,
    ) -> Any:
        msg_id = (headers or {}).get(contract.MSG_ID_HEADER, "")
        if msg_id in self.ids:
            return SimpleNamespace(seq=self.ids[msg_id], duplicate=True)
        self.published.append((subject, payload, dict(headers or {})))
        seq = 100 + len(self.published)
        self.ids[msg_id] = seq
        return SimpleNamespace(seq=seq, duplicate=False)

    def jobs(self) -> list[tuple[ProcessJob, str]]:
        return [
            (contract.decode(p, ProcessJob), h[contract.MSG_ID_HEADER])
            for s, p, h in self.published
            if s == contract.JOBS_SUBJECT
        ]


@dataclass
class Index:
    upserts: list[tuple[str, str]] = field(default_factory=list)
    deletes: list[tuple[str, str | None]] = field(default_factory=list)
    labels: dict[str, dict[str, float]] = field(default_factory=dict)  # by image id, as last upserted

    async def upsert(
        self,
        model: str,
        image_id: str,
        vector: np.ndarray,
        tags: dict[str, str] | None = None,
        trace_id: str = "",
        labels: dict[str, float] | None = None,
    ) -> Any:
        self.upserts.append((model, image_id))
        self.labels[image_id] = dict(labels or {})

    async def delete(self, image_id: str, model: str | None = None) -> int:
        self.deletes.append((image_id, model))
        return 1


@dataclass
class Mesh:
    store: Store = field(default_factory=Store)
    vectors: Vectors = field(default_factory=Vectors)
    objects: Objects = field(default_factory=Objects)
    intents: Intents = field(default_factory=Intents)
    jobs: Jobs = field(default_factory=Jobs)
    index: Index = field(default_factory=Index)
    events: FakeEvents = field(default_factory=FakeEvents)

    def add(self, r: ImageRecord, *, vector: bool = False) -> ImageRecord:
        self.store.records[r.image_id] = r
        self.objects.objects[r.object_key] = r.created_at
        if vector:
            self.vectors.docs[("m1", r.image_id)] = r.image_id
        return r

    def inspector(self) -> Inspector:
        fakes: dict[str, Any] = {
            "records": self.store,
            "vectors": self.vectors,
            "objects": self.objects,
            "intents": self.intents,
            "jobs": self.jobs,
        }
        return Inspector(**fakes)

    def repairer(self) -> Repairer:
        fakes: dict[str, Any] = {
            "store": self.store,
            "js": self.jobs,
            "index": self.index,
            "objects": self.objects,
            "intents": self.intents,
        }
        queue = JobQueue(fakes["js"])
        return Repairer(recorder=Recorder(self.store, self.events), queue=queue, **fakes)

    async def findings(self, count: int = 2) -> list[Finding]:
        """Every source walked whole, ``count`` at a time (so the cursors are resumed)."""
        found: list[Finding] = []
        inspector = self.inspector()
        for source in Source:
            cursor, walked = START, 0
            while True:
                batch = await inspector.batch(source, cursor, count, POLICY, self.jobs.consumer, NOW)
                found += batch.findings
                cursor, walked = batch.cursor, walked + 1
                if cursor == START:
                    break
            assert walked >= 1
        return found


def ids(found: list[Finding], kind: Kind) -> list[str]:
    return sorted(f.image_id for f in found if f.kind is kind)


# --- the inspector --------------------------------------------------------------------------------------
async def test_the_inspector_finds_each_anomaly_and_nothing_else() -> None:
    mesh = Mesh()
    mesh.jobs.consumer = ConsumerFacts(ack_floor=10, delivered=20)
    mesh.add(rec("a1", Status.PENDING))  # its publish was lost: no job_seq
    mesh.add(rec("a2", Status.PENDING, job_seq=30))  # queued: the stream holds its job, not yet delivered
    mesh.jobs.at[30] = "a2"
    mesh.add(rec("a3", Status.PENDING, job_seq=5))  # the stream settled its job while it stayed pending
    mesh.jobs.at[5] = "a3"
    mesh.add(rec("a4", Status.PENDING, at=NOW - 1))  # just uploaded
    mesh.add(rec("b1", Status.PROCESSING, at=ANCIENT))  # its last delivery died with its coordinator
    mesh.add(rec("b2", Status.PROCESSING))  # running (or waiting out an outage)
    mesh.add(rec("c1", Status.DONE, at=ANCIENT))  # its vector was deleted
    mesh.add(rec("c2", Status.DONE, at=ANCIENT), vector=True)
    mesh.add(rec("c3", Status.ERROR, at=ANCIENT))
    mesh.vectors.docs[("m1", "d1")] = "d1"  # no record
    mesh.vectors.docs[("m2", "c2")] = "c2"  # another model's vector of a recorded image
    mesh.objects.objects["images/e1/e1"] = OLD  # no record, no intent
    mesh.objects.objects["images/e2/e2"] = NOW - 1  # no record yet: an upload in flight
    mesh.objects.objects["images/e3/e3"] = OLD  # a live gateway's upload, however slow
    mesh.intents.intents |= {"images/e3/e3": "live", "images/f1/f1": "dead", "images/c2/c2": "live"}
    mesh.intents.alive_owners = {"live"}

    found = await mesh.findings()
    assert ids(found, Kind.PENDING_WITHOUT_JOB) == ["a1", "a3"]
    assert {f.image_id: f.job for f in found if f.kind is Kind.PENDING_WITHOUT_JOB} == {
        "a1": JobState.MISSING,
        "a3": JobState.CONSUMED,
    }
    assert ids(found, Kind.STUCK) == ["b1"]
    assert ids(found, Kind.DONE_WITHOUT_VECTOR) == ["c1"]
    assert ids(found, Kind.VECTOR_WITHOUT_RECORD) == ["d1"]
    assert ids(found, Kind.ORPHAN_OBJECT) == ["e1"]
    assert ids(found, Kind.STALE_INTENT) == ["c2", "f1"]  # recorded (end lost), and a dead gateway's
    assert len(found) == 8


async def test_the_inspector_reports_two_done_entries_from_one_delivery() -> None:
    mesh = Mesh()
    entry = {"status": "done", "at": 1.0, "cause": "upload", "attempt": 0, "delivery": 1, "job_seq": 7}
    mesh.add(rec("a1", Status.DONE, history=[entry, dict(entry)]), vector=True)
    assert ids(await mesh.findings(), Kind.DUPLICATE_DONE) == ["a1"]


# --- the repairs ----------------------------------------------------------------------------------------
def reconcile_notes(r: ImageRecord) -> list[dict[str, Any]]:
    return [h for h in r.history if h.get("cause") == Cause.RECONCILE.value]


async def test_a_pending_record_without_its_job_is_published_again_under_the_same_id() -> None:
    mesh = Mesh()
    r = mesh.add(rec("a1", Status.PENDING))
    before = repairs(Kind.PENDING_WITHOUT_JOB)
    f = Finding(Kind.PENDING_WITHOUT_JOB, "a1", record=r, job=JobState.MISSING)
    assert await mesh.repairer().repair(f, POLICY)
    [(job, msg_id)] = mesh.jobs.jobs()
    assert (job.image_id, job.attempt, job.cause, msg_id) == ("a1", 0, "reconcile", "a1:0")
    after = mesh.store.records["a1"]
    assert after.job_seq == 101 and after.status == Status.PENDING
    [note] = reconcile_notes(after)
    assert (note["step"], note["repair"], note["attempt"]) == ("reconcile", "pending_without_job", 0)
    assert repairs(Kind.PENDING_WITHOUT_JOB) == before + 1


async def test_a_pending_record_whose_job_is_there_after_all_only_gets_its_sequence() -> None:
    mesh = Mesh()
    mesh.jobs.ids["a1:0"] = 42  # the gateway published it, then died before recording the sequence
    r = mesh.add(rec("a1", Status.PENDING))
    f = Finding(Kind.PENDING_WITHOUT_JOB, "a1", record=r, job=JobState.MISSING)
    assert not await mesh.repairer().repair(f, POLICY)
    assert mesh.jobs.published == [] and mesh.store.records["a1"].job_seq == 42
    assert reconcile_notes(mesh.store.records["a1"]) == []


class OpenWorkflows(JobQueue):
    """Temporal's job queue, seen from the repairer: every image's workflow is open, so a start is refused
    as a repeat (``duplicate``, no stream sequence: 0)."""

    async def publish(self, job: ProcessJob, *, msg_id: str | None = None) -> Published:
        return Published(job=job, seq=0, duplicate=True)


async def test_under_temporal_a_pending_record_whose_workflow_is_open_is_left_alone() -> None:
    mesh = Mesh()
    r = mesh.add(rec("a1", Status.PENDING))  # job_seq 0: Temporal keeps no stream sequence
    repairer = mesh.repairer()
    repairer.queue = OpenWorkflows(mesh.jobs)  # type: ignore[arg-type]
    f = Finding(Kind.PENDING_WITHOUT_JOB, "a1", record=r, job=JobState.MISSING)
    assert not await repairer.repair(f, POLICY)
    after = mesh.store.records["a1"]
    assert after.attempt == 0 and reconcile_notes(after) == []  # no fresh attempt, no repair noted


async def test_a_pending_record_whose_job_was_settled_or_lost_gets_a_fresh_attempt() -> None:
    for job_state_, remembered in [(JobState.CONSUMED, False), (JobState.MISSING, True)]:
        mesh = Mesh()
        if remembered:  # the message is gone but JetStream still remembers its id: a repeat would be dropped
            mesh.jobs.ids["a1:0"] = 9
        r = mesh.add(rec("a1", Status.PENDING, job_seq=9))
        f = Finding(Kind.PENDING_WITHOUT_JOB, "a1", record=r, job=job_state_)
        assert await mesh.repairer().repair(f, POLICY)
        [(job, msg_id)] = mesh.jobs.jobs()
        assert (job.attempt, msg_id) == (1, "a1:1"), job_state_
        assert mesh.store.records["a1"].attempt == 1  # the record first: the job is not skipped


async def test_a_stuck_record_ends_in_error_with_a_dead_letter() -> None:
    mesh = Mesh()
    r = mesh.add(rec("b1", Status.PROCESSING, at=ANCIENT, attempt=2))
    before = repairs(Kind.STUCK)
    assert await mesh.repairer().repair(Finding(Kind.STUCK, "b1", record=r), POLICY)
    after = mesh.store.records["b1"]
    assert after.status == Status.ERROR and after.error is not None and after.error.code == "stuck"
    last = after.history[-1]
    assert (last["status"], last["cause"], last["attempt"], last["error"]["code"]) == (
        "error",
        "reconcile",
        2,
        "stuck",
    )
    [(subject, payload, headers)] = mesh.jobs.published
    dead = contract.decode(payload, DeadLetter)
    assert subject == contract.DEAD_SUBJECT and (dead.code, dead.job.image_id) == ("stuck", "b1")
    assert headers[contract.MSG_ID_HEADER] == "dead:b1:2"  # the coordinator's id: never two dead letters
    assert [e.status for e in mesh.events.published] == [Status.ERROR]
    assert repairs(Kind.STUCK) == before + 1


async def test_a_record_that_moved_since_the_scan_is_left_alone() -> None:
    mesh = Mesh()
    r = mesh.add(rec("b1", Status.PROCESSING, at=ANCIENT))
    await mesh.store.transition("b1", Status.EMBEDDED)  # its job is alive after all
    assert not await mesh.repairer().repair(Finding(Kind.STUCK, "b1", record=r), POLICY)
    assert mesh.store.records["b1"].status == Status.EMBEDDED and mesh.jobs.published == []


async def test_a_done_record_without_its_vector_is_reindexed_from_its_embedding_or_reembedded() -> None:
    mesh = Mesh()
    with_emb = mesh.add(rec("c1", Status.DONE, at=ANCIENT, metadata={"k": "v"}))
    mesh.store.embeddings[("m1", "c1")] = np.ones(4, np.float32)
    without = mesh.add(rec("c2", Status.DONE, at=ANCIENT))
    repairer = mesh.repairer()
    assert await repairer.repair(Finding(Kind.DONE_WITHOUT_VECTOR, "c1", record=with_emb, model="m1"), POLICY)
    assert await repairer.repair(Finding(Kind.DONE_WITHOUT_VECTOR, "c2", record=without, model="m1"), POLICY)
    assert mesh.index.upserts == [("m1", "c1")]
    [(job, msg_id)] = mesh.jobs.jobs()  # the pipeline's re-embed path: vectors added, record untouched
    assert (job.image_id, job.models, job.cause) == ("c2", ["m1"], "reconcile")
    assert msg_id.startswith("reconcile:m1:c2:")
    for image_id, how in [("c1", "upsert"), ("c2", "reembed")]:
        [note] = reconcile_notes(mesh.store.records[image_id])
        assert (note["repair"], note["how"], note["model"]) == ("done_without_vector", how, "m1")
        assert mesh.store.records[image_id].status == Status.DONE


def test_a_done_image_never_labelled_is_an_anomaly_only_while_the_active_model_has_a_classifier() -> None:
    labelled = dataclasses.replace(POLICY, labelled=True)
    never = rec("l1", Status.DONE, at=ANCIENT)  # labels None: indexed before labels existed
    none_above = rec("l2", Status.DONE, at=ANCIENT, labels=[])  # labelled: nothing above the cut
    young = rec("l3", Status.DONE, at=NOW - 1)
    assert record_kind(never, NOW, labelled, has_vector=True) == Kind.DONE_WITHOUT_LABELS
    assert record_kind(never, NOW, POLICY, has_vector=True) is None  # e.g. CLIP active: nothing to label with
    assert record_kind(none_above, NOW, labelled, has_vector=True) is None
    assert record_kind(young, NOW, labelled, has_vector=True) is None
    # without its vector the re-index comes first (and its re-embed labels it too)
    assert record_kind(never, NOW, labelled, has_vector=False) == Kind.DONE_WITHOUT_VECTOR


def test_a_done_image_without_its_derived_objects_or_copy_check_is_an_anomaly() -> None:
    old = rec("t1", Status.DONE, at=ANCIENT, labels=[], thumbnail_key="")  # indexed before thumbnails
    assert record_kind(old, NOW, POLICY, has_vector=True) == Kind.DONE_WITHOUT_DERIVED
    no_features = rec("t4", Status.DONE, at=ANCIENT, copy_features_key="")
    assert record_kind(no_features, NOW, POLICY, has_vector=True) == Kind.DONE_WITHOUT_DERIVED
    assert record_kind(rec("t2", Status.DONE, at=ANCIENT), NOW, POLICY, has_vector=True) is None
    assert record_kind(rec("t3", Status.ERROR, at=ANCIENT, thumbnail_key=""), NOW, POLICY) is None
    # its look-alikes never verified (lost from the queue), or verified by an older checker
    for check in ("", "orb-0"):
        stale = rec("t5", Status.DONE, at=ANCIENT, copy_check=check)
        assert record_kind(stale, NOW, POLICY, has_vector=True) == Kind.DONE_WITHOUT_COPY_CHECK
    assert (
        record_kind(rec("t6", Status.DONE, at=NOW - 1, copy_check=""), NOW, POLICY, has_vector=True) is None
    )


async def test_a_done_image_without_a_copy_check_is_queued_for_the_checker() -> None:
    mesh = Mesh()
    stale = mesh.add(rec("q1", Status.DONE, at=ANCIENT, copy_check=""), vector=True)
    queued: list[str] = []

    class Queue:
        async def enqueue(self, image_ids: Iterable[str], at: float | None = None) -> int:
            new = [i for i in image_ids if i not in queued]
            queued.extend(new)
            return len(new)

    repairer = mesh.repairer()
    repairer.copies = Queue()
    finding = Finding(Kind.DONE_WITHOUT_COPY_CHECK, "q1", record=stale)
    assert await repairer.repair(finding, POLICY) and queued == ["q1"]
    assert not await repairer.repair(finding, POLICY)  # already queued: nothing to repair
    [note] = reconcile_notes(mesh.store.records["q1"])
    assert (note["repair"], note["how"]) == ("done_without_copy_check", "queued")


async def test_a_done_image_never_labelled_gets_a_reembed_job_and_its_labels_reach_the_index() -> None:
    mesh = Mesh()
    labelled = dataclasses.replace(POLICY, labelled=True)
    mesh.add(rec("l1", Status.DONE, at=ANCIENT), vector=True)
    mesh.add(rec("l2", Status.DONE, at=ANCIENT, labels=[Label(name="tabby", score=0.7)]), vector=True)
    inspector = mesh.inspector()
    batch = await inspector.batch(Source.RECORDS, START, 10, labelled, mesh.jobs.consumer, NOW)
    [finding] = [f for f in batch.findings if f.kind is Kind.DONE_WITHOUT_LABELS]
    assert (finding.image_id, finding.model) == ("l1", "m1")
    assert await mesh.repairer().repair(finding, labelled)
    [(job, msg_id)] = mesh.jobs.jobs()
    assert (job.image_id, job.models, job.cause) == ("l1", ["m1"], "reconcile")
    assert msg_id.startswith("reconcile:labels:m1:l1:")
    [note] = reconcile_notes(mesh.store.records["l1"])
    assert (note["repair"], note["how"]) == ("done_without_labels", "reembed")
    # an image whose vector the reconciler re-indexes from its stored embedding keeps its labels in the index
    mesh.store.embeddings[("m1", "l2")] = np.ones(4, np.float32)
    l2 = mesh.store.records["l2"]
    assert await mesh.repairer().repair(
        Finding(Kind.DONE_WITHOUT_VECTOR, "l2", record=l2, model="m1"), POLICY
    )
    assert mesh.index.labels["l2"] == {"tabby": 0.7}


async def test_vectors_objects_and_intents_without_a_record_are_removed() -> None:
    mesh = Mesh()
    mesh.objects.objects |= {"images/e1/e1": OLD, "images/f1/f1": OLD}
    mesh.intents.intents |= {"images/f1/f1": "dead", "images/c2/c2": "live"}
    c2 = mesh.add(rec("c2", Status.DONE, at=ANCIENT))
    repairer = mesh.repairer()
    assert await repairer.repair(Finding(Kind.VECTOR_WITHOUT_RECORD, "d1", model="m2"), POLICY)
    assert await repairer.repair(Finding(Kind.ORPHAN_OBJECT, "e1", key="images/e1/e1"), POLICY)
    assert await repairer.repair(Finding(Kind.STALE_INTENT, "f1", key="images/f1/f1"), POLICY)
    f = Finding(Kind.STALE_INTENT, "c2", key=c2.object_key, recorded=True)
    assert await repairer.repair(f, POLICY)
    assert mesh.index.deletes == [("d1", "m2")]
    assert mesh.objects.deleted == ["images/e1/e1", "images/f1/f1"]  # never a recorded image's object
    assert mesh.intents.intents == {}
    [note] = reconcile_notes(mesh.store.records["c2"])
    assert note["repair"] == "stale_intent"


async def test_an_object_recorded_since_the_scan_is_kept() -> None:
    mesh = Mesh()
    mesh.add(rec("e1", Status.PENDING, at=NOW))
    assert not await mesh.repairer().repair(Finding(Kind.ORPHAN_OBJECT, "e1", key="images/e1/e1"), POLICY)
    assert mesh.objects.deleted == []


async def test_check_only_kinds_are_never_repaired() -> None:
    mesh = Mesh()
    r = mesh.add(rec("a1", Status.DONE))
    assert not await mesh.repairer().repair(Finding(Kind.DUPLICATE_DONE, "a1", record=r), POLICY)
    assert mesh.jobs.published == [] and mesh.index.upserts == []


# --- provenance -----------------------------------------------------------------------------------------
def test_a_jobs_provenance_is_its_cause_until_a_redelivery() -> None:
    job = ProcessJob(image_id="a", object_key="k", sha256="s", attempt=1, cause="replay")
    assert job_provenance(job, 1, 7) == Provenance(Cause.REPLAY, 1, 1, 7)
    assert job_provenance(job, 3, 7) == Provenance(Cause.RETRY, 1, 3, 7)
    unknown = ProcessJob(image_id="a", object_key="k", sha256="s", cause="from-a-newer-mesh")
    assert job_provenance(unknown).cause is Cause.UPLOAD
    assert Provenance(Cause.RECONCILE, 2).entry() == {"cause": "reconcile", "attempt": 2}


async def test_the_recorder_writes_the_provenance_into_the_entry_and_the_event() -> None:
    store, events = Store(), FakeEvents()
    store.records["a"] = rec("a", Status.PENDING)
    await Recorder(store, events).transition("a", Status.PROCESSING, why=Provenance(Cause.RETRY, 0, 2, 9))
    entry = store.records["a"].history[-1]
    assert entry == {
        "status": "processing",
        "at": entry["at"],
        "cause": "retry",
        "attempt": 0,
        "delivery": 2,
        "job_seq": 9,
    }
    assert events.published[-1].detail == {"cause": "retry", "attempt": 0, "delivery": 2, "job_seq": 9}
    assert time.time() - entry["at"] < 5


async def test_each_deliverys_history_entries_say_which_delivery_of_which_job_wrote_them() -> None:
    world = World()
    try:
        settings: Any = SimpleNamespace(stream="IMAGES", consumer="coordinator")  # duck-typed stand-ins
        js: Any = FakeJetStream()
        c = Coordinator(settings, js, world.pipeline, world.config)
        c.consumer_max_deliver = 5
        job = world.add_image()
        stored = dict(world.objects.objects)
        world.objects.objects.clear()  # the first delivery finds no object: retried
        first: Any = FakeMsg(data=contract.encode(job), delivered=1, seq=7)
        await c.handle(first)
        world.objects.objects.update(stored)  # the object is back
        second: Any = FakeMsg(data=contract.encode(job), delivered=2, seq=7)
        await c.handle(second)
        entries = [h for h in world.store.records["img1"].history if "delivery" in h]
        assert [(h["status"], h["cause"], h["delivery"], h["job_seq"]) for h in entries] == [
            ("processing", "upload", 1, 7),
            ("processing", "retry", 2, 7),
            ("embedded", "retry", 2, 7),
            ("indexed", "retry", 2, 7),
            ("done", "retry", 2, 7),
        ]
        assert duplicate_done(world.store.records["img1"].history) == 0
    finally:
        world.close()


async def test_mesh_check_counts_every_kind_over_whole_walks() -> None:
    mesh = Mesh()
    mesh.add(rec("a1", Status.PENDING))
    mesh.add(rec("b1", Status.PROCESSING, at=ANCIENT))
    mesh.vectors.docs[("m1", "x1")] = "c2"  # a stray document holding c2, which has its own
    mesh.add(rec("c2", Status.DONE, at=ANCIENT), vector=True)
    mesh.objects.objects["images/e1/e1"] = ANCIENT
    cfg = MeshConfig(active_model="m1", reconcile_grace_s=GRACE)
    vectors: Any = mesh.vectors  # a duck-typed stand-in for VectorIndex
    report = await ops_check.check(mesh.inspector(), vectors, cfg, batch=1)
    assert {k: n for k, n in report.anomalies.items() if n} == {
        "pending_without_job": 1,
        "stuck": 1,
        "orphan_object": 1,
        "vector_without_record": 1,  # x1's key names no record
        "vector_indexed_twice": 1,
    }
    assert report.examples["stuck"] == ["b1"] and report.total == 5
    assert report.scanned == {"intents": 0, "records": 3, "vectors": 2, "objects": 4}
    assert report.as_dict()["ok"] is False
