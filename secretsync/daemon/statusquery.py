"""Queries on the status board: the filtered, paginated `/v1/status` and `/v1/status/summary`.

`/v1/status` without a query is the whole inventory (`StatusBoard.document()`), as before. Any
of these parameters makes it one page of objects instead:

- `cluster=NAME` (repeatable): objects of those clusters only;
- `state=STATE` (repeatable; synced, drifted, failed, pending, undelivered);
- `fleetSecret=NAME` (repeatable);
- `limit=N`: objects per page, 1 to 5000 (default 500);
- `continue=TOKEN`: the `continue` of the previous page;
- `scope=fleet|local`: with shards, the whole fleet or this replica's shard (`web`, `fleetview`).

Objects come in one stable order (cluster, then FleetSecret). A page carries `continue` while
more objects match; the token is opaque and names the last object returned and the fleet's
generation (bumped whenever a load adds or removes objects). A token from another generation is
refused with 410: the listing starts again without it (objects may have come or gone in
between). A token stays good across cycles that only change states.

A bad parameter is a `QueryError` (400) naming it. Nothing here reads a secret value: the board
holds none.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from secretsync.daemon.status import State, StatusBoard

DEFAULT_LIMIT = 500
MAX_LIMIT = 5000
PARAMETERS = ("cluster", "state", "fleetSecret", "limit", "continue", "scope")


class QueryError(Exception):
    """A bad query: `status` 400 (a malformed parameter) or 410 (a token of another fleet)."""

    def __init__(self, message: str, *, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


@dataclass(frozen=True, slots=True, kw_only=True)
class Query:
    clusters: frozenset[str] = frozenset()
    states: frozenset[State] = frozenset()
    fleet_secrets: frozenset[str] = frozenset()
    limit: int = DEFAULT_LIMIT
    after: tuple[str, str] | None = None  # the last key of the previous page
    generation: int | None = None  # the generation that page was cut from


def parse(params: Mapping[str, Sequence[str]]) -> Query:
    """A query from its parameters (name -> every value given); `QueryError` naming the one at
    fault."""
    for name in params:
        if name not in PARAMETERS:
            raise QueryError(f"unknown parameter {name!r} (known: {', '.join(PARAMETERS)})")
    for name in ("limit", "continue"):
        if len(params.get(name, ())) > 1:
            raise QueryError(f"parameter {name!r} given more than once")
    states: set[State] = set()
    for value in params.get("state", ()):
        try:
            states.add(State(value))
        except ValueError:
            known = ", ".join(s.value for s in State)
            raise QueryError(f"parameter 'state': {value!r} is not a state ({known})") from None
    for name in ("cluster", "fleetSecret"):
        if any(not v for v in params.get(name, ())):
            raise QueryError(f"parameter {name!r} is empty")
    limit = DEFAULT_LIMIT
    if params.get("limit"):
        raw = params["limit"][0]
        if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
            raise QueryError(
                f"parameter 'limit': {raw[:20]!r} is not a number from 1 to {MAX_LIMIT}"
            )
        limit = int(raw)
    after, generation = None, None
    if params.get("continue"):
        generation, after = _decode(params["continue"][0])
    return Query(
        clusters=frozenset(params.get("cluster", ())),
        states=frozenset(states),
        fleet_secrets=frozenset(params.get("fleetSecret", ())),
        limit=limit,
        after=after,
        generation=generation,
    )


def page(board: StatusBoard, query: Query) -> dict[str, Any]:
    """One page of the inventory: the fleet-wide fields of `/v1/status` (totals stay the
    fleet's), the matching objects from the token on, and `continue` while more match."""
    if query.generation is not None and query.generation != board.generation:
        raise QueryError(
            "parameter 'continue': the fleet changed since this listing started; "
            "list again without 'continue'",
            status=410,
        )
    objects: list[dict[str, Any]] = []
    last: tuple[str, str] | None = None
    more = False
    for key in _candidates(board.sorted_keys(), query):
        if query.fleet_secrets and key[1] not in query.fleet_secrets:
            continue
        entry = board.entries[key]
        if query.states and entry.state not in query.states:
            continue
        if len(objects) == query.limit:
            more = True
            break
        objects.append(entry.document())
        last = key
    doc = board.document(objects=objects)
    if query.clusters:
        doc["clusters"] = [c for c in doc["clusters"] if c["name"] in query.clusters]
    doc["continue"] = _encode(board.generation, last) if more and last else None
    return doc


def _candidates(keys: list[tuple[str, str]], query: Query) -> Iterator[tuple[str, str]]:
    """The keys after the token's, in order; with `cluster=`, only those clusters' ranges of
    the sorted keys (found by bisection: one cluster of 100,000 objects costs its own objects,
    not a pass over all of them)."""
    start = 0 if query.after is None else bisect.bisect_right(keys, query.after)
    if query.clusters:
        ranges = sorted(
            (bisect.bisect_left(keys, (c, "")), bisect.bisect_left(keys, (c + "\0", "")))
            for c in query.clusters
        )
    else:
        ranges = [(0, len(keys))]
    for lo, hi in ranges:
        for i in range(max(lo, start), hi):
            yield keys[i]


def summary(board: StatusBoard) -> dict[str, Any]:
    """`/v1/status/summary`: the fleet, totals per state, per-cluster counts, the last cycle,
    held deletes (counts), the last push and, across shards, the replicas. No objects: a few
    kB for any fleet size."""
    per_cluster: dict[str, dict[str, int]] = {name: {} for name in board.clusters}
    for (cluster, state), n in board.counts().items():
        per_cluster.setdefault(cluster, {})[state] = n
    shards = {"replicas": board.replicas} if board.replicas is not None else {}
    return shards | {
        "fleet": board.fleet_document(),
        "totals": board.totals(),
        "clusters": per_cluster,
        "cycles": board.cycles,
        "lastCycle": board.last_cycle.document() if board.last_cycle else None,
        "deletesHeld": {name: len(h.objects) for name, h in board.held.items()},
        "lastPush": board.last_push,
    }


def _encode(generation: int, after: tuple[str, str]) -> str:
    raw = json.dumps({"g": generation, "a": list(after)}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode(token: str) -> tuple[int, tuple[str, str]]:
    bad = QueryError("parameter 'continue': not a token this server issued")
    try:
        doc = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise bad from None
    if not isinstance(doc, dict):
        raise bad
    generation, after = doc.get("g"), doc.get("a")
    if (
        not isinstance(generation, int)
        or not isinstance(after, list)
        or len(after) != 2
        or not all(isinstance(p, str) for p in after)
    ):
        raise bad
    return generation, (after[0], after[1])
