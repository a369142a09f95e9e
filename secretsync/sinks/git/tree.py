"""The Git sink's folder tree: the output folder and each cluster folder opened from the top
without following a symlink, and the per-cluster state a run keeps from observe to discard."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from pathlib import Path

from secretsync.core.model import ObjectKey
from secretsync.delivery.rendered import Rendered
from secretsync.sinks import statindex
from secretsync.sinks.git.files import _MAX_OPEN_FOLDERS, _open_dir, _Refused, _Staged
from secretsync.sinks.statindex import ClusterIndex, StatIndex

log = logging.getLogger(__name__)


class GitTree:
    """The output folder of a `GitSink` and the state of its clusters in flight."""

    def __init__(
        self,
        *,
        out_dir: Path,
        cache_dir: Path | None = None,
        index: bool = True,
        repo: Path | None = None,
    ) -> None:
        """`cache_dir`: where the stat index lives (default `statindex.default_cache_dir()`);
        `index=False` reads every file on every observe. `repo`: the fleet repo that `out_dir`
        lies in; every folder from it down to `out_dir` is opened without following a symlink
        (without it `out_dir` is the operator's own path, e.g. `render --out`, and is opened
        as given)."""
        self.out_dir = out_dir
        self._root = os.fspath(out_dir)
        self._repo: str | None = None
        self._parts: tuple[str, ...] = ()
        if repo is not None:
            rel = os.path.relpath(os.path.abspath(out_dir), os.path.abspath(repo))
            parts = tuple(Path(rel).parts)
            if not parts or parts == (os.curdir,) or os.pardir in parts:
                raise ValueError("the output folder must be a folder inside the fleet repo")
            self._repo, self._parts = os.fspath(repo), parts
        # per cluster (one task each), from its observe to its discard: object -> file path
        # relative to the cluster folder, kept up to date by each apply; what the
        # kustomization lists when the cluster is finished
        self._paths: dict[str, dict[ObjectKey, str]] = {}
        self._lock = threading.Lock()
        self._changed = 0
        # per cluster: files its applies wrote, recorded in the stat index when it is finished
        self._written: dict[str, list[tuple[_Staged, Rendered]]] = {}
        # per cluster: files its applies no longer want (pruned, or moved to their canonical
        # name), unlinked when it is finished, once the kustomization no longer names them
        self._doomed: dict[str, list[str]] = {}
        # per cluster: files `stage` wrote ahead of `apply` (object -> what it staged)
        self._early: dict[str, dict[ObjectKey, tuple[Rendered, _Staged | str]]] = {}
        # per cluster: its folder's descriptor, from `observe` to `discard`
        self._folders: dict[str, int] = {}
        self._index: StatIndex | None = None
        # the index a cluster's observe loaded, for its apply (a few at most: see _open_index)
        self._open: dict[str, ClusterIndex] = {}
        if index:
            cache = cache_dir if cache_dir is not None else statindex.default_cache_dir()
            if cache is not None:
                out = os.path.abspath(out_dir)
                if os.path.commonpath([out, os.path.abspath(cache)]) == out:
                    log.warning("cache directory %s is inside the output: not used", cache)
                else:
                    self._index = StatIndex(cache, out_dir)

    @property
    def files_changed(self) -> int:
        return self._changed

    def _count(self, n: int = 1) -> None:
        with self._lock:
            self._changed += n

    def path_for(self, key: ObjectKey) -> Path:
        return self.out_dir / key.cluster / key.namespace / f"{key.name}.yaml"

    def _open_root(self, *, create: bool) -> int:
        """The output folder's descriptor (FileNotFoundError when it is missing and not
        `create`)."""
        if self._repo is None:
            if create:
                os.makedirs(self._root, exist_ok=True)
            return os.open(self._root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        fd = os.open(self._repo, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        where = self._repo
        for part in self._parts:
            where = os.path.join(where, part)
            try:
                inner = _open_dir(part, dir_fd=fd, rel=where, create=create)
            finally:
                os.close(fd)
            fd = inner
        return fd

    def _folder(self, cluster: str, *, create: bool) -> int:
        """The cluster folder's descriptor, kept until `_close` (FileNotFoundError when it is
        missing and not `create`; `_Refused` when it, or the output folder, is a symlink)."""
        fd = self._folders.pop(cluster, None)
        if fd is None:
            root = self._open_root(create=create)
            try:
                fd = _open_dir(
                    cluster, dir_fd=root, rel=os.path.join(self._root, cluster), create=create
                )
            finally:
                os.close(root)
            while len(self._folders) >= _MAX_OPEN_FOLDERS:  # observed, not yet discarded
                os.close(self._folders.pop(next(iter(self._folders))))
        self._folders[cluster] = fd
        return fd

    def _close(self, cluster: str) -> None:
        fd = self._folders.pop(cluster, None)
        if fd is not None:
            os.close(fd)

    def _remove_if_empty(self, cluster: str) -> None:
        self._close(cluster)
        with contextlib.suppress(OSError, _Refused):
            root = self._open_root(create=False)
            try:
                os.rmdir(cluster, dir_fd=root)  # only when empty
            finally:
                os.close(root)

    def _where(self, cluster: str) -> str:
        return os.path.join(self._root, cluster)
