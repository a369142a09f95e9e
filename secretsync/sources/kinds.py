"""Source kinds and their registry: what a kind of source is to load, plan, resolve, the engine
and the daemon, so that none of them names a kind.

A `SourceKind` declares its ref schema (how `{<name>: {...}}` is read from the fleet YAML),
its settings under `spec.sources`, how a ref becomes a `Location` for one cluster (the
Location is the dedup key of reads), the factory of its sources, the rotation names of a
Location, and its capabilities (versioned, pollable, usable by External Secrets Operator).
Adding a kind is one module defining one and one line in `BUILTIN` (or one `register` call,
as the tests do with a test-only kind).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Protocol

from secretsync.core.model import Cluster, Fleet, Location, RefSpec, ValueRef
from secretsync.core.registry import Registry

if TYPE_CHECKING:
    from secretsync.sources.resolve import Source

type Map = Any
"""A `fleet.load.yamlmarks.Map` (the loader's field reader). Named, not imported: `plan` uses
this registry and stays free of YAML, which the reader is built on."""

BUILTIN: Final = (
    "secretsync.sources.vault.kind",
    "secretsync.sources.sopskind",
)
"""Modules that define the built-in kinds (imported on first use: each registers one kind)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RefPlan:
    """What `plan` hands a kind for one ref of one cluster."""

    cluster: Cluster
    fleet: Fleet
    fill: Callable[[str, str], str]
    """(text, field under the ref) -> the text with the cluster's templates filled in; a
    problem is recorded by `plan` against the ref's line."""
    problem: Callable[[str, str], None]
    """(message, field under the ref): a problem with this ref for this cluster."""
    cache: dict[str, object] = field(default_factory=dict)
    """Kept for one plan pass: a kind's results that do not depend on the cluster."""


@dataclass(frozen=True, slots=True, kw_only=True)
class BuildOptions:
    """What the operator gives every source factory: the environment (never read from the
    process here) and the command-line overrides."""

    env: Mapping[str, str]
    vault_address: str | None = None  # `--vault-address`: wins over the Fleet's address


class SourceKind(Protocol):
    """One kind of source. Capabilities are attributes, so callers never test for a kind."""

    @property
    def name(self) -> str:
        """The ref key in fleet YAML and `Location.source`."""
        ...

    @property
    def versioned(self) -> bool:
        """Reads report a version, recorded on the objects built from them."""
        ...

    @property
    def pollable(self) -> bool:
        """Its sources tell the current version of Locations without reading values."""
        ...

    @property
    def external(self) -> bool:
        """External Secrets Operator can read it: an `external` cluster may use its refs."""
        ...

    def read_settings(self, sources: Map) -> dict[str, object]:
        """Its settings from `spec.sources` (read with `sources.map(...)`), as Fleet fields."""
        ...

    def read_ref(self, ref: Map) -> RefSpec | None:
        """`{<name>: {...}}` of a data entry; problems go to `ref.ctx`."""
        ...

    def check_ref(self, spec: RefSpec, fleet: Fleet) -> list[tuple[str, str]]:
        """What a loaded ref names that the Fleet lacks: (field under the ref, message)."""
        ...

    def cluster_problems(self, cluster: Cluster, fleet: Fleet) -> list[tuple[str, str]]:
        """What a Cluster's settings for this kind name that the Fleet lacks: (field, message)."""
        ...

    def plan_inputs(self, spec: RefSpec, fleet: Fleet) -> tuple[str, ...]:
        """Every text whose templates the planned Location depends on (the ref's own and
        those of the settings it may read with, such as an identity)."""
        ...

    def cluster_inputs(self, cluster: Cluster) -> tuple[object, ...]:
        """The cluster's settings (not its labels) the planned Location depends on."""
        ...

    def plan_ref(self, spec: RefSpec, plan: RefPlan) -> ValueRef:
        """The ref for one cluster: a Location (the dedup key) and the key inside it."""
        ...

    def build(self, fleet: Fleet, options: BuildOptions) -> dict[str, Source]:
        """Its sources for the Fleet, keyed by `Location.source_key`."""
        ...

    def path_names(self, location: Location) -> tuple[str, ...]:
        """The names a rotation webhook or the poller uses for a Location (the first is its
        canonical name); () when rotation does not apply."""
        ...


_REGISTRY: Final = Registry[SourceKind]("source kind", builtin=BUILTIN, reserved=("value", ""))

register: Final = _REGISTRY.register
"""Add a kind (a second one of the same name replaces the first: tests re-register)."""
unregister: Final = _REGISTRY.unregister
kinds: Final = _REGISTRY.all
"""Every registered kind by name, the built-in ones first."""
get: Final = _REGISTRY.get
"""The kind of that name; `errors.ConfigError` when none is registered."""


def of(location: Location) -> SourceKind | None:
    return kinds().get(location.source)


def path_names(location: Location) -> tuple[str, ...]:
    """The rotation names of a Location (see `SourceKind.path_names`)."""
    kind = of(location)
    return kind.path_names(location) if kind is not None else ()


def build_sources(fleet: Fleet, options: BuildOptions) -> dict[str, Source]:
    """Every source the Fleet configures, keyed by `Location.source_key`."""
    out: dict[str, Source] = {}
    for kind in kinds().values():
        out.update(kind.build(fleet, options))
    return out
