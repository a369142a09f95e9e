"""One batch's outcome as results: each sealed object as it arrives (staged at once by a sink
that stages), and one result per object of the batch and per object deleted."""

from __future__ import annotations

from secretsync.core import errors
from secretsync.core.model import DesiredSecret
from secretsync.delivery import kinds as delivery_kinds
from secretsync.delivery.rendered import Rendered
from secretsync.engine.batches import _Batch
from secretsync.engine.report import NO_VERSIONS, CycleReport, ItemResult, _item
from secretsync.engine.versions import _vault_versions, _version_changes, _versions
from secretsync.sinks.deliver import ApplyResult, Diff, KeyDiff, key_diff
from secretsync.sources import resolve


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
            _vault_versions(d, resolution) if delivery_kinds.get(d.delivery).reads_values else {}
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
                version_changes=_version_changes(seen.versions if seen else {}, delivered_versions),
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
