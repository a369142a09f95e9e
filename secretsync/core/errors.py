"""The error tree. Every message names files, fields, refs and clusters, never a value.

    SecretSyncError
    ├── ConfigError            bad fleet repo, policy violation or bad usage (exit code 2)
    │   └── ConfigErrors       several ConfigErrors found in one load
    ├── ResolveError           a value could not be read; retryable says whether to try again
    │   ├── SourceUnavailable  the source did not answer (down, sealed, timed out, rate-limited)
    │   ├── RefNotFound        the path, file or key does not exist
    │   ├── AccessDenied       the source refused our credentials
    │   └── DecryptFailed      a SOPS file could not be decrypted (key missing, MAC mismatch)
    ├── SealError              a value could not be sealed (certificate expired, not RSA, …)
    ├── InvalidValue           resolved values a Secret cannot hold (over 1 MiB)
    ├── DeliveryError          a sink could not write; cluster names where
    └── PlaintextRefused       the Git sink caught a value in bytes it was asked to write

Adapters translate foreign errors into these at their edge, once, with `raise ... from None`
whenever the foreign error's text may carry data.
"""

from __future__ import annotations


class SecretSyncError(Exception):
    """Base of every error secretsync raises on purpose."""


class ConfigError(SecretSyncError):
    """Bad input: names the file, the 1-based line and the field."""

    def __init__(self, message: str, *, file: str = "", line: int = 0, field: str = "") -> None:
        self.message = message
        self.file = file
        self.line = line
        self.field = field
        super().__init__(self.render())

    def render(self) -> str:
        where = self.file
        if where and self.line:
            where = f"{where}:{self.line}"
        parts = [p for p in (where, self.field) if p]
        return ": ".join([*parts, self.message])


class ConfigErrors(ConfigError):
    """Every ConfigError found in one pass, so a user fixes them all at once."""

    def __init__(self, errors: list[ConfigError]) -> None:
        self.errors = errors
        first = errors[0]
        super().__init__(first.message, file=first.file, line=first.line, field=first.field)

    def render(self) -> str:
        return "\n".join(e.render() for e in self.errors)


class ResolveError(SecretSyncError):
    """A value could not be resolved. `retryable` separates outages from wrong refs."""

    retryable: bool = False


class SourceUnavailable(ResolveError):
    retryable = True


class RefNotFound(ResolveError):
    pass


class AccessDenied(ResolveError):
    retryable = True


class DecryptFailed(ResolveError):
    pass


class SealError(SecretSyncError):
    """A value could not be sealed for a cluster (bad or expired certificate, …)."""


class InvalidValue(SecretSyncError):
    """Resolved values the target cannot hold (a Secret is at most 1 MiB)."""


class DeliveryError(SecretSyncError):
    """A sink could not deliver an object."""

    retryable: bool = False


class PlaintextRefused(SecretSyncError):
    """The Git sink refused bytes that contain a resolved secret value."""
