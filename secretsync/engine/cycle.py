"""One reconcile cycle: plan → resolve → materialize → deliver, the same for CLI and daemon.

Per cluster the work runs concurrently, each under its own timeout, so one slow or broken
cluster never holds up the others. A DesiredSecret whose values could not all be resolved is
not rendered: its object is kept as it is (a source outage never empties or prunes what a
cluster has), and the report says failed, and why. Unchanged objects are recognised by their
keyed content hash and not rendered or written at all.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import traceback
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType

from secretsync.core import bounded, errors, selectors
from secretsync.core.model import (
    Cluster,
    DeleteLimit,
    Delivery,
    DesiredSecret,
    Fleet,
    Location,
    ObjectKey,
    Observed,
    Selector,
    ValueRef,
)
from secretsync.core.values import SecretValue
from secretsync.delivery import materialize, seal
from secretsync.delivery.materialize import Manifest, RenderContext, Rendered
from secretsync.delivery.sealpool import SealPool, default_workers
from secretsync.fleet import load, plan
from secretsync.sinks.deliver import (
    PROGRESS,
    ApplyResult,
    Diff,
    KeyDiff,
    Sink,
    diff,
    key_diff,
)
from secretsync.sources import kinds, resolve, sopskeys

log = logging.getLogger(__name__)


NO_KEY_CHANGES = KeyDiff()
"""Shared by the (many) results without key changes: KeyDiff is immutable."""
NO_VERSIONS: Mapping[str, str] = MappingProxyType({})


@dataclass(slots=True, kw_only=True)
class ItemResult:
    """The outcome for one object on one cluster. Never holds a value."""

    cluster: str
    namespace: str
    name: str
    fleet_secret: str | None
    sink: str
    action: str  # create | update | delete | held | unchanged | failed
    reason: str = ""
    keys: KeyDiff = NO_KEY_CHANGES
    content_hash: str | None = None
    desired: DesiredSecret | None = None
    versions: tuple[str, ...] = ()  # `<location> (version V)` read for a create or update
    version_changes: tuple[str, ...] = ()  # `<mount>/<path>: 3 -> 4` against what is delivered
    source_versions: Mapping[str, str] = field(default_factory=dict)  # what the object holds

    @property
    def refs(self) -> tuple[str, ...]:
        """The value refs this object was built from (never values)."""
        return tuple(str(r) for r in self.desired.refs()) if self.desired else ()


@dataclass(slots=True, kw_only=True, repr=False)
class CycleReport:
    """What one cycle did. Its repr is a summary: asyncio formats the finished task's result
    when restoring signal handlers, and a full repr of 100,000 items costs a second."""

    items: list[ItemResult] = field(default_factory=list)
    reads: int = 0
    seals: int = 0
    writes: int = 0
    deletes: int = 0
    failed_clusters: dict[str, str] = field(default_factory=dict)
    read_ok: frozenset[Location] = frozenset()
    """Source locations read in this cycle."""
    read_failed: frozenset[Location] = frozenset()
    """Source locations whose read failed in this cycle: their objects keep what they hold."""
    guarded: Mapping[ValueRef, SecretValue] = field(default_factory=dict, repr=False)
    standins: dict[ObjectKey, Callable[[], Manifest]] = field(default_factory=dict, repr=False)
    """Per object written: the same object rendered with stand-in values, the baseline that
    tells a value from text the object holds anyway (`materialize.leaks`)."""
    """The values resolved in this cycle: a commit of the output re-checks its blobs for them."""
    pruned: bool = False
    """Whether this cycle looked for objects to delete (a full cycle) and so `held` is whole."""

    @property
    def failures(self) -> list[ItemResult]:
        return [i for i in self.items if i.action == "failed"]

    @property
    def held(self) -> list[ItemResult]:
        """Deletes kept back by the Fleet's delete limit."""
        return [i for i in self.items if i.action == "held"]

    def held_by_cluster(self) -> dict[str, list[ItemResult]]:
        """The held deletes of each cluster that has some, by cluster name (sorted)."""
        out: dict[str, list[ItemResult]] = {}
        for item in self.held:
            out.setdefault(item.cluster, []).append(item)
        return dict(sorted(out.items()))

    @property
    def ok(self) -> bool:
        return not self.failures and not self.failed_clusters and not self.held

    def __repr__(self) -> str:
        return (
            f"<CycleReport {len(self.items)} items, {len(self.failures)} failed, "
            f"{len(self.failed_clusters)} clusters failed>"
        )


