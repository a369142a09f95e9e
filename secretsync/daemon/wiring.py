"""The engine a daemon drives: built from the fleet's config and rebuilt only when that changes."""

from __future__ import annotations

import functools
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from secretsync.app import wiring
from secretsync.core import errors
from secretsync.core.model import Cluster, DesiredSecret, Fleet, Location
from secretsync.daemon.settings import DaemonSettings
from secretsync.engine.cycle import Engine
from secretsync.engine.report import CycleReport
from secretsync.fleet.certificates import FleetCertificates
from secretsync.sources import poll, resolve

if TYPE_CHECKING:  # the election needs the kubernetes client: imported only when it is on
    from secretsync.daemon.sharding import Coordinator


class Runner(Protocol):
    """The part of `Engine` the daemon drives (tests give their own)."""

    async def run_cycle(
        self,
        fleet: Fleet,
        *,
        clusters: Collection[str] = (),
        only_paths: Collection[str] | None = None,
        planned: Sequence[DesiredSecret] | None = None,
        certificates: FleetCertificates | None = None,
    ) -> CycleReport: ...


class Wiring(Protocol):
    """Builds (and closes) the engine for a fleet: sources and sinks depend on its config."""

    async def engine_for(self, fleet: Fleet) -> Runner: ...

    def delivers(self, cluster: Cluster) -> bool:
        """Whether a sink of the engine last built delivers anything to `cluster` (whichever
        replica leads it)."""
        ...

    async def aclose(self) -> None: ...


type SourceFactory = Callable[[Fleet, Mapping[str, str]], Mapping[str, resolve.Source]]


type ReadReport = Callable[[str, errors.ResolveError | None], None]


class CountingSource:
    """A source wrapper that reports each read's outcome (metrics, readiness)."""

    kind: ClassVar[str] = "counted"

    def __init__(self, inner: resolve.Source, *, name: str, report: ReadReport) -> None:
        self.inner = inner
        self.name = name
        self._report = report

    async def fetch(self, location: Location) -> resolve.Fetched:
        try:
            fetched = await self.inner.fetch(location)
        except errors.ResolveError as exc:
            self._report(self.name, exc)
            raise
        self._report(self.name, None)
        return fetched

    async def current_versions(
        self, locations: Iterable[Location]
    ) -> Mapping[Location, int | None]:
        if not isinstance(self.inner, poll.VersionSource):
            return {}
        return await self.inner.current_versions(locations)

    def counts(self) -> Mapping[str, int]:
        return self.inner.counts() if isinstance(self.inner, resolve.Counted) else {}

    async def aclose(self) -> None:
        await self.inner.aclose()


class EngineWiring:
    """The real engine, built by `app.wiring` as the command line's is: sources from the
    fleet's config, Git and/or Kubernetes sinks. Rebuilt only when the fleet's source or output
    settings change (a Vault token survives reloads). `make_sources` replaces the sources'
    factory (tests give their own)."""

    def __init__(
        self,
        *,
        settings: DaemonSettings,
        make_sources: SourceFactory | None = None,
        report: ReadReport,
        gate: Coordinator | None = None,
    ) -> None:
        self._settings = settings
        self._gate = gate  # with election on, sinks write only what this replica leads
        self._make_sources = make_sources or functools.partial(
            wiring.build_sources, vault_address=settings.vault_address
        )
        self._report = report
        self._key: tuple[Any, ...] | None = None
        self._engine: Engine | None = None
        self._built = wiring.Sinks()  # as built, before the leadership gate

    async def engine_for(self, fleet: Fleet) -> Engine:
        key = (fleet.output_dir, fleet.sources_key)
        if self._engine is not None and key == self._key:
            return self._engine
        await self.aclose()
        s = self._settings
        sources = {
            name: CountingSource(src, name=name, report=self._report)
            for name, src in self._make_sources(fleet, s.env).items()
        }
        built = wiring.build_sinks(
            fleet,
            wiring.SinkChoice(
                git=s.git, kube=s.kube, home_kubeconfig=s.home_kubeconfig, plugins=s.plugins
            ),
            hmac_key=s.hmac_key,
        )
        self._built = built
        sinks = built.all
        if self._gate is not None:
            sinks = [self._gate.gate(sink) for sink in sinks]
        self._engine = wiring.build_engine(
            sources=sources, sinks=sinks, hmac_key=s.hmac_key, cluster_timeout_s=s.cluster_timeout_s
        )
        self._key = key
        return self._engine

    def delivers(self, cluster: Cluster) -> bool:
        return any(sink.accepts(cluster) for sink in self._built.all)

    async def aclose(self) -> None:
        engine, self._engine = self._engine, None
        if engine is not None:
            for source in engine.sources.values():
                await source.aclose()
        built, self._built = self._built, wiring.Sinks()
        await built.aclose()
