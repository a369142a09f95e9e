"""What a commit of the output folder says: its author, the message (names, actions, key names and
source versions, never a value), the errors of a commit and a push."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from secretsync.core import errors
from secretsync.engine.report import ItemResult
from secretsync.fleet import gitsource

DEFAULT_AUTHOR: Final = "secretsync <secretsync@localhost>"


_AUTHOR: Final = re.compile(r"\s*([^<>\n]*[^<>\s])\s*<([^<>\s@]+@[^<>\s]+)>\s*")


_ACTIONS: Final = {"create": "created", "update": "updated", "delete": "deleted"}


class DirtyWorkTree(errors.ConfigError):
    """The work tree has changes a commit of the output folder must not take or hide."""


class PushRejected(gitsource.GitError):
    """The remote refused the push because its branch moved (another writer)."""


@dataclass(frozen=True, slots=True)
class Author:
    """Author and committer of write-back commits."""

    name: str
    email: str

    @classmethod
    def parse(cls, text: str) -> Author:
        found = _AUTHOR.fullmatch(text)
        if found is None:
            raise errors.ConfigError(
                f"{text!r} is not of the form 'Name <email>'", field="--git-author"
            )
        return cls(found.group(1), found.group(2))

    def env(self) -> dict[str, str]:
        return {
            "GIT_AUTHOR_NAME": self.name,
            "GIT_AUTHOR_EMAIL": self.email,
            "GIT_COMMITTER_NAME": self.name,
            "GIT_COMMITTER_EMAIL": self.email,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class Commit:
    """One commit made of the output folder."""

    sha: str
    paths: tuple[str, ...]  # repo-relative, as committed
    items: tuple[ItemResult, ...]  # the objects it carries
    message: str


def message(items: Sequence[ItemResult], *, cycle: str, notes: Sequence[str] = ()) -> str:
    """`secretsync: <n> object(s) in <m> cluster(s)`, a line per object (action and key names),
    the source versions that changed, `notes` (renewed certificates), and a `Secretsync-Cycle:`
    trailer. Never a value."""
    clusters = {i.cluster for i in items}
    lines = [f"secretsync: {len(items)} object(s) in {len(clusters)} cluster(s)", ""]
    for item in sorted(items, key=lambda i: (i.cluster, i.namespace, i.name)):
        keys = [
            f"{label}: {', '.join(names)}"
            for label, names in (
                ("added", item.keys.added),
                ("changed", item.keys.changed),
                ("removed", item.keys.removed),
            )
            if names
        ]
        line = f"{item.cluster} {item.namespace}/{item.name}: {_ACTIONS[item.action]}"
        lines.append(line + (f" [{'; '.join(keys)}]" if keys else ""))
        lines.extend(f"  {change}" for change in item.version_changes)
    lines.extend(notes)
    lines += ["", f"Secretsync-Cycle: {cycle}", ""]
    return "\n".join(lines)


def cycle_name(trigger: str, *, at: datetime | None = None) -> str:
    """The `Secretsync-Cycle:` trailer's value: when the cycle started and what started it."""
    return f"{(at or datetime.now(UTC)).isoformat(timespec='seconds')} {trigger}"