@dataclass(kw_only=True)
class Engine:
    sources: Mapping[str, resolve.Source]
    sinks: Sequence[Sink]
    hmac_key: bytes
    clock: Callable[[], datetime]
    cluster_timeout_s: float = 120.0
    # Clusters worked on at once. Each cluster is paced by its own rate limit and timeout, so
    # the bound only caps memory and sockets; a fleet of a few hundred runs in one round.
    cluster_concurrency: int = 128
    source_concurrency: int = 64
    seal_workers: int | None = None
    """Processes that seal when a cluster needs many seals (a cold render): None is one per
    core when there are two or more, 0 seals in this process."""
    batch_size: int = 100
    """Objects of one cluster rendered and handed to a sink that does not stage (the
    Kubernetes API) at a time: a cold fleet holds at most `cluster_concurrency` times this many
    rendered objects, not every object of every cluster in flight."""
    pool_threshold: int = 256
    """Seals one cluster needs before the first use of the workers (starting them costs a
    fraction of a second); once started, they seal for every cluster with more than `CHUNK`."""

    async def run_cycle(
        self,
        fleet: Fleet,
        *,
        clusters: Collection[str] = (),
        selector: Selector | None = None,
        dry_run: bool = False,
        only_paths: Collection[str] | None = None,
        check_refs: bool = False,
        allow_deletes: bool = False,
        check_sops_keys: bool = False,
    ) -> CycleReport:
        """One reconcile. `only_paths` (Vault `<mount>/<path>` names, see `path_names`) narrows
        the cycle to the objects built from one of them, on the clusters that have such an
        object; every other object is left as it is: a narrowed cycle never deletes.
        `check_refs` also reads the refs of `external` objects (which otherwise need no read),
        so a missing path or key fails its object; their values are never used.
        On each cluster, deletes over the Fleet's `deleteLimit` are held (none of that
        cluster's deletes is made) unless `allow_deletes` lifts the limit for this cycle.
        `check_sops_keys` first checks the key groups of every SOPS file the planned objects
        read against the Fleet's policy and raises `errors.ConfigErrors` for any it refuses,
        before anything is read or written (the CLI's all-or-nothing); without it, the sops
        source still refuses such a file, failing only the objects that read it.
        """
        desired = plan.plan(fleet, clusters=clusters, selector=selector)
        if check_sops_keys:
            refused = await asyncio.to_thread(
                sopskeys.check_files, fleet, sopskeys.readers_of(desired)
            )
            if refused:
                raise errors.ConfigErrors(refused)
        if only_paths is not None:
            desired = _narrow(desired, frozenset(only_paths))
        report = CycleReport(pruned=only_paths is None)
        limit = None if allow_deletes else fleet.policies.delete_limit
        needs_values = [
            d
            for d in desired
            if (check_refs or d.delivery is not Delivery.EXTERNAL)
            and any(s.accepts(d.cluster) for s in self.sinks)
        ]
        resolution = await resolve.resolve(
            (ref for d in needs_values for ref in d.refs()),
            self.sources,
            concurrency=self.source_concurrency,
        )
        report.reads = resolution.reads
        report.read_ok = frozenset(resolution.versions)
        report.read_failed = frozenset(ref.location for ref in resolution.failures)
        report.guarded = resolution.values
        targets = select_clusters(fleet, names=clusters, selector=selector)
        if only_paths is not None:
            hit = {d.cluster.name for d in desired}
            targets = {n: c for n, c in targets.items() if n in hit}
        by_cluster: dict[str, list[DesiredSecret]] = {name: [] for name in targets}
        for d in desired:
            by_cluster[d.cluster.name].append(d)
        workers = default_workers() if self.seal_workers is None else self.seal_workers
        seals = SealPool(workers, threshold=self.pool_threshold)

        async def one(name: str) -> list[ItemResult] | Exception:
            """One cluster; its failure is returned, so that it stays that cluster's own."""
            try:
                async with asyncio.timeout(self.cluster_timeout_s) as deadline:
                    # the timeout counts from the cluster's last answer, not from the start: a
                    # hung cluster fails after cluster_timeout_s of silence, a big one that
                    # keeps answering (while the client is busy with a hundred others) does not
                    loop = asyncio.get_running_loop()
                    PROGRESS.set(lambda: deadline.reschedule(loop.time() + self.cluster_timeout_s))
                    return await self._cluster(
                        fleet,
                        targets[name],
                        by_cluster[name],
                        resolution,
                        report,
                        dry_run=dry_run,
                        prune=only_paths is None,
                        seals=seals,
                        check_refs=check_refs,
                        limit=limit,
                    )
            except Exception as exc:
                return exc

        names = list(targets)
        try:
            outcomes = await bounded.each(names, one, limit=self.cluster_concurrency)
        finally:
            seals.close()
        for name, outcome in zip(names, outcomes, strict=True):
            if isinstance(outcome, Exception):
                reason = _reason(outcome)
                report.failed_clusters[name] = reason
                log.error("cluster %s failed: %s", name, reason)
                if not isinstance(outcome, errors.SecretSyncError | TimeoutError):
                    # frames only: a foreign exception's message may carry data
                    log.debug("where: %s", "".join(traceback.format_tb(outcome.__traceback__)))
                continue
            report.items.extend(outcome)
        if not clusters and selector is None and only_paths is None:
            await self._prune_orphans(fleet, report, dry_run=dry_run, limit=limit)
        return report

    async def _prune_orphans(
        self, fleet: Fleet, report: CycleReport, *, dry_run: bool, limit: DeleteLimit | None
    ) -> None:
        """Remove what secretsync owns for clusters that left the fleet (within the limit)."""
        for sink in self.sinks:
            for name in await sink.orphans(set(fleet.clusters)):
                gone = Cluster(name=name, labels={}, delivery=Delivery.DIRECT, origin=fleet.origin)
                try:
                    observed = await sink.observe(gone)
                    outcome = diff({}, observed, keep=set())
                    deletes = outcome.changes.delete
                    held = _over_limit(deletes, observed, limit)
                    if held:
                        report.items.extend(
                            _held(name, sink.name, deletes, held, why="the cluster left the fleet")
                        )
                        continue
                    if not dry_run and outcome.changes:
                        await sink.apply(gone, outcome.changes)
                        await sink.finish_cluster(gone)
                finally:
                    sink.discard(gone)
                for obs in outcome.changes.delete:
                    report.items.append(
                        ItemResult(
                            cluster=name,
                            namespace=obs.key.namespace,
                            name=obs.key.name,
                            fleet_secret=obs.fleet_secret,
                            sink=sink.name,
                            action="delete",
                            reason="cluster is no longer in the fleet",
                        )
                    )
                    if not dry_run:
                        report.deletes += 1

    def _certificate(self, fleet: Fleet, cluster: Cluster) -> seal.Certificate:
        if cluster.cert_file is None:
            raise errors.SealError(f"cluster {cluster.name!r} has no sealedSecrets.certFile")
        if cluster.controller is not None and not (fleet.root / cluster.cert_file).exists():
            ref = cluster.controller
            raise errors.SealError(
                f"no sealing certificate at {cluster.cert_file} yet: fetch it from "
                f"{ref.namespace}/{ref.name} with `secretsync cluster refresh-cert "
                f"{cluster.name}` (serve --git-push does it on its schedule)"
            )
        pem = load.read_fleet_file(fleet.root, cluster.cert_file)
        return seal.load_certificate(
            pem, source=cluster.cert_file, now=self.clock(), sha256=cluster.cert_sha256
        )

    async def _cluster(
        self,
        fleet: Fleet,
        cluster: Cluster,
        desired: list[DesiredSecret],
        resolution: resolve.Resolution,
        report: CycleReport,
        *,
        dry_run: bool,
        prune: bool = True,
        seals: SealPool | None = None,
        check_refs: bool = False,
        limit: DeleteLimit | None = None,
    ) -> list[ItemResult]:
        results: list[ItemResult] = []
        certificate: seal.Certificate | None = None
        cert_error: str | None = None
        if cluster.delivery is Delivery.SEALED and desired:
            try:
                certificate = self._certificate(fleet, cluster)
            except (errors.SealError, errors.ConfigError) as exc:
                cert_error = str(exc)
        try:
            for sink in self.sinks:
                if not sink.observes(cluster):
                    continue
                wanted = desired if sink.accepts(cluster) else []
                observed = await sink.observe(cluster)
                # what secretsync owns here and no longer wants: deleted with the last batch
                wanted_keys = {d.key for d in wanted}
                leftovers = {k: o for k, o in observed.items() if k not in wanted_keys}
                batches = _batches(wanted, None if sink.stages else self.batch_size)
                for number, batch in enumerate(batches, start=1):
                    step = _Batch(
                        sink=sink,
                        cluster=cluster,
                        observed=observed,
                        certificate=certificate,
                        cert_error=cert_error,
                        check_refs=check_refs,
                    )
                    await self._prepare(step, batch, resolution, results)
                    for d, done in _render_sealed(step.pending, certificate, seals):
                        self._sealed(step, d, done, results, report, dry_run=dry_run)
                    scope = {k: observed[k] for k in step.meta if k in observed}
                    outcome = diff(step.prepared, scope, keep=step.keep)
                    if prune and number == len(batches):
                        deletes = diff({}, leftovers, keep=set()).changes.delete
                        if held := _over_limit(deletes, observed, limit):
                            results.extend(_held(cluster.name, sink.name, deletes, held, why=""))
                        else:
                            outcome.changes.delete = deletes
                    applied = ApplyResult()
                    if not dry_run and outcome.changes:
                        applied = await sink.apply(cluster, outcome.changes)
                    self._record(
                        step,
                        outcome,
                        applied=applied,
                        resolution=resolution,
                        results=results,
                        report=report,
                        dry_run=dry_run,
                    )
                if not dry_run:
                    await sink.finish_cluster(cluster)
        finally:
            for sink in self.sinks:
                sink.discard(cluster)  # what an apply did not take (a failure, a timeout)
        return results

    async def _prepare(
        self,
        step: _Batch,
        batch: Sequence[DesiredSecret],
        resolution: resolve.Resolution,
        results: list[ItemResult],
    ) -> None:
        """Fill `step` for `batch`: the content hash of each object equal to what the sink holds,
        the rendered object of the others (sealed ones queued in `step.pending`), failures kept."""
        sink, certificate, observed = step.sink, step.certificate, step.observed
        plain_ctx = RenderContext(hmac_key=self.hmac_key, certificate=certificate)
        for d in batch:
            key = d.key
            step.meta[key] = d
            # an ExternalSecret reads nothing: a failed read of one of its paths (made for a
            # sealed or direct object of another cluster) is not its failure, unless its refs
            # were read on purpose (`check_refs`)
            failure = (
                self._unresolved(d, resolution)
                if resolution.failures and (step.check_refs or d.delivery is not Delivery.EXTERNAL)
                else None
            ) or step.cert_error
            if failure is not None:
                step.keep.add(key)
                results.append(_item(d, sink.name, "failed", reason=failure))
                continue
            external = d.delivery is Delivery.EXTERNAL
            values = {} if external else materialize.values_for(d, resolution.values) or {}
            versions = {} if external else _vault_versions(d, resolution)
            ctx = (
                RenderContext(hmac_key=self.hmac_key, certificate=certificate, versions=versions)
                if versions
                else plain_ctx
            )
            try:
                seen = observed.get(key)
                hashes = None
                if d.delivery is Delivery.SEALED:
                    materialize.check_size(d, values)
                    hashes = materialize.sealed_hashes(d, values, ctx=ctx)
                    digest = hashes.digest
                elif seen is None:  # nothing to compare with: render it once
                    step.prepared[key] = materialize.render(d, values, ctx=ctx)
                    continue
                else:
                    digest = materialize.content_hash_of(d, values, ctx=ctx)
                if (
                    seen is not None
                    and seen.owned
                    and not seen.drifted
                    and seen.content_hash == digest
                ):
                    step.prepared[key] = digest
                    continue
                if hashes is not None:
                    previous = await sink.detail(seen) if seen is not None and seen.owned else None
                    ctx = RenderContext(
                        hmac_key=self.hmac_key,
                        certificate=certificate,
                        previous=previous,
                        versions=versions,
                        hashes=hashes,
                    )
                    # sealed later, many at once; the placeholder keeps the order
                    step.prepared[key] = digest
                    step.pending.append((d, values, ctx))
                    continue
                step.prepared[key] = materialize.render(d, values, ctx=ctx)
            except errors.SecretSyncError as exc:
                step.keep.add(key)
                results.append(_item(d, sink.name, "failed", reason=str(exc)))

    @staticmethod
    def _sealed(
        step: _Batch,
        d: DesiredSecret,
        done: Rendered | errors.SecretSyncError,
        results: list[ItemResult],
        report: CycleReport,
        *,
        dry_run: bool,
    ) -> None:
        """Take one sealed object as it arrives; a sink that stages writes it right away, while
        the workers seal the next ones."""
        if isinstance(done, errors.SecretSyncError):
            del step.prepared[d.key]
            step.keep.add(d.key)
            results.append(_item(d, step.sink.name, "failed", reason=str(done)))
            return
        step.prepared[d.key] = done
        if dry_run:
            return
        report.seals += done.resealed
        seen = step.observed.get(d.key)
        if step.sink.stages and (seen is None or seen.owned):
            step.sink.stage(step.cluster, done)

    @staticmethod
    def _record(
        step: _Batch,
        outcome: Diff,
        *,
        applied: ApplyResult,
        resolution: resolve.Resolution,
        results: list[ItemResult],
        report: CycleReport,
        dry_run: bool,
    ) -> None:
        """One result per object of the batch, and per object deleted."""
        sink, meta, observed = step.sink, step.meta, step.observed
        for key in outcome.conflicts:
            results.append(
                _item(
                    meta[key],
                    sink.name,
                    "failed",
                    reason=f"{key.namespace}/{key.name} exists and is not managed by "
                    "secretsync (set adopt: true on the FleetSecret to take it over)",
                )
            )
        for key in outcome.unchanged:
            seen = observed.get(key)
            # the same values as `seen` holds, in objects of this cycle: the results outlive
            # the cycle, `observed` (parsed from files or the index) does not
            same = step.prepared.get(key)
            if not isinstance(same, str):
                same = seen.content_hash if seen else None
            results.append(
                _item(
                    meta[key],
                    sink.name,
                    "unchanged",
                    content_hash=same,
                    source_versions=seen.versions if seen and seen.versions else NO_VERSIONS,
                )
            )
        for item in [*outcome.changes.create, *outcome.changes.update]:
            d = meta[item.key]
            seen = observed.get(item.key)
            if item.standin is not None and not dry_run:
                report.standins[item.key] = item.standin
            if item.key in applied.failed:
                results.append(_item(d, sink.name, "failed", reason=applied.failed[item.key]))
                continue
            delivered_versions = (
                _vault_versions(d, resolution) if d.delivery is not Delivery.EXTERNAL else {}
            )
            results.append(
                _item(
                    d,
                    sink.name,
                    "create" if seen is None else "update",
                    content_hash=item.content_hash,
                    reason="repaired: changed outside secretsync"
                    if seen is not None and seen.drifted
                    else "",
                    keys=key_diff(seen.key_hashes if seen else {}, item.key_hashes),
                    versions=_versions(d, resolution),
                    version_changes=_version_changes(
                        seen.versions if seen else {}, delivered_versions
                    ),
                    source_versions=delivered_versions,
                )
            )
            if not dry_run:
                report.writes += 1
        for gone in outcome.changes.delete:
            results.append(
                ItemResult(
                    cluster=step.cluster.name,
                    namespace=gone.key.namespace,
                    name=gone.key.name,
                    fleet_secret=gone.fleet_secret,
                    sink=sink.name,
                    action="delete",
                    keys=KeyDiff(removed=tuple(sorted(gone.key_hashes))),
                )
            )
            if not dry_run:
                report.deletes += 1

    @staticmethod
    def _unresolved(d: DesiredSecret, resolution: resolve.Resolution) -> str | None:
        for ref in d.refs():
            if (failure := resolution.failures.get(ref)) is not None:
                return str(failure)
        return None


