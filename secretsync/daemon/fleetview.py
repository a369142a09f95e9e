"""One fleet-wide status across shard replicas (`serve --shards N` with `--peer`).

Every replica loads and plans the whole fleet but delivers only the clusters of its shard, so
its own board knows the other shards' objects only as planned. `FleetView` serves
`/v1/status`, `/v1/status/summary` and the page for the whole fleet from any replica:

- `local()` (`?scope=local`): this replica's shard only. It is what replicas fetch from each
  other, and it never makes a request itself, so replicas never recurse into each other.
- `fleet()` (the default): the local shard merged with every peer's `?scope=local` answer.
  Peers are fetched concurrently, at most once per `CACHE_S` (requests in between use the last
  answers). A request waits at most `WAIT_S` for a round in flight, then is answered with the
  answers it has (each marked with the time it was fetched) while the round goes on, each
  peer within `TIMEOUT_S`: a big shard's answer (33,000 objects: ~13 MB, 0.5 s to serialize
  on an idle core, several seconds on a loaded one) arrives for the next request. A peer's
  answer names its shard (its `leadership` block); a shard's objects come from the replica that
  answered for it, the holder of its Lease first. The objects listed are the local fleet's
  plan: a peer on another fleet commit contributes the objects both know.
- Every cluster says where its states come from (`clusters[]`: `shard`, `replica`, `peer`,
  `reachable`, `fetchedAt`) and `replicas` lists every shard with its replica, whether it
  answered, when, its last cycle and the error. A peer that stops answering keeps its last good
  answer, marked unreachable with the time it was fetched; the objects of a shard that no peer
  has answered for are shown as planned (`pending`) with a reason saying so. No cluster is
  dropped. A peer that answers with another shard count is listed and not merged.

Requests carry a peer token (`peers.peer_token`, keyed by the webhook secret) that the peer's
API guard accepts for `/v1/status`. Answers are parsed on a worker thread: a shard of 33,000
objects is ~14 MB of JSON (BENCHMARKS.md) and would hold the event loop for a few hundred ms.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import aiohttp

from secretsync.daemon import edge, peers
from secretsync.daemon.status import Entry, HeldDeletes, StatusBoard

log = logging.getLogger(__name__)

SCOPES: Final = ("fleet", "local")
CACHE_S: Final = 5.0  # a page reload or a dashboard's poll reuses the last round
WAIT_S: Final = 3.0  # the longest a request waits for the peers
TIMEOUT_S: Final = 15.0  # per peer, answer included (a round goes on after WAIT_S)
MAX_ANSWER_BYTES: Final = 512 * 1024 * 1024

type Key = tuple[str, str]


@dataclass(slots=True, kw_only=True)
class Answer:
    """What one peer said last; its last good answer is kept when a later fetch fails."""

    url: str
    shard: int | None  # from its answer; before one, the ordinal its URL names (if any)
    shards: int | None = None
    identity: str | None = None
    leading: bool = False
    git_writer: bool = False
    fetched_at: datetime | None = None  # when the last good answer arrived
    error: str | None = None  # why the last fetch failed; None when it answered
    cycles: int = 0
    last_cycle: dict[str, Any] | None = None
    entries: dict[Key, Entry] = field(default_factory=dict)
    held: dict[str, HeldDeletes] = field(default_factory=dict)
    last_push: dict[str, Any] | None = None


class FleetView:
    """The local and fleet-wide boards of one replica; owns its HTTP session to the peers."""

    def __init__(
        self,
        *,
        board: StatusBoard,
        peer_urls: tuple[str, ...],
        key: bytes | None,
        shards: int,
        shard_index: int,
        shard_of: Callable[[str], int],
        count: Callable[[str], None] = lambda _outcome: None,
        cache_s: float = CACHE_S,
        wait_s: float = WAIT_S,
        timeout_s: float = TIMEOUT_S,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.board = board
        self.peer_urls = peer_urls
        self.shards = shards
        self.shard_index = shard_index
        self._key = key
        self._shard_of = shard_of
        self._shards: dict[str, int] = {}
        self._count = count
        self._cache_s = cache_s
        self._wait_s = wait_s
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._clock = clock
        self._failures = edge.Throttle()
        self._session: aiohttp.ClientSession | None = None
        self.answers: dict[str, Answer] = {
            url: Answer(url=url, shard=peers.ordinal(url), error="no answer yet")
            for url in peer_urls
        }
        self._round: asyncio.Task[None] | None = None
        self._round_done = -float("inf")  # monotonic time of the last round's end
        self._answered = 0  # bumped by every fetch that ends: the merged view is built again
        self._local = StatusBoard()
        self._local_from: tuple[object, object] | None = None
        self._fleet = StatusBoard()
        self._fleet_from: tuple[object, int] | None = None

    def __repr__(self) -> str:
        return f"FleetView(shard={self.shard_index}/{self.shards}, peers={self.peer_urls!r})"

    def shard(self, cluster: str) -> int:
        """The shard of `cluster`, remembered (a sha256 per object of 100,000 would cost more
        than the rest of the merge)."""
        found = self._shards.get(cluster)
        if found is None:
            found = self._shards[cluster] = self._shard_of(cluster)
        return found

    def mine(self, cluster: str) -> bool:
        return self.shard(cluster) == self.shard_index

    # --- the two scopes --------------------------------------------------------------------------

    def local(self) -> StatusBoard:
        """This replica's shard: its clusters and their objects, its cycles and leadership."""
        b, view = self.board, self._local
        if self._local_from is None or not (
            self._local_from[0] is b.entries and self._local_from[1] is b.clusters
        ):
            view.entries = {k: e for k, e in b.entries.items() if self.mine(k[0])}
            view.clusters = {n: c for n, c in b.clusters.items() if self.mine(n)}
            self._local_from = (b.entries, b.clusters)
        _copy_light(b, view)
        view.held = {n: h for n, h in b.held.items() if self.mine(n)}
        view.certificates = {n: c for n, c in b.certificates.items() if self.mine(n)}
        return view

    async def fleet(self) -> StatusBoard:
        """Every cluster of the fleet, each shard's from the replica that serves it."""
        await self.refresh()
        return self._merged()

    # --- fetching --------------------------------------------------------------------------------

    async def refresh(self) -> None:
        """Start a round of fetches unless one ended within `CACHE_S` or is running; wait for
        it at most `WAIT_S`."""
        if not self.peer_urls or time.monotonic() - self._round_done < self._cache_s:
            return
        if self._round is None or self._round.done():
            self._round = asyncio.create_task(self._fetch_all(), name="secretsync-peer-status")
        with contextlib.suppress(TimeoutError):  # answered with what is there; it goes on
            async with asyncio.timeout(self._wait_s):
                await asyncio.shield(self._round)

    async def _fetch_all(self) -> None:
        try:
            await asyncio.gather(*(self._fetch(url) for url in self.peer_urls))
        finally:
            self._round_done = time.monotonic()

    async def _fetch(self, url: str) -> None:
        answer = self.answers[url]
        headers = {"Accept": "application/json"}
        if self._key is not None:
            token = peers.peer_token(self._key, path=peers.STATUS_PATH, now=time.time())
            headers["Authorization"] = f"Bearer {token}"
        try:
            if self._session is None:
                self._session = aiohttp.ClientSession(timeout=self._timeout)
            async with self._session.get(
                url + peers.STATUS_PATH, params={"scope": "local"}, headers=headers
            ) as response:
                if response.status != 200:
                    raise _Refused(f"answered HTTP {response.status}")
                raw = await _read_capped(response)
            parsed = await asyncio.to_thread(_parse, url, raw)
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError, _Refused) as exc:
            answer.error = _describe(exc, self._timeout.total)
            self._answered += 1
            self._count("failed")
            count = self._failures.hit(url)
            if count is not None:
                log.warning(
                    "status of peer %s not fetched: %s; the fleet-wide status shows its shard "
                    "as unreachable [%d failure(s) since its last line]",
                    url,
                    answer.error,
                    count,
                    extra={"peer": url, "count": count},
                )
            return
        parsed.fetched_at = self._clock()
        self.answers[url] = parsed
        self._answered += 1
        self._count("ok")

    # --- merging ---------------------------------------------------------------------------------

    def _sources(self) -> dict[int, Answer]:
        """Per other shard, the answer its objects come from: one of this shard count, good
        before stale, the Lease holder's before another's, the newest."""
        best: dict[int, Answer] = {}
        for a in self.answers.values():
            if (
                a.fetched_at is None
                or a.shard is None
                or a.shards != self.shards
                or a.shard == self.shard_index
            ):
                continue
            rank = (a.error is None, a.leading, a.fetched_at)
            held = best.get(a.shard)
            if held is None or rank > (held.error is None, held.leading, held.fetched_at):
                best[a.shard] = a
        return best

    def _merged(self) -> StatusBoard:
        b, view = self.board, self._fleet
        sources = self._sources()
        if self._fleet_from is None or not (
            self._fleet_from[0] is b.entries and self._fleet_from[1] == self._answered
        ):
            view.entries = self._entries(sources)
            self._fleet_from = (b.entries, self._answered)
        _copy_light(b, view)
        view.clusters = b.clusters
        view.certificates = b.certificates  # read from the fleet repo: the same on every replica
        view.held = {n: h for n, h in b.held.items() if self.mine(n)}
        for s, a in sources.items():
            view.held |= {n: h for n, h in a.held.items() if self.shard(n) == s}
        mine = self._leadership()
        if not mine.get("gitWriter"):
            writer = next((a for a in sources.values() if a.git_writer), None)
            if writer is not None:
                view.last_push = writer.last_push
        now = _iso(self._clock())
        view.cluster_sources = {
            name: self._cluster_source(self.shard(name), sources, mine, now) for name in b.clusters
        }
        view.replicas = self._replicas(sources, mine, now)
        return view

    def _entries(self, sources: Mapping[int, Answer]) -> dict[Key, Entry]:
        out: dict[Key, Entry] = {}
        for key, entry in self.board.entries.items():
            s = self.shard(key[0])
            if s == self.shard_index:
                out[key] = entry  # the live entry: the next cycle shows at once
                continue
            a = sources.get(s)
            theirs = a.entries.get(key) if a is not None else None
            if theirs is not None:
                out[key] = theirs
                continue
            why = (
                f"shard {s}: not in the status of {a.identity or a.url} (another fleet commit?)"
                if a is not None
                else f"shard {s}: no replica has answered for it; planned, state unknown"
            )
            out[key] = dataclasses.replace(entry, reason=why)
        return out

    def _leadership(self) -> dict[str, Any]:
        return self.board.leadership() if self.board.leadership is not None else {}

    def _cluster_source(
        self, shard: int, sources: Mapping[int, Answer], mine: Mapping[str, Any], now: str | None
    ) -> dict[str, Any]:
        if shard == self.shard_index:
            replica: str | None = mine.get("identity")
            return _source(shard, replica, None, reachable=True, fetched_at=now)
        a = sources.get(shard)
        if a is None:
            return _source(shard, None, None, reachable=False, fetched_at=None)
        return _source(shard, a.identity, a.url, a.error is None, _iso(a.fetched_at))

    def _replicas(
        self, sources: Mapping[int, Answer], mine: Mapping[str, Any], now: str | None
    ) -> list[dict[str, Any]]:
        b = self.board
        out: list[dict[str, Any]] = []
        for s in range(self.shards):
            if s == self.shard_index:
                out.append(
                    {
                        "shard": s,
                        "identity": mine.get("identity"),
                        "peer": None,
                        "self": True,
                        "merged": True,
                        "reachable": True,
                        "leading": bool(mine.get("leading")),
                        "fetchedAt": now,
                        "cycles": b.cycles,
                        "lastCycle": b.last_cycle.document() if b.last_cycle else None,
                        "error": None,
                    }
                )
            elif (a := sources.get(s)) is not None:
                out.append(_replica(a, merged=True, error=a.error))
            else:
                # the peers that may serve it: its ordinal's, and those not heard from yet
                tried = [a for a in self.answers.values() if a.shard in (s, None)]
                reason = "; ".join(f"{a.url}: {a.error or 'answered'}" for a in tried)
                out.append(
                    {
                        "shard": s,
                        "identity": None,
                        "peer": tried[0].url if len(tried) == 1 and tried[0].shard == s else None,
                        "self": False,
                        "merged": False,
                        "reachable": False,
                        "leading": False,
                        "fetchedAt": None,
                        "cycles": None,
                        "lastCycle": None,
                        "error": "no replica has answered for this shard"
                        + (f" ({reason})" if reason else " (no --peer names one)"),
                    }
                )
        used = {id(a) for a in sources.values()}
        for a in self.answers.values():
            if id(a) in used:
                continue
            if a.shards is not None and a.shards != self.shards:
                why = f"runs with --shards {a.shards}, not {self.shards}: not merged"
            elif a.fetched_at is None:
                why = a.error or "has not answered"
            elif a.shard == self.shard_index:
                why = f"answers for this replica's own shard {a.shard}: not merged"
            else:
                why = "another replica answered for its shard: not merged"
            out.append(_replica(a, merged=False, error=why))
        return out

    async def aclose(self) -> None:
        if self._round is not None and not self._round.done():
            self._round.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._round
        if self._session is not None:
            await self._session.close()


