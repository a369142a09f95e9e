"""File work under the output folder without following a symlink: folders opened from their parent's
descriptor, regular files only, atomic writes (temp file, one sync, rename)."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import time
from dataclasses import dataclass

from secretsync.sinks import statindex
from secretsync.sinks.git.manifests import MAX_MANIFEST_BYTES

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
