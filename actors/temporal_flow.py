"""The image workflow on Temporal (``MESH_WORKFLOW_ENGINE=temporal``): the same steps as the JetStream
coordinator's, as activities that ``actors/temporal_worker.py`` runs.

One workflow per image (its id is ``image-<image id>``, ``actors/adapters/temporal_jobs.py``). It runs:

1. ``mesh.retry_policy`` (a local activity): the Config DB's ``max_deliver``, the attempts the image gets;
2. ``mesh.embed``: the image's first steps, from the stored object to its vectors (fetch, decode,
   the configured pipeline steps, preprocessing and embedding; state ``processing``, then ``embedded``);
3. ``mesh.index``: the vectors into the index (state ``indexed``);
4. ``mesh.finish``: state ``done``, its event, and the copy check queued.

A background re-embed (a model switch's job) and a job for an image that is already done run as one
``mesh.process`` activity instead: ``Pipeline.process`` adds the vectors or skips it. Each activity retries
under the policy (the delays are the Config DB's ``backoff_s``: each failed attempt names its own delay, as
the coordinator's nak does) and heartbeats while it works, so a worker killed mid-step is noticed within
``HEARTBEAT_TIMEOUT`` and the step runs again elsewhere (every step is idempotent). When the attempts are
spent, or an error is permanent, ``mesh.give_up`` records the image's ``error`` and publishes its dead letter
on ``images.jobs.dead``, and the workflow fails: a failed workflow in Temporal's UI.

Workflow code must be deterministic: this module imports nothing but Temporal's SDK and the standard library,
and names the activities by string.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

WORKFLOW = "ImageWorkflow"
RETRY_POLICY = "mesh.retry_policy"
PLAN = "mesh.plan"
EMBED = "mesh.embed"
INDEX = "mesh.index"
FINISH = "mesh.finish"
PROCESS = "mesh.process"
GIVE_UP = "mesh.give_up"

HEARTBEAT_TIMEOUT = timedelta(seconds=30)  # as the JetStream consumer's ack_wait
STEP_TIMEOUT = timedelta(minutes=10)
FIRST_RETRY = timedelta(seconds=1)  # a step that timed out (its worker died) runs again after this
GIVE_UP_RETRY = RetryPolicy(maximum_interval=timedelta(seconds=30))  # until the error is recorded


@workflow.defn(name=WORKFLOW)
class ImageWorkflow:
    """One image, from its stored object to the index; the argument is the ``ProcessJob``'s JSON."""

    @workflow.run
    async def run(self, job: str) -> str:
        attempts = await workflow.execute_local_activity(
            RETRY_POLICY, start_to_close_timeout=timedelta(seconds=30), result_type=int
        )
        retry = RetryPolicy(initial_interval=FIRST_RETRY, maximum_attempts=max(attempts, 1))
        try:
            plan = await self._step(PLAN, [job], retry, str)
            if plan != "stages":  # a re-embed, or nothing left to do: one activity
                return await self._step(PROCESS, [job], retry, str)
            embedded = await self._step(EMBED, [job], retry, str)
            await self._step(INDEX, [job, embedded], retry, str)
            return await self._step(FINISH, [job, embedded], retry, str)
        except ActivityError as e:
            code, reason, deliveries = _failure(e, attempts)
            await workflow.execute_activity(
                GIVE_UP,
                args=[job, code, reason, deliveries],
                start_to_close_timeout=timedelta(minutes=1),
                retry_policy=GIVE_UP_RETRY,
            )
            raise ApplicationError(f"{code}: {reason}", type=code, non_retryable=True) from e

    async def _step(self, name: str, args: list[str], retry: RetryPolicy, result: type[str]) -> str:
        return await workflow.execute_activity(
            name,
            args=args,
            result_type=result,
            start_to_close_timeout=STEP_TIMEOUT,
            heartbeat_timeout=HEARTBEAT_TIMEOUT,
            retry_policy=retry,
        )


def _failure(e: ActivityError, attempts: int) -> tuple[str, str, int]:
    """The error code, reason and attempts of a step that gave up (the activity names them; a step whose
    worker died on its last attempt only timed out)."""
    cause = e.cause
    if isinstance(cause, ApplicationError):
        deliveries = int(cause.details[0]) if cause.details else attempts
        return cause.type or "internal", cause.message, deliveries
    return "timeout", f"gave up after {attempts} attempts: {cause or e}", attempts
