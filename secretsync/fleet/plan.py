"""Fleet → one `DesiredSecret` per (cluster, FleetSecret): selectors, overlays, templates, policy.

Every problem — a template naming a label a cluster lacks, a ref a delivery cannot carry, a
namespace a cluster does not allow, a forbidden type, two FleetSecrets on one target, a filled-in
SOPS path that leaves the repo through a symlink — is a `ConfigError` pointing at the line that
caused it; all of them are raised together, so a bad fleet changes nothing. A ref is planned by
its source kind (`sources.kinds`), which turns it into the Location its reads are deduplicated
by; each delivery kind (`delivery.kinds`) adds its own rules for the objects it gets. Pure but
for the kinds' path checks: each distinct filled-in SOPS path, and each distinct
filled-in credential file of a Vault identity, is resolved against the repo once per plan.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from secretsync.core import errors, selectors, templating
from secretsync.core.model import (
    Cluster,
    DataEntry,
    DesiredSecret,
    Fleet,
    FleetSecret,
    Literal,
    LiteralSpec,
    ObjectKey,
    Planned,
    Selector,
)
from secretsync.delivery import kinds as delivery_kinds
from secretsync.sources import kinds


def layered_data(secret: FleetSecret, cluster: Cluster) -> dict[str, DataEntry]:
    """The FleetSecret's data for one cluster: base, then each matching overlay in order."""
    data = dict(secret.data)
    for overlay in secret.overlays:
        if selectors.overlay_reaches(overlay, cluster):
            data.update(overlay.data)
    return data


def _planned(
    entry: DataEntry,
    *,
    key: str,
    cluster: Cluster,
    fleet: Fleet,
    cache: dict[str, object] | None = None,
) -> tuple[Planned | None, list[errors.ConfigError]]:
    """One data entry for one cluster; a ref is planned by its source kind (`sources.kinds`).
    `cache` is kept for one plan pass (a kind keeps there what does not depend on the cluster,
    such as where a filled-in SOPS path leads)."""
    problems: list[errors.ConfigError] = []
    spec = entry.spec

    def problem(message: str, field: str) -> None:
        problems.append(
            errors.ConfigError(
                message, file=entry.origin.file, line=entry.origin.line, field=f"data.{key}.{field}"
            )
        )

    def fill(text: str, field: str) -> str:
        try:
            return templating.render(text, cluster_name=cluster.name, labels=cluster.labels)
        except templating.TemplateError as exc:
            problem(str(exc), field)
            return ""

    planned: Planned | None = None
    if isinstance(spec, LiteralSpec):
        planned = Literal(fill(spec.value, "value"))
    else:
        kind = kinds.get(spec.kind)
        where = spec.kind
        planned = kind.plan_ref(
            spec,
            kinds.RefPlan(
                cluster=cluster,
                fleet=fleet,
                fill=lambda text, field: fill(text, f"{where}.{field}"),
                problem=lambda message, field: problem(message, f"{where}.{field}"),
                cache=cache if cache is not None else {},
            ),
        )
        delivery = delivery_kinds.of(cluster)
        if not delivery.reads_values and not kind.external:
            problem(
                f"cluster {cluster.name!r} uses {delivery.name} delivery, which cannot carry a "
                f"{where}-sourced key (External Secrets Operator reads only from its store)",
                where,
            )
    return (None if problems else planned), problems


def _reads(entry: DataEntry, fleet: Fleet) -> tuple[str, ...] | None:
    """What of a cluster an entry's templates read (see `templating.inputs`), all fields,
    including the source settings a ref is planned with (an identity's templates)."""
    spec = entry.spec
    if isinstance(spec, LiteralSpec):
        texts: tuple[str, ...] = (spec.value,)
    else:
        texts = kinds.get(spec.kind).plan_inputs(spec, fleet)
    out: dict[str, None] = {}
    for text in texts:
        found = templating.inputs(text)
        if found is None:
            return None
        out.update(dict.fromkeys(found))
    return tuple(out)


_UNSEEN: tuple[str, ...] = ("\0unseen",)  # a sentinel, compared by identity


class _Memo:
    """Planned entries by what they were planned from: the entry, whether the cluster is
    external, and the cluster's values for what the entry's templates read. A fleet of 100
    clusters in 10 label groups plans each templated entry 10 times, not 100. Only clean
    results are kept (a problem's message names its cluster)."""

    __slots__ = ("_done", "_fleet", "_reads")

    def __init__(self, fleet: Fleet) -> None:
        self._fleet = fleet
        self._reads: dict[int, tuple[str, ...] | None] = {}
        self._done: dict[tuple[object, ...], Planned] = {}

    def key(self, entry: DataEntry, data_key: str, cluster: Cluster) -> tuple[object, ...] | None:
        ident = id(entry)
        reads = self._reads.get(ident, _UNSEEN)
        if reads is _UNSEEN:
            reads = self._reads[ident] = _reads(entry, self._fleet)
        if reads is None:
            return None
        external = not delivery_kinds.of(cluster).reads_values
        spec = entry.spec
        settings = (
            () if isinstance(spec, LiteralSpec) else kinds.get(spec.kind).cluster_inputs(cluster)
        )
        if not reads:
            return (ident, data_key, external, settings)
        labels = cluster.labels
        return (
            ident,
            data_key,
            external,
            settings,
            *[cluster.name if r == "" else labels.get(r) for r in reads],
        )

    def get(self, key: tuple[object, ...] | None) -> Planned | None:
        return None if key is None else self._done.get(key)

    def put(self, key: tuple[object, ...] | None, planned: Planned) -> None:
        if key is not None:
            self._done[key] = planned


