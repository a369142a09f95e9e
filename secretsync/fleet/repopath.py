"""Where a fleet path may point: inside the fleet repo, after symlinks are resolved, at a
regular file or a folder (or at nothing yet) — never at a FIFO, a socket or a device, which
are refused from their `lstat` without being opened (opening a FIFO blocks until a writer
comes; opening a device can have effects of its own).

Shared by the loader (literal paths) and the planner (templated paths, once filled in);
free of I/O libraries, like the planner.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from secretsync.core import errors


def confine(root: Path, relative: str, *, file: str = "", line: int = 0, field: str = "") -> Path:
    """The real path of a repo-relative fleet path, refused when it leaves the repo."""
    if not relative or os.path.isabs(relative) or "\\" in relative:
        raise errors.ConfigError(
            f"{relative!r} must be a path relative to the fleet repo",
            file=file,
            line=line,
            field=field,
        )
    parts = Path(relative).parts
    if ".." in parts:
        raise errors.ConfigError(
            f"{relative!r} leaves the fleet repo", file=file, line=line, field=field
        )
    real_root = root.resolve()
    try:
        real = (real_root / relative).resolve()
    except (OSError, RuntimeError):  # a symlink loop, an unreadable folder
        raise errors.ConfigError(
            f"{relative!r} cannot be resolved (symlink loop?)", file=file, line=line, field=field
        ) from None
    if real != real_root and real_root not in real.parents:
        raise errors.ConfigError(
            f"{relative!r} resolves outside the fleet repo (symlink?)",
            file=file,
            line=line,
            field=field,
        )
    try:
        kind = special_kind(os.lstat(real).st_mode)
    except OSError:  # missing (yet): the reader reports it when it matters
        kind = None
    if kind is not None:
        raise errors.ConfigError(
            f"{relative!r} is {kind}, not a regular file: not read",
            file=file,
            line=line,
            field=field,
        )
    return real


def special_kind(mode: int) -> str | None:
    """What a file of this `st_mode` is when it is neither a regular file nor a folder."""
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"
