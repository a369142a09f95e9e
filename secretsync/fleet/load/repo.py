"""The whole fleet repo: the Fleet first, then every Cluster and FleetSecret file, names
unique, overlays naming known clusters, selectors that select."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path

from secretsync.core import errors, selectors
from secretsync.core.model import (
    Cluster,
    Fleet,
    FleetSecret,
    LiteralSpec,
)
from secretsync.fleet.load.cluster import read_cluster
from secretsync.fleet.load.files import (
    FLEET_FILE,
    yaml_files,
)
from secretsync.fleet.load.fleet import fleet_document
from secretsync.fleet.load.schema import (
    Header,
    documents,
)
from secretsync.fleet.load.secret import read_fleet_secret
from secretsync.fleet.load.yamlmarks import (
    Ctx,
)
from secretsync.sources import kinds


def register[T: (Cluster, FleetSecret)](
    ctx: Ctx, table: dict[str, T], item: T | None, what: str, header: Header
) -> None:
    """Add a loaded Cluster or FleetSecret, refusing a second one of the same name."""
    if item is None:
        return
    if (first := table.get(item.name)) is not None:
        ctx.errors.append(
            errors.ConfigError(
                f"{what} {item.name!r} is also defined at {first.origin}",
                file=header.origin.file,
                line=header.origin.line,
                field="metadata.name",
            )
        )
        return
    table[item.name] = item


def empty_selections(
    secrets: Iterable[FleetSecret], clusters: Iterable[Cluster]
) -> list[errors.ConfigError]:
    """A selector that picks no cluster is almost always a typo (`env: prd`), and rendering it
    would prune the secret from every cluster it used to reach: an error unless the
    FleetSecret says `allowNoClusters: true`. An overlay that reaches none of its FleetSecret's
    clusters changes nothing, and is refused for the same reason."""
    every = list(clusters)
    problems: list[errors.ConfigError] = []
    for secret in secrets:
        if secret.allow_no_clusters:
            continue
        chosen = [c for c in every if selectors.matches(secret.selector, c.labels)]
        if not chosen:
            problems.append(
                errors.ConfigError(
                    f"selects no cluster of the fleet's {len(every)} (set "
                    "allowNoClusters: true if that is deliberate)",
                    file=(secret.selector_origin or secret.origin).file,
                    line=(secret.selector_origin or secret.origin).line,
                    field="spec.clusterSelector",
                )
            )
            continue
        for overlay in secret.overlays:
            if not any(selectors.overlay_reaches(overlay, c) for c in chosen):
                field = "spec.overlays." + (
                    "clusterSelector" if overlay.clusters is None else "clusters"
                )
                problems.append(
                    errors.ConfigError(
                        f"the overlay selects none of the {len(chosen)} cluster(s) this "
                        "FleetSecret selects",
                        file=overlay.origin.file,
                        line=overlay.origin.line,
                        field=field,
                    )
                )
    return problems


def source_names(
    fleet: Fleet, clusters: Iterable[Cluster], secrets: Iterable[FleetSecret]
) -> list[errors.ConfigError]:
    """Every source a ref or a Cluster names exists in the Fleet (each kind says what its
    refs and cluster settings name)."""
    registered = kinds.kinds()
    problems: list[errors.ConfigError] = []
    for cluster in clusters:
        for kind in registered.values():
            for field, message in kind.cluster_problems(cluster, fleet):
                problems.append(
                    errors.ConfigError(
                        message, file=cluster.origin.file, line=cluster.origin.line, field=field
                    )
                )
    for secret in secrets:
        layers = [secret.data, *(overlay.data for overlay in secret.overlays)]
        for data in layers:
            for key, entry in data.items():
                spec = entry.spec
                if isinstance(spec, LiteralSpec):
                    continue
                for field, message in registered[spec.kind].check_ref(spec, fleet):
                    problems.append(
                        errors.ConfigError(
                            message,
                            file=entry.origin.file,
                            line=entry.origin.line,
                            field=f"spec.data.{key}.{spec.kind}.{field}",
                        )
                    )
    return problems


def load_fleet_settings(root: Path) -> Fleet:
    """Only secretsync.yaml (defaults, sources, policies), for commands that need the Fleet's
    settings but not its clusters and secrets (`scan`). Raises `errors.ConfigErrors`."""
    ctx = Ctx(root=Path(root))
    fleet = fleet_document(ctx, Path(root))
    if ctx.errors:
        raise errors.ConfigErrors(ctx.errors)
    return fleet


def load_fleet(root: Path) -> Fleet:
    """Load and check a fleet repo. Raises `errors.ConfigErrors` listing every problem."""
    root = Path(root)
    if not root.is_dir():
        raise errors.ConfigErrors(
            [errors.ConfigError("fleet repo folder not found", file=str(root))]
        )
    ctx = Ctx(root=root)
    fleet = fleet_document(ctx, root)

    clusters: dict[str, Cluster] = {}
    secrets: dict[str, FleetSecret] = {}
    files: list[str] = []
    seen: set[str] = set()
    for folder in (fleet.layout.clusters, fleet.layout.secrets):
        try:
            for rel in yaml_files(root, folder):
                if rel not in seen:
                    seen.add(rel)
                    files.append(rel)
        except errors.ConfigError as exc:
            ctx.errors.append(exc)
    for rel in files:
        for header in documents(root, rel, ctx):
            if header.kind == "Fleet":
                ctx.errors.append(
                    errors.ConfigError(
                        f"a Fleet belongs in {FLEET_FILE}",
                        file=rel,
                        line=header.origin.line,
                        field="kind",
                    )
                )
            elif header.kind == "Cluster":
                register(ctx, clusters, read_cluster(ctx, header, fleet), "cluster", header)
            elif header.kind == "FleetSecret":
                register(ctx, secrets, read_fleet_secret(ctx, header), "FleetSecret", header)
    for secret in secrets.values():
        for overlay in secret.overlays:
            for name in overlay.clusters or ():
                if name not in clusters:
                    ctx.errors.append(
                        errors.ConfigError(
                            f"overlay names unknown cluster {name!r}",
                            file=overlay.origin.file,
                            line=overlay.origin.line,
                            field="spec.overlays.clusters",
                        )
                    )
    ctx.errors.extend(source_names(fleet, clusters.values(), secrets.values()))
    if not ctx.errors:
        ctx.errors.extend(empty_selections(secrets.values(), clusters.values()))
    if ctx.errors:
        raise errors.ConfigErrors(ctx.errors)
    # every other field as the Fleet file gave it: a field added to Fleet is carried over
    return dataclasses.replace(
        fleet, clusters=dict(sorted(clusters.items())), secrets=dict(sorted(secrets.items()))
    )
