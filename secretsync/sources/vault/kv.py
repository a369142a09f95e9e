"""The KV engine: where a ref's mount really is and which KV version it speaks, the API
paths of a read and of a metadata read, and the reading of KV v1 / v2 answers (a document and
its version, or why there is none: not found, deleted, destroyed, the wrong kvVersion).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from secretsync.sources import resolve
from secretsync.sources.vault.failure import Failed
from secretsync.sources.vault.transport import json_object

_TIMESTAMP: Final = re.compile(r"[0-9TZ:.+\-]{1,40}")
_ENGINE_TYPE: Final = re.compile(r"[a-z0-9_\-]{1,40}")


@dataclass(frozen=True, slots=True)
class Mount:
    """Where a ref's mount really is and which KV version it speaks."""

    path: str  # the engine's mount path, no slashes at the ends
    prefix: str  # part of the configured mount that lies inside the engine ("" usually)
    version: int


def check_plain(what: str, text: str) -> None:
    """Refuse '', '.' and '..' segments: a ref must not climb out of its mount."""
    if not text or any(part in ("", ".", "..") for part in text.split("/")):
        raise Failed("invalid", f"{what} {text!r} has an empty, '.' or '..' segment")


def parse_read(payload: bytes, *, kv_version: int, pinned: int | None) -> resolve.Fetched:
    data = json_object(payload).get("data")
    if not isinstance(data, dict):
        raise Failed("invalid", f"the answer is not a KV v{kv_version} secret; check kvVersion")
    if kv_version == 1:
        return resolve.Fetched(document=data, version=None)
    document, metadata = data.get("data"), data.get("metadata")
    if document is None and isinstance(metadata, dict):
        raise _deleted(metadata, pinned=pinned)
    if not isinstance(document, dict) or not isinstance(metadata, dict):
        raise Failed("invalid", "the answer is not a KV v2 secret; check kvVersion")
    version = metadata.get("version")
    if not isinstance(version, int) or isinstance(version, bool):
        return resolve.Fetched(document=document, version=None)
    return resolve.Fetched(document=document, version=str(version))


def not_found(payload: bytes, *, pinned: int | None) -> Failed:
    try:
        body = json.loads(payload)
    except ValueError:
        body = None
    data = body.get("data") if isinstance(body, dict) else None
    metadata = data.get("metadata") if isinstance(data, dict) else None
    if isinstance(metadata, dict):
        return _deleted(metadata, pinned=pinned)
    warnings = body.get("warnings") if isinstance(body, dict) else None
    if isinstance(warnings, list) and any("versioned K/V" in str(w) for w in warnings):
        return Failed("invalid", "the mount is KV version 2, read as version 1; check kvVersion")
    if pinned is not None:
        return Failed("not_found", f"version {pinned} does not exist (HTTP 404)")
    return Failed("not_found", "no secret at this path (HTTP 404)")


def _deleted(metadata: Mapping[str, object], *, pinned: int | None) -> Failed:
    version = metadata.get("version")
    which = "latest version" if pinned is None else "version"
    label = f"{which} {version}" if isinstance(version, int) else which
    if metadata.get("destroyed") is True:
        return Failed("deleted", f"{label} is destroyed")
    when = metadata.get("deletion_time")
    if isinstance(when, str) and _TIMESTAMP.fullmatch(when):
        return Failed("deleted", f"{label} is deleted (deletion_time {when})")
    return Failed("deleted", f"{label} is deleted")


def parse_mount(name: str, payload: bytes) -> Mount:
    data = json_object(payload).get("data")
    if not isinstance(data, dict):
        raise Failed("server_error", f"mount {name!r}: unreadable mount description")
    engine = data.get("type")
    if engine not in ("kv", "generic"):
        shown = engine if isinstance(engine, str) and _ENGINE_TYPE.fullmatch(engine) else "?"
        raise Failed("invalid", f"mount {name!r} is a {shown!r} engine, not KV")
    options = data.get("options")
    version = options.get("version") if isinstance(options, dict) else None
    kv_version = 2 if str(version) == "2" else 1
    mounted = data.get("path")
    engine_path = mounted.strip("/") if isinstance(mounted, str) else ""
    if engine_path and name.startswith(engine_path + "/"):
        return Mount(path=engine_path, prefix=name[len(engine_path) + 1 :], version=kv_version)
    return Mount(path=name, prefix="", version=kv_version)
