"""The one wiring of the engine, its sources and its sinks, for the command line and the daemon.

`build_sources` makes the sources a Fleet configures, `build_sinks` the Git and Kubernetes sinks
a run asks for, `build_engine` the engine over them. `render`, `plan`, `sync`, `cluster remove`
and `serve` all build through here, so a sink or a source is made one way only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from secretsync.core.model import Fleet
from secretsync.engine.cycle import Engine
from secretsync.kube import kubeplugins
from secretsync.sinks.deliver import Sink
from secretsync.sinks.git.sink import GitSink
from secretsync.sources import kinds
from secretsync.sources.resolve import Source

if TYPE_CHECKING:  # the kubernetes client is heavy: imported only when the Kubernetes sink is on
    from secretsync.sinks.kube.sink import KubeSink


def build_sources(
    fleet: Fleet, env: Mapping[str, str], *, vault_address: str | None = None
) -> dict[str, Source]:
    """The sources the fleet configures (every registered kind's), by `Location.source_key`.
    `vault_address` is the operator's (`--vault-address`): it wins over the Fleet's."""
    return kinds.build_sources(fleet, kinds.BuildOptions(env=env, vault_address=vault_address))


@dataclass(frozen=True, slots=True, kw_only=True)
class SinkChoice:
    """Which sinks a run delivers through, and how they reach their targets."""

    git: bool = True
    out_dir: Path | None = None
    """The operator's own output folder (`render --out`), opened as given; None: the Fleet's
    output folder, confined to its repo."""
    kube: bool = False
    home_kubeconfig: str | None = None
    """The cluster that holds kubeconfig Secrets (None: in-cluster, when a cluster names one)."""
    plugins: kubeplugins.PluginPolicy = field(default=kubeplugins.NO_PLUGINS, repr=False)


@dataclass(slots=True, kw_only=True)
class Sinks:
    """The sinks of one run, each typed, in delivery order (Git first)."""

    git: GitSink | None = None
    kube: KubeSink | None = None

    @property
    def all(self) -> list[Sink]:
        return [s for s in (self.git, self.kube) if s is not None]

    async def aclose(self) -> None:
        """Close the Kubernetes sink's connection pools (the Git sink holds none)."""
        if self.kube is not None:
            await self.kube.aclose()


def build_sinks(fleet: Fleet, choice: SinkChoice, *, hmac_key: bytes) -> Sinks:
    """The sinks `choice` asks for. Raises `errors.DeliveryError` when the home kubeconfig
    cannot be used. No kubeconfig credential plugin may come from the fleet repo, the home
    cluster's included."""
    sinks = Sinks()
    if choice.git:
        sinks.git = (
            GitSink(out_dir=choice.out_dir)
            if choice.out_dir is not None
            else GitSink(out_dir=fleet.root / fleet.output_dir, repo=fleet.root)
        )
    if choice.kube:
        # the kubernetes client is heavy: imported only when the Kubernetes sink is on
        from secretsync.kube import clusters  # noqa: PLC0415
        from secretsync.sinks.kube.sink import KubeSink  # noqa: PLC0415

        plugins = dataclasses.replace(choice.plugins, repo=fleet.root)
        home = (
            clusters.endpoint_from_file(Path(choice.home_kubeconfig), plugins=plugins)
            if choice.home_kubeconfig
            else None
        )
        sinks.kube = KubeSink(
            clients=clusters.ClientFactory(root=fleet.root, home=home, plugins=plugins),
            hmac_key=hmac_key,
        )
    return sinks


def build_engine(
    *,
    sources: Mapping[str, Source],
    sinks: Sequence[Sink],
    hmac_key: bytes,
    cluster_timeout_s: float,
) -> Engine:
    """The engine over `sources` and `sinks`, on the wall clock."""
    return Engine(
        sources=sources,
        sinks=sinks,
        hmac_key=hmac_key,
        clock=lambda: datetime.now(UTC),
        cluster_timeout_s=cluster_timeout_s,
    )
