"""The storage layout: one version number for everything the mesh stores, and where each structure carries it.

Layouts (``ops/migrate.py`` upgrades a stack from the previous one, in place):

* 1 -- release 0.2.0 and before. Nothing carries a version: a structure without a stamp is layout 1.
* 2 -- release 0.3.0. Every structure is stamped with the layout it was written under:

  - an image record: its hash field ``layout`` (``ImageRecord.layout``); a job: its field ``layout``;
  - the work and events streams, the coordinators' consumer and the Config DB's bucket (the stream
    ``KV_<bucket>``): their JetStream metadata ``mesh_layout``;
  - the vector indexes and the records index (their RediSearch schemas): field ``indexes`` of the Redis hash
    ``P:layout`` (``P`` is ``settings.redis_prefix``), which also holds the stack's ``version`` (set once every
    structure is migrated) and a migration's resume points;
  - the object store's key layout (``images/<id>``, ``derived/...``): the object ``.mesh/layout.json``.

A process of release N works beside one of release N-1 on the same stack: readers ignore fields they do not
know (``contract.Struct``), and a missing stamp reads as layout 1.
"""

from __future__ import annotations

LAYOUT = 2  # what this release writes
FIRST_LAYOUT = 1  # what a structure without a stamp was written under (release 0.2.0)
LAYOUT_FIELD = "layout"  # the field of a record (Redis hash) and of a job message
LAYOUT_METADATA = "mesh_layout"  # the JetStream metadata key of a stream or consumer
LAYOUT_OBJECT = ".mesh/layout.json"  # the object store's stamp: {"layout": N}


def layout_key(prefix: str) -> str:
    """The Redis hash of the stack's layout: ``version``, ``indexes``, and a running migration's cursors."""
    return f"{prefix}:layout"


def layout_metadata() -> dict[str, str]:
    """The JetStream metadata that stamps a stream or consumer config with this release's layout."""
    return {LAYOUT_METADATA: str(LAYOUT)}


def stamped_layout(metadata: dict[str, str] | None) -> int:
    """The layout a stream or consumer config was written under (no stamp: the first layout)."""
    try:
        return int((metadata or {}).get(LAYOUT_METADATA, FIRST_LAYOUT))
    except ValueError:
        return FIRST_LAYOUT
