"""`spec.sources` of the Fleet: the Vault settings (the default source and the named ones) and
the SOPS key policy."""

from __future__ import annotations

import re
from typing import Final

import yaml

from secretsync.core import templating
from secretsync.core.model import (
    SOPS_KEY_TYPES,
    SopsSettings,
    VaultAuth,
    VaultLimits,
    VaultSettings,
    VaultTLS,
    VaultTransitKey,
)
from secretsync.fleet.load.schema import is_dns_label, machine_path, template_field
from secretsync.fleet.load.yamlmarks import (
    Map,
    as_map,
)
from secretsync.sources import vaultaddress

_VAULT_ADDRESS = re.compile(r"https?://[^\s/?#@]+(?:/[^\s?#@]*)?")
_KEY_PREFIX = re.compile(r"[^\s\x00-\x1f\x7f]+")
_CLOUD_KEYS: tuple[tuple[str, str, str], ...] = (
    # (key type, Fleet field, what an entry names)
    ("kms", "awsKms", "a KMS key or role ARN"),
    ("gcp_kms", "gcpKms", "a GCP KMS resource id"),
    ("azure_kv", "azureKeyVault", "an Azure Key Vault key URL"),
)


def read_sops(m: Map) -> SopsSettings:
    """`sources.sops`: limits, and the key sources SOPS files may name (checked before sops
    runs, see `sopskeys`)."""
    timeout = m.number("timeoutSeconds", minimum=1)
    max_bytes = m.number("maxFileBytes", integer=True, minimum=1)
    key_types = SopsSettings().key_types
    listed = m.str_list("keyTypes")
    if listed is not None:
        seen: set[str] = set()
        for name, node in listed:
            if name not in SOPS_KEY_TYPES:
                m.ctx.error(
                    node, m.field("keyTypes"), f"must be one of: {', '.join(SOPS_KEY_TYPES)}"
                )
            elif name in seen:
                m.ctx.error(node, m.field("keyTypes"), f"{name!r} is listed twice")
            seen.add(name)
        key_types = frozenset(seen & set(SOPS_KEY_TYPES))
    transit: list[VaultTransitKey] = []
    for item, path in m.seq("vaultTransit") or ():
        entry = as_map(m.ctx, item, path)
        if entry is None:
            continue
        address = entry.text("address", required=True)
        if address is not None and not _VAULT_ADDRESS.fullmatch(address):
            m.ctx.error(
                entry.key_node("address"),
                entry.field("address"),
                "must be an http(s) URL without credentials, query or fragment, written as the "
                "SOPS files name it (e.g. https://vault.example:8200)",
            )
        engine_path = entry.text("enginePath")
        key_name = entry.text("keyName")
        entry.done()
        if address is not None:
            transit.append(
                VaultTransitKey(address=address, engine_path=engine_path, key_name=key_name)
            )
    _needs_list(m, key_types, "hc_vault", "vaultTransit")
    clouds: dict[str, tuple[str, ...]] = {}
    for key_type, field_name, what in _CLOUD_KEYS:
        names: list[str] = []
        for name, node in m.str_list(field_name) or ():
            if not _KEY_PREFIX.fullmatch(name):
                m.ctx.error(node, m.field(field_name), f"must be {what} or a prefix of one")
                continue
            names.append(name)
        clouds[field_name] = tuple(names)
        _needs_list(m, key_types, key_type, field_name)
    m.done()
    return SopsSettings(
        timeout_seconds=timeout or 30.0,
        max_file_bytes=int(max_bytes) if max_bytes else 5 * 1024 * 1024,
        key_types=key_types,
        vault_transit=tuple(transit),
        aws_kms=clouds["awsKms"],
        gcp_kms=clouds["gcpKms"],
        azure_key_vault=clouds["azureKeyVault"],
    )


def _needs_list(m: Map, key_types: frozenset[str], key_type: str, field_name: str) -> None:
    """A network key type is allowed only with the list naming where it may go, and the
    other way round: neither may be given without the other."""
    node = m.entries.get(field_name)
    listed = node is not None and isinstance(node[1], yaml.SequenceNode) and bool(node[1].value)
    if key_type in key_types and not listed:
        m.ctx.error(
            m.key_node("keyTypes"),
            m.field(field_name),
            f"keyTypes allows {key_type}: list in {field_name} every key SOPS files may name",
        )
    elif key_type not in key_types and node is not None:
        m.ctx.error(
            m.key_node(field_name),
            m.field(field_name),
            f"{field_name} is given but keyTypes does not allow {key_type}",
        )


IDENTITY_FIELDS: Final = ("role", "mountPath", "tokenFile", "roleIdFile", "secretIdFile", "jwtFile")
"""Auth fields that may hold cluster templates (with `namespace`): a per-cluster identity."""


