"""Building a `VaultSource` from the Fleet's settings and the vault CLI's environment defaults:
the address (`vaultaddress`), the namespace, the login material of the auth method, and the
TLS context. Credential files are absolute or relative to the fleet root; paths from the
environment are taken as given, as the vault CLI does. The environment is a mapping handed in:
this package never reads the process environment itself.
"""

from __future__ import annotations

import dataclasses
import logging
import ssl
import time
import urllib.parse
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Final

from secretsync.core import errors, model, values
from secretsync.sources import vaultaddress
from secretsync.sources.vault.auth import Auth, Credential, LoginAuth, TokenAuth
from secretsync.sources.vault.failure import why
from secretsync.sources.vault.source import VaultSource
from secretsync.sources.vault.transport import RetryPolicy

log = logging.getLogger(__name__)

DEFAULT_JWT_FILE: Final = "/var/run/secrets/kubernetes.io/serviceaccount/token"

IDENTITY_AUTH_FIELDS: Final[Mapping[str, str]] = {
    "role": "role",
    "mountPath": "mount_path",
    "tokenFile": "token_file",
    "roleIdFile": "role_id_file",
    "secretIdFile": "secret_id_file",
    "jwtFile": "jwt_file",
}
"""Auth settings that may hold cluster templates (as written in the fleet -> `VaultAuth`
attribute); with `namespace`, what makes a per-cluster identity."""


def build_vault_source(
    settings: model.VaultSettings,
    *,
    env: Mapping[str, str],
    root: Path,
    address: str | None = None,
    retry: RetryPolicy | None = None,
    clock: Callable[[], float] = time.monotonic,
    where: str = "sources.vault",
    address_origin: str = vaultaddress.OVERRIDE,
) -> VaultSource:
    """A VaultSource from the Fleet's `sources.vault`, with the vault CLI's environment defaults.

    Address: the operator's `address` (`--vault-address`), else the Fleet's `address`, else
    VAULT_ADDR, else BAO_ADDR (`vaultaddress`); plain http:// only to loopback unless
    `tls.insecure`, and then with a warning each time. Namespace: `namespace`, else
    VAULT_NAMESPACE / BAO_NAMESPACE. Token method: `tokenFile`, else VAULT_TOKEN, else BAO_TOKEN.
    TLS: `tls.*`, else VAULT_CACERT / VAULT_CAPATH / VAULT_CLIENT_CERT / VAULT_CLIENT_KEY (or
    their BAO_ twins); certificates are always verified (VAULT_SKIP_VERIFY is ignored, with a
    warning). Credential files in the settings are absolute or relative to `root`; paths from
    the environment are taken as given, as the vault CLI does. `where` names the settings in
    errors (`sources.vaults.<name>` for a named source), `address_origin` the operator's setting
    that gave `address`. Raises `errors.ConfigError`.
    """
    chosen = vaultaddress.choose(
        override=address, fleet=settings.address, env=env, override_origin=address_origin
    )
    if chosen is None:
        raise errors.ConfigError(
            f"no Vault address: set it here, or VAULT_ADDR / BAO_ADDR ({vaultaddress.OVERRIDE} "
            "overrides it)",
            field=vaultaddress.FLEET if where == "sources.vault" else f"{where}.address",
        )
    insecure = settings.tls.insecure
    if problem := vaultaddress.form_problem(chosen.url) or vaultaddress.plain_http_problem(
        chosen.url, insecure=insecure
    ):
        raise errors.ConfigError(problem, field=chosen.origin)
    if chosen.origin == address_origin and settings.address:
        log.info("vault: %s from %s; the Fleet's address is not used", chosen.url, chosen.origin)
    if vaultaddress.is_plain_http_remote(chosen.url):
        log.warning(
            "vault: plain HTTP to %s (%s), allowed by tls.insecure in the Fleet: the Vault "
            "token and every value cross the network unencrypted",
            chosen.url,
            chosen.origin,
        )
    address = chosen.url
    parts = urllib.parse.urlsplit(address)
    namespace = (settings.namespace or _env(env, "NAMESPACE") or "").strip("/") or None
    if settings.kv_version not in (None, 1, 2):
        raise errors.ConfigError("must be 1 or 2", field=f"{where}.kvVersion")
    limits = settings.limits
    if limits.concurrency < 1:
        raise errors.ConfigError("must be at least 1", field=f"{where}.limits.concurrency")
    if not limits.requests_per_second > 0:
        raise errors.ConfigError("must be above 0", field=f"{where}.limits.requestsPerSecond")
    if not limits.timeout_seconds > 0:
        raise errors.ConfigError("must be above 0", field=f"{where}.limits.timeoutSeconds")

    def identity_auth(identity: model.Identity) -> tuple[Auth, str | None]:
        filled = {IDENTITY_AUTH_FIELDS[name]: value for name, value in identity.auth}
        auth = build_auth(
            dataclasses.replace(settings.auth, **filled), env=env, root=root, where=where
        )
        if identity.namespace is None:
            return auth, namespace
        return auth, identity.namespace.strip("/") or None

    return VaultSource(
        address=address,
        auth=build_auth(settings.auth, env=env, root=root, where=where),
        namespace=namespace,
        kv_mount=settings.kv_mount,
        kv_version=settings.kv_version,
        ssl_context=_build_ssl(
            settings.tls, https=parts.scheme == "https", env=env, root=root, where=where
        ),
        limits=limits,
        retry=retry,
        clock=clock,
        identity_auth=identity_auth,
    )