def _policy(secret: FleetSecret, cluster: Cluster, fleet: Fleet) -> list[errors.ConfigError]:
    out = []
    target = secret.target
    where = {"file": secret.target_origin.file, "line": secret.target_origin.line}
    allowed = cluster.allowed_namespaces
    if allowed is not None and target.namespace not in allowed:
        out.append(
            errors.ConfigError(
                f"namespace {target.namespace!r} is not in allowedNamespaces of cluster "
                f"{cluster.name!r} ({cluster.origin})",
                field="spec.target.namespace",
                **where,  # type: ignore[arg-type]
            )
        )
    if target.type in fleet.policies.forbidden_types:
        out.append(
            errors.ConfigError(
                f"Secret type {target.type!r} is forbidden by the Fleet's policies",
                field="spec.target.type",
                **where,  # type: ignore[arg-type]
            )
        )
    return out


def plan(
    fleet: Fleet,
    *,
    clusters: Collection[str] = (),
    selector: Selector | None = None,
) -> list[DesiredSecret]:
    """Every DesiredSecret of the fleet (optionally only some clusters), in a stable order.

    The whole fleet is always checked, so a filter never hides an error.
    """
    problems: list[errors.ConfigError] = []
    for name in clusters:
        if name not in fleet.clusters:
            problems.append(errors.ConfigError(f"unknown cluster {name!r}", field="--cluster"))
    owners: dict[ObjectKey, FleetSecret] = {}
    desired: list[DesiredSecret] = []
    shared: dict[Planned, Planned] = {}  # one instance per distinct ref, however many clusters
    cache: dict[str, object] = {}
    memo = _Memo(fleet)
    for cluster in fleet.clusters.values():
        for secret in fleet.secrets.values():
            if not selectors.matches(secret.selector, cluster.labels):
                continue
            key = ObjectKey(cluster.name, secret.target.namespace, secret.target.name)
            if (other := owners.get(key)) is not None:
                problems.append(
                    errors.ConfigError(
                        f"FleetSecrets {other.name!r} ({other.origin}) and {secret.name!r} both "
                        f"target {secret.target.namespace}/{secret.target.name} on cluster "
                        f"{cluster.name!r}",
                        file=secret.target_origin.file,
                        line=secret.target_origin.line,
                        field="spec.target",
                    )
                )
                continue
            owners[key] = secret
            item_problems = _policy(secret, cluster, fleet)
            data: dict[str, Planned] = {}
            for data_key, entry in sorted(layered_data(secret, cluster).items()):
                memo_key = memo.key(entry, data_key, cluster)
                if (hit := memo.get(memo_key)) is not None:
                    data[data_key] = hit
                    continue
                planned, entry_problems = _planned(
                    entry, key=data_key, cluster=cluster, fleet=fleet, cache=cache
                )
                item_problems.extend(entry_problems)
                if planned is not None:
                    data[data_key] = shared.setdefault(planned, planned)
                    memo.put(memo_key, data[data_key])
            item_problems.extend(
                delivery_kinds.of(cluster).check_secret(
                    secret=secret, cluster=cluster, data=data, fleet=fleet
                )
            )
            problems.extend(item_problems)
            if item_problems:
                continue
            desired.append(
                DesiredSecret(
                    fleet_secret=secret.name,
                    cluster=cluster,
                    target=secret.target,
                    data=data,
                    origin=secret.origin,
                    refresh_interval=secret.refresh_interval,
                    restarts=secret.restarts,
                    adopt=secret.adopt,
                )
            )
    if problems:
        raise errors.ConfigErrors(_unique(problems))
    return _narrowed(desired, clusters=clusters, selector=selector)


def narrow(
    fleet: Fleet,
    desired: Sequence[DesiredSecret],
    *,
    clusters: Collection[str] = (),
    selector: Selector | None = None,
) -> list[DesiredSecret]:
    """The whole fleet's plan (`plan(fleet)`) narrowed to some clusters: what `plan(fleet,
    clusters=..., selector=...)` gives, without planning again."""
    unknown = [name for name in clusters if name not in fleet.clusters]
    if unknown:
        raise errors.ConfigErrors(
            [errors.ConfigError(f"unknown cluster {n!r}", field="--cluster") for n in unknown]
        )
    return _narrowed(desired, clusters=clusters, selector=selector)


def _narrowed(
    desired: Sequence[DesiredSecret], *, clusters: Collection[str], selector: Selector | None
) -> list[DesiredSecret]:
    wanted = set(clusters)
    if not wanted and selector is None:
        return list(desired)
    return [
        d
        for d in desired
        if (not wanted or d.cluster.name in wanted)
        and (selector is None or selectors.matches(selector, d.cluster.labels))
    ]


def _unique(problems: list[errors.ConfigError]) -> list[errors.ConfigError]:
    seen: dict[str, errors.ConfigError] = {}
    for p in problems:
        seen.setdefault(p.render(), p)
    return list(seen.values())