@dataclass(slots=True, kw_only=True)
class _Batch:
    """What one batch of one cluster's objects builds up for one sink."""

    sink: Sink
    cluster: Cluster
    observed: Mapping[ObjectKey, Observed]
    certificate: seal.Certificate | None
    cert_error: str | None
    check_refs: bool = False
    """The refs of `external` objects were read for this cycle: their failures count."""
    prepared: dict[ObjectKey, Rendered | str] = field(default_factory=dict)
    keep: set[ObjectKey] = field(default_factory=set)
    meta: dict[ObjectKey, DesiredSecret] = field(default_factory=dict)
    pending: list[tuple[DesiredSecret, dict[str, SecretValue], RenderContext]] = field(
        default_factory=list
    )


def select_clusters(
    fleet: Fleet, *, names: Collection[str] = (), selector: Selector | None = None
) -> dict[str, Cluster]:
    """The clusters a run covers: those named (all when none are), that match `selector`."""
    return {
        n: c
        for n, c in fleet.clusters.items()
        if (not names or n in names) and (selector is None or selectors.matches(selector, c.labels))
    }


def _over_limit(
    deletes: Sequence[Observed], observed: Mapping[ObjectKey, Observed], limit: DeleteLimit | None
) -> str:
    """Why `deletes` on one cluster are over `limit` (None: no limit), or "" when they may go."""
    owned = sum(1 for o in observed.values() if o.owned)
    if limit is None or limit.allows(len(deletes), owned=owned):
        return ""
    return (
        f"{len(deletes)} deletes of {owned} owned objects are over the delete limit "
        f"({limit}); run with --allow-deletes to make them"
    )