def _env(env: Mapping[str, str], name: str) -> str | None:
    return env.get(f"VAULT_{name}") or env.get(f"BAO_{name}") or None


def _machine_path(text: str, root: Path) -> Path:
    path = Path(text)
    return path if path.is_absolute() else root / path


def build_auth(
    auth: model.VaultAuth, *, env: Mapping[str, str], root: Path, where: str = "sources.vault"
) -> Auth:
    where = f"{where}.auth"
    if auth.method == "token":
        if auth.token_file:
            path = _machine_path(auth.token_file, root)
            return TokenAuth(token=Credential(file=path, origin=f"tokenFile {path}"))
        for name in ("VAULT_TOKEN", "BAO_TOKEN"):
            if env.get(name):
                return TokenAuth(
                    token=Credential(value=values.SecretValue.of(env[name]), origin=name)
                )
        raise errors.ConfigError(
            "no token: set tokenFile, or VAULT_TOKEN / BAO_TOKEN", field=f"{where}.method"
        )
    if auth.method == "approle":
        mount = (auth.mount_path or "approle").strip("/")
        if bool(auth.role_id) == bool(auth.role_id_file):
            raise errors.ConfigError("give exactly one of roleId or roleIdFile", field=where)
        if auth.secret_id_file and auth.secret_id_env:
            raise errors.ConfigError("give at most one of secretIdFile or secretIdEnv", field=where)
        if auth.role_id:
            role_id = Credential(value=values.SecretValue.of(auth.role_id), origin="roleId")
        else:
            path = _machine_path(auth.role_id_file or "", root)
            role_id = Credential(file=path, origin=f"roleIdFile {path}")
        fields: list[tuple[str, Credential]] = [("role_id", role_id)]
        if auth.secret_id_file:
            path = _machine_path(auth.secret_id_file, root)
            fields.append(("secret_id", Credential(file=path, origin=f"secretIdFile {path}")))
        elif auth.secret_id_env:
            secret_id = env.get(auth.secret_id_env)
            if not secret_id:
                raise errors.ConfigError(
                    f"environment variable {auth.secret_id_env} is not set",
                    field=f"{where}.secretIdEnv",
                )
            fields.append(
                (
                    "secret_id",
                    Credential(value=values.SecretValue.of(secret_id), origin=auth.secret_id_env),
                )
            )
        return LoginAuth(method="approle", mount_path=mount, fields=tuple(fields))
    if auth.method == "kubernetes":
        if not auth.role:
            raise errors.ConfigError("the kubernetes method needs a role", field=f"{where}.role")
        path = _machine_path(auth.jwt_file or DEFAULT_JWT_FILE, root)
        return LoginAuth(
            method="kubernetes",
            mount_path=(auth.mount_path or "kubernetes").strip("/"),
            fields=(
                ("role", Credential(value=values.SecretValue.of(auth.role), origin="role")),
                ("jwt", Credential(file=path, origin=f"jwtFile {path}")),
            ),
        )
    raise errors.ConfigError(
        f"unknown method {auth.method!r}; use token, approle or kubernetes",
        field=f"{where}.method",
    )


def _build_ssl(
    tls: model.VaultTLS, *, https: bool, env: Mapping[str, str], root: Path, where: str
) -> ssl.SSLContext | None:
    where = f"{where}.tls"
    if not https:
        if tls.ca_file or tls.client_cert_file or tls.client_key_file:
            raise errors.ConfigError("TLS settings given for an http:// address", field=where)
        return None
    if env.get("VAULT_SKIP_VERIFY") or env.get("BAO_SKIP_VERIFY"):
        log.warning("vault: VAULT_SKIP_VERIFY is ignored; certificates are always verified")

    def pick(setting: str | None, name: str) -> str | None:
        return str(_machine_path(setting, root)) if setting else _env(env, name)

    ca_file = pick(tls.ca_file, "CACERT")
    ca_path = None if tls.ca_file else _env(env, "CAPATH")
    cert_file = pick(tls.client_cert_file, "CLIENT_CERT")
    key_file = pick(tls.client_key_file, "CLIENT_KEY")
    if key_file and not cert_file:
        raise errors.ConfigError("a client key needs a client certificate", field=where)
    try:
        context = ssl.create_default_context(cafile=ca_file, capath=ca_path)
    except (OSError, ssl.SSLError) as exc:
        raise errors.ConfigError(
            f"cannot load the CA {ca_file or ca_path}: {why(exc)}", field=f"{where}.caFile"
        ) from None
    if cert_file:
        try:
            context.load_cert_chain(cert_file, key_file)
        except (OSError, ssl.SSLError) as exc:
            raise errors.ConfigError(
                f"cannot load the client certificate {cert_file}: {why(exc)}",
                field=f"{where}.clientCertFile",
            ) from None
    return context
