"""The chaos audit excuses a repeat only where the coordinator logged a timeout outside every fault window.

A pure check of ``tests.chaos.audit.slow_answers`` over a coordinator log written here: a timeout waited out
or retried counts, an outage that is not a timeout does not, nor a timeout inside a fault window or within
``FAULT_ECHO_S`` after it, nor another image's.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from actors.settings import Settings
from tests.chaos.audit import FAULT_ECHO_S, slow_answers

T0 = 1_800_000_000.0


def line(event: str, image_id: str, error: str, at: float) -> str:
    stamp = datetime.fromtimestamp(at, UTC).isoformat().replace("+00:00", "Z")
    return json.dumps({"event": event, "image_id": image_id, "error": error, "timestamp": stamp})


def test_only_timeouts_outside_faults_explain_a_repeat(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    settings.log_dir.mkdir(parents=True)
    lines = [
        line("job.waiting_for_dependency", "slow", "index.upsert timed out after 10.0s", T0),
        line("job.retry", "retried", "embed.image timed out after 30.0s", T0 + 1),
        line("job.waiting_for_dependency", "outage", "no service answers on index.upsert", T0 + 2),
        line("job.waiting_for_dependency", "in_fault", "index.upsert timed out after 10.0s", T0 + 100),
        line(
            "job.waiting_for_dependency",
            "echo",
            "index.upsert timed out after 10.0s",
            T0 + 110 + FAULT_ECHO_S,
        ),
        line("job.waiting_for_dependency", "other", "index.upsert timed out after 10.0s", T0),
        "{cut by a kill -9",
    ]
    (settings.log_dir / "coordinator.log").write_text("\n".join(lines) + "\n")
    ids = ["slow", "retried", "outage", "in_fault", "echo"]

    assert sorted(slow_answers(settings, ids)) == ["echo", "in_fault", "retried", "slow"]
    excused = slow_answers(settings, ids, [(T0 + 50, T0 + 110)])
    assert sorted(excused) == ["retried", "slow"]
    assert excused["slow"] == ["index.upsert timed out after 10.0s"]
