"""The Git sink: rendered manifests in `<out>/<cluster>/<namespace>/<name>.yaml`.

Each cluster folder gets a `kustomization.yaml` listing its files, so Argo CD or Flux can point
at it. Writes are atomic (temp file, one sync, rename). Only files secretsync owns — the
managed-by label and this cluster's annotation — are updated or pruned; anything else in the
folder is left alone and stays listed.

The plaintext guard: before any byte is written, the sink looks for each resolved value the
object was built from (raw, base64 and JSON-escaped) and refuses the write if one is there more
often than in the same object rendered with stand-in values (`materialize.holds_plaintext`).

Observing a cluster folder stats each file and trusts a stat index kept outside the repo
(`statindex`) when the stat is exactly the recorded one; everything else is read and parsed.

The output tree is confined: every folder is opened from its parent's descriptor with
`O_NOFOLLOW | O_DIRECTORY` and every file by name in its folder with `O_NOFOLLOW`, so no
symlink under the output is followed, even one swapped in while a render runs. A symlink in a
cluster folder (the folder itself, a namespace folder, a manifest, `kustomization.yaml`) or any
other entry that is neither a folder nor a regular file fails that cluster. Only regular files
are read (opened non-blocking, checked with `fstat`, size-capped), so a FIFO or a device is
never read. When the output lies in the fleet repo, the folders from the repo down to it are
opened the same way.

Crash order: files are renamed into place (`apply`, one or more batches) before
`kustomization.yaml` names them (`finish_cluster`, after the last batch), and
`kustomization.yaml` stops naming a file before that file is unlinked (also in
`finish_cluster`, after the rewrite), so a process killed at any point leaves no kustomization
that names a missing file.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Mapping, Set
from typing import ClassVar

from secretsync.core import errors
from secretsync.core.model import Cluster, ObjectKey, Observed
from secretsync.delivery import kinds as delivery_kinds
from secretsync.delivery.rendered import Rendered, dump_yaml
from secretsync.sinks import statindex
from secretsync.sinks.deliver import ApplyResult, ChangeSet
from secretsync.sinks.git.files import (
    _check_entry,
    _drop_stale_probe,
    _drop_stale_temp,
    _Namespaces,
    _read,
    _Refused,
    _split,
    _stage,
    _Staged,
    _unlink,
)
from secretsync.sinks.git.kustomize import GitKustomizations
from secretsync.sinks.git.manifests import _observe_file, _observed, guard
from secretsync.sinks.statindex import ClusterIndex

log = logging.getLogger(__name__)


class GitSink(GitKustomizations):
    """Manifests for the clusters whose delivery goes to Git (`in_git`: `sealed`, `external`)
    in a folder tree meant for Git."""

    name: ClassVar[str] = "git"
    stages: ClassVar[bool] = True  # each file is written as its object is sealed
    shared: ClassVar[bool] = True  # one output tree for the whole fleet: one writer

    def progress(self, cluster: Cluster, mark: Callable[[], None] | None) -> None:
        return None  # local files answer at once: nothing counts down while they are written

    def accepts(self, cluster: Cluster) -> bool:
        return delivery_kinds.of(cluster).in_git

    def observes(self, cluster: Cluster) -> bool:
        return True  # a cluster that went direct must lose its files

    # --- the folders, opened from the top without following a symlink -------------------------

    # File work runs on the event loop's thread on purpose: local reads take microseconds,
    # while worker threads contending for the GIL with the sealing made each read cost
    # milliseconds (measured: 16 µs per file in one thread, 270 µs through a thread pool).

    async def observe(self, cluster: Cluster) -> Mapping[ObjectKey, Observed]:
        try:
            return self._observe(cluster.name)
        except _Refused as exc:
            self._close(cluster.name)
            raise errors.DeliveryError(str(exc)) from None

    def _open_index(self, cluster: str) -> ClusterIndex | None:
        if self._index is None:
            return None
        index = self._open.pop(cluster, None)
        if index is None:
            index = self._index.load(cluster)
        while len(self._open) >= 4:  # observed without an apply (dry runs): keep a few only
            self._open.pop(next(iter(self._open)))
        self._open[cluster] = index
        return index

    def _observe(self, cluster: str) -> dict[ObjectKey, Observed]:
        self._close(cluster)  # a fresh look: the folder may have been replaced since
        found: dict[ObjectKey, Observed] = {}
        paths = self._paths[cluster] = {}
        index = self._open_index(cluster)
        try:
            folder: int | None = self._folder(cluster, create=False)
        except FileNotFoundError:
            folder = None
        if folder is None:
            if index is not None and self._index is not None:
                index.keep_only(set())
                self._index.save(index)
            return found
        where = self._where(cluster)
        listing: list[tuple[str, str, Observed | bool | None]] = []  # False: read the file
        namespaces: list[str] = []
        with os.scandir(folder) as top:
            for e in top:
                _check_entry(e, os.path.join(where, e.name))
                if e.name.startswith(statindex.PROBE_PREFIX):
                    _drop_stale_probe(e, dir_fd=folder)
                elif e.name.startswith(".") and e.name.endswith(".tmp"):
                    _drop_stale_temp(e, dir_fd=folder)  # the kustomization's, of a killed run
                elif e.is_dir(follow_symlinks=False) and not e.name.startswith("."):
                    namespaces.append(e.name)
        namespaces.sort()
        with _Namespaces(folder, where) as spaces:
            for namespace in namespaces:
                space = spaces.fd(namespace)
                files = []
                with os.scandir(space) as entries:
                    for e in entries:
                        _check_entry(e, os.path.join(where, namespace, e.name))
                        if e.name.endswith(".yaml") and e.is_file(follow_symlinks=False):
                            files.append((e.name, e))
                        elif e.name.startswith(".") and e.name.endswith(".tmp"):
                            _drop_stale_temp(e, dir_fd=space)
                if not files:  # emptied by a run killed before its rmdir: Git ignores it, we too
                    with contextlib.suppress(OSError):
                        os.rmdir(namespace, dir_fd=folder)  # only when empty
                    continue
                files.sort()
                for name, entry in files:
                    if index is not None:
                        try:
                            hit, cached = index.lookup(
                                f"{namespace}/{name}", entry.stat(follow_symlinks=False)
                            )
                        except OSError:
                            continue
                        if hit:
                            listing.append((namespace, name, cached))
                            continue
                    listing.append((namespace, name, False))
            clock = None
            if index is not None:
                index.keep_only({f"{ns}/{name}" for ns, name, _ in listing})
                if any(item is False for _, _, item in listing):
                    # before any file is read: what is recorded must be older than this reading
                    clock = statindex.probe_clock(folder)
            for namespace, name, item in listing:
                rel = f"{namespace}/{name}"
                if item is False:
                    try:
                        st, data = _read(name, dir_fd=spaces.fd(namespace))
                    except OSError:
                        continue
                    observed = None if data is None else _observe_file(cluster, data, detail=False)
                    if index is not None and clock is not None and data is not None:
                        index.record(rel, st, observed, clock)
                else:
                    observed = item if isinstance(item, Observed) else None
                if observed is None or (observed.key in found and not observed.owned):
                    continue
                found[observed.key] = observed
                paths[observed.key] = rel
        if not listing:  # a folder emptied by a killed run: removed like a pruned one
            self._remove_if_empty(cluster)
        if index is not None and self._index is not None:
            self._index.save(index)
        return found

    def _rel(self, key: ObjectKey) -> str:
        return self._paths.get(key.cluster, {}).get(key, f"{key.namespace}/{key.name}.yaml")

    async def detail(self, observed: Observed) -> Observed:
        namespace, name = _split(self._rel(observed.key))
        try:
            folder = self._folder(observed.key.cluster, create=False)
            with _Namespaces(folder, self._where(observed.key.cluster)) as spaces:
                _, data = _read(name, dir_fd=spaces.fd(namespace))
        except (OSError, _Refused):
            return observed
        if data is None:
            return observed
        full = _observe_file(observed.key.cluster, data, detail=True)
        return full if full is not None and full.owned else observed

    async def apply(self, cluster: Cluster, changes: ChangeSet) -> ApplyResult:
        try:
            return self._apply(cluster.name, changes)
        except _Refused as exc:
            raise errors.DeliveryError(str(exc)) from None
        except OSError as exc:
            raise self._cannot_write(cluster.name, exc) from None

    def stage(self, cluster: Cluster, item: Rendered) -> None:
        """Write `item`'s file under its temp name now, ahead of `apply` (which renames it):
        the engine calls this as sealed objects come back from the seal workers, so creating
        files here overlaps with sealing there. `discard` removes what `apply` did not take."""
        early = self._early.setdefault(cluster.name, {})
        try:
            folder = self._folder(cluster.name, create=True)
            with _Namespaces(folder, self._where(cluster.name)) as spaces:
                if (old := early.pop(item.key, None)) is not None and isinstance(old[1], _Staged):
                    _unlink(old[1].tmp, dir_fd=spaces.fd(old[1].namespace))
                early[item.key] = (item, self._prepare(spaces, item))
        except _Refused as exc:
            raise errors.DeliveryError(str(exc)) from None
        except OSError as exc:
            raise self._cannot_write(cluster.name, exc) from None

    def _cannot_write(self, cluster: str, exc: OSError) -> errors.DeliveryError:
        """A file-system error as the cluster's failure: the folder and the cause (read-only,
        full, permission), never a path inside a manifest or any content."""
        cause = exc.strerror or type(exc).__name__
        return errors.DeliveryError(f"{self.out_dir / cluster}: cannot write ({cause})")

    async def finish_cluster(self, cluster: Cluster) -> None:
        """After the cluster's last batch: rewrite its folder's kustomization.yaml listing
        every file the folder holds after all of its applies, then unlink what the applies no
        longer want and remove emptied folders (and the cluster folder when nothing is left)."""
        try:
            self._finish(cluster.name)
        except _Refused as exc:
            raise errors.DeliveryError(str(exc)) from None
        except OSError as exc:
            raise self._cannot_write(cluster.name, exc) from None

    def discard(self, cluster: Cluster) -> None:
        """Remove what was staged and not applied; forget the cluster's file map, index and
        what was kept for it between batches (the next observe finds them again; until then,
        memory). Files an apply doomed stay when the cluster was not finished: the
        kustomization still names them."""
        name = cluster.name
        left = [p for _, p in self._early.pop(name, {}).values() if isinstance(p, _Staged)]
        try:
            if left:
                folder = self._folder(name, create=False)
                with _Namespaces(folder, self._where(name)) as spaces:
                    for staged in left:
                        with contextlib.suppress(OSError):
                            _unlink(staged.tmp, dir_fd=spaces.fd(staged.namespace))
        except (OSError, _Refused):
            pass  # a folder gone or swapped: its temp files went with it
        finally:
            self._close(name)
            self._paths.pop(name, None)
            self._open.pop(name, None)
            self._written.pop(name, None)
            self._doomed.pop(name, None)

    def _prepare(self, spaces: _Namespaces, item: Rendered) -> _Staged | str:
        """Dump, guard and write one object to a temp file; the refusal message when the guard
        finds a value in it."""
        namespace, name = item.key.namespace, f"{item.key.name}.yaml"
        data = dump_yaml(item.manifest)
        try:
            guard(
                data,
                item,
                path=os.path.join(self.out_dir.name, item.key.cluster, namespace, name),
            )
        except errors.PlaintextRefused as exc:
            return str(exc)
        tmp = _stage(name, data, dir_fd=spaces.fd(namespace, create=True))
        return _Staged(tmp, namespace, name, data)

    def _apply(self, cluster: str, changes: ChangeSet) -> ApplyResult:
        """Rename the staged files into place; what is to go (deletes, a file moved to its
        canonical name) is unlinked by `finish_cluster`, after the kustomization's rewrite."""
        result = ApplyResult()
        paths = self._paths.setdefault(cluster, {})
        index = self._open.pop(cluster, None)
        if index is None and self._index is not None:
            index = self._index.load(cluster)
        early = self._early.pop(cluster, {})
        writes = bool(changes.create or changes.update)
        try:
            folder = self._folder(cluster, create=writes)
        except FileNotFoundError:  # no folder, nothing to write: nothing to prune either
            for observed in changes.delete:
                paths.pop(observed.key, None)
                result.deleted.append(observed.key)
            return result
        staged: list[tuple[_Staged, Rendered]] = []
        doomed = self._doomed.setdefault(cluster, [])
        renamed = 0
        with _Namespaces(folder, self._where(cluster)) as spaces:
            try:
                for item in [*changes.create, *changes.update]:
                    ahead = early.pop(item.key, None)
                    if ahead is not None and ahead[0] is item:
                        prepared = ahead[1]
                    else:
                        if ahead is not None and isinstance(ahead[1], _Staged):
                            _unlink(ahead[1].tmp, dir_fd=spaces.fd(ahead[1].namespace))
                        prepared = self._prepare(spaces, item)
                    if isinstance(prepared, str):
                        log.error("%s", prepared)
                        result.failed[item.key] = prepared
                        continue
                    staged.append((prepared, item))
                if staged:
                    os.sync()
                for number, (done, item) in enumerate(staged, start=1):
                    space = spaces.fd(done.namespace)
                    os.replace(done.tmp, done.name, src_dir_fd=space, dst_dir_fd=space)
                    renamed = number
                    old = paths.get(item.key)
                    if old is not None and old != done.rel:
                        doomed.append(old)
                        if index is not None:
                            index.forget(old)
                    paths[item.key] = done.rel
                    result.written.append(item.key)
                    self._count()
            finally:
                for done, _ in staged[renamed:]:  # those not renamed into place
                    with contextlib.suppress(OSError):
                        _unlink(done.tmp, dir_fd=spaces.fd(done.namespace))
                for _, left in early.values():
                    if isinstance(left, _Staged):
                        with contextlib.suppress(OSError):
                            _unlink(left.tmp, dir_fd=spaces.fd(left.namespace))
        for observed in changes.delete:
            old = paths.pop(observed.key, None)
            doomed.append(old or self._rel(observed.key))
            if index is not None and old is not None:
                index.forget(old)
            result.deleted.append(observed.key)
        self._written.setdefault(cluster, []).extend(staged[:renamed])
        if index is not None and self._index is not None:
            for done, _ in staged:
                index.forget(done.rel)  # recorded anew when the cluster is finished
            self._index.save(index)
            self._open[cluster] = index
        return result

    def _finish(self, cluster: str) -> None:
        """Rewrite `kustomization.yaml` (synced to disk with the folder when files are about to
        go), then unlink what it no longer names: a kill at any point leaves no kustomization
        naming a missing file."""
        doomed = self._doomed.pop(cluster, [])
        index = self._open.pop(cluster, None)
        written = self._written.pop(cluster, [])
        try:
            folder = self._folder(cluster, create=False)
        except FileNotFoundError:  # no folder: nothing to list, nothing to unlink
            return
        paths = self._paths.get(cluster, {})
        with _Namespaces(folder, self._where(cluster)) as spaces:
            listed = self._write_kustomization(cluster, folder, paths, durable=bool(doomed))
            # a doomed file an object was written at afterwards (in the same batch or a later
            # one: its own name, which another object moved away from) is that object's now
            live = set(paths.values()) if doomed else set()
            emptied: set[str] = set()
            for rel in doomed:
                if rel in live:
                    continue
                namespace, name = _split(rel)
                try:
                    gone = _unlink(name, dir_fd=spaces.fd(namespace))
                except FileNotFoundError:
                    continue
                if gone:
                    self._count()
                    emptied.add(namespace)
            for namespace in sorted(emptied):
                with contextlib.suppress(OSError):
                    os.rmdir(namespace, dir_fd=folder)  # only when empty
            if index is not None and self._index is not None:
                # after the kustomization's sync: the clock probe then reads a later time than
                # the files' changes more often, and more of them are recorded at once
                self._index_written(cluster, folder, spaces, index, written)
                self._index.save(index)
        if not listed:
            self._remove_if_empty(cluster)

    @staticmethod
    def _index_written(
        cluster: str,
        folder: int,
        spaces: _Namespaces,
        index: ClusterIndex,
        staged: list[tuple[_Staged, Rendered]],
    ) -> None:
        """Record the files just written, read back after a clock probe: a byte-identical
        read proves the recorded stat belongs to what was written (see `statindex`)."""
        if not staged:
            return
        clock = statindex.probe_clock(folder)
        if clock is None:
            return
        for done, item in staged:
            try:
                st, back = _read(done.name, dir_fd=spaces.fd(done.namespace))
            except (OSError, _Refused):
                continue
            if back == done.data:
                index.record(done.rel, st, _observed(cluster, item.manifest, detail=False), clock)

    async def orphans(self, known: Set[str]) -> list[str]:
        """Cluster folders in the output that no longer belong to the fleet (a symlink there
        is never followed: it is left alone, with a warning)."""
        try:
            root = self._open_root(create=False)
        except FileNotFoundError:
            return []
        except (OSError, _Refused) as exc:
            log.warning("%s", exc)
            return []
        found: list[str] = []
        try:
            with os.scandir(root) as entries:
                for e in entries:
                    if e.name.startswith(".") or e.name in known:
                        continue
                    if e.is_symlink():
                        where = os.path.join(self._root, e.name)
                        log.warning("%s: output path is a symlink: not followed", where)
                    elif e.is_dir(follow_symlinks=False):
                        found.append(e.name)
        finally:
            os.close(root)
        return sorted(found)
