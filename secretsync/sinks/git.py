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
import errno
import logging
import os
import stat
import threading
import time
from collections.abc import Mapping, Set
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import yaml

from secretsync.core import errors
from secretsync.core.model import (
    ANNOTATION_CONTENT_HASH,
    ANNOTATION_KEY_HASHES,
    ANNOTATION_SOURCE_VERSIONS,
    LABEL_FLEET_SECRET,
    Cluster,
    Delivery,
    ObjectKey,
    Observed,
    is_owned,
)
from secretsync.delivery import emit, materialize
from secretsync.delivery.materialize import Rendered, dump_yaml
from secretsync.sinks import statindex
from secretsync.sinks.deliver import ApplyResult, ChangeSet
from secretsync.sinks.statindex import ClusterIndex, StatIndex

log = logging.getLogger(__name__)

KUSTOMIZATION = "kustomization.yaml"
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
_HEADER = "# Written by secretsync for cluster {cluster}. Do not edit: changes are overwritten.\n"


def guard(data: bytes, item: Rendered, *, path: str) -> None:
    """Refuse bytes that hold a value `item` was built from (`materialize.holds_plaintext`);
    the error names the file, never the value."""
    if materialize.holds_plaintext(data, item):
        raise errors.PlaintextRefused(
            f"{path}: refused to write a resolved secret value in plaintext"
        )


def _parse(data: bytes) -> dict[str, Any] | None:
    try:
        doc = yaml.load(data, Loader=yaml.CSafeLoader)
    except yaml.YAMLError:
        return None
    return doc if isinstance(doc, dict) else None


def _observe_file(cluster: str, data: bytes, *, detail: bool) -> Observed | None:
    doc = None if detail else emit.read_metadata(data)
    if doc is None:
        doc = _parse(data)
    if doc is None:
        return None
    return _observed(cluster, doc, detail=detail)


def _observed(cluster: str, doc: Mapping[str, Any], *, detail: bool) -> Observed | None:
    """What the sink needs to know of a parsed manifest (or of one it is about to write)."""
    meta = doc.get("metadata")
    if not isinstance(meta, dict):
        return None
    name, namespace = meta.get("name"), meta.get("namespace")
    if not isinstance(name, str) or not isinstance(namespace, str):
        return None
    labels = meta.get("labels")
    annotations = meta.get("annotations")
    if not isinstance(labels, dict):
        labels = {}
    if not isinstance(annotations, dict):
        annotations = {}
    owned = is_owned(labels, annotations, cluster)
    key_hashes: dict[str, str] = {}
    raw_hashes = annotations.get(ANNOTATION_KEY_HASHES)
    if isinstance(raw_hashes, str):
        key_hashes = materialize.parse_key_hashes(raw_hashes)
    encrypted: dict[str, str] = {}
    if detail:
        spec = doc.get("spec")
        enc = spec.get("encryptedData") if isinstance(spec, dict) else None
        if isinstance(enc, dict):
            encrypted = {str(k): str(v) for k, v in enc.items() if isinstance(v, str)}
    content = annotations.get(ANNOTATION_CONTENT_HASH)
    fleet_secret = labels.get(LABEL_FLEET_SECRET)
    raw_versions = annotations.get(ANNOTATION_SOURCE_VERSIONS)
    versions = materialize.parse_key_hashes(raw_versions) if isinstance(raw_versions, str) else {}
    return Observed(
        key=ObjectKey(cluster, namespace, name),
        kind=str(doc.get("kind", "")),
        owned=owned,
        fleet_secret=fleet_secret if isinstance(fleet_secret, str) else None,
        content_hash=content if isinstance(content, str) else None,
        key_hashes=key_hashes,
        encrypted=encrypted,
        versions=versions,
    )


# O_NONBLOCK: a FIFO opens at once instead of waiting for a writer (and is then refused by its
# fstat); reads of a regular file ignore the flag
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_CHUNK = 64 * 1024


class _Refused(Exception):
    """An entry of the output tree that is never followed, read or replaced."""

    def __init__(self, rel: str, why: str) -> None:
        super().__init__(f"{rel}: {why}")
        self.rel = rel
        self.why = why


def _open_dir(name: str, *, dir_fd: int, rel: str, create: bool = False) -> int:
    """The folder `name` in `dir_fd`, never through a symlink; made first when `create`."""
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        if not create:
            raise
    except OSError as exc:
        raise _refusal(exc, rel, name=name, dir_fd=dir_fd) from None
    with contextlib.suppress(FileExistsError):
        os.mkdir(name, 0o777, dir_fd=dir_fd)
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        raise _refusal(exc, rel, name=name, dir_fd=dir_fd) from None


def _refusal(exc: OSError, rel: str, *, name: str, dir_fd: int) -> Exception:
    """`O_NOFOLLOW` fails with ELOOP on a symlink, or ENOTDIR along with `O_DIRECTORY`; ENOTDIR
    is also a file where a folder should be."""
    if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
        return exc
    try:
        link = stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        link = exc.errno == errno.ELOOP
    return _Refused(rel, "output path is a symlink" if link else "output path is not a folder")


