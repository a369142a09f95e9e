"""The domain model: what a fleet repo says, as frozen data. No I/O here.

`load` builds these from YAML; `plan` turns them into `DesiredSecret`s, one per cluster and
FleetSecret; everything after that works on `DesiredSecret`s and never looks at YAML again.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Final

API_VERSION: Final = "secretsync.dev/v1alpha1"

LABEL_MANAGED_BY: Final = "app.kubernetes.io/managed-by"
MANAGED_BY: Final = "secretsync"
LABEL_FLEET_SECRET: Final = "secretsync.dev/fleet-secret"
ANNOTATION_CLUSTER: Final = "secretsync.dev/cluster"
ANNOTATION_CONTENT_HASH: Final = "secretsync.dev/content-hash"
ANNOTATION_KEY_HASHES: Final = "secretsync.dev/key-hashes"
ANNOTATION_SOURCE_VERSIONS: Final = "secretsync.dev/source-versions"
DEFAULT_DELIVERY: Final = "sealed"  # a Cluster's delivery unless the Fleet or it says otherwise
ANNOTATION_MANAGED_KEYS: Final = "secretsync.dev/managed-keys"  # the keys a Secret got applied
FIELD_MANAGER: Final = "secretsync"


def is_owned(labels: Mapping[str, object], annotations: Mapping[str, object], cluster: str) -> bool:
    """Whether an object's metadata says secretsync delivered it to `cluster` (ownership)."""
    return (
        labels.get(LABEL_MANAGED_BY) == MANAGED_BY
        and annotations.get(ANNOTATION_CLUSTER) == cluster
    )