def _copy_light(src: StatusBoard, dst: StatusBoard) -> None:
    """The fields a view shares with the board it is made from (cheap, copied per request)."""
    dst.fleet_name, dst.fleet_loaded_at = src.fleet_name, src.fleet_loaded_at
    dst.fleet_error, dst.fleet_error_at = src.fleet_error, src.fleet_error_at
    dst.commit, dst.refused_commit = src.commit, src.refused_commit
    dst.last_cycle, dst.cycles = src.last_cycle, src.cycles
    dst.leadership, dst.last_push = src.leadership, src.last_push
    dst.generation = src.generation  # paging tokens follow this replica's fleet loads


def _source(
    shard: int, replica: str | None, peer: str | None, reachable: bool, fetched_at: str | None
) -> dict[str, Any]:
    return {
        "shard": shard,
        "replica": replica,
        "peer": peer,
        "reachable": reachable,
        "fetchedAt": fetched_at,
    }


def _replica(a: Answer, *, merged: bool, error: str | None) -> dict[str, Any]:
    return {
        "shard": a.shard,
        "identity": a.identity,
        "peer": a.url,
        "self": False,
        "merged": merged,
        "reachable": a.error is None,
        "leading": a.leading,
        "fetchedAt": _iso(a.fetched_at),
        "cycles": a.cycles if a.fetched_at else None,
        "lastCycle": a.last_cycle,
        "error": error,
    }


