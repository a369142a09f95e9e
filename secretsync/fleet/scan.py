"""Finding plaintext in a repository: the rules behind `secretsync scan PATH`.

This module owns what counts as a leak in a Git working tree and reports each one as a
`Finding` (file, line, kind, message):

- a Kubernetes `Secret` (also inside a `List`) with non-empty `data` / `stringData` values that
  are neither SOPS-encrypted nor placeholders (Helm / Go templates, `${VAR}`, `<path:…>`);
- a file that must be SOPS-encrypted but is not: named `*.sops.*`, or matched by a
  `creation_rules[].path_regex` of the nearest `.sops.yaml` (matched relative to that file's
  folder, first rule wins, as sops does). A rule without `path_regex` matches everything and
  says nothing; Kubernetes objects other than Secrets under a rule are left alone (rules such as
  `.*\\.yaml` with `encrypted_regex: ^(data|stringData)$` match whole manifest folders), and a
  file in which the rule would encrypt nothing is not a finding;
- a value left in plaintext inside a SOPS file: a leaf that is not `ENC[…]` although the file's
  own sops settings (`unencrypted_suffix`, `encrypted_suffix`, `unencrypted_regex`,
  `encrypted_regex`) say it should be, and any plaintext leaf under a Secret's
  `data` / `stringData`, whatever those settings say;
- a SOPS file naming a key the Fleet's `sources.sops` policy does not allow (see `sopskeys`):
  the policy of the nearest `secretsync.yaml` as the caller finds it, else the default one.

A file it must check but cannot is a finding too: a YAML or JSON file that may hold a Secret
(or is declared encrypted) but does not parse — a broken file may still hold a plaintext
Secret that other tools read; a file with `{{` in it is a Helm / Go template, which is YAML only
once rendered, and is not reported — and a FIFO, socket or device where a candidate file would
be, which is never opened (a FIFO would block the scan).

It reads files and nothing else: no network, no sops binary, no keys. A finding names where and
what, never a value (key names and Secret names are not values). Files are read only when their
name or a cheap byte check makes them candidates, so a repository of thousands of files scans in
well under a second; `.git`, `node_modules`, virtualenvs and caches are skipped, symlinks are not
followed and files over `max_file_bytes` are not read.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Final

from secretsync.core import model
from secretsync.fleet import repopath
from secretsync.fleet.scandocs import (
    _DOTENV_SOPS,
    _INI_SOPS,
    _JSON_SOPS,
    Finding,
    FindingKind,
    _check_dotenv,
    _check_structured,
)
from secretsync.fleet.sopsrules import (
    CONFIG_NAMES,
    MAX_FILE_BYTES,
    _config_above,
    _config_in,
    _declared,
    _SopsConfig,
)
from secretsync.sources import sopskeys, sopsmeta

SKIP_DIRS: Final = frozenset(
    {
        ".git",
        "node_modules",
        ".venv",
        "venv",
        "__pycache__",
        ".mypy_cache",
        ".pytest_cache",
        ".ruff_cache",
        ".tox",
        ".terraform",
        ".hypothesis",
    }
)
"""Folders never entered: version control, dependencies, tool caches."""


STRUCTURED_SUFFIXES: Final = (".yaml", ".yml", ".json")


_WORTH_PARSING: Final = re.compile(
    rb"kind[\"']?\s*:\s*[\"']?(?:Secret|\w*List)\b"  # a Secret or a List of objects
    rb"|^[\"']?sops[\"']?\s*:|\"sops\"\s*:",  # sops metadata (YAML top level, JSON)
    re.M,
)
"""Cheap byte check: only files that may hold a Secret or sops metadata are parsed."""


type PolicyFor = Callable[[Path], model.SopsSettings]
"""The `sources.sops` policy that applies to the files of a folder."""


def _default_policy(_folder: Path) -> model.SopsSettings:
    return model.SopsSettings()


def scan(
    path: Path, *, max_file_bytes: int = MAX_FILE_BYTES, sops_policy: PolicyFor | None = None
) -> list[Finding]:
    """Every finding under `path` (a folder or one file), sorted by file and line.

    `sops_policy` gives the key policy for a folder's SOPS files (default: age and pgp only).
    """
    policy_for = sops_policy or _default_policy
    if not path.is_dir():
        base = path.parent.resolve()
        file = base / path.name
        found = _check_file(
            file,
            rel=path.name,
            base=base,
            config=_config_above(base),
            max_file_bytes=max_file_bytes,
            policy_for=policy_for,
        )
        return sorted(found)
    base = path.resolve()
    findings: list[Finding] = []
    for file, rel, config in _walk(base):
        findings.extend(
            _check_file(
                file,
                rel=rel,
                base=base,
                config=config,
                max_file_bytes=max_file_bytes,
                policy_for=policy_for,
            )
        )
    return sorted(findings)


# --- .sops.yaml ----------------------------------------------------------------------------


# --- walking -------------------------------------------------------------------------------


def _walk(root: Path) -> Iterator[tuple[Path, str, _SopsConfig | None]]:
    """(file, path relative to root, nearest .sops.yaml) for every entry but folders and links.

    `root` is resolved, so that paths compare with the config files' own resolved paths.
    """
    stack: list[tuple[Path, str, _SopsConfig | None]] = [(root, "", _config_above(root))]
    while stack:
        folder, prefix, inherited = stack.pop()
        try:
            with os.scandir(folder) as entries:
                listed = sorted(entries, key=lambda e: e.name)
        except OSError:
            continue
        config = inherited  # the root's own config is already in _config_above(root)
        if prefix and any(e.name in CONFIG_NAMES for e in listed):
            config = _config_in(folder) or inherited
        for entry in listed:
            rel = f"{prefix}{entry.name}"
            try:
                if entry.is_dir(follow_symlinks=False):
                    if entry.name not in SKIP_DIRS:
                        stack.append((Path(entry.path), f"{rel}/", config))
                elif not entry.is_symlink():  # files, and FIFOs, sockets, devices to report
                    yield Path(entry.path), rel, config
            except OSError:
                continue


# --- one file ------------------------------------------------------------------------------


def _check_file(
    file: Path,
    *,
    rel: str,
    base: Path,
    config: _SopsConfig | None,
    max_file_bytes: int,
    policy_for: PolicyFor,
) -> list[Finding]:
    name = file.name
    lowered = name.lower()
    structured = lowered.endswith(STRUCTURED_SUFFIXES)
    dotenv = lowered.endswith(".env")
    why = _declared(file, name, config, base)
    if not (structured or dotenv or why):
        return []
    try:
        info = file.stat()
    except OSError:
        return []
    if (kind := repopath.special_kind(info.st_mode)) is not None:
        return [Finding(rel, 1, FindingKind.NOT_A_FILE, f"is {kind}: not opened, not checked")]
    if info.st_size > max_file_bytes:
        return []
    data = _read_regular(file, max_bytes=max_file_bytes)
    if data is None or not data.strip():
        return []
    if structured or dotenv:
        keys = _key_findings(data, rel=rel, name=name, policy_for=lambda: policy_for(file.parent))
    if structured:
        if why is None and not _WORTH_PARSING.search(data):
            return keys
        return keys + _check_structured(data, rel=rel, why=why, is_json=lowered.endswith(".json"))
    if dotenv:
        return keys + _check_dotenv(data, rel=rel, why=why)
    if why is not None and not _other_has_metadata(data):
        return [Finding(rel, 1, FindingKind.SOPS_FILE_NOT_ENCRYPTED, f"{why.reason} but is not")]
    return []


def _read_regular(file: Path, *, max_bytes: int) -> bytes | None:
    """A regular file's bytes; None when it is not one (swapped since its stat) or too big."""
    try:  # O_NONBLOCK: a FIFO put in its place since cannot block the open
        fd = os.open(file, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        try:
            data = fh.read(max_bytes + 1)
        except OSError:
            return None
    return data if len(data) <= max_bytes else None


_MAYBE_SOPS: Final[Mapping[sopsmeta.FileFormat, re.Pattern[bytes]]] = {
    sopsmeta.FileFormat.YAML: re.compile(rb"^[\"']?sops[\"']?[ \t]*:", re.M),
    sopsmeta.FileFormat.JSON: re.compile(rb"\"sops\"\s*:", re.I),  # Go's JSON ignores case
    sopsmeta.FileFormat.DOTENV: _DOTENV_SOPS,
}


def _key_findings(
    data: bytes, *, rel: str, name: str, policy_for: Callable[[], model.SopsSettings]
) -> list[Finding]:
    """The keys a SOPS file names that its Fleet's policy refuses (one finding each)."""
    fmt = sopsmeta.format_for(name)
    if fmt is None or not _MAYBE_SOPS[fmt].search(data):
        return []
    found = sopsmeta.read(data, fmt)
    if not found.marked:  # a `sops:` key that is not sops metadata (no mac, no version)
        return []
    return [
        Finding(rel, r.line, FindingKind.SOPS_KEY_NOT_ALLOWED, f"{r.where}: {r.message}")
        for r in sopskeys.refusals(found, policy_for())
    ]


def _other_has_metadata(data: bytes) -> bool:
    """sops metadata in a file of another format (INI section, binary store's JSON, dotenv)."""
    return bool(_INI_SOPS.search(data) or _JSON_SOPS.search(data) or _DOTENV_SOPS.search(data))


# --- YAML and JSON -------------------------------------------------------------------------


# --- one SOPS file, for the sops source ------------------------------------------------------


# --- dotenv --------------------------------------------------------------------------------
