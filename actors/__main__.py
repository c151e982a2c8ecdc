"""``python -m actors <name>``: run one actor process (coordinator, config or indexer; ``worker``: the Temporal
worker that replaces the coordinator when ``MESH_WORKFLOW_ENGINE=temporal``)."""

from __future__ import annotations

import importlib
import sys

from actors import runtime

ACTORS = {
    "coordinator": "actors.coordinator",
    "config": "actors.config_actor",
    "indexer": "actors.indexer",
    "worker": "actors.temporal_worker",
}


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in ACTORS:
        print(f"usage: python -m actors {{{','.join(ACTORS)}}}", file=sys.stderr)
        return 2
    module = importlib.import_module(ACTORS[argv[0]])
    runtime.run(module.main, argv[0])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
