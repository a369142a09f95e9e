"""Delivery kinds and their registry: what a kind of delivery is to load, plan, render, the
engine and the sinks, so that none of them names a delivery.

A `DeliveryKind` declares its settings (the Cluster field it reads them from), its plan rules,
whether secretsync reads the values it renders, its render and content hash, the object it
gives a cluster and the projection of that object checked for drift, and whether it goes to
Git or only to the Kubernetes API. Adding a delivery is one module defining a kind and one line
in `BUILTIN` (or one `register` call, as the tests do with a test-only kind).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol

from secretsync.core import errors
from secretsync.core.model import Cluster, DesiredSecret, Fleet, FleetSecret, Planned
from secretsync.core.registry import Registry
from secretsync.core.values import SecretValue
from secretsync.delivery.rendered import RenderContext, Rendered

type Map = Any
"""A `fleet.load.yamlmarks.Map` (the loader's field reader). Named, not imported: delivery sits
below the fleet loader and stays free of YAML."""

BUILTIN: Final = (
    "secretsync.delivery.sealed",
    "secretsync.delivery.external",
    "secretsync.delivery.direct",
)
"""Modules that define the built-in kinds (imported on first use: each registers one kind)."""


@dataclass(frozen=True, slots=True)
class ApiKind:
    """A Kubernetes object kind and where the API serves it."""

    kind: str
    group: str
    version: str
    plural: str

    def collection(self, namespace: str | None = None) -> str:
        base = f"/api/{self.version}" if not self.group else f"/apis/{self.group}/{self.version}"
        if namespace is None:
            return f"{base}/{self.plural}"
        return f"{base}/namespaces/{namespace}/{self.plural}"

    def item(self, namespace: str, name: str) -> str:
        return f"{self.collection(namespace)}/{name}"

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


class FleetFiles(Protocol):
    """The fleet repo as the loader gives it to a kind reading its settings: paths confined to
    the repo (a path leading out of it is refused), files read within the loader's limits."""

    def confine(self, relative: str) -> None:
        """Raises `errors.ConfigError` when `relative` leads out of the fleet repo."""
        ...

    def read(self, relative: str) -> bytes:
        """The file's bytes; `errors.ConfigError` when it is missing, too large or outside."""
        ...


type Problem = Callable[[str, str], None]
"""(message, field) -> None: a problem recorded against the line of that field."""


class DeliveryKind(Protocol):
    """One kind of delivery. Capabilities are attributes, so callers never test for a kind."""

    @property
    def name(self) -> str:
        """The value of a Cluster's `spec.delivery`."""
        ...

    @property
    def api_kind(self) -> ApiKind:
        """The object a cluster receives."""
        ...

    @property
    def in_git(self) -> bool:
        """Its objects are written into the fleet repo (a GitOps tool applies them); otherwise
        they go only to the Kubernetes API, never to Git."""
        ...

    @property
    def reads_values(self) -> bool:
        """secretsync reads the values it renders. When not, the cluster reads them itself
        (through its External Secrets store): every ref must be of a source kind that store can
        read, and a failed read of a ref is not this object's failure."""
        ...

    @property
    def holds_values(self) -> bool:
        """Its live object holds the values in plain `data` (a Secret): which keys secretsync
        applied is recorded on it (keys another writer adds are not drift), and the keys of an
        observed one are told apart by hashing their values."""
        ...

    @property
    def seals(self) -> bool:
        """Its objects are sealed to the cluster's certificate (loaded once per cycle, and
        sealed in the engine's sealing pool)."""
        ...

    @property
    def controller_writes_secret(self) -> bool:
        """A controller in the cluster writes the Secret from its object, copying the content
        hash annotation: a workload restarted for it waits until that Secret carries the hash
        delivered (the SealedSecret's controller does; ESO's Secret does not carry it)."""
        ...

    @property
    def field(self) -> str | None:
        """The Cluster spec field holding its settings (read whatever the cluster's delivery,
        so a setting is checked before a cluster switches to it); None: it has none."""
        ...

    def read_settings(
        self, spec: Map, *, cluster: str, files: FleetFiles, chosen: bool
    ) -> object | None:
        """Its settings from the Cluster's spec (`spec.map(self.field)`); `chosen` when it is
        the Cluster's delivery, which may require some. Problems go to `spec.ctx`; None:
        nothing to keep."""
        ...

    def check_secret(
        self,
        *,
        secret: FleetSecret,
        cluster: Cluster,
        data: Mapping[str, Planned],
        fleet: Fleet,
    ) -> list[errors.ConfigError]:
        """Its plan rules for one FleetSecret on one cluster of this delivery."""
        ...

    def render(
        self, desired: DesiredSecret, values: Mapping[str, SecretValue], *, ctx: RenderContext
    ) -> Rendered:
        """The object, with its keyed content hash."""
        ...

    def content_hash(
        self, desired: DesiredSecret, values: Mapping[str, SecretValue], *, ctx: RenderContext
    ) -> str:
        """The content hash `render` would give, without rendering (or sealing) anything."""
        ...

    def drift(self, obj: Mapping[str, Any]) -> dict[str, object]:
        """The part of a live object secretsync manages: its hash tells drift."""
        ...


_REGISTRY: Final = Registry[DeliveryKind]("delivery", builtin=BUILTIN)

register: Final = _REGISTRY.register
"""Add a kind (a second one of the same name replaces the first: tests re-register)."""
unregister: Final = _REGISTRY.unregister
kinds: Final = _REGISTRY.all
"""Every registered kind by name, the built-in ones first."""
get: Final = _REGISTRY.get
"""The kind of that name; `errors.ConfigError` when none is registered."""


def known(name: str) -> str:
    """`name` when a kind of that name is registered, ValueError otherwise (the loader's
    choice of `spec.delivery`)."""
    if name not in kinds():
        raise ValueError(name)
    return name


def of(cluster: Cluster) -> DeliveryKind:
    """The delivery of a loaded Cluster (the loader admits only registered ones)."""
    return get(cluster.delivery)


def by_object(kind: str) -> DeliveryKind | None:
    """The delivery whose objects are of that Kubernetes kind."""
    return next((k for k in kinds().values() if k.api_kind.kind == kind), None)


def settings[T](cluster: Cluster, kind: str, cls: type[T], default: T) -> T:
    """The settings `kind` read for `cluster` (`default` when it read none)."""
    found = cluster.settings.get(kind)
    return found if isinstance(found, cls) else default