class Scope(enum.StrEnum):
    STRICT = "strict"
    NAMESPACE_WIDE = "namespace-wide"
    CLUSTER_WIDE = "cluster-wide"


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a thing was written in the fleet repo: repo-relative file and 1-based line."""

    file: str
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


# --- label selectors -------------------------------------------------------------------------


class Operator(enum.StrEnum):
    IN = "In"
    NOT_IN = "NotIn"
    EXISTS = "Exists"
    DOES_NOT_EXIST = "DoesNotExist"


@dataclass(frozen=True, slots=True)
class Requirement:
    key: str
    operator: Operator
    values: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Selector:
    """A Kubernetes label selector: every requirement must hold (an empty one matches all)."""

    requirements: tuple[Requirement, ...] = ()


# --- value refs ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Identity:
    """Who reads: the templated parts of a source's settings filled in for one cluster (a Vault
    namespace, an auth role, AppRole files). Clusters with equal fill-ins share an identity,
    so its login and its reads are shared too. It names files and roles, never a credential."""

    namespace: str | None = None
    auth: tuple[tuple[str, str], ...] = ()  # (setting as written in the fleet, filled-in value)

    def __str__(self) -> str:
        parts = ([f"namespace={self.namespace}"] if self.namespace else []) + [
            f"{name}={value}" for name, value in self.auth
        ]
        return " ".join(parts) or "default"


@dataclass(frozen=True, slots=True)
class Location:
    """One readable unit of a source: a Vault secret (at a version) or one SOPS file.

    Resolution reads each unique Location once per cycle, however many keys and clusters use
    it: the dedup key is exactly (source kind, named source, identity, mount, path, version).
    """

    source: str  # the source kind: "vault" | "sops" | a registered kind
    path: str  # vault: path inside the mount; sops: repo-relative file
    mount: str = ""  # vault only
    version: int | None = None  # vault only; None = latest
    instance: str = ""  # a named source of that kind (`sources.vaults.<name>`); "" the default
    identity: Identity | None = None  # None: the source's own settings, nothing templated

    @property
    def source_key(self) -> str:
        """The source that reads this Location: its kind, or `<kind>:<name>` for a named one
        (the key of the sources mapping, and the `source` label of metrics)."""
        return f"{self.source}:{self.instance}" if self.instance else self.source

    def __str__(self) -> str:
        where = f"{self.mount}/{self.path}" if self.mount else self.path
        version = f"@{self.version}" if self.version is not None else ""
        return f"{self.source_key}:{where}{version}"


@dataclass(frozen=True, slots=True)
class ValueRef:
    """A key inside a Location. `key` may be dotted (`db.password`) for nested documents."""

    location: Location
    key: str

    def __str__(self) -> str:
        return f"{self.location}#{self.key}"


class RefSpec:
    """A ref to a source as written (`{<kind>: {...}}`), templates not yet applied. Each source
    kind (`sources.kinds`) has its own subclass; `key` names the value inside the Location."""

    __slots__ = ()
    kind: ClassVar[str]
    key: str

    def templates(self) -> tuple[str, ...]:
        """The texts of the ref that may hold templates."""
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class VaultSpec(RefSpec):
    """`{vault: {path, key, version?, mount?, source?}}` as written; templates not yet applied."""

    path: str
    key: str
    version: int | None = None
    mount: str | None = None
    source: str | None = None  # a named Vault source; None: the cluster's, else the default
    kind: ClassVar[str] = "vault"

    def templates(self) -> tuple[str, ...]:
        return (self.path, self.key)


@dataclass(frozen=True, slots=True)
class SopsSpec(RefSpec):
    """`{sops: {file, key}}` as written; templates not yet applied."""

    file: str
    key: str
    kind: ClassVar[str] = "sops"

    def templates(self) -> tuple[str, ...]:
        return (self.file, self.key)


@dataclass(frozen=True, slots=True)
class LiteralSpec:
    """`{value: "..."}`: a non-secret literal, may hold templates."""

    value: str


ValueSpec = RefSpec | LiteralSpec


@dataclass(frozen=True, slots=True)
class DataEntry:
    spec: ValueSpec
    origin: Origin


# --- fleet -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class VaultAuth:
    method: str = "token"  # token | approle | kubernetes
    token_file: str | None = None
    role: str | None = None
    role_id: str | None = None
    role_id_file: str | None = None
    secret_id_file: str | None = None
    secret_id_env: str | None = None
    mount_path: str | None = None
    jwt_file: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class VaultTLS:
    ca_file: str | None = None
    client_cert_file: str | None = None
    client_key_file: str | None = None
    insecure: bool = False  # plain http:// to a host that is not loopback (warned every run)


@dataclass(frozen=True, slots=True, kw_only=True)
class VaultLimits:
    concurrency: int = 32
    requests_per_second: float = 500.0
    timeout_seconds: float = 10.0


@dataclass(frozen=True, slots=True, kw_only=True)
class VaultSettings:
    """One Vault source (`sources.vault`, or an entry of `sources.vaults`). `namespace` and the
    auth's role, mountPath and credential files may hold cluster templates: then each cluster
    reads with its own filled-in identity (`Identity`). The engines a ref reads live under the
    ref (`kvMount` is the default of its `mount`), so a later engine kind (database/creds,
    pki/issue) is a new ref field beside `path`, not a new source."""

    address: str | None = None
    namespace: str | None = None
    kv_mount: str = "secret"
    kv_version: int | None = None
    auth: VaultAuth = field(default_factory=VaultAuth)
    tls: VaultTLS = field(default_factory=VaultTLS)
    limits: VaultLimits = field(default_factory=VaultLimits)


SOPS_KEY_TYPES: tuple[str, ...] = ("age", "pgp", "hc_vault", "kms", "gcp_kms", "azure_kv")
"""Key types a Fleet may allow in SOPS files, named as sops names them in its metadata."""


@dataclass(frozen=True, slots=True, kw_only=True)
class VaultTransitKey:
    """One Vault transit key SOPS files may name: the address exactly, and optionally the
    engine path and key name (None: any)."""

    address: str
    engine_path: str | None = None
    key_name: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class SopsSettings:
    timeout_seconds: float = 30.0
    max_file_bytes: int = 5 * 1024 * 1024
    key_types: frozenset[str] = frozenset({"age", "pgp"})
    vault_transit: tuple[VaultTransitKey, ...] = ()
    aws_kms: tuple[str, ...] = ()  # key (and role) ARNs, or prefixes ending in ":" or "/"
    gcp_kms: tuple[str, ...] = ()  # resource ids, or prefixes ending in "/"
    azure_key_vault: tuple[str, ...] = ()  # `<vault_url>/keys/<name>/<version>`, or prefixes


@dataclass(frozen=True, slots=True, kw_only=True)
class Policies:
    """Fleet-wide rules checked before anything is written."""

    forbidden_types: tuple[str, ...] = (
        "kubernetes.io/service-account-token",
        "bootstrap.kubernetes.io/token",
    )
    allow_cluster_wide: bool = True
    delete_limit: DeleteLimit = field(default_factory=lambda: DeleteLimit(percent=25))


@dataclass(frozen=True, slots=True, kw_only=True)
class DeleteLimit:
    """How many owned objects one run may delete on one cluster: a count, or a percentage of
    the objects secretsync owns there. Deleting one object is always allowed."""

    count: int | None = None
    percent: int | None = None

    def allows(self, deletes: int, *, owned: int) -> bool:
        if deletes <= 1:
            return True
        if self.count is not None:
            return deletes <= self.count
        # a share of what is owned, rounded down: 25 % of 10 objects is 2
        return deletes * 100 <= (self.percent or 0) * owned

    def __str__(self) -> str:
        return str(self.count) if self.count is not None else f"{self.percent}%"


@dataclass(frozen=True, slots=True, kw_only=True)
class Layout:
    clusters: str = "clusters"
    secrets: str = "secrets"


@dataclass(frozen=True, slots=True, kw_only=True)
class Kubeconfig:
    path: str | None = None
    context: str | None = None
    secret_namespace: str | None = None
    secret_name: str | None = None
    secret_key: str = "kubeconfig"
    in_cluster: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class StoreRef:
    kind: str = "ClusterSecretStore"
    name: str = "vault"


@dataclass(frozen=True, slots=True, kw_only=True)
class ControllerRef:
    namespace: str = "kube-system"
    name: str = "sealed-secrets-controller"


@dataclass(frozen=True, slots=True, kw_only=True)
class Cluster:
    name: str
    labels: Mapping[str, str]
    delivery: str  # the name of a registered delivery kind (`delivery.kinds`)
    origin: Origin
    settings: Mapping[str, object] = field(default_factory=dict)
    """Delivery kind name -> the settings that kind read from this Cluster (its own types)."""
    vault_source: str | None = None  # `spec.vault.source`: the named source of its refs
    kubeconfig: Kubeconfig | None = None
    apply: bool = False
    allowed_namespaces: tuple[str, ...] | None = None  # None = no restriction
    create_namespaces: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Target:
    name: str
    namespace: str
    type: str = "Opaque"
    scope: Scope = Scope.STRICT
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    immutable: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Overlay:
    origin: Origin
    data: Mapping[str, DataEntry]
    selector: Selector | None = None
    clusters: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class RestartRef:
    kind: str
    name: str


@dataclass(frozen=True, slots=True, kw_only=True)
class FleetSecret:
    name: str
    origin: Origin
    selector: Selector
    target: Target
    target_origin: Origin
    data: Mapping[str, DataEntry]
    overlays: tuple[Overlay, ...] = ()
    restarts: tuple[RestartRef, ...] = ()
    refresh_interval: str = "1h0m0s"
    adopt: bool = False
    allow_no_clusters: bool = False  # an empty selection is deliberate, not a typo
    selector_origin: Origin | None = None  # where `clusterSelector` is written


@dataclass(frozen=True, slots=True, kw_only=True)
class Fleet:
    name: str
    root: Path
    origin: Origin
    default_delivery: str = DEFAULT_DELIVERY
    output_dir: str = "rendered"
    layout: Layout = field(default_factory=Layout)
    vault: VaultSettings | None = None
    vaults: Mapping[str, VaultSettings] = field(default_factory=dict)  # `sources.vaults`
    sops: SopsSettings = field(default_factory=SopsSettings)
    other_sources: Mapping[str, object] = field(default_factory=dict)  # kinds registered later
    policies: Policies = field(default_factory=Policies)
    clusters: Mapping[str, Cluster] = field(default_factory=dict)
    secrets: Mapping[str, FleetSecret] = field(default_factory=dict)

    @property
    def kv_mount(self) -> str:
        return self.vault.kv_mount if self.vault else "secret"

    def vault_settings(self, instance: str) -> VaultSettings | None:
        """The Vault source of that name ("" the default `sources.vault`)."""
        return self.vaults.get(instance) if instance else self.vault

    @property
    def sources_key(self) -> tuple[object, ...]:
        """Everything the sources are built from: equal keys, equal sources."""
        return (
            self.root,
            self.vault,
            tuple(sorted(self.vaults.items())),
            self.sops,
            tuple(sorted(self.other_sources.items(), key=lambda kv: kv[0])),
        )


# --- planned output --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ObjectKey:
    """Identifies one delivered object within a cluster."""

    cluster: str
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.cluster}/{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class Literal:
    """A resolved non-secret literal (templates applied)."""

    text: str


Planned = ValueRef | Literal


@dataclass(frozen=True, slots=True, kw_only=True)
class DesiredSecret:
    """One FleetSecret for one cluster, after selectors, overlays and templates."""

    fleet_secret: str
    cluster: Cluster
    target: Target
    data: Mapping[str, Planned]
    origin: Origin
    refresh_interval: str = "1h0m0s"
    restarts: tuple[RestartRef, ...] = ()
    adopt: bool = False

    @property
    def key(self) -> ObjectKey:
        return ObjectKey(self.cluster.name, self.target.namespace, self.target.name)

    @property
    def delivery(self) -> str:
        return self.cluster.delivery

    def refs(self) -> list[ValueRef]:
        return [v for v in self.data.values() if isinstance(v, ValueRef)]


@dataclass(frozen=True, slots=True, kw_only=True)
class Observed:
    """What a sink found for one object it may own: enough to diff, never values."""

    key: ObjectKey
    kind: str
    owned: bool
    fleet_secret: str | None = None
    content_hash: str | None = None
    key_hashes: Mapping[str, str] = field(default_factory=dict)
    encrypted: Mapping[str, str] = field(default_factory=dict)  # SealedSecret ciphertexts
    drifted: bool = False  # the sink found the object changed behind secretsync's back
    versions: Mapping[str, str] = field(default_factory=dict)  # Vault `<mount>/<path>` -> version
