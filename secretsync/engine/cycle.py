"""One reconcile cycle: plan → resolve → materialize → deliver, the same for CLI and daemon.

Per cluster the work runs concurrently, each under its own timeout, so one slow or broken
cluster never holds up the others. A DesiredSecret whose values could not all be resolved is
not rendered: its object is kept as it is (a source outage never empties or prunes what a
cluster has), and the report says failed, and why. Unchanged objects are recognised by their
keyed content hash and not rendered or written at all.
"""

from __future__ import annotations

import asyncio
import logging
import traceback
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from secretsync.core import bounded, errors, selectors
from secretsync.core.model import Cluster, DeleteLimit, DesiredSecret, Fleet, Selector
from secretsync.delivery import kinds as delivery_kinds
from secretsync.delivery import materialize, seal
from secretsync.delivery.rendered import RenderCache, RenderContext, check_size, values_for
from secretsync.delivery.sealed import sealed_hashes
from secretsync.delivery.sealpool import SealPool, default_workers
from secretsync.engine.batches import _Batch, _batches, _render_sealed
from secretsync.engine.deletes import _held, _over_limit
from secretsync.engine.record import _record, _sealed
from secretsync.engine.report import CycleReport, ItemResult, _item
from secretsync.engine.versions import _narrow, _vault_versions
from secretsync.fleet import plan
from secretsync.fleet.certificates import FleetCertificates
from secretsync.sinks.deliver import ApplyResult, Sink, diff
from secretsync.sources import resolve, sopskeys

