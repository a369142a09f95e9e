"""One commit of the output folder of a Git work tree (`OutputRepo`), and its fetch and push.

    repo = await OutputRepo.open(out_dir=fleet.root / fleet.output_dir, author=author)
    await repo.check_clean()                     # before rendering (`render --commit`)
    ...                                          # render
    commit = await repo.commit(report, cycle="2026-12-06T19:00:00+00:00 webhook")

Exactly the files under the folder that changed are staged (in an index of its own, so the work
tree's index is never half-staged), anything else dirty in the work tree is an error, every
staged blob is checked again for the values the cycle resolved (a refused blob fails its object
and stays out of the commit, and its file is put back as it was), and a cycle that changed
nothing commits nothing. The message (`commit`) holds names, actions, key names and source
versions, never a value. Every git call goes through `gitsource.run_git`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from secretsync.core import errors
from secretsync.delivery.rendered import leaks
from secretsync.engine.report import CycleReport, ItemResult
from secretsync.fleet import gitsource
from secretsync.writeback.commit import (
    _ACTIONS,
    Author,
    Commit,
    DirtyWorkTree,
    PushRejected,
    message,
)

log = logging.getLogger(__name__)


# what git prints when another writer moved the branch between our fetch and our push
_RACE: Final = ("non-fast-forward", "fetch first", "failed to update ref", "stale info")


@dataclass(slots=True, kw_only=True)
class _Git:
    """How this module calls git in one work tree."""

    top: Path
    env: Mapping[str, str]
    timeout_s: float
    git: str = "git"

    async def run(
        self, *args: str, stdin: bytes | None = None, extra: Mapping[str, str] | None = None
    ) -> gitsource.GitResult:
        return await gitsource.run_git(
            self.git,
            *args,
            folder=self.top,
            env={**self.env, **(extra or {})},
            timeout_s=self.timeout_s,
            stdin=stdin,
        )

    async def out(self, *args: str, **kwargs: object) -> str:
        return (await self.run(*args, **kwargs)).checked()  # type: ignore[arg-type]


class OutputRepo:
    """The output folder of a Git work tree, committed one cycle at a time."""

    def __init__(
        self, *, git: _Git, out_rel: str, author: Author, signing_key: Path | None = None
    ) -> None:
        self._git = git
        self.top = git.top
        self.out_rel = out_rel
        self.author = author
        self.signing_key = signing_key
        """An SSH private key that signs each commit (git's `gpg.format=ssh`), or None."""

    @classmethod
    async def open(
        cls,
        *,
        out_dir: Path,
        author: Author,
        env: Mapping[str, str] | None = None,
        timeout_s: float = gitsource.DEFAULT_TIMEOUT_S,
        git: str = "git",
        signing_key: Path | None = None,
    ) -> OutputRepo:
        """The repository whose work tree holds `out_dir`; `ConfigError` when there is none or
        the folder is not inside it."""
        start = out_dir if out_dir.is_dir() else out_dir.parent
        while not start.is_dir() and start != start.parent:
            start = start.parent
        scrubbed = gitsource.scrubbed_env(env if env is not None else os.environ, home=start)
        probe = _Git(top=start, env=scrubbed, timeout_s=timeout_s, git=git)
        found = await probe.run("rev-parse", "--show-toplevel")
        if found.returncode != 0:
            raise errors.ConfigError(f"{out_dir} is not in a Git work tree", field="--commit")
        top = Path(found.stdout.decode().strip()).resolve()
        rel = os.path.relpath(out_dir.resolve(), top)
        if rel == "." or rel.startswith(".."):
            raise errors.ConfigError(
                f"the output folder {out_dir} must be a folder inside the work tree {top}",
                field="--commit",
            )
        return cls(
            git=_Git(top=top, env=scrubbed, timeout_s=timeout_s, git=git),
            out_rel=Path(rel).as_posix(),
            author=author,
            signing_key=signing_key.absolute() if signing_key is not None else None,
        )

    # --- what is dirty ----------------------------------------------------------------------

    def _inside(self, path: str) -> bool:
        return path == self.out_rel or path.startswith(self.out_rel + "/")

    async def dirty(self) -> tuple[list[str], list[str]]:
        """Paths changed against HEAD (staged, unstaged or untracked): (under the output
        folder, elsewhere). Leftover temp files of an interrupted write are not changes."""
        text = await self._git.out(
            "status", "--porcelain=v1", "-z", "--untracked-files=all", "--no-renames"
        )
        inside: list[str] = []
        outside: list[str] = []
        for entry in text.split("\0"):
            if len(entry) < 4:
                continue
            path = entry[3:]
            if _is_temp(path):
                continue
            (inside if self._inside(path) else outside).append(path)
        return inside, outside

    async def check_clean(self) -> None:
        """Before a render that commits: `DirtyWorkTree` when the output folder already has
        changes (render did not make them) or anything else in the work tree is dirty."""
        inside, outside = await self.dirty()
        if inside:
            raise DirtyWorkTree(
                f"has changes render did not make ({_few(inside)}): commit or discard them first",
                field=self.out_rel,
            )
        await self._check_outside(outside)

    async def _check_outside(
        self, outside: Sequence[str] | None = None, *, allowed: Sequence[str] = ()
    ) -> None:
        if outside is None:
            outside = (await self.dirty())[1]
        outside = [p for p in outside if p not in allowed]
        if outside:
            raise DirtyWorkTree(
                f"changes outside the output folder {self.out_rel}/ ({_few(outside)}) are "
                "not committed by secretsync: commit or discard them first",
                field="work tree",
            )

    async def head(self) -> str | None:
        found = await self._git.run("rev-parse", "--verify", "--quiet", "HEAD^{commit}")
        return found.stdout.decode().strip() if found.returncode == 0 else None

    # --- the commit -------------------------------------------------------------------------

    async def commit(
        self,
        report: CycleReport,
        *,
        cycle: str,
        base: str | bool | None = True,
        advance_head: bool = True,
        also: Sequence[str] = (),
        notes: Sequence[str] = (),
    ) -> Commit | None:
        """One commit of exactly the changed files under the output folder on top of `base`
        (True: HEAD; None: a first commit without parent), or None when nothing changed.
        Objects whose blob holds a value `report` resolved are refused: marked failed in the
        report, left out of the commit and their file put back. `advance_head`: move HEAD
        (and its branch) to the commit, as `git commit` would. `also`: repo-relative files
        outside the output folder that this commit carries too (a renewed certificate and its
        pin), described by `notes` in the message."""
        await self._check_outside(allowed=also)
        parent = await self.head() if base is True else base
        if not isinstance(parent, str | None):
            raise TypeError("base")
        with tempfile.TemporaryDirectory(prefix="secretsync-index-") as scratch:
            index = {"GIT_INDEX_FILE": os.path.join(scratch, "index")}
            seed = await self._seed(base is True, parent)
            if seed is not None:
                # an index of exactly `parent`'s tree with the files' stat data, so only
                # changed files are hashed again: 10,000 files, one changed: 0.3 s instead of
                # 1.1 s from a bare `read-tree` (copied with its mtime: git's check for files
                # changed in the second the index was written depends on it)
                shutil.copy2(seed, index["GIT_INDEX_FILE"])
            elif parent is None:
                await self._git.out("read-tree", "--empty", extra=index)
            else:
                await self._git.out("read-tree", parent, extra=index)
            await self._stage(index)
            if also:
                await self._git.out("add", "--all", "--", *also, extra=index)
            changed = await self._changed(parent, index, also)
            if not changed:
                return None
            refused = await self._guard(changed, report, index)
            if refused:
                await self._unstage(refused, parent, index)
                self._fail(report, refused)
                changed = [p for p in changed if p not in refused]
                if not changed:
                    return None
            tree = (await self._git.out("write-tree", extra=index)).strip()
            if not advance_head:  # the push branch: its index for the next cycle
                kept = (await self._push_index())["GIT_INDEX_FILE"]
                shutil.copy2(index["GIT_INDEX_FILE"], kept)
        items = tuple(self._carried(report, set(changed)))
        text = message(items, cycle=cycle, notes=notes if set(changed) & set(also) else ())
        argv = ["commit-tree", tree, *(["-p", parent] if parent else []), "-F", "-"]
        with tempfile.TemporaryDirectory(prefix="secretsync-sign-") as scratch:
            if self.signing_key is not None:  # ssh-keygen -Y sign, run by git
                # ssh-keygen refuses a key others may read, and a mounted Secret is 0440 with
                # its fsGroup: signed with a 0600 copy in a 0700 folder of our own
                key = os.path.join(scratch, "key")
                fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as fh:
                    fh.write(self.signing_key.read_bytes())
                signing = ["-c", "gpg.format=ssh", "-c", f"user.signingKey={key}"]
                argv = [*signing, *argv[:2], "-S", *argv[2:]]
            sha = (
                await self._git.out(*argv, stdin=text.encode("utf-8"), extra=self.author.env())
            ).strip()
        if advance_head:
            old = [parent] if parent else []
            await self._git.out("update-ref", "-m", "secretsync: commit", "HEAD", sha, *old)
            # the work tree's own index learns the committed files (nothing else was staged)
            await self._git.out("reset", "--quiet", "--", self.out_rel, *also)
        return Commit(sha=sha, paths=tuple(changed), items=items, message=text)

    async def _seed(self, on_head: bool, parent: str | None) -> str | None:
        """An index file that holds exactly `parent`'s tree, with stat data: the work tree's
        own on HEAD (nothing else is staged: checked before), the push branch's when its tree
        is `parent`'s; None when there is none."""
        if parent is None:
            return None
        if on_head:
            own = self.top / (await self._git.out("rev-parse", "--git-path", "index")).strip()
            return str(own) if own.is_file() else None
        index = await self._push_index()
        if not os.path.isfile(index["GIT_INDEX_FILE"]):
            return None
        done = await self._git.run("write-tree", extra=index)
        if done.returncode != 0 or done.stdout.decode().strip() != await self._tree(
            f"{parent}^{{tree}}"
        ):
            return None
        return index["GIT_INDEX_FILE"]

    async def _stage(self, index: Mapping[str, str]) -> None:
        if (self.top / self.out_rel).is_dir():
            exclude = f":(exclude,glob){self.out_rel}/**/.*.tmp"
            await self._git.out("add", "--all", "--", self.out_rel, exclude, extra=index)
        else:  # the folder is gone (nothing rendered any more): its files are deleted
            await self._git.out(
                "rm", "-r", "--cached", "--quiet", "--ignore-unmatch", "--", self.out_rel,
                extra=index,
            )  # fmt: skip

    async def _changed(
        self, parent: str | None, index: Mapping[str, str], also: Sequence[str] = ()
    ) -> list[str]:
        if parent is None:
            listed = await self._git.out("ls-files", "-z", "--", self.out_rel, *also, extra=index)
        else:
            listed = await self._git.out(
                "diff-index", "--cached", "--name-only", "-z", "--no-renames", parent, "--",
                self.out_rel, *also, extra=index,
            )  # fmt: skip
        return [p for p in listed.split("\0") if p]

    async def _guard(
        self, paths: Sequence[str], report: CycleReport, index: Mapping[str, str]
    ) -> dict[str, str]:
        """The staged blobs that hold a value resolved in this cycle: path -> reason. An
        object's file is searched for the values it was built from (as the Git sink does: all
        values against every file would be quadratic in a fleet's size), any other file (a
        kustomization) for every value of the cycle."""
        if not report.guarded:
            return {}
        staged = await self._git.out("ls-files", "-s", "-z", "--", *paths, extra=index)
        blobs: dict[str, str] = {}
        for entry in staged.split("\0"):
            meta, _, path = entry.partition("\t")
            if path:
                blobs[path] = meta.split()[1]
        if not blobs:
            return {}
        batch = await self._git.run(
            "cat-file", "--batch", stdin="".join(f"{sha}\n" for sha in blobs.values()).encode()
        )
        contents = _batch_contents(batch.stdout)
        owners = {self._path(i): i for i in report.items if i.sink == "git" and i.desired}
        everything: tuple[bytes, ...] | None = None
        refused: dict[str, str] = {}
        for (path, sha), data in zip(blobs.items(), contents, strict=True):
            if data is None:
                raise gitsource.GitError(f"git cat-file: blob {sha} of {path} is missing")
            owner = owners.get(path)
            standin = None
            if owner is not None and owner.desired is not None:
                standin = report.standins.get(owner.desired.key)
                needles = tuple(
                    n
                    for ref in owner.desired.refs()
                    if (value := report.guarded.get(ref)) is not None
                    for n in value.needles()
                )
            else:
                if everything is None:
                    everything = tuple(n for v in report.guarded.values() for n in v.needles())
                needles = everything
            if leaks(data, needles, standin):
                refused[path] = f"{path}: refused to write a resolved secret value in plaintext"
        return refused

    async def _unstage(
        self, refused: Mapping[str, str], parent: str | None, index: Mapping[str, str]
    ) -> None:
        """Take refused paths out of the commit and put their files back as `parent` has them."""
        for path in refused:
            log.error("%s", refused[path])
            if parent is not None:
                shown = await self._git.run("cat-file", "blob", f"{parent}:{path}")
            else:
                shown = None
            target = self.top / path
            if shown is not None and shown.returncode == 0:
                await self._git.out("reset", "--quiet", parent or "", "--", path, extra=index)
                target.write_bytes(shown.stdout)
            else:
                await self._git.out(
                    "rm", "--cached", "--quiet", "--ignore-unmatch", "--", path, extra=index
                )
                with contextlib.suppress(FileNotFoundError):
                    target.unlink()

    def _path(self, item: ItemResult) -> str:
        return f"{self.out_rel}/{item.cluster}/{item.namespace}/{item.name}.yaml"

    def _fail(self, report: CycleReport, refused: Mapping[str, str]) -> None:
        for item in report.items:
            if item.sink == "git" and (reason := refused.get(self._path(item))) is not None:
                item.action, item.reason = "failed", reason

    def _carried(self, report: CycleReport, paths: set[str]) -> Iterable[ItemResult]:
        for item in report.items:
            if item.sink == "git" and item.action in _ACTIONS and self._path(item) in paths:
                yield item

    # --- the remote -------------------------------------------------------------------------

    async def fetch(self, url: str, branch: str, *, credentials: Path | None) -> str | None:
        """The head of `branch` on the remote (fetched), or None when it has no such branch."""
        ref = f"refs/secretsync/push/{branch}"
        done = await self._git.run(
            *gitsource.credential_config(credentials),
            "fetch", "--quiet", "--no-tags", "--", url, f"+refs/heads/{branch}:{ref}",
        )  # fmt: skip
        if done.returncode != 0:
            if "couldn't find remote ref" in done.stderr.decode("utf-8", "replace"):
                return None
            done.checked()
        return (await self._git.out("rev-parse", "--verify", f"{ref}^{{commit}}")).strip()

    async def _push_index(self) -> dict[str, str]:
        """The index of the push branch's output folder, kept between cycles in the Git dir:
        its stat data spare hashing (and rewriting) 10,000 unchanged files every cycle."""
        where = (await self._git.out("rev-parse", "--git-path", "secretsync-push-index")).strip()
        return {"GIT_INDEX_FILE": str(self.top / where)}

    async def _tree(self, rev: str) -> str | None:
        found = await self._git.run("rev-parse", "--verify", "--quiet", rev)
        return found.stdout.decode().strip() if found.returncode == 0 else None

    async def overlay(self, commit: str | None) -> None:
        """Make the output folder of the work tree what `commit` holds there (nothing when
        None), leaving the work tree's index alone: the render then starts from what the
        branch has. Only files that differ are written or removed."""
        index = await self._push_index()
        want = await self._tree(f"{commit}:{self.out_rel}") if commit else None
        have = None
        if os.path.isfile(index["GIT_INDEX_FILE"]):
            done = await self._git.run("write-tree", f"--prefix={self.out_rel}/", extra=index)
            have = done.stdout.decode().strip() if done.returncode == 0 else None
        if have is None or have != want:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(index["GIT_INDEX_FILE"])
            if want is None:
                await self._git.out("read-tree", "--empty", extra=index)
            else:
                await self._git.out("read-tree", f"--prefix={self.out_rel}/", want, extra=index)
        # stat data first (a fresh index hashes each file once), then what differs
        await self._git.run("update-index", "-q", "--refresh", extra=index)
        stale = await self._git.out(
            "diff-files", "--name-only", "-z", "--", self.out_rel, extra=index
        )
        extra = await self._git.out("ls-files", "--others", "-z", "--", self.out_rel, extra=index)
        for path in (p for p in extra.split("\0") if p):
            with contextlib.suppress(FileNotFoundError):
                (self.top / path).unlink()
        paths = [p for p in stale.split("\0") if p]
        if paths:
            await self._git.out(
                "checkout-index", "--force", "-z", "--stdin",
                stdin="".join(f"{p}\0" for p in paths).encode(), extra=index,
            )  # fmt: skip
            await self._git.run("update-index", "-q", "--refresh", extra=index)

    async def push(self, url: str, sha: str, branch: str, *, credentials: Path | None) -> None:
        """Push `sha` to `branch` without force; `PushRejected` when the branch moved."""
        done = await self._git.run(
            *gitsource.credential_config(credentials),
            "push", "--porcelain", "--no-verify", "--", url, f"{sha}:refs/heads/{branch}",
        )  # fmt: skip
        if done.returncode == 0:
            return
        said = (done.stdout + b"\n" + done.stderr).decode("utf-8", "replace")
        if any(reason in said for reason in _RACE):
            raise PushRejected(f"git push rejected: the branch {branch} moved")
        done.checked()


async def open_clean(
    out_dir: Path, *, author: str, env: Mapping[str, str], signing_key: Path | None = None
) -> OutputRepo:
    """`render --commit`, before rendering: the repository of `out_dir`, whose output folder
    and the rest of whose work tree have no changes (`DirtyWorkTree`, a `ConfigError`)."""
    repo = await OutputRepo.open(
        out_dir=out_dir, author=Author.parse(author), env=env, signing_key=signing_key
    )
    await repo.check_clean()
    return repo


def _batch_contents(data: bytes) -> list[bytes | None]:
    """The objects of `git cat-file --batch` output, in order (None: missing)."""
    out: list[bytes | None] = []
    at = 0
    while at < len(data):
        end = data.index(b"\n", at)
        header = data[at:end].split()
        at = end + 1
        if len(header) < 3 or header[1] == b"missing":
            out.append(None)
            continue
        size = int(header[2])
        out.append(data[at : at + size])
        at += size + 1
    return out


def _is_temp(path: str) -> bool:
    name = path.rsplit("/", 1)[-1]
    return name.startswith(".") and name.endswith(".tmp")


def _few(paths: Sequence[str]) -> str:
    shown = ", ".join(sorted(paths)[:5])
    return shown + (f" and {len(paths) - 5} more" if len(paths) > 5 else "")
