"""The e2e tests of the pipeline, of search and of the model switch, and the operators' replay and
discovery, run again with Temporal as the workflow engine: the same REST and NATS contracts, the same images,
states, history, events and search results; a model switch's re-embed jobs run as workflows.

The tests are the e2e folder's own functions, taken into this module so that pytest runs them against this
folder's stack; only the stack differs. The ones that stop the workflow's process stop Temporal's worker
here (``tests.helpers.jobs_service``).
"""

from __future__ import annotations

from tests.e2e import test_model_switch, test_operations, test_pipeline, test_search

# every test of the pipeline, search and model switch modules
globals().update(
    {
        name: test
        for module in (test_pipeline, test_search, test_model_switch)
        for name, test in vars(module).items()
        if name.startswith("test_")
    }
)
test_micro_discovery_finds_every_actor_and_its_endpoints = (
    test_operations.test_micro_discovery_finds_every_actor_and_its_endpoints
)
test_replay_brings_an_errored_image_to_done = test_operations.test_replay_brings_an_errored_image_to_done
