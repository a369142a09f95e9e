"""Which Vault / OpenBao address secretsync talks to, and whether it may talk to it.

The address is the one place where a fleet repo writer could send secretsync's Vault token
somewhere else, so who decides it is fixed here, first match wins:

1. the operator's override: `--vault-address` or `$SECRETSYNC_VAULT_ADDRESS`;
2. the Fleet's `sources.vault.address` (fleet repo content: protect `secretsync.yaml`);
3. `$VAULT_ADDR`, then `$BAO_ADDR`, as the vault CLI reads them.

Plain `http://` carries the token and every value unencrypted, so it is refused unless the host
is loopback (a dev server on the same machine: `localhost`, 127.0.0.0/8, `::1`) or the Fleet
says `tls: {insecure: true}`; the Vault source then warns each time it is built. Pure
functions: no I/O, no name lookups (a name other than `localhost` is never taken as loopback).
"""

from __future__ import annotations

import ipaddress
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

OVERRIDE_ENV: Final = "SECRETSYNC_VAULT_ADDRESS"
OVERRIDE: Final = f"--vault-address / ${OVERRIDE_ENV}"
FLEET: Final = "sources.vault.address"


@dataclass(frozen=True, slots=True)
class Chosen:
    """The address to use (stripped, without a trailing slash) and who set it."""

    url: str
    origin: str  # OVERRIDE, FLEET, "VAULT_ADDR" or "BAO_ADDR": named in errors and logs


def choose(
    *,
    override: str | None,
    fleet: str | None,
    env: Mapping[str, str],
    override_origin: str = OVERRIDE,
) -> Chosen | None:
    """The first address set, in the order above; None when none is. `override_origin` names
    the operator's setting (a named source's is `$SECRETSYNC_VAULT_ADDRESS_<NAME>`)."""
    for text, origin in (
        (override, override_origin),
        (fleet, FLEET),
        (env.get("VAULT_ADDR"), "VAULT_ADDR"),
        (env.get("BAO_ADDR"), "BAO_ADDR"),
    ):
        url = (text or "").strip().rstrip("/")
        if url:
            return Chosen(url, origin)
    return None


def form_problem(url: str) -> str | None:
    """Why `url` is not a usable Vault address, or None."""
    if not url.isprintable() or " " in url:
        # urllib drops tabs and newlines silently: refuse them rather than guess
        return "must be a URL without spaces or control characters"
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        return "must be an http:// or https:// URL"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "must be an http:// or https:// URL"
    if parts.username or parts.password or parts.query or parts.fragment:
        return "must not carry credentials, a query or a fragment"
    return None


def is_loopback(host: str) -> bool:
    """`localhost`, or a literal loopback IP (IPv4-mapped IPv6 too); never a looked-up name."""
    name = host.strip("[]").lower()
    if name == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(name)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.is_loopback
    return ip.is_loopback


def is_plain_http_remote(url: str) -> bool:
    """`http://` to a host that is not loopback: the token would cross a network in clear."""
    parts = urllib.parse.urlsplit(url)
    return parts.scheme == "http" and not is_loopback(parts.hostname or "")


def plain_http_problem(url: str, *, insecure: bool) -> str | None:
    """Why `url` may not be used over plain HTTP, or None (https, loopback, or `insecure`)."""
    if insecure or not is_plain_http_remote(url):
        return None
    return (
        "plain http:// to a host that is not loopback would send the Vault token and every "
        "value unencrypted: use https://, or set tls: {insecure: true} in the Fleet"
    )