def _held(
    cluster: str, sink: str, deletes: Sequence[Observed], held: str, *, why: str
) -> list[ItemResult]:
    """One `held` result per delete kept back: the object stays where it is."""
    reason = f"delete held: {why}; {held}" if why else f"delete held: {held}"
    return [
        ItemResult(
            cluster=cluster,
            namespace=gone.key.namespace,
            name=gone.key.name,
            fleet_secret=gone.fleet_secret,
            sink=sink,
            action="held",
            reason=reason,
        )
        for gone in deletes
    ]


def _batches(wanted: Sequence[DesiredSecret], size: int | None) -> list[Sequence[DesiredSecret]]:
    """`wanted` in batches of `size` (None: one batch, also when empty, so that deletes and a
    staging sink's apply still run), grouped by namespace so that a batch touches few."""
    if size is None or len(wanted) <= size:
        return [wanted]
    ordered = sorted(wanted, key=lambda d: d.target.namespace)
    return [ordered[i : i + size] for i in range(0, len(ordered), size)]


def _render_sealed(
    pending: Sequence[tuple[DesiredSecret, dict[str, SecretValue], RenderContext]],
    certificate: seal.Certificate | None,
    seals: SealPool | None,
) -> Iterator[tuple[DesiredSecret, Rendered | errors.SecretSyncError]]:
    """Render the sealed objects of one cluster, in order. With enough seals to do, the pool's
    workers seal (chunk by chunk) while each object is assembled here as its values arrive."""
    jobs = [materialize.to_seal(d, values, ctx=ctx) for d, values, ctx in pending]
    if seals is None or certificate is None or not seals.worth(sum(len(j) for j in jobs)):
        for d, values, ctx in pending:
            yield d, _render(d, values, ctx)
        return
    flat = [
        (ctx.hashes.label if ctx.hashes else b"", plaintext)
        for (_, _, ctx), todo in zip(pending, jobs, strict=True)
        for _, plaintext in todo
    ]
    stream = itertools.chain.from_iterable(seals.seal(certificate.public_key, flat))
    for (d, values, ctx), todo in zip(pending, jobs, strict=True):
        sealed = {key: next(stream) for key, _ in todo}
        done = RenderContext(
            hmac_key=ctx.hmac_key,
            certificate=ctx.certificate,
            previous=ctx.previous,
            rng=ctx.rng,
            versions=ctx.versions,
            hashes=ctx.hashes,
            sealed=sealed,
        )
        yield d, _render(d, values, done)


