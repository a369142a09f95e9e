"""`.sops.yaml` creation rules as `scan` reads them: which files a rule says to encrypt, and how
(which keys stay in the clear)."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import yaml

_DEFAULT_UNENCRYPTED_SUFFIX: Final = "_unencrypted"

MAX_FILE_BYTES: Final = 8 * 1024 * 1024  # larger files are not read (scan and its config)


@dataclass(frozen=True, slots=True)
class _Encryption:
    """Which leaves sops encrypts, from a creation rule or a file's own sops metadata."""

    unencrypted_suffix: str = ""
    encrypted_suffix: str = ""
    unencrypted_regex: re.Pattern[str] | None = None
    encrypted_regex: re.Pattern[str] | None = None

    @classmethod
    def read(cls, fields: Mapping[str, object]) -> _Encryption | None:
        """From a mapping with sops' field names; None when a regex cannot be used here."""

        def text(name: str) -> str:
            value = fields.get(name)
            return value if isinstance(value, str) else ""

        try:
            unencrypted_regex = _go_regex(text("unencrypted_regex"))
            encrypted_regex = _go_regex(text("encrypted_regex"))
        except re.error:
            return None
        settings = cls(
            unencrypted_suffix=text("unencrypted_suffix"),
            encrypted_suffix=text("encrypted_suffix"),
            unencrypted_regex=unencrypted_regex,
            encrypted_regex=encrypted_regex,
        )
        if settings == cls():
            return cls(unencrypted_suffix=_DEFAULT_UNENCRYPTED_SUFFIX)
        return settings

    def encrypts(self, path: Sequence[str]) -> bool:
        """Whether sops encrypts the leaf reached through the keys `path` (sops' own order)."""
        encrypted = True
        if self.unencrypted_suffix and any(k.endswith(self.unencrypted_suffix) for k in path):
            encrypted = False
        if self.encrypted_suffix:
            encrypted = any(k.endswith(self.encrypted_suffix) for k in path)
        if self.unencrypted_regex and any(self.unencrypted_regex.search(k) for k in path):
            encrypted = False
        if self.encrypted_regex:
            encrypted = any(self.encrypted_regex.search(k) for k in path)
        return encrypted


_DEFAULT_ENCRYPTION: Final = _Encryption(unencrypted_suffix=_DEFAULT_UNENCRYPTED_SUFFIX)


def _go_regex(pattern: str) -> re.Pattern[str] | None:
    """A Go (RE2) regex as Python reads it; the common syntax is shared."""
    if not pattern:
        return None
    return re.compile(pattern.replace(r"\z", r"\Z"))


@dataclass(frozen=True, slots=True)
class _Rule:
    number: int  # 1-based, as a person counts rules in the file
    pattern: str
    path_regex: re.Pattern[str] | None
    encryption: _Encryption | None


@dataclass(frozen=True, slots=True)
class _SopsConfig:
    file: Path
    rules: tuple[_Rule, ...]

    def match(self, file: Path) -> _Rule | None:
        """The first rule matching `file` when it has a path_regex (sops' first-match order)."""
        rel = os.path.relpath(file, self.file.parent).replace(os.sep, "/")
        for rule in self.rules:
            if rule.path_regex is None:  # a catch-all rule comes first: nothing is declared
                return None
            if rule.path_regex.search(rel):
                return rule
        return None


def _read_config(file: Path) -> _SopsConfig | None:
    try:
        if file.stat().st_size > MAX_FILE_BYTES:
            return None
        loaded = yaml.load(file.read_bytes(), Loader=yaml.CSafeLoader)
    except (OSError, yaml.YAMLError, RecursionError):
        return None
    raw_rules = loaded.get("creation_rules") if isinstance(loaded, dict) else None
    if not isinstance(raw_rules, list):
        return None
    rules = []
    for number, raw in enumerate(raw_rules, start=1):
        if not isinstance(raw, dict):
            continue
        pattern = raw.get("path_regex")
        pattern = pattern if isinstance(pattern, str) else ""
        try:
            path_regex = _go_regex(pattern)
        except re.error:
            continue  # a rule Python cannot read matches nothing here
        rules.append(_Rule(number, pattern, path_regex, _Encryption.read(raw)))
    return _SopsConfig(file, tuple(rules))


def _config_in(folder: Path) -> _SopsConfig | None:
    for name in CONFIG_NAMES:
        candidate = folder / name
        if candidate.is_file():
            return _read_config(candidate)
    return None


def _config_above(folder: Path) -> _SopsConfig | None:
    """The nearest `.sops.yaml` in `folder` or its parents, not past a Git work tree's top."""
    for current in (folder, *folder.parents):
        config = _config_in(current)
        if config is not None:
            return config
        if (current / ".git").exists():
            return None
    return None


@dataclass(frozen=True, slots=True)
class _Why:
    """Why a file must be encrypted: its name, or a creation rule (with its settings)."""

    reason: str
    encryption: _Encryption
    by_name: bool


def _declared(file: Path, name: str, config: _SopsConfig | None, base: Path) -> _Why | None:
    if name in CONFIG_NAMES:
        return None
    rule = config.match(file) if config is not None else None
    if config is not None and rule is not None and not _NOT_SOPS_CONTENT.fullmatch(name):
        where = os.path.relpath(config.file, base).replace(os.sep, "/")
        return _Why(
            reason=f"matches creation rule {rule.number} (path_regex '{rule.pattern}') of {where}",
            encryption=rule.encryption or _DEFAULT_ENCRYPTION,
            by_name=False,
        )
    stem, dot, _ = name.partition(".sops.")
    if dot and stem:
        return _Why(reason="is named *.sops.*", encryption=_DEFAULT_ENCRYPTION, by_name=True)
    return None


CONFIG_NAMES: Final = (".sops.yaml", ".sops.yml")


_NOT_SOPS_CONTENT: Final = re.compile(
    r"(?:readme(?:\..*)?|license(?:\..*)?|.*\.(?:md|rst|adoc)|\.git\w*|\.keep)",
    re.IGNORECASE,
)
"""Names a broad `path_regex` may match that are documentation or Git plumbing, not values."""