log = logging.getLogger(__name__)


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
    _render_cache: RenderCache = field(default_factory=RenderCache, init=False, repr=False)
    """What this engine's renders share (per Target, its hash parts), for as long as it runs."""

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
        planned: Sequence[DesiredSecret] | None = None,
        certificates: FleetCertificates | None = None,
    ) -> CycleReport:
        """One reconcile. `only_paths` (rotation names, see `kinds.path_names`) narrows
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
        `planned` is `plan.plan(fleet)` when the caller has it already (the daemon plans each
        fleet it loads): the cycle then does not plan again (1.4-2 s of a warm 100,000-object
        pass). `certificates` are the fleet's, when the caller has loaded them (the daemon,
        with the fleet); else this cycle reads each one once.
        """
        desired = await self._desired(
            fleet,
            clusters=clusters,
            selector=selector,
            only_paths=only_paths,
            check_sops_keys=check_sops_keys,
            planned=planned,
        )
        report = CycleReport(pruned=only_paths is None)
        limit = None if allow_deletes else fleet.policies.delete_limit
        resolution = await self._resolve(desired, report, check_refs=check_refs)
        targets = select_clusters(fleet, names=clusters, selector=selector)
        if only_paths is not None:
            hit = {d.cluster.name for d in desired}
            targets = {n: c for n, c in targets.items() if n in hit}
        by_cluster: dict[str, list[DesiredSecret]] = {name: [] for name in targets}
        for d in desired:
            by_cluster[d.cluster.name].append(d)
        loaded = certificates if certificates is not None else FleetCertificates(fleet)
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
                    cluster = targets[name]
                    for sink in self.sinks:
                        sink.progress(
                            cluster,
                            lambda: deadline.reschedule(loop.time() + self.cluster_timeout_s),
                        )
                    return await self._cluster(
                        loaded,
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
            finally:
                for sink in self.sinks:
                    sink.progress(targets[name], None)

        names = list(targets)
        try:
            outcomes = await bounded.each(names, one, limit=self.cluster_concurrency)
        finally:
            seals.close()
        _collect(report, names, outcomes)
        if not clusters and selector is None and only_paths is None:
            await self._prune_orphans(fleet, report, dry_run=dry_run, limit=limit)
        return report

    async def _desired(
        self,
        fleet: Fleet,
        *,
        clusters: Collection[str],
        selector: Selector | None,
        only_paths: Collection[str] | None,
        check_sops_keys: bool,
        planned: Sequence[DesiredSecret] | None,
    ) -> list[DesiredSecret]:
        """The objects this cycle is about (see `run_cycle`)."""
        desired = (
            plan.plan(fleet, clusters=clusters, selector=selector)
            if planned is None
            else plan.narrow(fleet, planned, clusters=clusters, selector=selector)
        )
        if check_sops_keys:
            refused = await asyncio.to_thread(
                sopskeys.check_files, fleet, sopskeys.readers_of(desired)
            )
            if refused:
                raise errors.ConfigErrors(refused)
        if only_paths is not None:
            desired = _narrow(desired, frozenset(only_paths))
        return desired

    async def _resolve(
        self, desired: Sequence[DesiredSecret], report: CycleReport, *, check_refs: bool
    ) -> resolve.Resolution:
        """Read the values of the objects a sink takes and whose delivery renders values (all
        of them with `check_refs`), each unique location once; the reads go on the report."""
        needs_values = [
            d
            for d in desired
            if (check_refs or delivery_kinds.get(d.delivery).reads_values)
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
        return resolution

    async def _prune_orphans(
        self, fleet: Fleet, report: CycleReport, *, dry_run: bool, limit: DeleteLimit | None
    ) -> None:
        """Remove what secretsync owns for clusters that left the fleet (within the limit)."""
        for sink in self.sinks:
            for name in await sink.orphans(set(fleet.clusters)):
                gone = Cluster(
                    name=name, labels={}, delivery=fleet.default_delivery, origin=fleet.origin
                )
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

    async def _cluster(
        self,
        certificates: FleetCertificates,
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
        if delivery_kinds.of(cluster).seals and desired:
            try:
                certificate = certificates.certificate(cluster, now=self.clock())
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
                        _sealed(step, d, done, results, report, dry_run=dry_run)
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
                    _record(
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
        cache = self._render_cache
        plain_ctx = RenderContext(hmac_key=self.hmac_key, certificate=certificate, cache=cache)
        kind = delivery_kinds.of(step.cluster)  # one cluster's batch: one delivery
        for d in batch:
            key = d.key
            step.meta[key] = d
            # an object whose values the cluster reads itself (an ExternalSecret) reads
            # nothing: a failed read of one of its paths (made for an object of another
            # cluster) is not its failure, unless its refs were read on purpose (`check_refs`)
            failure = (
                self._unresolved(d, resolution)
                if resolution.failures and (step.check_refs or kind.reads_values)
                else None
            ) or step.cert_error
            if failure is not None:
                step.keep.add(key)
                results.append(_item(d, sink.name, "failed", reason=failure))
                continue
            values = values_for(d, resolution.values) or {} if kind.reads_values else {}
            versions = _vault_versions(d, resolution) if kind.reads_values else {}
            ctx = (
                RenderContext(
                    hmac_key=self.hmac_key, certificate=certificate, versions=versions, cache=cache
                )
                if versions
                else plain_ctx
            )
            try:
                seen = observed.get(key)
                hashes = None
                if kind.seals:
                    check_size(d, values)
                    hashes = sealed_hashes(d, values, ctx=ctx)
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
                        cache=cache,
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
    def _unresolved(d: DesiredSecret, resolution: resolve.Resolution) -> str | None:
        for ref in d.refs():
            if (failure := resolution.failures.get(ref)) is not None:
                return str(failure)
        return None


def select_clusters(
    fleet: Fleet, *, names: Collection[str] = (), selector: Selector | None = None
) -> dict[str, Cluster]:
    """The clusters a run covers: those named (all when none are), that match `selector`."""
    return {
        n: c
        for n, c in fleet.clusters.items()
        if (not names or n in names) and (selector is None or selectors.matches(selector, c.labels))
    }


def _collect(
    report: CycleReport, names: Sequence[str], outcomes: Sequence[list[ItemResult] | Exception]
) -> None:
    """Each cluster's results into `report`, or its failure as that cluster's own."""
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


def _reason(exc: Exception) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, errors.SecretSyncError):
        return str(exc)
    return f"internal error ({type(exc).__name__})"
