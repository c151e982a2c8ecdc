"""What the bootstrap keeps on a live stream (actors/streams.py ``kept_raised``): replicas and limits never go
down; no limit counts as the highest."""

from __future__ import annotations

from nats.js.api import StreamConfig

from actors.settings import Settings
from actors.streams import jobs_stream, kept_raised


def test_replicas_and_limits_never_go_down_and_no_limit_is_the_highest() -> None:
    ours = StreamConfig(name="S", num_replicas=1, max_age=3600, max_bytes=None, max_msgs=1000)
    live = StreamConfig(name="S", num_replicas=3, max_age=0, max_bytes=5_000, max_msgs=10)
    kept = kept_raised(ours, live)
    assert kept.num_replicas == 3  # an operator's R3 stays
    assert kept.max_age == 0  # no age limit on the live stream: the highest
    assert kept.max_bytes == 5_000  # we set none: the operator's stays
    assert kept.max_msgs == 1000  # ours is the floor
    assert (
        kept_raised(
            StreamConfig(name="S", num_replicas=3), StreamConfig(name="S", num_replicas=1)
        ).num_replicas
        == 3
    )


def test_the_replicas_come_from_the_settings() -> None:
    assert jobs_stream(Settings(stream_replicas=3)).num_replicas == 3
    assert jobs_stream(Settings()).num_replicas == 1
