"""The settings of `serve`, built once by the command line."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from secretsync.daemon import edge, webhook
from secretsync.fleet import gitsource
from secretsync.kube import kubeplugins
from secretsync.writeback.push import PushSettings

if TYPE_CHECKING:  # the election needs the kubernetes client: imported only when it is on
    from secretsync.daemon.sharding import ElectionSettings


@dataclass(frozen=True, slots=True, kw_only=True)
class DaemonSettings:
    """Process settings of `serve`, built by the command line. Holds keys: never log it."""

    fleet_path: Path
    hmac_key: bytes = field(repr=False)
    env: Mapping[str, str] = field(repr=False, default_factory=dict)
    host: str = "127.0.0.1"
    port: int = 8080
    interval_s: float = 300.0
    jitter: float = 0.1
    git: bool = True
    kube: bool = True
    webhook_key: bytes | None = field(repr=False, default=None)
    max_body: int = webhook.MAX_BODY_BYTES
    header_timeout_s: float = edge.HEADER_TIMEOUT_S  # request line + headers (and a webhook body)
    idle_timeout_s: float = edge.IDLE_TIMEOUT_S  # silence allowed between requests
    cluster_timeout_s: float = 60.0
    home_kubeconfig: str | None = None
    plugins: kubeplugins.PluginPolicy = field(repr=False, default=kubeplugins.NO_PLUGINS)
    grace_s: float = 25.0
    election: ElectionSettings | None = None  # None: one replica, no Lease (see `sharding`)
    poll_interval_s: float | None = None  # KV v2 metadata poll (see `poll`); None: off
    git_url: str | None = None  # pull the fleet repo into `fleet_path` (see `gitsource`)
    git_branch: str = "main"
    git_credentials_file: Path | None = None
    git_timeout_s: float = gitsource.DEFAULT_TIMEOUT_S
    push: PushSettings | None = None  # commit and push the output (`writeback`)
    events: bool = False  # Kubernetes Events on the home cluster (`events`)
    api_token_file: Path | None = None  # bearer tokens for the status API (`apiauth`)
    api_auth_kubernetes: bool = False  # TokenReview + SubjectAccessReview on the home cluster
    vault_address: str | None = None  # the operator's (`--vault-address`): wins over the Fleet's
    peers: tuple[str, ...] = ()  # other replicas' base URLs: verified webhooks go on (`peers`)