def _render(
    d: DesiredSecret, values: Mapping[str, SecretValue], ctx: RenderContext
) -> Rendered | errors.SecretSyncError:
    try:
        return materialize.render(d, values, ctx=ctx)
    except errors.SecretSyncError as exc:
        return exc


def _versions(d: DesiredSecret, resolution: resolve.Resolution) -> tuple[str, ...]:
    """The source versions an object is built from (Vault KV v2 versions; SOPS content ids)."""
    seen = {r.location for r in d.refs()}
    return tuple(
        sorted(
            f"{loc} (version {resolution.versions[loc]})"
            for loc in seen
            if resolution.versions.get(loc)
        )
    )


def _vault_versions(d: DesiredSecret, resolution: resolve.Resolution) -> dict[str, str]:
    """Canonical name (`<mount>/<path>`, `<source>:<mount>/<path>` for a named source) -> the
    version read, for the refs of `d` whose kind is versioned (recorded on the object)."""
    out: dict[str, str] = {}
    for ref in d.refs():
        loc = ref.location
        kind = kinds.of(loc)
        if kind is None or not kind.versioned:  # first: the lookup below hashes the location
            continue
        version = resolution.versions.get(loc)
        name = kind.path_names(loc)[0]
        if version and "," not in name and "=" not in name:
            out[name] = version
    return out


