"""The Git sink: rendered manifests in `<out>/<cluster>/<namespace>/<name>.yaml`.

Each cluster folder gets a `kustomization.yaml` listing its files, so Argo CD or Flux can point
at it. Writes are atomic (temp file, one sync, rename). Only files secretsync owns — the
managed-by label and this cluster's annotation — are updated or pruned; anything else in the
folder is left alone and stays listed.

The plaintext guard: before any byte is written, the sink looks for each resolved value the
object was built from (raw, base64 and JSON-escaped) and refuses the write if one is there.

Observing a cluster folder stats each file and trusts a stat index kept outside the repo
(`statindex`) when the stat is exactly the recorded one; everything else is read and parsed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import threading
import time
from collections.abc import Mapping, Set
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import yaml

from secretsync import emit, errors, materialize
from secretsync.deliver import ApplyResult, ChangeSet
from secretsync.materialize import Rendered, dump_yaml
from secretsync.model import (
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
from secretsync.sinks import statindex
from secretsync.sinks.statindex import ClusterIndex, StatIndex

log = logging.getLogger(__name__)

KUSTOMIZATION = "kustomization.yaml"
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
_HEADER = "# Written by secretsync for cluster {cluster}. Do not edit: changes are overwritten.\n"


def guard(data: bytes, needles: tuple[bytes, ...], *, path: str) -> None:
    """Refuse bytes that contain any needle; the error names the file, never the value."""
    for needle in needles:
        if needle in data:
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


_READ_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
_CREATE_FLAGS = (
    os.O_WRONLY
    | os.O_CREAT
    | os.O_EXCL
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_CLOEXEC", 0)
)
_CHUNK = 64 * 1024


def _read(path: str) -> tuple[os.stat_result, bytes | None]:
    """The file's stat (taken before reading) and its bytes, None when over the size cap.

    Reads in 64 KiB chunks: one `read(4 MiB + 1)` per file allocated (and freed) 4 MiB each
    time, which cost more than the read itself."""
    fd = os.open(path, _READ_FLAGS)
    try:
        st = os.fstat(fd)
        if st.st_size > MAX_MANIFEST_BYTES:
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
    """A file written under its temp name, waiting for its rename."""

    tmp: str
    path: str
    rel: str
    data: bytes


def _drop_stale_probe(entry: os.DirEntry[str]) -> None:
    """A clock probe (`.secretsync-clock.<pid>.tmp`) lives for microseconds: one whose process
    is gone, or a minute old, was left by a killed process."""
    pid = entry.name[len(statindex.PROBE_PREFIX) :].partition(".")[0]
    _drop_if_stale(entry, pid=pid, max_age_s=60)


def _drop_stale_temp(entry: os.DirEntry[str]) -> None:
    """A temp file of a process that is gone (killed mid-write: `.<name>.<pid>.tmp`), or one
    an hour old: never renamed into place, so nothing reads it; without this it would linger in
    `git status`."""
    _drop_if_stale(entry, pid=entry.name.rsplit(".", 2)[-2], max_age_s=3600)


def _drop_if_stale(entry: os.DirEntry[str], *, pid: str, max_age_s: float) -> None:
    """Remove a leftover of another process: at once when `pid` names a process that is gone,
    else once it is older than `max_age_s`."""
    with contextlib.suppress(OSError):
        if pid.isdigit() and int(pid) != os.getpid():
            try:
                os.kill(int(pid), 0)
            except ProcessLookupError:
                os.unlink(entry.path)
                return
        if time.time() - entry.stat(follow_symlinks=False).st_mtime > max_age_s:
            os.unlink(entry.path)


def _unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class GitSink:
    """Manifests for `sealed` and `external` clusters in a folder tree meant for Git."""

    name: ClassVar[str] = "git"
    stages: ClassVar[bool] = True  # each file is written as its object is sealed

    def __init__(self, *, out_dir: Path, cache_dir: Path | None = None, index: bool = True) -> None:
        """`cache_dir`: where the stat index lives (default `statindex.default_cache_dir()`);
        `index=False` reads every file on every observe."""
        self.out_dir = out_dir
        self._root = os.fspath(out_dir)
        # per cluster (one task each), from its observe to its discard: object -> file path
        # relative to the cluster folder, kept up to date by each apply; what the
        # kustomization lists when the cluster is finished
        self._paths: dict[str, dict[ObjectKey, str]] = {}
        self._lock = threading.Lock()
        self._changed = 0
        # per cluster: files its applies wrote, recorded in the stat index when it is finished
        self._written: dict[str, list[tuple[_Staged, Rendered]]] = {}
        # per cluster: files `stage` wrote ahead of `apply` (object -> what it staged)
        self._early: dict[str, dict[ObjectKey, tuple[Rendered, _Staged | str]]] = {}
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

    # File work runs on the event loop's thread on purpose: local reads take microseconds,
    # while worker threads contending for the GIL with the sealing made each read cost
    # milliseconds (measured: 16 µs per file in one thread, 270 µs through a thread pool).

    async def observe(self, cluster: Cluster) -> Mapping[ObjectKey, Observed]:
        return self._observe(cluster.name)

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
        folder = os.path.join(self._root, cluster)
        found: dict[ObjectKey, Observed] = {}
        paths = self._paths[cluster] = {}
        index = self._open_index(cluster)
        listing: list[tuple[str, Observed | bool | None]] = []  # False: read the file
        namespaces: list[str] = []
        try:
            with os.scandir(folder) as top:
                for e in top:
                    if e.name.startswith(statindex.PROBE_PREFIX):
                        _drop_stale_probe(e)
                    elif e.name.startswith(".") and e.name.endswith(".tmp"):
                        _drop_stale_temp(e)  # the kustomization's, of a killed run
                    elif e.is_dir(follow_symlinks=False) and not e.name.startswith("."):
                        namespaces.append(e.name)
        except (FileNotFoundError, NotADirectoryError):
            pass
        namespaces.sort()
        for namespace in namespaces:
            with os.scandir(os.path.join(folder, namespace)) as entries:
                files = []
                for e in entries:
                    if e.name.endswith(".yaml") and e.is_file(follow_symlinks=False):
                        files.append((e.name, e))
                    elif e.name.startswith(".") and e.name.endswith(".tmp"):
                        _drop_stale_temp(e)
                files.sort()
            for name, entry in files:
                rel = f"{namespace}/{name}"
                if index is not None:
                    try:
                        hit, cached = index.lookup(rel, entry.stat(follow_symlinks=False))
                    except OSError:
                        continue
                    if hit:
                        listing.append((rel, cached))
                        continue
                listing.append((rel, False))
        clock = None
        if index is not None:
            index.keep_only({rel for rel, _ in listing})
            if any(item is False for _, item in listing):
                # before any file is read: what is recorded must be older than this reading
                clock = statindex.probe_clock(folder)
        for rel, item in listing:
            if item is False:
                try:
                    st, data = _read(os.path.join(folder, rel))
                except OSError:
                    continue
                observed = None if data is None else _observe_file(cluster, data, detail=False)
                if index is not None and clock is not None:
                    index.record(rel, st, observed, clock)
            else:
                observed = item if isinstance(item, Observed) else None
            if observed is None or (observed.key in found and not observed.owned):
                continue
            found[observed.key] = observed
            paths[observed.key] = rel
        if index is not None and self._index is not None:
            self._index.save(index)
        return found

    def _file(self, key: ObjectKey) -> str:
        rel = self._paths.get(key.cluster, {}).get(key, f"{key.namespace}/{key.name}.yaml")
        return os.path.join(self._root, key.cluster, rel)

    async def detail(self, observed: Observed) -> Observed:
        try:
            _, data = _read(self._file(observed.key))
        except OSError:
            return observed
        if data is None:
            return observed
        full = _observe_file(observed.key.cluster, data, detail=True)
        return full if full is not None and full.owned else observed

    async def apply(self, cluster: Cluster, changes: ChangeSet) -> ApplyResult:
        try:
            return self._apply(cluster.name, changes)
        except OSError as exc:
            raise self._cannot_write(cluster.name, exc) from None

    def stage(self, cluster: Cluster, item: Rendered) -> None:
        """Write `item`'s file under its temp name now, ahead of `apply` (which renames it):
        the engine calls this as sealed objects come back from the seal workers, so creating
        files here overlaps with sealing there. `discard` removes what `apply` did not take."""
        early = self._early.setdefault(cluster.name, {})
        if (old := early.pop(item.key, None)) is not None and isinstance(old[1], _Staged):
            _unlink(old[1].tmp)
        try:
            early[item.key] = (item, self._prepare(cluster.name, item))
        except OSError as exc:
            raise self._cannot_write(cluster.name, exc) from None

    def _cannot_write(self, cluster: str, exc: OSError) -> errors.DeliveryError:
        """A file-system error as the cluster's failure: the folder and the cause (read-only,
        full, permission), never a path inside a manifest or any content."""
        cause = exc.strerror or type(exc).__name__
        return errors.DeliveryError(f"{self.out_dir / cluster}: cannot write ({cause})")

    async def finish_cluster(self, cluster: Cluster) -> None:
        """Write the cluster folder's kustomization.yaml: every file the folder holds after
        all of this cluster's applies (or remove it, and the folder, when none is left)."""
        name = cluster.name
        try:
            self._write_kustomization(name, self._paths.get(name, {}))
        except OSError as exc:
            raise self._cannot_write(name, exc) from None
        index = self._open.pop(name, None)
        written = self._written.pop(name, [])
        if index is not None and self._index is not None:
            # after the kustomization's sync: the clock probe then reads a later time than
            # the files' changes more often, and more of them are recorded at once
            self._index_written(name, os.path.join(self._root, name), index, written)
            self._index.save(index)

    def discard(self, cluster: Cluster) -> None:
        """Remove what was staged and not applied; forget the cluster's file map and index
        (the next observe finds them again; until then, memory)."""
        for _, prepared in self._early.pop(cluster.name, {}).values():
            if isinstance(prepared, _Staged):
                _unlink(prepared.tmp)
        self._paths.pop(cluster.name, None)
        self._open.pop(cluster.name, None)
        self._written.pop(cluster.name, None)

    def _prepare(self, cluster: str, item: Rendered) -> _Staged | str:
        """Dump, guard and write one object to a temp file; the refusal message when the guard
        finds a value in it."""
        rel = f"{item.key.namespace}/{item.key.name}.yaml"
        path = os.path.join(self._root, cluster, rel)
        data = dump_yaml(item.manifest)
        try:
            guard(data, item.needles, path=os.path.join(self.out_dir.name, cluster, rel))
        except errors.PlaintextRefused as exc:
            return str(exc)
        return _Staged(self._stage(path, data), path, rel, data)

    def _apply(self, cluster: str, changes: ChangeSet) -> ApplyResult:
        result = ApplyResult()
        paths = self._paths.setdefault(cluster, {})
        folder = os.path.join(self._root, cluster)
        index = self._open.pop(cluster, None)
        if index is None and self._index is not None:
            index = self._index.load(cluster)
        early = self._early.pop(cluster, {})
        staged: list[tuple[_Staged, Rendered]] = []
        renamed = 0
        try:
            for item in [*changes.create, *changes.update]:
                ahead = early.pop(item.key, None)
                if ahead is not None and ahead[0] is item:
                    prepared = ahead[1]
                else:
                    if ahead is not None and isinstance(ahead[1], _Staged):
                        _unlink(ahead[1].tmp)
                    prepared = self._prepare(cluster, item)
                if isinstance(prepared, str):
                    log.error("%s", prepared)
                    result.failed[item.key] = prepared
                    continue
                staged.append((prepared, item))
            if staged:
                os.sync()
            for number, (done, item) in enumerate(staged, start=1):
                os.replace(done.tmp, done.path)
                renamed = number
                old = paths.get(item.key)
                if old is not None and old != done.rel:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(os.path.join(folder, old))
                    if index is not None:
                        index.forget(old)
                paths[item.key] = done.rel
                result.written.append(item.key)
                self._count()
        finally:
            for done, _ in staged[renamed:]:  # those not renamed into place
                _unlink(done.tmp)
            for _, left in early.values():
                if isinstance(left, _Staged):
                    _unlink(left.tmp)
        for observed in changes.delete:
            path = self._file(observed.key)
            old = paths.pop(observed.key, None)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
                self._count()
            if index is not None and old is not None:
                index.forget(old)
            result.deleted.append(observed.key)
            with contextlib.suppress(OSError):
                os.rmdir(os.path.dirname(path))  # only when empty
        self._written.setdefault(cluster, []).extend(staged[:renamed])
        if index is not None and self._index is not None:
            for done, _ in staged:
                index.forget(done.rel)  # recorded anew when the cluster is finished
            self._index.save(index)
            self._open[cluster] = index
        return result

    @staticmethod
    def _index_written(
        cluster: str, folder: str, index: ClusterIndex, staged: list[tuple[_Staged, Rendered]]
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
                st, back = _read(done.path)
            except OSError:
                continue
            if back == done.data:
                index.record(done.rel, st, _observed(cluster, item.manifest, detail=False), clock)

    @staticmethod
    def _stage(path: str, data: bytes) -> str:
        """Write `data` to a new temp file beside `path` (created 0600 like `mkstemp`)."""
        directory = os.path.dirname(path)
        tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.tmp")
        try:
            fd = os.open(tmp, _CREATE_FLAGS, 0o600)
        except FileNotFoundError:
            os.makedirs(directory, exist_ok=True)
            fd = os.open(tmp, _CREATE_FLAGS, 0o600)
        except FileExistsError:  # a leftover, or another sink of this process: a fresh name
            fd, tmp = tempfile.mkstemp(
                dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp"
            )
        try:
            _write_all(fd, data)
        except BaseException:
            os.close(fd)
            os.unlink(tmp)
            raise
        os.close(fd)
        return tmp

    def _write_kustomization(self, cluster: str, paths: Mapping[ObjectKey, str]) -> None:
        folder = os.path.join(self._root, cluster)
        kpath = os.path.join(folder, KUSTOMIZATION)
        owned = set(paths.values())
        try:
            with open(kpath, "rb") as fh:
                existing: bytes | None = fh.read()
        except FileNotFoundError:
            existing = None
        data = self._kustomization(cluster, sorted(owned))
        if existing is not None and existing != data:
            # the file lists more than secretsync's files (or is older): keep foreign entries
            old = _parse(existing) or {}
            resources = old.get("resources")
            if isinstance(resources, list):
                foreign = {
                    r
                    for r in resources
                    if isinstance(r, str) and r not in owned and self._foreign_exists(folder, r)
                }
                data = self._kustomization(cluster, sorted(owned | foreign))
        if data is None:
            if existing is not None:
                os.unlink(kpath)
                self._count()
            with contextlib.suppress(OSError):
                os.rmdir(folder)
            return
        if existing == data:
            return
        tmp = self._stage(kpath, data)
        os.sync()
        os.replace(tmp, kpath)
        self._count()

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
    def _foreign_exists(folder: str, resource: str) -> bool:
        path = os.path.join(folder, resource)
        if not os.path.lexists(path):
            return False
        observed = None
        if os.path.isfile(path):
            with open(path, "rb") as fh:
                observed = _observe_file(os.path.basename(folder), fh.read(), detail=False)
        return observed is None or not observed.owned

    async def orphans(self, known: Set[str]) -> list[str]:
        """Cluster folders in the output that no longer belong to the fleet."""
        if not self.out_dir.is_dir():
            return []
        return sorted(
            p.name
            for p in self.out_dir.iterdir()
            if p.is_dir() and not p.name.startswith(".") and p.name not in known
        )
