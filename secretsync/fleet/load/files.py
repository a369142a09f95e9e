"""Reading fleet files safely: confined to the repo, regular files only, capped in size; the
YAML files of a folder, bounded; the output folder's own rules."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from secretsync.core import errors
from secretsync.core.model import (
    Layout,
)
from secretsync.fleet import repopath
from secretsync.fleet.repopath import confine

FLEET_FILE: Final = "secretsync.yaml"
MAX_FILE_BYTES: Final = 1024 * 1024
MAX_FILES: Final = 20_000


def read_fleet_file(root: Path, relative: str, *, max_bytes: int = MAX_FILE_BYTES) -> bytes:
    """Read one fleet file: confined to the repo, a regular file, capped in size."""
    path = confine(root, relative, file=relative)  # refuses FIFOs, sockets, devices unopened
    try:  # O_NONBLOCK, O_NOFOLLOW: a FIFO or a link swapped in since cannot block or redirect
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise errors.ConfigError("file not found", file=relative) from None
    except OSError as exc:
        raise errors.ConfigError(f"cannot read file ({exc.strerror})", file=relative) from None
    with os.fdopen(fd, "rb") as fh:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = repopath.special_kind(mode) or "a folder"
            raise errors.ConfigError(f"is {kind}, not a regular file", file=relative)
        try:
            data = fh.read(max_bytes + 1)
        except OSError as exc:
            raise errors.ConfigError(f"cannot read file ({exc.strerror})", file=relative) from None
    if len(data) > max_bytes:
        raise errors.ConfigError(f"file is larger than the {max_bytes} byte limit", file=relative)
    return data


def yaml_files(root: Path, folder: str) -> Iterator[str]:
    """Repo-relative YAML files under `folder`, sorted; refuses links that leave the repo."""
    base = confine(root, folder, file=FLEET_FILE, field="spec.layout")
    if not base.is_dir():
        return
    real_root = root.resolve()
    found: list[str] = []
    entries = 0  # every file and folder walked, YAML or not: the walk itself is bounded
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        entries += len(dirnames) + len(filenames)
        if entries > MAX_FILES:
            raise errors.ConfigError(
                f"more than {MAX_FILES} files and folders under {folder!r}", file=folder
            )
        for name in dirnames:  # os.walk does not follow them: refuse those that leave the repo
            link = os.path.join(dirpath, name)
            if os.path.islink(link):
                confine(real_root, os.path.relpath(link, real_root), file=folder)
        for name in filenames:
            if not name.endswith((".yaml", ".yml")):
                continue
            found.append(os.path.relpath(os.path.join(dirpath, name), real_root))
    yield from sorted(found)


def output_folder(root: Path, relative: str, layout: Layout) -> None:
    """Refuse an output folder that leaves the repo, has a symlink on its path (the Git sink
    opens every folder down to it without following one, and would fail every cluster), or
    overlaps what the fleet is read from: rendering there would prune or shadow fleet files."""
    real = confine(root, relative)
    real_root = root.resolve()
    where = root
    for part in Path(relative).parts:
        where = where / part
        if where.is_symlink():
            raise errors.ConfigError(
                f"{os.path.relpath(where, root)!r} is a symlink: no symlink on the output "
                "folder's path is followed"
            )
        if not where.exists():
            break
    inputs = (FLEET_FILE, layout.clusters, layout.secrets, "sops", "certs", ".git")
    for name in inputs:
        try:
            other = (real_root / name).resolve()
        except (OSError, RuntimeError):  # a symlink loop: the loader reports it there
            continue
        if real == other or real in other.parents or other in real.parents:
            raise errors.ConfigError(
                f"{relative!r} overlaps {name!r}, which the fleet is read from: the output "
                "folder must be a folder of its own"
            )
