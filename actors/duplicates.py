"""Near-duplicate groups: connected components of the "at least this similar" graph, and their pages.

Pure functions (no Redis, no NATS): the indexer feeds them the edges its range queries found. Two images are
in one group when a chain of near-duplicate pairs joins them, so a group can hold two images that are not
near each other themselves (A~B, B~C): that is what "connected component" means, and what a user who asks
"which images are copies of each other" expects from crops of crops.

The groups kept at index time (``actors/group_keeper.py``, stored by ``actors/adapters/group_store.py``) use
the rest: which (model, threshold) states the configuration asks to keep, when an unwanted one is retired, and
how a group that lost an image splits into the components of what is left.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from actors.contract import MeshConfig

FIELD_SEPARATOR = "|"  # model names never hold it (``vector_index.names.MODEL_RE``)


class DisjointSets:
    """Union-find over string ids, with path halving and union by size."""

    def __init__(self, items: Iterable[str] = ()) -> None:
        self._parent: dict[str, str] = {}
        self._size: dict[str, int] = {}
        for item in items:
            self.add(item)

    def add(self, item: str) -> None:
        if item not in self._parent:
            self._parent[item] = item
            self._size[item] = 1

    def find(self, item: str) -> str:
        self.add(item)
        parent = self._parent
        while parent[item] != item:
            parent[item] = parent[parent[item]]
            item = parent[item]
        return item

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if self._size[ra] < self._size[rb]:
            ra, rb = rb, ra
        self._parent[rb] = ra
        self._size[ra] += self._size[rb]

    def groups(self) -> list[list[str]]:
        """Every set, each sorted, ordered by its smallest member."""
        by_root: dict[str, list[str]] = {}
        for item in self._parent:
            by_root.setdefault(self.find(item), []).append(item)
        return sorted((sorted(members) for members in by_root.values()), key=lambda g: g[0])


def connected_components(nodes: Iterable[str], edges: Iterable[tuple[str, str]]) -> list[list[str]]:
    """The groups of two or more nodes joined by ``edges``, each sorted, ordered by smallest member.

    Edges may name nodes missing from ``nodes`` (an image indexed while the scan ran): they join the graph.
    """
    sets = DisjointSets(nodes)
    for a, b in edges:
        if a != b:
            sets.union(a, b)
    return [g for g in sets.groups() if len(g) > 1]


def page(groups: list[list[str]], cursor: str, limit: int) -> tuple[list[list[str]], str | None]:
    """Up to ``limit`` groups whose smallest id sorts after ``cursor``, and the cursor of the next page.

    ``groups`` must be ordered by smallest member (``connected_components`` does that). A cursor is a
    smallest id, not a position, so a group that appears or vanishes between two pages shifts nothing else.
    """
    if limit < 1:
        raise ValueError("limit must be >= 1")
    rest = [g for g in groups if g[0] > cursor] if cursor else groups
    chunk = rest[:limit]
    return chunk, (chunk[-1][0] if len(rest) > limit else None)


def pair_set(groups: Iterable[Iterable[str]]) -> set[frozenset[str]]:
    """Every unordered pair of images that share a group (for precision and recall of a grouping)."""
    pairs: set[frozenset[str]] = set()
    for group in groups:
        members = sorted(set(group))
        for i, a in enumerate(members):
            pairs.update(frozenset((a, b)) for b in members[i + 1 :])
    return pairs


# --- the groups kept at index time ---------------------------------------------------------------------------
def state_field(model: str, threshold: float) -> str:
    """The name of the kept state of ``model``'s groups at ``threshold``: ``<model>|<threshold>``.

    The threshold is written exactly (``repr``), so a request at any other value, however close, is never
    answered from this state.
    """
    return f"{model}{FIELD_SEPARATOR}{float(threshold)!r}"


def parse_state_field(field: str) -> tuple[str, float] | None:
    """``state_field``'s model and threshold, or None for a name it never wrote."""
    model, sep, raw = field.rpartition(FIELD_SEPARATOR)
    try:
        threshold = float(raw)
    except ValueError:
        return None
    return (model, threshold) if sep and model and 0.0 < threshold <= 1.0 else None


def kept_fields(cfg: MeshConfig) -> list[str]:
    """The states the configuration asks to keep: the active model's groups at ``near_duplicate_threshold``,
    and a switch's next model's (built while it re-embeds, so the groups are whole when it becomes active)."""
    fields = [state_field(cfg.active_model, cfg.near_duplicate_threshold)]
    if cfg.next_model and cfg.next_model != cfg.active_model:
        fields.append(state_field(cfg.next_model, cfg.near_duplicate_threshold))
    return fields


def due_for_retirement(
    kept: Iterable[str],
    wanted: Iterable[str],
    unwanted_since: Mapping[str, float],
    now: float,
    grace_s: float,
) -> tuple[list[str], dict[str, float]]:
    """The kept states unwanted for at least ``grace_s`` (to retire now), and when each unwanted one was first
    seen so (the next call's ``unwanted_since``). A state wanted again restarts its clock, so a configuration
    that flips back and forth within the grace (a test that switches models for a moment) loses nothing."""
    wanted_set = set(wanted)
    since = {f: unwanted_since.get(f, now) for f in kept if f not in wanted_set}
    return sorted(f for f, t in since.items() if now - t >= grace_s), since


def split(members: Iterable[str], edges: Iterable[tuple[str, str]]) -> list[list[str]]:
    """The components of ``members`` under ``edges`` (edges to images outside ``members`` are ignored), single
    images included: largest first, then by smallest id; each sorted. A group that lost an image is re-split
    this way: the first component keeps the group's id, the others get new ones, single images leave."""
    inside = set(members)
    sets = DisjointSets(inside)
    for a, b in edges:
        if a in inside and b in inside and a != b:
            sets.union(a, b)
    return sorted(sets.groups(), key=lambda g: (-len(g), g[0]))
