"""A stat index of rendered files, kept outside the fleet repo (like Git's index).

Re-reading and parsing 100,000 manifests to learn that nothing changed costs seconds; a stat
costs microseconds. Per cluster folder the index remembers, for each file, its stat
(device, inode, size, mtime_ns, ctime_ns) and what the Git sink parsed from it. An entry is used
only when the file's stat is exactly the recorded one; anything else is read again.

Why a matching stat proves the content is the one parsed: every change to a file — an edit in
place, a rename over it, a delete and re-create that reuses the inode number, `touch -d` — sets
its ctime to the file system's clock, and user space cannot set ctime. What remains is Git's
"racy" case: a change landing in the same clock tick as the previous one. So an entry is only
recorded when the file's ctime is strictly older than a clock reading taken *on the same file
system* (the ctime of a probe file created in the cluster folder) before the file was stat-ed
and read. Any later change then gets a ctime at least that reading, never the recorded one.
Files in the same tick are simply not recorded, and read again next time.

The index holds names, kinds and keyed hashes (what the files' metadata already shows in Git),
never a value. It lives under the cache directory (`$SECRETSYNC_CACHE_DIR`, else
`$XDG_CACHE_HOME/secretsync`, else `~/.cache/secretsync`), one folder per output directory.
Any problem with it (unwritable, corrupt, another version) only means reading the files.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from secretsync.core.model import ObjectKey, Observed

log = logging.getLogger(__name__)

FORMAT: Final = 1
"""Bumped whenever what the sink parses from a file changes: older indexes are ignored."""

INDEX_FOLDER: Final = "render-index"
PROBE_PREFIX: Final = ".secretsync-clock."

type StatKey = tuple[int, int, int, int, int]


def stat_key(st: os.stat_result) -> StatKey:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def default_cache_dir() -> Path | None:
    """`$SECRETSYNC_CACHE_DIR` (empty: no cache), else `$XDG_CACHE_HOME/secretsync`, else
    `~/.cache/secretsync`."""
    explicit = os.environ.get("SECRETSYNC_CACHE_DIR")
    if explicit is not None:
        return Path(explicit).expanduser() if explicit else None
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "secretsync"
    home = os.path.expanduser("~")
    return Path(home) / ".cache" / "secretsync" if home != "~" else None


def probe_clock(folder: int) -> int | None:
    """The file system's clock in the folder open as `folder`: the ctime of a probe file
    created there (and removed at once), or None when none can be created (a read-only
    output)."""
    name = f"{PROBE_PREFIX}{os.getpid()}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(name, flags, 0o600, dir_fd=folder)
    except FileExistsError:
        with contextlib.suppress(OSError):
            os.unlink(name, dir_fd=folder)  # left by a process with our pid that died
        return None
    except OSError:
        return None
    try:
        return os.fstat(fd).st_ctime_ns
    finally:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(name, dir_fd=folder)


def _encode(observed: Observed | None) -> list[object] | None:
    if observed is None:
        return None
    return [
        observed.key.namespace,
        observed.key.name,
        observed.kind,
        observed.owned,
        observed.fleet_secret,
        observed.content_hash,
        dict(observed.key_hashes),
        dict(observed.versions),
    ]


def _decode(cluster: str, raw: object) -> Observed | None:
    """An entry back to what the sink observed (checked for shape: a bad one drops the index,
    never gives a wrong answer)."""
    if raw is None:
        return None
    if type(raw) is not list or len(raw) != 8:
        raise ValueError("bad entry")
    namespace: object = raw[0]
    name: object = raw[1]
    kind: object = raw[2]
    owned: object = raw[3]
    fleet_secret: object = raw[4]
    content_hash: object = raw[5]
    key_hashes: object = raw[6]
    versions: object = raw[7]
    if not (
        type(namespace) is str
        and type(name) is str
        and type(kind) is str
        and type(owned) is bool
        and type(key_hashes) is dict
        and type(versions) is dict
        and (fleet_secret is None or type(fleet_secret) is str)
        and (content_hash is None or type(content_hash) is str)
    ):
        raise ValueError("bad entry")
    return Observed(
        key=ObjectKey(cluster, namespace, name),
        kind=kind,
        owned=owned,
        fleet_secret=fleet_secret,
        content_hash=content_hash,
        key_hashes=key_hashes,
        versions=versions,
    )


def _private_folders(folder: Path) -> None:
    """Make `folder` and each missing parent 0700 (not only the last one, whatever the umask):
    another local user must not be able to swap an index in."""
    missing: list[Path] = []
    while not folder.is_dir():
        missing.append(folder)
        folder = folder.parent
    for path in reversed(missing):
        try:
            path.mkdir(mode=0o700)
        except FileExistsError:
            continue
        path.chmod(0o700)


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


class ClusterIndex:
    """The recorded entries of one cluster folder: relative path -> (stat, parsed metadata)."""

    __slots__ = ("_entries", "cluster", "dirty")

    def __init__(self, cluster: str, entries: dict[str, tuple[StatKey, Observed | None]]) -> None:
        self.cluster = cluster
        self._entries = entries
        self.dirty = False

    def lookup(self, rel: str, st: os.stat_result) -> tuple[bool, Observed | None]:
        """(hit, observed): hit only when the file's stat is exactly the recorded one."""
        entry = self._entries.get(rel)
        if entry is None or entry[0] != stat_key(st):
            return False, None
        return True, entry[1]

    def record(self, rel: str, st: os.stat_result, observed: Observed | None, clock: int) -> None:
        """Remember what `rel` holds, if its last change is older than `clock` (see above)."""
        if st.st_ctime_ns < clock and st.st_mtime_ns < clock:
            self._entries[rel] = (stat_key(st), observed)
        else:
            self._entries.pop(rel, None)
        self.dirty = True

    def forget(self, rel: str) -> None:
        if self._entries.pop(rel, None) is not None:
            self.dirty = True

    def keep_only(self, present: set[str]) -> None:
        gone = [rel for rel in self._entries if rel not in present]
        for rel in gone:
            del self._entries[rel]
        if gone:
            self.dirty = True

    def __len__(self) -> int:
        return len(self._entries)

    def items(self) -> Iterator[tuple[str, tuple[StatKey, Observed | None]]]:
        return iter(self._entries.items())


