"""The job queue on Temporal (``MESH_WORKFLOW_ENGINE=temporal``): a job becomes one workflow per image.

Same interface as the JetStream queue (``job_queue.JobQueue``), so the gateway, the replay, the model switch
and the reconciler publish work the same way under either engine. ``publish`` starts the image's workflow
(``ImageWorkflow``, ``actors/temporal_flow.py``, run by ``actors/temporal_worker.py``) with the job as its
argument. The workflow id is derived from the image id alone: while an image's workflow runs, a second start
(a re-sent upload, a replay, the reconciler) is refused by Temporal and reported as a dropped repeat
(``Published.duplicate``), so two runs of one image never overlap; once it has closed, a new one may start
(a replay of a failed image). Dead letters stay on NATS (``images.jobs.dead``), as with JetStream, so ``mesh
replay`` works the same under both engines.

There is no stream sequence: ``Published.seq`` is 0 ("not known" in ``ImageRecord.job_seq``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import timedelta

from nats.js import JetStreamContext
from temporalio.client import Client
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError

from actors import contract
from actors.adapters.job_queue import PUBLISH_TIMEOUT_S, JobQueue, Published
from actors.contract import ProcessJob
from actors.errors import RetryableError
from actors.settings import Settings

WORKFLOW = "ImageWorkflow"  # the workflow type the worker registers (actors/temporal_flow.py)
CONNECT_TIMEOUT_S = 10.0


def workflow_id(image_id: str) -> str:
    """The one workflow id of an image: at most one of its workflows runs at a time."""
    return f"image-{image_id}"


async def connect_temporal(settings: Settings) -> Client:
    """A Temporal client for the settings' frontend and namespace; ``RetryableError`` if it does not answer."""
    try:
        return await asyncio.wait_for(
            Client.connect(settings.temporal_server_address, namespace=settings.temporal_namespace),
            CONNECT_TIMEOUT_S,
        )
    except (RuntimeError, OSError, TimeoutError, RPCError) as e:  # the SDK's connect raises RuntimeError
        raise RetryableError(f"temporal unavailable: {type(e).__name__}: {e}") from e


class TemporalJobQueue(JobQueue):
    """Starts one ``ImageWorkflow`` per published job; dead letters go to JetStream as before.

    ``client`` is a connected Temporal client, or how to connect one: then the first publish connects (a
    gateway starts while Temporal is away, and its uploads get 503 until Temporal answers)."""

    def __init__(
        self,
        js: JetStreamContext,
        client: Client | Callable[[], Awaitable[Client]],
        task_queue: str,
        *,
        timeout_s: float = PUBLISH_TIMEOUT_S,
    ) -> None:
        super().__init__(js, timeout_s=timeout_s)
        self.task_queue = task_queue
        self._client = client if isinstance(client, Client) else None
        self._connect = None if isinstance(client, Client) else client
        self._connecting = asyncio.Lock()

    async def client(self) -> Client:
        """The Temporal client, connected on first use; ``RetryableError`` while Temporal does not answer."""
        async with self._connecting:
            if self._client is None:
                assert self._connect is not None
                self._client = await self._connect()
            return self._client

    async def health(self) -> str:
        """``ok``, or what is wrong with Temporal's frontend (``GET /status``'s ``servers.temporal``)."""
        try:
            client = await self.client()
            healthy = await client.service_client.check_health(timeout=timedelta(seconds=2))
        except Exception as e:  # broad on purpose: the status page shows whatever went wrong
            return f"down: {type(e).__name__}: {e}"
        return "ok" if healthy else "down: not serving"

    async def publish(self, job: ProcessJob, *, msg_id: str | None = None) -> Published:
        """Start the image's workflow; ``duplicate`` when one of that image runs already (``msg_id`` is
        JetStream's de-duplication key and has no meaning here: the workflow id is)."""
        client = await self.client()
        try:
            await client.start_workflow(
                WORKFLOW,
                contract.encode(job).decode(),  # the job's JSON, as on the JetStream subject
                id=workflow_id(job.image_id),
                task_queue=self.task_queue,
                id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
                id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
                # shown in Temporal's UI and read by `mesh check`: who started it, a re-embed's models
                memo={"cause": job.cause, "attempt": job.attempt, "models": job.models},
                rpc_timeout=timedelta(seconds=self.timeout_s),
            )
        except WorkflowAlreadyStartedError:
            return Published(job=job, seq=0, duplicate=True)
        except Exception as e:  # broad on purpose: not started means not stored, whatever the reason
            raise RetryableError(f"job queue unavailable: {type(e).__name__}: {e}") from e
        return Published(job=job, seq=0)