def _check_entry(entry: os.DirEntry[str], rel: str) -> None:
    """Refuse a symlink, FIFO, socket or device in a cluster folder (from the directory
    listing's own type: no extra system call)."""
    if entry.is_symlink():
        raise _Refused(rel, "output path is a symlink")
    if not (entry.is_dir(follow_symlinks=False) or entry.is_file(follow_symlinks=False)):
        raise _Refused(rel, "output path is not a regular file or folder")


def _read(name: str, *, dir_fd: int) -> tuple[os.stat_result, bytes | None]:
    """The file's stat (taken before reading) and its bytes; None when it is not a regular
    file (never read: a FIFO, a device) or over the size cap. Raises ELOOP for a symlink.

    Reads in 64 KiB chunks: one `read(4 MiB + 1)` per file allocated (and freed) 4 MiB each
    time, which cost more than the read itself."""
    fd = os.open(name, _READ_FLAGS, dir_fd=dir_fd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_MANIFEST_BYTES:
            return st, None
        data = os.read(fd, max(_CHUNK, st.st_size + 1))
        if len(data) <= st.st_size:  # the file grew meanwhile, or the size lied: read on
            parts = [data]
            total = len(data)
            while chunk := os.read(fd, _CHUNK):
                parts.append(chunk)
                total += len(chunk)
                if total > MAX_MANIFEST_BYTES:
                    return st, None
            data = b"".join(parts)
        return st, data
    finally:
        os.close(fd)


@dataclass(frozen=True, slots=True)
class _Staged:
    """A file written under its temp name in its namespace folder, waiting for its rename."""

    tmp: str
    namespace: str
    name: str
    data: bytes

    @property
    def rel(self) -> str:
        return f"{self.namespace}/{self.name}"


class _Namespaces:
    """The namespace folders of one cluster folder, opened (never through a symlink) while one
    call works on them. At most `_KEEP` stay open: a cluster may have thousands of namespaces,
    and reopening one costs a few microseconds."""

    _KEEP = 16

    __slots__ = ("_fds", "_folder", "_where")

    def __init__(self, folder: int, where: str) -> None:
        self._folder = folder
        self._where = where
        self._fds: dict[str, int] = {}

    def fd(self, namespace: str, *, create: bool = False) -> int:
        fd = self._fds.get(namespace)
        if fd is None:
            while len(self._fds) >= self._KEEP:
                os.close(self._fds.pop(next(iter(self._fds))))
            where = os.path.join(self._where, namespace)
            fd = self._fds[namespace] = _open_dir(
                namespace, dir_fd=self._folder, rel=where, create=create
            )
        return fd

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def __enter__(self) -> _Namespaces:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _drop_stale_probe(entry: os.DirEntry[str], *, dir_fd: int) -> None:
    """A clock probe (`.secretsync-clock.<pid>.tmp`) lives for microseconds: one whose process
    is gone, or a minute old, was left by a killed process."""
    pid = entry.name[len(statindex.PROBE_PREFIX) :].partition(".")[0]
    _drop_if_stale(entry, dir_fd=dir_fd, pid=pid, max_age_s=60)


def _drop_stale_temp(entry: os.DirEntry[str], *, dir_fd: int) -> None:
    """A temp file of a process that is gone (killed mid-write: `.<name>.<pid>.tmp`), or one
    an hour old: never renamed into place, so nothing reads it; without this it would linger in
    `git status`."""
    _drop_if_stale(entry, dir_fd=dir_fd, pid=entry.name.rsplit(".", 2)[-2], max_age_s=3600)


def _drop_if_stale(entry: os.DirEntry[str], *, dir_fd: int, pid: str, max_age_s: float) -> None:
    """Remove a leftover of another process: at once when `pid` names a process that is gone,
    else once it is older than `max_age_s`."""
    with contextlib.suppress(OSError):
        if pid.isdigit() and int(pid) != os.getpid():
            try:
                os.kill(int(pid), 0)
            except ProcessLookupError:
                os.unlink(entry.name, dir_fd=dir_fd)
                return
        if time.time() - entry.stat(follow_symlinks=False).st_mtime > max_age_s:
            os.unlink(entry.name, dir_fd=dir_fd)


def _unlink(name: str, *, dir_fd: int) -> bool:
    """Unlink `name` (a symlink itself, never its target); whether it was there."""
    try:
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return False
    return True


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _stage(name: str, data: bytes, *, dir_fd: int) -> str:
    """Write `data` to a new temp file beside `name` in `dir_fd` (created 0600 and never
    through a symlink); its name."""
    tmp = f".{name}.{os.getpid()}.tmp"
    try:
        fd = os.open(tmp, _CREATE_FLAGS, 0o600, dir_fd=dir_fd)
    except FileExistsError:  # a leftover, or another sink of this process: a fresh name
        while True:  # the pid stays second to last: `_drop_stale_temp` reads it there
            tmp = f".{name}.{os.urandom(4).hex()}.{os.getpid()}.tmp"
            try:
                fd = os.open(tmp, _CREATE_FLAGS, 0o600, dir_fd=dir_fd)
                break
            except FileExistsError:
                continue
    try:
        _write_all(fd, data)
    except BaseException:
        os.close(fd)
        os.unlink(tmp, dir_fd=dir_fd)
        raise
    os.close(fd)
    return tmp


def _split(rel: str) -> tuple[str, str]:
    namespace, _, name = rel.partition("/")
    return namespace, name


_MAX_OPEN_FOLDERS = 256
"""Cluster folders kept open from `observe` to `discard` (the engine works on 128 clusters at a
time by default); one evicted is simply opened again."""


class GitSink:
    """Manifests for `sealed` and `external` clusters in a folder tree meant for Git."""

    name: ClassVar[str] = "git"
    stages: ClassVar[bool] = True  # each file is written as its object is sealed

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

    def accepts(self, cluster: Cluster) -> bool:
        return cluster.delivery in (Delivery.SEALED, Delivery.EXTERNAL)

    def observes(self, cluster: Cluster) -> bool:
        return True  # a cluster that went direct must lose its files

    def path_for(self, key: ObjectKey) -> Path:
        return self.out_dir / key.cluster / key.namespace / f"{key.name}.yaml"

    # --- the folders, opened from the top without following a symlink -------------------------

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

    def _write_kustomization(
        self, cluster: str, folder: int, paths: Mapping[ObjectKey, str], *, durable: bool
    ) -> bool:
        """Write `kustomization.yaml` (atomically) listing what `paths` names and the foreign
        entries that still exist, or unlink it when nothing is left; whether one remains.
        `durable`: sync the folder after, so that the new listing is on disk before files it
        no longer names are unlinked."""
        owned = set(paths.values())
        where = os.path.join(self._where(cluster), KUSTOMIZATION)
        try:
            st, existing = _read(KUSTOMIZATION, dir_fd=folder)
        except FileNotFoundError:
            st, existing = None, None
        except OSError as exc:
            raise _refusal(exc, where, name=KUSTOMIZATION, dir_fd=folder) from None
        if st is not None and not stat.S_ISREG(st.st_mode):
            raise _Refused(where, "output path is not a regular file or folder")
        data = self._kustomization(cluster, sorted(owned))
        if existing is not None and existing != data:
            # the file lists more than secretsync's files (or is older): keep foreign entries
            old = _parse(existing) or {}
            resources = old.get("resources")
            if isinstance(resources, list):
                foreign = {
                    r
                    for r in resources
                    if isinstance(r, str) and r not in owned and self._foreign(folder, cluster, r)
                }
                data = self._kustomization(cluster, sorted(owned | foreign))
        if data is None:
            if st is not None:
                os.unlink(KUSTOMIZATION, dir_fd=folder)
                self._count()
                if durable:
                    os.fsync(folder)
            return False
        if existing == data:
            return True
        tmp = _stage(KUSTOMIZATION, data, dir_fd=folder)
        os.sync()
        os.replace(tmp, KUSTOMIZATION, src_dir_fd=folder, dst_dir_fd=folder)
        self._count()
        if durable:
            os.fsync(folder)
        return True

    @staticmethod
    def _kustomization(cluster: str, resources: list[str]) -> bytes | None:
        if not resources:
            return None
        # what dump_yaml writes for {apiVersion, kind, resources}, without its generic walk
        # (this runs for every cluster on every render, changed or not)
        lines = [
            _HEADER.format(cluster=cluster),
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n",
            *(f"- {emit.scalar(r)}\n" for r in resources),
        ]
        return "".join(lines).encode("utf-8")

    @staticmethod
    def _foreign(folder: int, cluster: str, resource: str) -> bool:
        """Whether a `kustomization.yaml` entry secretsync did not write names something that
        exists in the cluster folder and is not secretsync's. Entries leaving the folder
        (absolute, `..`, URLs) are dropped unread; no symlink on the way is followed, only a
        regular file is read."""
        parts = resource.split("/")
        if any(p in ("", os.curdir, os.pardir) for p in parts):
            return False
        fd = folder
        try:
            for part in parts[:-1]:
                inner = os.open(part, _DIR_FLAGS, dir_fd=fd)
                if fd != folder:
                    os.close(fd)
                fd = inner
            st = os.stat(parts[-1], dir_fd=fd, follow_symlinks=False)
            if not stat.S_ISREG(st.st_mode):
                return True  # a folder (or another entry): listed as it is, never read
            _, data = _read(parts[-1], dir_fd=fd)
        except (OSError, ValueError):  # ValueError: a NUL byte in the entry
            return False
        finally:
            if fd != folder:
                os.close(fd)
        observed = None if data is None else _observe_file(cluster, data, detail=False)
        return observed is None or not observed.owned

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
