"""The `vault` source kind: `{vault: {path, key, version?, mount?, source?}}` refs read from
`sources.vault` (the default) or a named `sources.vaults.<name>`, as the cluster's identity.

Which source: the ref's `source`, else the cluster's `spec.vault.source`, else the default
(`default` names it explicitly). Which identity: the source's `namespace` and auth fields
(`IDENTITY_AUTH_FIELDS`) with the cluster's templates filled in; nothing templated, no
identity (the source's own settings). The Location carries both, so reads are deduplicated
exactly per (source, namespace, identity, mount, path, version) and each identity logs in once.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Final

from secretsync.core import errors, templating
from secretsync.core.model import (
    Cluster,
    Fleet,
    Identity,
    Location,
    RefSpec,
    ValueRef,
    VaultSettings,
    VaultSpec,
)
from secretsync.delivery import external
from secretsync.delivery import kinds as delivery_kinds
from secretsync.sources import kinds, vaultaddress

if TYPE_CHECKING:
    from secretsync.fleet.load.yamlmarks import Map
    from secretsync.sources.resolve import Source

DEFAULT: Final = "default"
"""The name a ref or a cluster may give to mean `sources.vault`."""

_INSIDE: Final = "vault.inside"
"""The plan cache entry: filled-in credential file -> whether it lies inside the repo."""
_CREDENTIAL_FILES: Final = frozenset({"tokenFile", "roleIdFile", "secretIdFile", "jwtFile"})
PIN_PREFIX: Final = "SECRETSYNC_VAULT_ADDRESS_"
"""`$SECRETSYNC_VAULT_ADDRESS_<NAME>`: the operator's address of the named source <name> (upper
case, other characters than letters and digits as `_`), which wins over the Fleet's, as
`--vault-address` does for the default source."""
_OWN_ENVIRONMENT: Final = ("VAULT_", "BAO_")
"""The environment's Vault settings belong to the default source: a named one never takes
its address, token, namespace or TLS files from there."""


def instance_of(spec: VaultSpec, cluster: Cluster) -> str:
    """The named source a ref reads for a cluster ("" the default)."""
    name = spec.source or cluster.vault_source or ""
    return "" if name == DEFAULT else name


def identity_templates(settings: VaultSettings) -> list[tuple[str | None, str]]:
    """(auth field or None for the namespace, text) of the settings' templated identity."""
    from secretsync.sources.vault.config import IDENTITY_AUTH_FIELDS  # noqa: PLC0415

    out: list[tuple[str | None, str]] = []
    if settings.namespace and templating.has_template(settings.namespace):
        out.append((None, settings.namespace))
    for name, attr in IDENTITY_AUTH_FIELDS.items():
        text = getattr(settings.auth, attr)
        if text and templating.has_template(text):
            out.append((name, text))
    return out


def identity_of(
    settings: VaultSettings,
    fill: Callable[[str], str],
    *,
    root: Path,
    inside: dict[str, bool] | None = None,
) -> tuple[Identity | None, list[str]]:
    """The identity a cluster reads with (None when nothing is templated), and problems.
    `inside` remembers, per filled-in credential file, whether it lies in the repo."""
    known = inside if inside is not None else {}
    templated = identity_templates(settings)
    if not templated:
        return None, []
    namespace: str | None = None
    auth: list[tuple[str, str]] = []
    problems: list[str] = []
    for name, text in templated:
        value = fill(text)
        if name is None:
            namespace = value
            continue
        if name in _CREDENTIAL_FILES and value:
            if value not in known:
                known[value] = os.path.isabs(value) and _inside(Path(value), root)
            if not os.path.isabs(value):
                problems.append(f"{name} {value!r} is not an absolute path")
            elif known[value]:
                problems.append(f"{name} {value!r} lies inside the fleet repo")
        auth.append((name, value))
    return Identity(namespace=namespace, auth=tuple(auth)), problems


def _inside(path: Path, root: Path) -> bool:
    try:
        real, top = path.resolve(), root.resolve()
    except (OSError, RuntimeError):
        return False
    return real == top or top in real.parents


