"""The report document of `render`, `plan` and `sync`: per cluster the objects and their actions, a
summary, the headline of a plan."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from secretsync.engine.report import CycleReport, ItemResult

if TYPE_CHECKING:
    pass


def _item_doc(item: ItemResult) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "object": f"{item.namespace}/{item.name}",
        "fleetSecret": item.fleet_secret,
        "action": item.action,
    }
    keys = {
        k: list(v)
        for k, v in (
            ("added", item.keys.added),
            ("changed", item.keys.changed),
            ("removed", item.keys.removed),
        )
        if v
    }
    if keys:
        doc["keys"] = keys
    if item.versions:
        doc["sources"] = list(item.versions)
    if item.version_changes:
        doc["versionChanges"] = list(item.version_changes)
    if item.reason:
        doc["reason"] = item.reason
    return doc


def _report_doc(report: CycleReport, *, verbose: bool) -> dict[str, Any]:
    clusters: dict[str, list[dict[str, Any]]] = {}
    counts = _counts(report)
    for item in report.items:
        if verbose or item.action != "unchanged":
            clusters.setdefault(item.cluster, []).append(_item_doc(item))
    doc: dict[str, Any] = {
        "clusters": clusters,
        "summary": {
            "created": counts["create"],
            "updated": counts["update"],
            "deleted": counts["delete"],
            "deletesHeld": counts["held"],
            "unchanged": counts["unchanged"],
            "failed": counts["failed"],
            "sourceReads": report.reads,
            "seals": report.seals,
        },
    }
    if report.failed_clusters:
        doc["failedClusters"] = report.failed_clusters
    return doc


def _counts(report: CycleReport) -> dict[str, int]:
    counts = dict.fromkeys(("create", "update", "delete", "held", "unchanged", "failed"), 0)
    for item in report.items:
        counts[item.action] = counts.get(item.action, 0) + 1
    return counts


def _headline(report: CycleReport) -> str:
    """One line for a whole plan: what would change, on how many clusters."""
    counts = _counts(report)
    changing = {
        i.cluster for i in report.items if i.action in ("create", "update", "delete", "held")
    }
    return (
        f"would create {counts['create']}, update {counts['update']}, delete "
        f"{counts['delete']} objects on {len(changing)} clusters; {counts['held']} deletes held"
    )


def _changes(report: CycleReport) -> bool:
    return any(i.action in ("create", "update", "delete", "held") for i in report.items)