class _Refused(Exception):
    pass


async def _read_capped(response: aiohttp.ClientResponse) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(1 << 20):
        size += len(chunk)
        if size > MAX_ANSWER_BYTES:
            raise _Refused(f"answer over {MAX_ANSWER_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _describe(exc: BaseException, timeout_s: float | None) -> str:
    if isinstance(exc, aiohttp.ClientConnectorError):
        return "connection refused or unreachable"
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout_s:g} s"
    if isinstance(exc, _Refused | ValueError):
        return str(exc)
    return type(exc).__name__


def _parse(url: str, raw: bytes) -> Answer:
    """A peer's `?scope=local` document; ValueError naming what is wrong (never its content)."""
    try:
        doc = json.loads(raw)
    except ValueError:
        raise ValueError("answer is not JSON") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("leadership"), dict):
        raise ValueError("answer has no leadership block (not sharded, or not secretsync)")
    lead = doc["leadership"]
    shard, shards = lead.get("shardIndex"), lead.get("shards")
    if not isinstance(shard, int) or not isinstance(shards, int) or not 0 <= shard < shards:
        raise ValueError("answer's leadership block names no shard")
    objects, held, cycles = doc.get("objects"), doc.get("deletesHeld") or {}, doc.get("cycles")
    if not isinstance(objects, list) or not isinstance(held, dict) or not isinstance(cycles, int):
        raise ValueError("answer is not a status document")
    entries: dict[Key, Entry] = {}
    for item in objects:
        if not isinstance(item, dict):
            raise ValueError("answer holds an object that is not a mapping")
        entry = Entry.from_document(item)
        entries[(entry.cluster, entry.fleet_secret)] = entry
    last_cycle, last_push = doc.get("lastCycle"), doc.get("lastPush")
    identity = lead.get("identity")
    return Answer(
        url=url,
        shard=shard,
        shards=shards,
        identity=identity if isinstance(identity, str) else None,
        leading=lead.get("leading") is True,
        git_writer=lead.get("gitWriter") is True,
        cycles=cycles,
        last_cycle=last_cycle if isinstance(last_cycle, dict) else None,
        entries=entries,
        held={
            str(name): HeldDeletes.from_document(h)
            for name, h in held.items()
            if isinstance(h, dict)
        },
        last_push=last_push if isinstance(last_push, dict) else None,
    )


def _iso(at: datetime | None) -> str | None:
    return at.isoformat(timespec="seconds") if at else None
