"""Vault failures: the internal reasons, their one table to the public error tree, and the
exception that carries a reason inside the `vault` package until `VaultSource` translates it.

No message built here or from here holds a token, a secret_id, a JWT, a value or a body.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final, Literal

from secretsync.core import errors

type Reason = Literal[
    "not_found",  # no secret at the path, or no such version
    "deleted",  # the version asked for (or the latest) is soft-deleted or destroyed
    "invalid",  # the ref cannot be read as written (bad path, version on KV v1, ...)
    "denied",  # 403 after one re-login, or a refused login
    "sealed",  # 503 from a sealed server
    "rate_limited",  # 429 until the attempts or the budget ran out
    "timeout",  # no answer within the per-request timeout (a hung server)
    "unreachable",  # connection refused, reset or closed
    "server_error",  # other 5xx, or an answer we cannot read
    "tls",  # the TLS handshake or certificate verification failed
]

PUBLIC_ERROR: Final[Mapping[Reason, type[errors.ResolveError]]] = {
    "not_found": errors.RefNotFound,
    "deleted": errors.RefNotFound,
    "invalid": errors.RefNotFound,
    "denied": errors.AccessDenied,
    "sealed": errors.SourceUnavailable,
    "rate_limited": errors.SourceUnavailable,
    "timeout": errors.SourceUnavailable,
    "unreachable": errors.SourceUnavailable,
    "server_error": errors.SourceUnavailable,
    "tls": errors.SourceUnavailable,
}
"""The one table from internal reasons to the public error tree."""


class Failed(Exception):
    """A failure inside this package; `VaultSource` turns it into the public error, once.

    `final` failures are not retried (TLS errors, an open circuit, a spent budget).
    """

    def __init__(self, reason: Reason, message: str, *, final: bool = False) -> None:
        super().__init__(message)
        self.reason: Reason = reason
        self.message = message
        self.final = final


class OutOfBudget(Exception):
    """The fetch's time budget cannot cover the next request (or its wait for a rate token)."""


def why(exc: OSError) -> str:
    """An OS error's reason without its arguments (which may hold a path's content)."""
    return exc.strerror or type(exc).__name__