class VaultKind:
    name = "vault"
    versioned = True
    pollable = True
    external = True

    def read_settings(self, sources: Map) -> dict[str, object]:
        from secretsync.fleet.load.sources import read_vault, read_vaults  # noqa: PLC0415

        out: dict[str, object] = {}
        vault = sources.map("vault")
        if vault is not None:
            out["vault"] = read_vault(vault)
        elif "vault" in sources.entries:
            out["vault"] = VaultSettings()
        named = sources.map("vaults")
        if named is not None:
            out["vaults"] = read_vaults(named)
        return out

    def read_ref(self, ref: Map) -> RefSpec | None:
        from secretsync.fleet.load.schema import is_dns_label, template_field  # noqa: PLC0415

        ctx = ref.ctx
        path = template_field(ref, "path")
        key = template_field(ref, "key")
        version = ref.number("version", integer=True, minimum=1)
        mount = ref.text("mount")
        source = ref.text("source")
        if path and (path.startswith("/") or ".." in path.split("/")):
            ctx.error(ref.key_node("path"), ref.field("path"), "must be a path in the mount")
        if mount is not None and (not mount or mount.startswith("/") or ".." in mount):
            ctx.error(ref.key_node("mount"), ref.field("mount"), "must be a mount name")
        if source is not None and not is_dns_label(source):
            ctx.error(ref.key_node("source"), ref.field("source"), "must be a source name")
            source = None
        if not (path and key):
            return None
        return VaultSpec(
            path,
            key,
            int(version) if version is not None else None,
            mount.strip("/") if mount else None,
            source,
        )

    def check_ref(self, spec: RefSpec, fleet: Fleet) -> list[tuple[str, str]]:
        if not isinstance(spec, VaultSpec):
            raise TypeError(f"not a {self.name} ref: {type(spec).__name__}")
        if spec.source is None or spec.source == DEFAULT or spec.source in fleet.vaults:
            return []
        return [("source", _unknown(spec.source, fleet.vaults))]

    def cluster_problems(self, cluster: Cluster, fleet: Fleet) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        name = cluster.vault_source
        if name is not None and name != DEFAULT and name not in fleet.vaults:
            out.append(("spec.vault.source", _unknown(name, fleet.vaults)))
        for store_source in external.settings(cluster).store_refs:
            if store_source not in fleet.vaults:
                out.append(
                    (
                        f"spec.externalSecrets.storeRefs.{store_source}",
                        _unknown(store_source, fleet.vaults),
                    )
                )
        return out

    def plan_inputs(self, spec: RefSpec, fleet: Fleet) -> tuple[str, ...]:
        texts = list(spec.templates())
        for settings in (fleet.vault, *fleet.vaults.values()):
            if settings is not None:
                texts.extend(text for _, text in identity_templates(settings))
        return tuple(texts)

    def cluster_inputs(self, cluster: Cluster) -> tuple[object, ...]:
        return (cluster.vault_source, tuple(sorted(external.settings(cluster).store_refs)))

    def plan_ref(self, spec: RefSpec, plan: kinds.RefPlan) -> ValueRef:
        if not isinstance(spec, VaultSpec):
            raise TypeError(f"not a {self.name} ref: {type(spec).__name__}")
        cluster, fleet = plan.cluster, plan.fleet
        instance = instance_of(spec, cluster)
        settings = fleet.vault_settings(instance)
        path = plan.fill(spec.path, "path").strip("/")
        ref_key = plan.fill(spec.key, "key")
        kv_mount = settings.kv_mount if settings is not None else "secret"
        mount = spec.mount or kv_mount
        identity: Identity | None = None
        if not delivery_kinds.of(cluster).reads_values:  # the cluster's store reads it
            if mount != kv_mount:
                plan.problem(
                    f"cluster {cluster.name!r} uses external delivery, whose store reads only "
                    f"the kvMount {kv_mount!r}; this ref reads mount {mount!r}",
                    "mount",
                )
            if external.settings(cluster).store_for(instance) is None:
                plan.problem(
                    f"cluster {cluster.name!r} uses external delivery and this ref reads the "
                    f"Vault source {instance!r}: name its store in "
                    f"spec.externalSecrets.storeRefs.{instance}",
                    "source",
                )
        elif settings is not None:
            where = f"sources.vaults.{instance}" if instance else "sources.vault"
            inside = plan.cache.setdefault(_INSIDE, {})
            if not isinstance(inside, dict):
                raise TypeError(_INSIDE)
            identity, problems = identity_of(
                settings,
                lambda text: plan.fill(text, f"source ({where})"),
                root=fleet.root,
                inside=inside,
            )
            for problem in problems:
                plan.problem(f"cluster {cluster.name!r}: {where}.auth: {problem}", "source")
        return ValueRef(Location("vault", path, mount, spec.version, instance, identity), ref_key)

    def build(self, fleet: Fleet, options: kinds.BuildOptions) -> dict[str, Source]:
        from secretsync.sources.vault.config import build_vault_source  # noqa: PLC0415

        out: dict[str, Source] = {}
        if fleet.vault is not None:
            out["vault"] = build_vault_source(
                fleet.vault, env=options.env, root=fleet.root, address=options.vault_address
            )
        named_env = _named_environment(options.env)
        # Once the operator pins one address, the Fleet decides none: a fleet repo writer could
        # otherwise add a named source at an address of theirs and have secretsync log in there
        # with a tenant's credential files (SECURITY.md, M1).
        pinning = options.vault_address is not None or any(
            key.startswith(PIN_PREFIX) for key in options.env
        )
        for name, settings in fleet.vaults.items():
            where = f"sources.vaults.{name}"
            variable = pin_variable(name)
            pin = options.env.get(variable, "").strip() or None
            if pin is None and pinning:
                raise errors.ConfigError(
                    f"the operator pins the Vault addresses ({vaultaddress.OVERRIDE}, "
                    f"${PIN_PREFIX}<NAME>) and this source has none: set ${variable}",
                    file=fleet.origin.file,
                    field=f"spec.{where}.address",
                )
            out[f"vault:{name}"] = build_vault_source(
                settings,
                env=named_env,
                root=fleet.root,
                address=pin,
                where=where,
                address_origin=f"${variable}",
            )
        return out

    def path_names(self, location: Location) -> tuple[str, ...]:
        prefix = f"{location.instance}:" if location.instance else ""
        return (
            f"{prefix}{location.mount}/{location.path}",
            f"{prefix}{location.mount}/data/{location.path}",
        )


def pin_variable(name: str) -> str:
    """The environment variable that pins the address of the named source `name`."""
    return PIN_PREFIX + "".join(c if c.isascii() and c.isalnum() else "_" for c in name).upper()


def _named_environment(env: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if not k.startswith(_OWN_ENVIRONMENT)}


def _unknown(name: str, named: Mapping[str, object]) -> str:
    known = ", ".join(sorted(named)) or "none"
    return (
        f"no Vault source {name!r} in spec.sources.vaults (known: {known}; 'default' names "
        "sources.vault)"
    )


kinds.register(VaultKind())