class StatIndex:
    """The per-cluster indexes of one output directory, stored under `cache_dir`."""

    def __init__(self, cache_dir: Path, out_dir: Path) -> None:
        self.out = os.path.abspath(out_dir)
        digest = hashlib.sha256(self.out.encode("utf-8", "surrogateescape")).hexdigest()[:32]
        self.base = cache_dir / INDEX_FOLDER
        self.folder = self.base / digest
        self._usable = True

    def _path(self, cluster: str) -> Path:
        return self.folder / f"{cluster}.json"

    def load(self, cluster: str) -> ClusterIndex:
        entries: dict[str, tuple[StatKey, Observed | None]] = {}
        try:
            with open(self._path(cluster), "rb") as fh:
                doc = json.loads(fh.read())
            if (
                isinstance(doc, dict)
                and doc.get("format") == FORMAT
                and doc.get("out") == self.out
                and doc.get("cluster") == cluster
                and isinstance(doc.get("entries"), dict)
            ):
                for rel, (st, meta) in doc["entries"].items():
                    # a recorded stat of the wrong shape or type never equals a real one
                    entries[rel] = (tuple(st), _decode(cluster, meta))
        except FileNotFoundError:
            pass
        except (OSError, ValueError, TypeError) as exc:
            log.debug("render index of %s ignored: %s", cluster, type(exc).__name__)
            entries = {}
        return ClusterIndex(cluster, entries)

    def save(self, index: ClusterIndex) -> None:
        if not index.dirty or not self._usable:
            return
        index.dirty = False
        path = self._path(index.cluster)
        if not len(index):
            with contextlib.suppress(OSError):
                path.unlink()
            return
        doc = {
            "format": FORMAT,
            "out": self.out,
            "cluster": index.cluster,
            "entries": {rel: [list(st), _encode(obs)] for rel, (st, obs) in index.items()},
        }
        data = json.dumps(doc, separators=(",", ":")).encode("utf-8")
        try:
            if not self.folder.is_dir():
                _private_folders(self.folder)
                _write_private(self.folder / "out", (self.out + "\n").encode("utf-8"))
                self._prune_others()
            fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=f".{index.cluster}.", suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        except OSError as exc:
            # no cache is no harm: files are read instead
            log.debug("render index not saved (%s); files will be read", type(exc).__name__)
            self._usable = False

    def _prune_others(self) -> None:
        """Drop the indexes of output directories that no longer exist (temporary ones)."""
        try:
            folders = [p for p in self.base.iterdir() if p.is_dir() and p != self.folder]
        except OSError:
            return
        for folder in folders:
            try:
                out = (folder / "out").read_text(encoding="utf-8").rstrip("\n")
            except OSError:
                continue
            if out and not os.path.isdir(out):
                shutil.rmtree(folder, ignore_errors=True)
