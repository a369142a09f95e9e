"""Where a fleet path may point: inside the fleet repo, after symlinks are resolved.

Shared by the loader (literal paths) and the planner (templated paths, once filled in);
free of I/O libraries, like the planner.
"""

from __future__ import annotations

import os
from pathlib import Path

from secretsync import errors


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
    return real
