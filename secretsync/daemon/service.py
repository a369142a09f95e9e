"""The `serve` daemon: the cycle loop, fleet reloads, webhook coalescing, the web server's
lifetime and a graceful stop. Cycles are the engine's, the same as the CLI's; what each leaves
is recorded by `bookkeeping`, and the HTTP surface is put together by `server`.

- At start and every `interval` seconds (with ±10% jitter) a full cycle: reload the fleet
  repo, then reconcile every cluster (Git folder and/or Kubernetes API sinks).
- A verified webhook names Vault paths; those the fleet uses are queued (coalesced in a set)
  and trigger a narrowed cycle for the objects built from them. The webhook is a hint: values
  are always re-read from the source.
- The fleet repo is reloaded (and planned) before every cycle; one that does not load or plan
  is refused, the last good one keeps running and the error is on the status board. With a
  Git URL the daemon first pulls the branch into `fleet_path` (`gitsource`); a refused commit
  is undone in the working folder, so it always holds the commit that runs.
- With a poll interval, KV v2 metadata versions of the paths in use are polled (`poll`); a
  new version queues a narrowed cycle exactly as a webhook does.
- A cycle that raises is logged and counted; the loop goes on.
- SIGTERM / SIGINT: the cycle in flight may finish (within the grace period), then the web
  server stops, sources and sinks are closed, and `run` returns 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import signal
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from secretsync.app import runtime
from secretsync.core import errors, logs
from secretsync.core.model import DesiredSecret, Fleet, Location
from secretsync.daemon import bookkeeping, edge, server, web, webhook
from secretsync.daemon.metrics import Metrics
from secretsync.daemon.settings import DaemonSettings
from secretsync.daemon.status import StatusBoard
from secretsync.daemon.wiring import EngineWiring, SourceFactory, Wiring
from secretsync.engine.cycle import Engine
from secretsync.engine.report import CycleReport
from secretsync.fleet import gitsource, load, plan
from secretsync.fleet.certificates import FleetCertificates
from secretsync.kube import events
from secretsync.ops import certs
from secretsync.sources import kinds, poll, resolve, sopskeys
from secretsync.writeback.push import WriteBack

if TYPE_CHECKING:  # the election needs the kubernetes client: imported only when it is on
    from secretsync.daemon.sharding import Coordinator

log = logging.getLogger(__name__)

MIN_RETRY_S = 10.0  # how soon to retry when no fleet has ever loaded


class Daemon:
    """State of one `serve` process; the web layer's `Backend`."""

    def __init__(
        self,
        *,
        settings: DaemonSettings,
        wiring: Wiring | None = None,
        make_sources: SourceFactory | None = None,
        loader: Callable[[Path], Fleet] = load.load_fleet,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        rng: random.Random | None = None,
        coordinator: Coordinator | None = None,
        recorder: events.Events | None = None,
    ) -> None:
        self.settings = settings
        self.events = recorder or events.Events()  # off unless given
        self.coordinator = coordinator
        self.board = StatusBoard()
        self.metrics = Metrics()
        self.events.counted_by(self.metrics.event)
        self._record = bookkeeping.CycleRecord(
            board=self.board, metrics=self.metrics, events=self.events
        )
        self.verifier = webhook.Verifier(key=settings.webhook_key) if settings.webhook_key else None
        self.fleet: Fleet | None = None
        # the plan and the sealing certificates of `fleet`, made and read once when it loaded
        self._planned: list[DesiredSecret] = []
        self._certificates: FleetCertificates | None = None
        self.source_errors: dict[str, str | None] = {}
        if wiring is None:
            wiring = EngineWiring(
                settings=settings, make_sources=make_sources, report=self._read, gate=coordinator
            )
        self._wiring = wiring
        self._loader = loader
        self._clock = clock
        self._rng = rng or random.Random()  # noqa: S311 - schedule jitter, not security
        # every name a webhook may use for a Vault path in use -> that path's `<mount>/<path>`
        # (the KV v2 API form `<mount>/data/<path>` names the same path; a KV v1 path that
        # itself starts with `data/` makes one name stand for two)
        self._paths_in_use: dict[str, tuple[str, ...]] = {}
        self._pending: set[str] = set()
        self._pending_by: set[str] = set()  # "webhook", "poll": the narrowed cycle's trigger
        self._polled: frozenset[Location] = frozenset()
        self.poller = (
            poll.VersionPoller(
                interval_s=settings.poll_interval_s,
                locations=lambda: self._polled,
                sources=self._version_sources,
                submit=lambda paths: self.submit(paths, by="poll"),
            )
            if settings.poll_interval_s
            else None
        )
        self.checkout = (
            gitsource.GitCheckout(
                url=settings.git_url,
                branch=settings.git_branch,
                folder=settings.fleet_path,
                credentials_file=settings.git_credentials_file,
                timeout_s=settings.git_timeout_s,
                env=settings.env,
            )
            if settings.git_url
            else None
        )
        self.writeback = (
            WriteBack(
                checkout=self.checkout,
                settings=settings.push,
                may_write=coordinator.writes_git if coordinator is not None else lambda: True,
                record=bookkeeping.PushRecord(board=self.board, metrics=self.metrics),
                clock=clock,
            )
            if settings.push is not None and self.checkout is not None
            else None
        )
        self._wake = asyncio.Event()
        self._stopping = False
        self._full_now = False  # a Lease was acquired: reconcile what it guards at once
        if coordinator is not None:
            coordinator.on_change = self._leadership_changed
            for lease in coordinator.leases():
                self.metrics.leader.labels(lease=lease).set(0)
            self.board.leadership = lambda: coordinator.document(
                self.fleet.clusters if self.fleet else ()
            )

    # --- Backend (web) ---------------------------------------------------------------------------

    def readiness(self) -> web.Readiness:
        checks: dict[str, str] = {}
        ready = True
        if self.fleet is None:
            ready = False
            checks["fleet"] = "not loaded" + (
                f": {self.board.fleet_error}" if self.board.fleet_error else ""
            )
        else:
            checks["fleet"] = "loaded" + (
                " (the newest commit was refused)" if self.board.fleet_error else ""
            )
        for name, error in sorted(self.source_errors.items()):
            if error is None:
                checks[f"source:{name}"] = "reachable"
            else:
                ready = False
                checks[f"source:{name}"] = f"unreachable: {error}"
        return web.Readiness(ready=ready, checks=checks)

    def submit(self, paths: tuple[str, ...], *, by: str = "webhook") -> tuple[int, int]:
        """Queue the Vault paths in use among `paths`, each by its `<mount>/<path>` name (so
        `secret/apps/db` and `secret/data/apps/db` are one item): (paths queued, names ignored)."""
        used: set[str] = set()
        ignored = 0
        for name in paths:
            canonical = self._paths_in_use.get(name)
            if canonical is None:
                ignored += 1
            else:
                used.update(canonical)
        if used:
            self._pending.update(used)
            self._pending_by.add(by)
            self._wake.set()
        return len(used), ignored

    def _read(self, source: str, error: errors.ResolveError | None) -> None:
        self.metrics.source_read(source, ok=error is None)
        if error is None or not isinstance(error, errors.SourceUnavailable):
            self.source_errors[source] = None
        else:
            self.source_errors[source] = str(error)

    def _leadership_changed(self, lease: str, leading: bool) -> None:
        self.metrics.leader.labels(lease=lease).set(1 if leading else 0)
        if leading:
            self._full_now = True
            self._wake.set()

    # --- the loop --------------------------------------------------------------------------------

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    def _next_interval(self) -> float:
        interval = self.settings.interval_s
        if self.fleet is None:
            interval = min(interval, MIN_RETRY_S)
        return interval * (1 + self._rng.uniform(-self.settings.jitter, self.settings.jitter))

    async def run_loop(self) -> None:
        """Cycles until `stop()`: full ones at start and on schedule, narrowed ones on webhooks."""
        loop = asyncio.get_running_loop()
        if self.coordinator is not None:
            await self.coordinator.first_round()  # else the start cycle may own nothing yet
        next_full = loop.time()
        trigger = "start"
        while not self._stopping:
            if not self._pending:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(0.0, next_full - loop.time())):
                        await self._wake.wait()
            self._wake.clear()
            if self._stopping:
                break
            if loop.time() >= next_full or self._full_now:
                self._full_now = False
                self._pending.clear()  # a full cycle re-reads everything
                await self.cycle(trigger=trigger)
                trigger = "interval"
                next_full = loop.time() + self._next_interval()
                runtime.release_memory()
            elif self._pending:
                paths = frozenset(self._pending)
                by = "+".join(sorted(self._pending_by)) or "webhook"
                self._pending.clear()
                self._pending_by.clear()
                await self.cycle(trigger=by, only_paths=paths)

    async def cycle(self, *, trigger: str, only_paths: Collection[str] | None = None) -> None:
        """One cycle; never raises (except cancellation)."""
        started = self._clock()
        t0 = time.monotonic()
        try:
            report = await self._reconcile(trigger, only_paths)
            if report is None:
                return
            if self.writeback is not None:
                report = await self.writeback.publish(
                    report,
                    out_dir=lambda: self.fleet.root / self.fleet.output_dir if self.fleet else None,
                    rerun=lambda: self._reconcile(trigger, only_paths),
                    trigger=trigger,
                )
                self._full_now = self._full_now or self.writeback.failed  # re-render it all
        except Exception as exc:  # one failed cycle must not stop the daemon
            seconds = time.monotonic() - t0
            self._record.failed(exc, trigger=trigger, started=started, seconds=seconds)
            return
        seconds = time.monotonic() - t0
        self._record.finished(
            report, trigger=trigger, started=started, seconds=seconds, full=only_paths is None
        )

    def _undelivered(self, fleet: Fleet) -> dict[str, str]:
        """Why each cluster no sink of this process delivers to is left out."""
        sinks = (("Git", self.settings.git), ("Kubernetes", self.settings.kube))
        off = ", ".join(f"{name} sink off" for name, on in sinks if not on) or "no sink takes it"
        return {
            name: f"not delivered by this daemon (delivery {c.delivery}, {off})"
            for name, c in fleet.clusters.items()
            if not self._wiring.delivers(c)
        }

    async def _reconcile(
        self, trigger: str, only_paths: Collection[str] | None
    ) -> CycleReport | None:
        """Pull, reload and run the engine; None when this replica holds no Lease."""
        fleet = await self._reload()
        if fleet is None:
            raise errors.ConfigError("no fleet repo has loaded yet")
        engine = await self._wiring.engine_for(fleet)
        self.board.undelivered(self._undelivered(fleet))
        loaded = self._certificates if self._certificates is not None else FleetCertificates(fleet)
        expiry = loaded.expiry()
        self.metrics.set_certificate_expiry(expiry)
        self.board.certificates_read(expiry, now=self._clock(), warn_days=certs.WARNING_DAYS)
        self.events.certificates(expiry, now=self._clock(), warn_days=certs.WARNING_DAYS)
        if self.writeback is not None:
            fleet = await self.writeback.renew_certificates(fleet)
            await self.writeback.prepare(fleet.root / fleet.output_dir)
        # planned once, when the fleet loaded (a fleet reloaded for renewed certificates is
        # planned by the engine)
        same = fleet is self.fleet
        planned, certificates = (self._planned, loaded) if same else (None, None)
        if self.coordinator is None:
            report = await engine.run_cycle(
                fleet, only_paths=only_paths, planned=planned, certificates=certificates
            )
        else:
            scope = self.coordinator.scope(fleet.clusters)
            if scope is None:
                log.debug("cycle (%s) skipped: this replica holds no Lease", trigger)
                return None
            report = await engine.run_cycle(
                fleet,
                clusters=scope.clusters,
                only_paths=only_paths,
                planned=planned,
                certificates=certificates,
            )
        if isinstance(engine, Engine):
            self.metrics.source_logins(
                {
                    key: source.counts().get("logins", 0)
                    for key, source in engine.sources.items()
                    if isinstance(source, resolve.Counted)
                }
            )
        return report

    async def _reload(self) -> Fleet | None:
        """Load and plan the fleet repo; a refused one leaves the last good fleet in place."""
        path = self.settings.fleet_path
        now = self._clock()
        commit: str | None = None
        try:
            if self.checkout is not None:  # pull; a refused commit is undone below
                commit = await self.checkout.pull()
            fleet, desired = await asyncio.to_thread(_load_and_plan, self._loader, path)
        except (errors.ConfigError, gitsource.GitError) as exc:
            message = exc.render() if isinstance(exc, errors.ConfigError) else str(exc)
            if commit is not None and self.checkout is not None:
                message = f"commit {commit} refused: {message}"
                await self.checkout.restore(commit)
            if message != self.board.fleet_error:
                log.error("fleet repo %s refused, the last good one stays: %s", path, message)
            self.events.fleet_refused(commit, message)
            self.metrics.fleet_load_errors.inc()
            self.board.fleet_failed(message, at=now, commit=commit)
            return self.fleet
        if commit is not None and self.checkout is not None:
            await self.checkout.accept(commit)
        self.fleet, self._planned = fleet, desired
        self._certificates = FleetCertificates(fleet)
        self._paths_in_use = _webhook_names(desired)
        # the redaction filter forgets the values of refs that left the fleet
        logs.retain({ref for d in desired for ref in d.refs()})
        self._polled = poll.polled_locations(desired)
        self.board.fleet_loaded(fleet, desired, at=now, commit=commit)
        return fleet

    async def _version_sources(self) -> Mapping[str, poll.VersionSource]:
        """The sources of the engine in use that the poller may ask, by source key."""
        if self.fleet is None:
            return {}
        engine = await self._wiring.engine_for(self.fleet)
        if not isinstance(engine, Engine):
            return {}
        return {k: s for k, s in engine.sources.items() if isinstance(s, poll.VersionSource)}

    # --- the process -----------------------------------------------------------------------------

    async def serve(self) -> None:
        """Web server and cycle loop until SIGTERM / SIGINT (or `stop()`)."""
        s = self.settings
        surface = server.build(self, settings=s, coordinator=self.coordinator)
        loop = asyncio.get_running_loop()
        if self.coordinator is not None:
            self.coordinator.start()
        cycles = asyncio.create_task(self.run_loop(), name="secretsync-cycles")
        poller = (
            asyncio.create_task(self.poller.run(), name="secretsync-poll") if self.poller else None
        )

        def on_signal() -> None:
            log.info("stopping: the cycle in flight may finish within %.0f s", s.grace_s)
            self.stop()
            loop.call_later(s.grace_s, cycles.cancel)

        try:
            async with edge.serve(
                surface.app,
                host=s.host,
                port=s.port,
                limits=surface.limits,
                on_drop=self.metrics.dropped,
            ) as addresses:
                for host, port in addresses:
                    shown = f"[{host}]" if ":" in host else host
                    log.info("listening on http://%s:%d", shown, port)
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.add_signal_handler(sig, on_signal)
                with contextlib.suppress(asyncio.CancelledError):
                    await cycles
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            if not cycles.done():
                cycles.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await cycles
            if poller is not None:
                poller.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await poller
            if self.coordinator is not None:
                await self.coordinator.stop()  # after the last write: followers take over now
            await self._wiring.aclose()
            await self.events.aclose()
            await surface.aclose()
            log.info("stopped")


def _load_and_plan(
    loader: Callable[[Path], Fleet], path: Path
) -> tuple[Fleet, list[DesiredSecret]]:
    """Load and plan; a SOPS file whose key groups the Fleet refuses refuses the fleet too."""
    fleet = loader(path)
    desired = plan.plan(fleet)
    refused = sopskeys.check_files(fleet, sopskeys.readers_of(desired))
    if refused:
        raise errors.ConfigErrors(refused)
    return fleet, desired


def _webhook_names(desired: Iterable[DesiredSecret]) -> dict[str, tuple[str, ...]]:
    """Each name a webhook may use for a Vault path of `desired` -> the `<mount>/<path>` names
    it stands for (what `Engine.run_cycle(only_paths=...)` narrows by)."""
    names: dict[str, tuple[str, ...]] = {}
    for d in desired:
        for ref in d.refs():
            forms = kinds.path_names(ref.location)
            for name in forms:
                held = names.get(name, ())
                if forms[0] not in held:
                    names[name] = (*held, forms[0])
    return names
