"""SOPS-encrypted files of the fleet repo, decrypted with the sops binary (`sopsprocess`).

`SopsSource` owns everything between a `Location` naming a repo-relative file and the decrypted
document: confinement of the path to the fleet repo root (symlinks resolved), the size cap, the
format (by file extension), the refusal of files without sops metadata, of partly encrypted
files and of files naming keys the Fleet does not allow (`sopskeys`), before any sops process
runs. Decrypted documents are kept in memory by the SHA-256 of the encrypted bytes, so one
content is decrypted once per instance however many files, refs and concurrent fetches share it.

What it must never do: read a plaintext file as a value; put sops' output into an error, a log
record or an exception's context (`sopsprocess` keeps it out of its failures).

The encrypted bytes reach sops on stdin: what was size-checked and hashed is exactly what is
decrypted. Relative paths in the forwarded environment (`SOPS_AGE_KEY_FILE`, …) are relative
to the fleet repo root, sops' working directory, like every other credential path.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import hashlib
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from types import MappingProxyType
from typing import ClassVar, Final

from secretsync.core import errors, model
from secretsync.fleet import scandocs
from secretsync.sources import resolve, sopskeys, sopsmeta, sopsprocess

FileFormat = sopsmeta.FileFormat
format_for = sopsmeta.format_for


# sops writes its metadata as a top-level `sops` mapping (YAML, JSON) or `sops_*` lines (dotenv).
_YAML_SOPS_KEY: Final = re.compile(rb"^(?:sops|\"sops\"|'sops'):[ \t]*(?:#[^\n]*)?\r?$", re.M)
_YAML_MAC: Final = re.compile(rb"^[ \t]+(?:mac|\"mac\"|'mac'):[ \t]", re.M)
_JSON_SOPS_KEY: Final = re.compile(rb"\"sops\"\s*:\s*\{")
_JSON_MAC: Final = re.compile(rb"\"mac\"\s*:\s*\"")
_DOTENV_MAC: Final = re.compile(rb"^sops_mac=", re.M)


# sops writes `version` into every file's metadata; with it and no `mac`, the file is sops' own
# but its MAC is gone (sops itself refuses such a file unless told to ignore the MAC).
_YAML_VERSION: Final = re.compile(rb"^[ \t]+(?:version|\"version\"|'version'):[ \t]", re.M)
_JSON_VERSION: Final = re.compile(rb"\"version\"\s*:\s*\"")
_DOTENV_VERSION: Final = re.compile(rb"^sops_version=", re.M)


def has_sops_metadata_without_mac(data: bytes, fmt: FileFormat) -> bool:
    """Whether the bytes carry sops metadata (its `version`) but no MAC."""
    match fmt:
        case FileFormat.YAML:
            meta = _YAML_SOPS_KEY.search(data)
            found = meta is not None and bool(_YAML_VERSION.search(data, meta.end()))
        case FileFormat.JSON:
            meta = _JSON_SOPS_KEY.search(data)
            found = meta is not None and bool(_JSON_VERSION.search(data, meta.end()))
        case FileFormat.DOTENV:
            found = bool(_DOTENV_VERSION.search(data))
    return found and not has_sops_metadata(data, fmt)


def has_sops_metadata(data: bytes, fmt: FileFormat) -> bool:
    """Whether the bytes carry sops metadata with a MAC (a cheap check made before spawning)."""
    match fmt:
        case FileFormat.YAML:
            return bool(_YAML_SOPS_KEY.search(data) and _YAML_MAC.search(data))
        case FileFormat.JSON:
            return bool(_JSON_SOPS_KEY.search(data) and _JSON_MAC.search(data))
        case FileFormat.DOTENV:
            return bool(_DOTENV_MAC.search(data))


@dataclass(frozen=True, slots=True)
class _Input:
    """One encrypted file as read: its real repo-relative path, bytes, digest and format."""

    path: str
    data: bytes
    digest: str
    fmt: FileFormat
    plaintext: tuple[tuple[str, ...], ...] = ()  # key paths the file holds in plaintext
    kinds: frozenset[str] = frozenset()  # the key types its metadata names (all allowed)


type _Key = tuple[str, FileFormat]


def _freeze(node: object) -> object:
    """Read-only copies (cached documents are shared): mappings as proxies, lists as tuples."""
    if isinstance(node, dict):
        return _freeze_mapping(node)
    if isinstance(node, list):
        return tuple(_freeze(v) for v in node)
    return node


def _freeze_mapping(node: dict[object, object]) -> resolve.Document:
    return MappingProxyType({str(k): _freeze(v) for k, v in node.items()})


def _mark_unencrypted(document: dict[object, object], path: tuple[str, ...]) -> None:
    """Replace the leaf at `path` (or the list holding it) with `resolve.Unencrypted`."""
    node: object = document
    for i, key in enumerate(path):
        if not isinstance(node, dict) or key not in node:
            return
        if i == len(path) - 1 or not isinstance(node[key], dict):
            node[key] = resolve.Unencrypted()
            return
        node = node[key]


class SopsSource:
    """Reads `sops:` Locations: repo-relative SOPS files, decrypted by the sops binary.

    `spawns` counts the sops processes this instance started; a content already decrypted (or
    being decrypted) by this instance starts none.
    """

    kind: ClassVar[str] = "sops"

    def __init__(
        self,
        *,
        root: Path,
        settings: model.SopsSettings,
        env: Mapping[str, str],
        binary: str | None = None,
    ) -> None:
        self._root = root.resolve()
        self._settings = settings
        self._sops = sopsprocess.SopsRunner(cwd=self._root, env=env, binary=binary)
        self._documents: dict[_Key, resolve.Document] = {}
        self._inflight: dict[_Key, asyncio.Task[resolve.Document]] = {}
        self._current: dict[str, _Key] = {}  # real repo-relative path -> key of its last read
        self._closed = False

    @property
    def spawns(self) -> int:
        return self._sops.spawns

    @property
    def binary(self) -> str:
        return self._sops.binary

    async def fetch(self, location: model.Location) -> resolve.Fetched:
        if self._closed:
            raise errors.SourceUnavailable(f"{location}: the sops source is closed")
        read = await asyncio.to_thread(self._read, location)
        key: _Key = (read.digest, read.fmt)
        document = self._documents.get(key)
        if document is None:
            document = await self._decrypt_once(key, read, location)
        self._remember(read.path, key)
        return resolve.Fetched(document, version=f"sha256:{read.digest[:16]}")

    async def aclose(self) -> None:
        """Stop every running sops process and forget every decrypted document."""
        self._closed = True
        running = list(self._inflight.values())
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        self._documents.clear()
        self._current.clear()
        self._sops.close()

    # --- reading the file ----------------------------------------------------------------

    def _read(self, location: model.Location) -> _Input:
        """Confine, check and read one file (runs in a worker thread)."""
        rel = location.path
        if not rel or "\x00" in rel:
            raise errors.RefNotFound(f"{location}: not a file path")
        posix = PurePosixPath(rel)
        if posix.is_absolute():
            raise errors.RefNotFound(
                f"{location}: an absolute path; sops files are named relative to the fleet repo"
            )
        if os.path.normpath(rel).split("/", 1)[0] == "..":
            raise errors.RefNotFound(f"{location}: the path leads outside the fleet repo")
        fmt = format_for(posix.name)
        if fmt is None:
            raise errors.DecryptFailed(
                f"{location}: unsupported file type; sops files end in .yaml, .yml, .json or .env"
            )
        try:
            real = (self._root / posix).resolve(strict=True)
        except FileNotFoundError:
            raise errors.RefNotFound(f"{location}: no such file in the fleet repo") from None
        except (OSError, RuntimeError):  # symlink loop, unreadable folder
            raise errors.RefNotFound(f"{location}: the path cannot be resolved") from None
        if not real.is_relative_to(self._root):
            raise errors.RefNotFound(
                f"{location}: the path leads outside the fleet repo (through a symlink)"
            )
        data = self._read_capped(real, location)
        if has_sops_metadata_without_mac(data, fmt):
            raise errors.DecryptFailed(
                f"{location}: the file has sops metadata but no MAC (removed, or never written); "
                "refusing it — re-encrypt it with sops"
            )
        if not has_sops_metadata(data, fmt):
            raise errors.DecryptFailed(
                f"{location}: not a SOPS-encrypted file (no sops metadata); refusing to read "
                "it as plaintext — encrypt it with `sops encrypt -i`"
            )
        if fmt is FileFormat.YAML and len(_YAML_SOPS_KEY.findall(data)) > 1:
            raise errors.DecryptFailed(
                f"{location}: holds several YAML documents; a sops value file holds one"
            )
        leaves = scandocs.sops_leaves(
            data,
            rel=location.path,
            dotenv=fmt is FileFormat.DOTENV,
            is_json=fmt is FileFormat.JSON,
        )
        if leaves.refused:
            first = leaves.refused[0]
            more = f" (and {len(leaves.refused) - 1} more)" if len(leaves.refused) > 1 else ""
            raise errors.DecryptFailed(
                f"{location}: line {first.line}: {first.message}{more}; refusing a partly "
                "encrypted file"
            )
        keys = sopsmeta.read(data, fmt)
        refused = sopskeys.refusals(keys, self._settings)
        if refused:  # sops would reach (and send credentials to) what the metadata names
            raise errors.DecryptFailed(f"{location}: {sopskeys.describe(refused)}")
        return _Input(
            path=real.relative_to(self._root).as_posix(),
            data=data,
            digest=hashlib.sha256(data).hexdigest(),
            fmt=fmt,
            plaintext=leaves.plaintext,
            kinds=keys.kinds,
        )

    def _read_capped(self, real: Path, location: model.Location) -> bytes:
        cap = self._settings.max_file_bytes
        try:  # O_NONBLOCK: a FIFO must not block the open; it is refused just below
            fd = os.open(real, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
        except PermissionError:
            raise errors.AccessDenied(f"{location}: permission denied reading the file") from None
        except OSError as exc:
            if exc.errno == errno.ELOOP:  # replaced by a symlink since it was resolved
                raise errors.RefNotFound(f"{location}: the file became a symlink") from None
            raise errors.RefNotFound(f"{location}: cannot open the file") from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise errors.RefNotFound(f"{location}: not a regular file")
            if info.st_size > cap:
                raise errors.DecryptFailed(
                    f"{location}: {info.st_size} bytes, over the {cap}-byte limit for sops files"
                )
            handle = os.fdopen(fd, "rb")
        except BaseException:
            os.close(fd)
            raise
        with handle:
            data = handle.read(cap + 1)
        if len(data) > cap:
            raise errors.DecryptFailed(
                f"{location}: over the {cap}-byte limit for sops files (it grew while read)"
            )
        return data

    # --- decrypting, once per content ------------------------------------------------------

    async def _decrypt_once(
        self, key: _Key, read: _Input, location: model.Location
    ) -> resolve.Document:
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.create_task(self._decrypt(read, label=str(location)))
            self._inflight[key] = task
            task.add_done_callback(functools.partial(self._settle, key))
        try:
            return await asyncio.shield(task)
        except sopsprocess.Failure as failure:
            raise failure.error(location) from None
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if task.cancelled() and (current is None or not current.cancelling()):
                raise errors.SourceUnavailable(f"{location}: the sops source is closed") from None
            raise

    def _settle(self, key: _Key, task: asyncio.Task[resolve.Document]) -> None:
        self._inflight.pop(key, None)
        if task.cancelled() or task.exception() is not None:  # failures are not cached
            return
        if not self._closed:
            self._documents[key] = task.result()

    def _remember(self, path: str, key: _Key) -> None:
        """Track the content each file had last; drop documents no file has any more."""
        previous = self._current.get(path)
        self._current[path] = key
        if previous is not None and previous != key and previous not in self._current.values():
            self._documents.pop(previous, None)

    async def _decrypt(self, read: _Input, *, label: str) -> resolve.Document:
        parsed = await self._sops.decrypt(
            read.data,
            fmt=read.fmt,
            kinds=read.kinds,
            timeout=self._settings.timeout_seconds,
            label=label,
        )
        for path in read.plaintext:
            _mark_unencrypted(parsed, path)
        return _freeze_mapping(parsed)