def _version_changes(old: Mapping[str, str], new: Mapping[str, str]) -> tuple[str, ...]:
    return tuple(
        f"{name}: {old[name]} -> {version}"
        for name, version in sorted(new.items())
        if name in old and old[name] != version
    )


def path_names(location: Location) -> tuple[str, ...]:
    """The names a rotation webhook may use for a Location (for Vault `<mount>/<path>` and the
    KV v2 API form `<mount>/data/<path>`, prefixed `<source>:` for a named source); see
    `sources.kinds`. Kinds without rotation have none."""
    return kinds.path_names(location)


def _narrow(desired: list[DesiredSecret], paths: frozenset[str]) -> list[DesiredSecret]:
    """The objects built from one of `paths`."""
    return [d for d in desired if any(n in paths for r in d.refs() for n in path_names(r.location))]


def _item(d: DesiredSecret, sink: str, action: str, **kwargs: object) -> ItemResult:
    return ItemResult(
        cluster=d.cluster.name,
        namespace=d.target.namespace,
        name=d.target.name,
        fleet_secret=d.fleet_secret,
        sink=sink,
        action=action,
        desired=d,
        **kwargs,  # type: ignore[arg-type]
    )


def _reason(exc: Exception) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, errors.SecretSyncError):
        return str(exc)
    return f"internal error ({type(exc).__name__})"
