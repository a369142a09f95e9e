"""The daemon's push of the output folder's commits (`OutputRepo`, in `repo`): the GitOps
write-back.

`WriteBack` is `serve --git-push`: after a cycle that changed files it commits them on top of the
branch it pushes to and pushes, never with force. A push the remote rejects because another
writer moved the branch (non-fast-forward, or "failed to update ref") is answered by fetching,
rendering again on top of the new head (rendered files are derived data: never a textual
merge), committing and pushing again, with jittered back-off, at most `tries` times per cycle.
Commits of other writers are always kept. Only a process that may write Git (the holder of the
`secretsync-git` Lease, when there is an election) commits or pushes; the Lease is checked again
right before each push. Each outcome goes to a `PushRecord` (the daemon's metrics and status
board), the retries wait by the one back-off policy (`net.retry`).

Every git call goes through `gitsource.run_git`: an explicit argv, a scrubbed environment, a
timeout, and credentials only through `gitsource`'s read-only helper.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Final, Protocol

from secretsync.core import errors
from secretsync.core.model import Fleet
from secretsync.engine.report import CycleReport
from secretsync.fleet import gitsource, load
from secretsync.net.retry import Backoff
from secretsync.ops import certs
from secretsync.writeback.commit import DEFAULT_AUTHOR, Author, Commit, PushRejected, cycle_name
from secretsync.writeback.repo import OutputRepo

log = logging.getLogger(__name__)

DEFAULT_TRIES: Final = 5
NOT_WRITER: Final = "this replica does not write Git (it does not hold the secretsync-git Lease)"
LOST_LEASE: Final = "the secretsync-git Lease was lost before the push: not pushed"


# --- the commit message -------------------------------------------------------------------------


# --- the repository -----------------------------------------------------------------------------


# --- the daemon's push --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class PushSettings:
    """`serve --git-push`: where and as whom."""

    branch: str | None = None  # another branch of the same remote; None: the pulled branch
    author: Author = field(default_factory=lambda: Author.parse(DEFAULT_AUTHOR))
    signing_key: Path | None = None  # SSH key that signs the commits
    cert_refresh_s: float | None = certs.DEFAULT_REFRESH_S  # None: no certificate renewal
    home_kubeconfig: str | None = None  # where kubeconfig Secrets of clusters live
    tries: int = DEFAULT_TRIES
    backoff_s: float = 0.5  # first back-off after a rejection, doubled each time, jittered


@dataclass(frozen=True, slots=True, kw_only=True)
class PushOutcome:
    """What one cycle's write-back did (the status page's "last push")."""

    result: str  # ok | nothing | failed | skipped
    at: datetime
    sha: str | None = None
    tries: int = 0
    reason: str = ""
    objects: int = 0

    def document(self) -> dict[str, object]:
        return {
            "result": self.result,
            "at": self.at.isoformat(timespec="seconds"),
            "commit": self.sha,
            "tries": self.tries,
            "objects": self.objects,
            "reason": self.reason,
        }


class PushRecord(Protocol):
    """Where the outcome of each commit and push goes (the daemon: its metrics and status
    board); the write-back itself knows neither."""

    def rejected(self) -> None:
        """The remote rejected one push (another writer moved the branch)."""
        ...

    def finished(
        self,
        outcome: PushOutcome,
        *,
        carried: Sequence[tuple[str, str | None]],
        seconds: float | None,
    ) -> None:
        """A cycle's write-back ended (`outcome.result`: ok, failed, skipped); `carried` are the
        (cluster, FleetSecret) of the objects its commit holds; `seconds` is set for a push
        that was tried (ok or failed)."""
        ...


class WriteBack:
    """Commit and push after each cycle of the daemon (see the module docstring)."""

    def __init__(
        self,
        *,
        checkout: gitsource.GitCheckout,
        settings: PushSettings,
        may_write: Callable[[], bool],
        record: PushRecord,
        rng: random.Random | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.checkout = checkout
        self.settings = settings
        self.branch = settings.branch or checkout.branch
        self.may_write = may_write
        self.record = record
        self._rng = rng or random.Random()  # noqa: S311 - back-off jitter, not security
        self._clock = clock
        self._repo: OutputRepo | None = None
        self._base: str | None = None  # the head of the push branch this render starts from
        self.failed = False
        """The last cycle's push failed: its changes are only in the next render."""
        self.also: list[str] = []  # files outside the output folder this cycle commits too
        self.notes: list[str] = []
        self._renew_at = 0.0  # monotonic time of the next certificate renewal

    @property
    def separate(self) -> bool:
        return self.branch != self.checkout.branch

    async def _open(self, out_dir: Path) -> OutputRepo:
        repo = self._repo
        if repo is None or repo.top / repo.out_rel != out_dir.resolve():
            repo = await OutputRepo.open(
                out_dir=out_dir,
                author=self.settings.author,
                signing_key=self.settings.signing_key,
                env=self.checkout.env,
                timeout_s=self.checkout.timeout_s,
            )
            self._repo = repo
        return repo

    async def prepare(self, out_dir: Path) -> None:
        """After the pull, before rendering: with a push branch of its own, the output folder
        starts as that branch has it (so unchanged objects keep their bytes)."""
        if not self.separate or not self.may_write():
            return
        repo = await self._open(out_dir)
        c = self.checkout
        self._base = await repo.fetch(c.url, self.branch, credentials=c.credentials_file)
        await repo.overlay(self._base)

    async def renew_certificates(self, fleet: Fleet) -> Fleet:
        """After the pull, when due: take the renewed certificates of the clusters' controllers
        (`certs.renew`) so that this cycle re-seals with them and commits them with the
        re-sealed files, in one commit; the fleet as it now is. Only on the branch pulled (the
        certificates live in the fleet, not in a push branch of the output's own)."""
        self.also, self.notes = [], []
        interval = self.settings.cert_refresh_s
        now = time.monotonic()
        if interval is None or self.separate or now < self._renew_at or not self.may_write():
            return fleet
        renewed = await certs.renew(
            fleet, home_kubeconfig=self.settings.home_kubeconfig, now=self._clock()
        )
        self._renew_at = now + interval
        if not renewed:
            return fleet
        self.also = sorted({p for r in renewed for p in r.paths})
        self.notes = [r.note() for r in renewed]
        return await asyncio.to_thread(load.load_fleet, fleet.root)

    async def publish(
        self,
        report: CycleReport,
        *,
        out_dir: Callable[[], Path | None],
        rerun: Callable[[], Awaitable[CycleReport | None]],
        trigger: str,
    ) -> CycleReport:
        """Commit and push what `report`'s cycle changed; on a rejected push, pull, render
        again (`rerun`) and retry. The last report is returned (with refused objects failed);
        the outcome goes to the recorder."""
        t0 = time.monotonic()
        started = self._clock()
        cycle = cycle_name(trigger, at=started)
        commit: Commit | None = None
        tries = 0
        reason = ""
        while True:
            folder = out_dir()
            if folder is None or not self.may_write():
                return self._done(
                    report, "skipped", commit=None, t0=t0, tries=tries, reason=NOT_WRITER
                )
            try:
                repo = await self._open(folder)
                base: str | bool | None = self._base if self.separate else True
                commit = await repo.commit(
                    report,
                    cycle=cycle,
                    base=base,
                    advance_head=not self.separate,
                    also=self.also,
                    notes=self.notes,
                )
                if commit is None:
                    self.failed = False
                    return self._done(report, "nothing", commit=None, t0=t0, tries=tries)
                if not self.may_write():  # the Lease went while committing: no push
                    return self._done(
                        report, "skipped", commit=commit, t0=t0, tries=tries, reason=LOST_LEASE
                    )
                tries += 1
                c = self.checkout
                await repo.push(c.url, commit.sha, self.branch, credentials=c.credentials_file)
            except PushRejected as exc:
                reason = str(exc)
                self.record.rejected()
                log.info("push %d of %d rejected: %s", tries, self.settings.tries, reason)
                if tries >= self.settings.tries:
                    break
                await asyncio.sleep(self._backoff(tries))
                try:
                    again = await rerun()  # pulls the new head and renders on top of it
                except (gitsource.GitError, errors.SecretSyncError, OSError) as exc:
                    reason = f"rendering on the new head: {_reason(exc)}"
                    break
                if again is None:
                    return self._done(
                        report, "skipped", commit=None, t0=t0, tries=tries, reason=NOT_WRITER
                    )
                report = again
                continue
            except (gitsource.GitError, errors.ConfigError, OSError) as exc:
                reason = _reason(exc)
                break
            self.failed = False
            return self._done(report, "ok", commit=commit, t0=t0, tries=tries)
        self.failed = True
        if self.also:  # the renewed certificates went with the commit: fetch them again
            self._renew_at = 0.0
        log.error("push failed after %d tr%s: %s", tries, "y" if tries == 1 else "ies", reason)
        return self._done(report, "failed", commit=commit, t0=t0, tries=tries, reason=reason)

    def _backoff(self, tries: int) -> float:
        return Backoff(base_s=self.settings.backoff_s, high=1.0, rng=self._rng).wait(tries)

    def _done(
        self,
        report: CycleReport,
        result: str,
        *,
        commit: Commit | None,
        t0: float,
        tries: int,
        reason: str = "",
    ) -> CycleReport:
        outcome = PushOutcome(
            result=result,
            at=self._clock(),
            sha=commit.sha if commit else None,
            tries=tries,
            reason=reason,
            objects=len(commit.items) if commit else 0,
        )
        if result == "ok" and commit is not None:
            log.info(
                "pushed %s to %s: %d object(s)", commit.sha[:12], self.branch, len(commit.items)
            )
        if result != "nothing":
            self.record.finished(
                outcome,
                carried=[(i.cluster, i.fleet_secret) for i in commit.items] if commit else [],
                seconds=time.monotonic() - t0 if result in ("ok", "failed") else None,
            )
        return report


def _reason(exc: Exception) -> str:
    if isinstance(exc, errors.ConfigError):
        return exc.render()
    if isinstance(exc, OSError):
        return f"cannot write the work tree ({exc.strerror or type(exc).__name__})"
    return str(exc)
