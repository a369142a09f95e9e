"""The Fleet's `sources.sops` policy (`model.SopsSettings`) on the keys a SOPS file names.

sops reaches, with the credentials in its environment, whatever keys a file's metadata names;
`sopsmeta` reads them without decrypting, this module says whether the Fleet allows each: its
type must be allowed (`keyTypes`, default age and pgp), and a network key must name an allowed
Vault address (exactly), KMS ARN, GCP resource or Azure key. What `sopsmeta` could not read
strictly is refused with them.

Used before sops runs: by `validate`, the CLI runs and the daemon's reload over the files a plan
reads (`check_files`), by `scan`, and by the sops source on the exact bytes it hands to sops.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Final

from secretsync.core import errors, model
from secretsync.fleet import load
from secretsync.sources import sopsmeta
from secretsync.sources.sopsmeta import KeyEntry, KeyGroups, Refusal


def _matches(allowed: Iterable[str], name: str) -> bool:
    """An entry matches itself exactly, or as a prefix when it ends in ':' or '/'."""
    return any(
        name == entry or (entry.endswith((":", "/")) and name.startswith(entry))
        for entry in allowed
    )


def refusals(found: KeyGroups, policy: model.SopsSettings) -> list[Refusal]:
    """Every reason the Fleet's policy refuses the file (empty: sops may run on it)."""
    out = list(found.malformed)
    for entry in found.entries:
        why = _refused(entry, policy)
        if why is not None:
            out.append(Refusal(entry.line, entry.where, why))
    return out


def _refused(entry: KeyEntry, policy: model.SopsSettings) -> str | None:
    kind, f = entry.kind, entry.fields
    if kind not in policy.key_types:
        allowed = ", ".join(sorted(policy.key_types)) or "none"
        return (
            f"key type {kind} is not allowed by the Fleet's sources.sops.keyTypes ({allowed}); "
            "refused before sops runs"
        )
    if kind == "hc_vault":
        address = f.get("vault_address", "")
        for allowed_key in policy.vault_transit:
            if (
                address == allowed_key.address
                and allowed_key.engine_path in (None, f.get("engine_path", ""))
                and allowed_key.key_name in (None, f.get("key_name", ""))
            ):
                return None
        return (
            f"Vault transit key {f.get('key_name', '')!r} at {address!r} (engine "
            f"{f.get('engine_path', '')!r}) is not in the Fleet's sources.sops.vaultTransit; "
            "refused before sops runs, nothing was sent to it"
        )
    names: tuple[tuple[str, str, tuple[str, ...]], ...] = ()
    if kind == "kms":
        names = (("ARN", f.get("arn", ""), policy.aws_kms),)
        if f.get("role"):
            names += (("role ARN", f["role"], policy.aws_kms),)
    elif kind == "gcp_kms":
        names = (("resource", f.get("resource_id", ""), policy.gcp_kms),)
    elif kind == "azure_kv":
        vault_url = f.get("vault_url", "").rstrip("/")
        url = f"{vault_url}/keys/{f.get('name', '')}/{f.get('version', '')}"
        names = (("key", url, policy.azure_key_vault),)
    for what, name, allowed_names in names:
        if not name or not _matches(allowed_names, name):
            field_name = {"kms": "awsKms", "gcp_kms": "gcpKms", "azure_kv": "azureKeyVault"}[kind]
            return (
                f"{kind} {what} {name!r} is not in the Fleet's sources.sops.{field_name}; "
                "refused before sops runs"
            )
    return None


def describe(refused: list[Refusal]) -> str:
    """One line for an error message: the first refusal and how many more."""
    more = f" (and {len(refused) - 1} more)" if len(refused) > 1 else ""
    return f"{refused[0]}{more}"


# --- the files a plan reads ---------------------------------------------------------------------


def check_files(
    fleet: model.Fleet, readers: Mapping[str, model.Origin]
) -> list[errors.ConfigError]:
    """A `ConfigError` (file, line, key group) per SOPS file whose key groups the Fleet refuses.

    `readers`: repo-relative SOPS paths, each with where a FleetSecret reads it. A file that
    cannot be read here (missing, not a regular file, not a sops file, over the size cap) is
    left to the sops
    source, which fails its objects when they are resolved.
    """
    out: list[errors.ConfigError] = []
    for rel, origin in sorted(readers.items()):
        fmt = sopsmeta.format_for(rel)
        if fmt is None:
            continue
        try:  # confined, a regular file (a FIFO swapped in cannot block), within the cap
            data = load.read_fleet_file(fleet.root, rel, max_bytes=fleet.sops.max_file_bytes)
        except errors.ConfigError:
            continue
        refused = refusals(sopsmeta.read(data, fmt), fleet.sops)
        for refusal in refused[:_SHOWN_PER_FILE]:
            out.append(
                errors.ConfigError(
                    f"{refusal.where}: {refusal.message} (read by {origin})",
                    file=rel,
                    line=refusal.line,
                    field="sops",
                )
            )
        if len(refused) > _SHOWN_PER_FILE:
            out.append(
                errors.ConfigError(
                    f"and {len(refused) - _SHOWN_PER_FILE} more key groups refused",
                    file=rel,
                    field="sops",
                )
            )
    return out


_SHOWN_PER_FILE: Final = 10


def readers_of(desired: Iterable[model.DesiredSecret]) -> dict[str, model.Origin]:
    """The SOPS files planned objects read, each with the first FleetSecret reading it."""
    out: dict[str, model.Origin] = {}
    for d in desired:
        for ref in d.refs():
            if ref.location.source == "sops":
                out.setdefault(ref.location.path, d.origin)
    return out
