"""Source versions of an object (what the report says and what the object records), and the
objects a rotation narrows a cycle to (by the names `sources.kinds` gives a Location)."""

from __future__ import annotations

from collections.abc import Mapping

from secretsync.core.model import DesiredSecret
from secretsync.sources import kinds, resolve


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


def _narrow(desired: list[DesiredSecret], paths: frozenset[str]) -> list[DesiredSecret]:
    """The objects built from one of `paths`."""
    return [
        d
        for d in desired
        if any(n in paths for r in d.refs() for n in kinds.path_names(r.location))
    ]