def read_vaults(m: Map) -> dict[str, VaultSettings]:
    """`sources.vaults`: named Vault sources, each with the settings of `sources.vault` and
    an address of its own (the environment's VAULT_ADDR belongs to the default source)."""
    out: dict[str, VaultSettings] = {}
    for name, (knode, vnode) in m.entries.items():
        m.used.add(name)
        if not is_dns_label(name) or name == "default":
            m.ctx.error(
                knode,
                m.field(name),
                "a source name must be a DNS label other than 'default' (which names "
                "sources.vault)",
            )
            continue
        sub = as_map(m.ctx, vnode, m.field(name))
        if sub is None:
            continue
        sub.key = knode
        if "address" not in sub.entries:
            m.ctx.error(knode, sub.field("address"), "a named Vault source needs its address")
        out[name] = read_vault(sub)
    return out


def read_vault(m: Map) -> VaultSettings:
    namespace = template_field(m, "namespace", required=False)
    auth = m.map("auth")
    auth_kwargs: dict[str, str | None] = {}
    if auth is not None:
        method = auth.text("method") or "token"
        if method not in ("token", "approle", "kubernetes"):
            m.ctx.error(
                auth.key_node("method"),
                auth.field("method"),
                "must be one of: token, approle, kubernetes",
            )
        auth_kwargs["method"] = method
        for yaml_key, attr in (
            ("role", "role"),
            ("roleId", "role_id"),
            ("secretIdEnv", "secret_id_env"),
            ("mountPath", "mount_path"),
        ):
            auth_kwargs[attr] = (
                template_field(auth, yaml_key, required=False)
                if yaml_key in IDENTITY_FIELDS
                else auth.text(yaml_key)
            )
        for yaml_key, attr in (
            ("tokenFile", "token_file"),
            ("roleIdFile", "role_id_file"),
            ("secretIdFile", "secret_id_file"),
            ("jwtFile", "jwt_file"),
        ):
            auth_kwargs[attr] = machine_path(auth, yaml_key)
            if auth_kwargs[attr] is not None:
                for issue in templating.check(auth_kwargs[attr] or ""):
                    m.ctx.error(auth.key_node(yaml_key), auth.field(yaml_key), issue)
        if method == "approle" and not (auth_kwargs["role_id"] or auth_kwargs["role_id_file"]):
            m.ctx.error(auth.node, auth.field("roleId"), "approle needs roleId or roleIdFile")
        if method == "approle" and not (
            auth_kwargs["secret_id_file"] or auth_kwargs["secret_id_env"]
        ):
            m.ctx.error(
                auth.node, auth.field("secretIdFile"), "approle needs secretIdFile or secretIdEnv"
            )
        if method == "kubernetes" and not auth_kwargs["role"]:
            m.ctx.error(auth.node, auth.field("role"), "kubernetes auth needs a role")
        auth.done()
    tls = m.map("tls")
    tls_settings = VaultTLS()
    if tls is not None:
        tls_settings = VaultTLS(
            ca_file=tls.text("caFile"),
            client_cert_file=tls.text("clientCertFile"),
            client_key_file=tls.text("clientKeyFile"),
            insecure=tls.flag("insecure") or False,
        )
        tls.done()
    address = m.text("address")
    if address is not None and (
        problem := vaultaddress.form_problem(address)
        or vaultaddress.plain_http_problem(address.strip(), insecure=tls_settings.insecure)
    ):
        m.ctx.error(m.key_node("address"), m.field("address"), problem)
    limits = m.map("limits")
    limit_settings = VaultLimits()
    if limits is not None:
        concurrency = limits.number("concurrency", integer=True, minimum=1)
        rps = limits.number("requestsPerSecond", minimum=0.1)
        timeout = limits.number("timeoutSeconds", minimum=0.1)
        limit_settings = VaultLimits(
            concurrency=int(concurrency) if concurrency else 32,
            requests_per_second=rps or 500.0,
            timeout_seconds=timeout or 10.0,
        )
        limits.done()
    kv_version = m.number("kvVersion", integer=True, minimum=1)
    if kv_version is not None and kv_version not in (1, 2):
        m.ctx.error(m.key_node("kvVersion"), m.field("kvVersion"), "must be 1 or 2")
    settings = VaultSettings(
        address=address,
        namespace=namespace,
        kv_mount=(m.text("kvMount") or "secret").strip("/"),
        kv_version=int(kv_version) if kv_version in (1, 2) else None,
        auth=VaultAuth(**auth_kwargs),  # type: ignore[arg-type]
        tls=tls_settings,
        limits=limit_settings,
    )
    m.done()
    return settings
