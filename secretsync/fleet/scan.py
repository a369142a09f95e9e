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

import enum
import json
import os
import re
import stat
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import yaml
from yaml.representer import SafeRepresenter

from secretsync.core import model
from secretsync.fleet import repopath
from secretsync.sources import sopskeys

MAX_FILE_BYTES: Final = 8 * 1024 * 1024

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

CONFIG_NAMES: Final = (".sops.yaml", ".sops.yml")

STRUCTURED_SUFFIXES: Final = (".yaml", ".yml", ".json")

_NOT_SOPS_CONTENT: Final = re.compile(
    r"(?:readme(?:\..*)?|license(?:\..*)?|.*\.(?:md|rst|adoc)|\.git\w*|\.keep)",
    re.IGNORECASE,
)
"""Names a broad `path_regex` may match that are documentation or Git plumbing, not values."""

_SECRET_DATA_KEYS: Final = ("data", "stringData")
_DEFAULT_UNENCRYPTED_SUFFIX: Final = "_unencrypted"
_TAG_NULL: Final = "tag:yaml.org,2002:null"
_TEMPLATE: Final = re.compile(r"\{\{.*\}\}|\$\{[^}]*\}", re.DOTALL)
_PLACEHOLDER: Final = re.compile(r"^<[^<>\n]+>$")
_DOTENV_LINE: Final = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_.-]*)\s*=(.*)$")
_WORTH_PARSING: Final = re.compile(
    rb"kind[\"']?\s*:\s*[\"']?(?:Secret|\w*List)\b"  # a Secret or a List of objects
    rb"|^[\"']?sops[\"']?\s*:|\"sops\"\s*:",  # sops metadata (YAML top level, JSON)
    re.M,
)
"""Cheap byte check: only files that may hold a Secret or sops metadata are parsed."""
_INI_SOPS: Final = re.compile(rb"^\[sops\][ \t]*\r?$", re.M)
_JSON_SOPS: Final = re.compile(rb"\"sops\"\s*:\s*\{")
_DOTENV_SOPS: Final = re.compile(rb"^sops_(?:mac|version)=", re.M)


class FindingKind(enum.StrEnum):
    PLAINTEXT_SECRET = "plaintext-secret"
    """A Kubernetes Secret whose data is readable in the file."""
    SOPS_FILE_NOT_ENCRYPTED = "sops-file-not-encrypted"
    """A file that a `.sops.yaml` rule or its `*.sops.*` name says is encrypted, but is not."""
    SOPS_VALUE_NOT_ENCRYPTED = "sops-value-not-encrypted"
    """A value inside a SOPS file that is in plaintext although it should be encrypted."""
    UNPARSABLE = "unparsable-file"
    """A YAML / JSON file that may hold a Secret (or must be encrypted) but does not parse."""
    NOT_A_FILE = "not-a-regular-file"
    """A FIFO, socket or device where a file to check would be: not opened."""
    SOPS_KEY_NOT_ALLOWED = "sops-key-not-allowed"
    """A SOPS file naming a key (type, Vault address, KMS key) the Fleet's policy refuses."""


type PolicyFor = Callable[[Path], model.SopsSettings]
"""The `sources.sops` policy that applies to the files of a folder."""


def _default_policy(_folder: Path) -> model.SopsSettings:
    return model.SopsSettings()


@dataclass(frozen=True, slots=True, order=True)
class Finding:
    """One leak: `file` relative to the scanned path (POSIX), 1-based `line`, never a value."""

    file: str
    line: int
    kind: FindingKind
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.kind}: {self.message}"


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


_MAYBE_SOPS: Final[Mapping[sopskeys.FileFormat, re.Pattern[bytes]]] = {
    sopskeys.FileFormat.YAML: re.compile(rb"^[\"']?sops[\"']?[ \t]*:", re.M),
    sopskeys.FileFormat.JSON: re.compile(rb"\"sops\"\s*:", re.I),  # Go's JSON ignores case
    sopskeys.FileFormat.DOTENV: _DOTENV_SOPS,
}


def _key_findings(
    data: bytes, *, rel: str, name: str, policy_for: Callable[[], model.SopsSettings]
) -> list[Finding]:
    """The keys a SOPS file names that its Fleet's policy refuses (one finding each)."""
    fmt = sopskeys.format_for(name)
    if fmt is None or not _MAYBE_SOPS[fmt].search(data):
        return []
    found = sopskeys.read(data, fmt)
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


def _documents(
    data: bytes, *, is_json: bool, stopped: list[int] | None = None
) -> Iterator[yaml.Node]:
    """Composed documents (nodes keep their lines). A syntax error ends them: the 1-based line
    where it was found is appended to `stopped`."""
    composed = 0
    try:
        for node in yaml.compose_all(data, Loader=yaml.CSafeLoader):
            if node is not None:
                composed += 1
                yield node
        return
    except (yaml.YAMLError, RecursionError) as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        if not is_json or composed:
            if stopped is not None:
                stopped.append(line)
            return
    try:  # JSON that YAML 1.1 does not read (e.g. "\/"): no line numbers then
        parsed = json.loads(data)
    except (ValueError, RecursionError):
        if stopped is not None:
            stopped.append(line)
        return
    yield SafeRepresenter().represent_data(parsed)


def _line(node: yaml.Node) -> int:
    mark = node.start_mark
    return mark.line + 1 if mark is not None else 1


def _get(node: yaml.Node, key: str) -> yaml.Node | None:
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            if isinstance(k, yaml.ScalarNode) and k.value == key:
                return v  # type: ignore[no-any-return]
    return None


def _text(node: yaml.Node | None) -> str:
    return node.value if isinstance(node, yaml.ScalarNode) and isinstance(node.value, str) else ""


def _is_encrypted(value: str) -> bool:
    return value.startswith("ENC[") and value.endswith("]")


def _is_plaintext(node: yaml.ScalarNode) -> bool:
    """A scalar that holds readable content: not empty, null, ENC[…] or a placeholder."""
    value = node.value.strip() if isinstance(node.value, str) else ""
    if not value or node.tag == _TAG_NULL:
        return False
    return not (_is_encrypted(value) or _TEMPLATE.search(value) or _PLACEHOLDER.match(value))


def _leaves(node: yaml.Node, path: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], yaml.Node]]:
    """Every scalar leaf with its key path (list items share their list's path, as in sops)."""
    seen: set[int] = set()
    stack: list[tuple[tuple[str, ...], yaml.Node]] = [(path, node)]
    while stack:
        here, current = stack.pop()
        if id(current) in seen:  # aliases: each node once, whatever the alias count
            continue
        seen.add(id(current))
        if isinstance(current, yaml.MappingNode):
            for k, v in reversed(current.value):
                key = k.value if isinstance(k, yaml.ScalarNode) else "?"
                stack.append(((*here, str(key)), v))
        elif isinstance(current, yaml.SequenceNode):
            stack.extend((here, item) for item in reversed(current.value))
        else:
            yield here, current


def _sops_metadata(doc: yaml.Node) -> dict[str, object] | None:
    meta = _get(doc, "sops")
    if not isinstance(meta, yaml.MappingNode):
        return None
    fields = {
        k.value: v.value
        for k, v in meta.value
        if isinstance(k, yaml.ScalarNode) and isinstance(v, yaml.ScalarNode)
    }
    if "mac" not in fields and "version" not in fields:
        return None
    return fields


def _secret_objects(doc: yaml.Node) -> Iterator[yaml.Node]:
    """The `v1/Secret` objects of a document: itself, or the items of a `…List`."""
    kind = _text(_get(doc, "kind"))
    if kind == "Secret" and _text(_get(doc, "apiVersion")) in ("", "v1"):
        yield doc
    elif kind.endswith("List"):
        items = _get(doc, "items")
        if isinstance(items, yaml.SequenceNode):
            for item in items.value:
                yield from _secret_objects(item)


def _is_kubernetes_object(doc: yaml.Node) -> bool:
    return bool(_text(_get(doc, "apiVersion")) and _text(_get(doc, "kind")))


def _secret_name(secret: yaml.Node) -> str:
    metadata = _get(secret, "metadata")
    name = _text(_get(metadata, "name")) if metadata is not None else ""
    namespace = _text(_get(metadata, "namespace")) if metadata is not None else ""
    if name and namespace:
        return f"{namespace}/{name}"
    return name or "(unnamed)"


def _plaintext_secret(secret: yaml.Node, rel: str) -> Finding | None:
    first_line = 0
    keys: list[str] = []
    for field in _SECRET_DATA_KEYS:
        data = _get(secret, field)
        if not isinstance(data, yaml.MappingNode):
            continue
        for k, v in data.value:
            if isinstance(v, yaml.ScalarNode) and _is_plaintext(v):
                keys.append(f"{field}.{_text(k) or '?'}")
                first_line = first_line or _line(v)
    if not keys:
        return None
    shown = ", ".join(keys[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")
    return Finding(
        rel,
        first_line,
        FindingKind.PLAINTEXT_SECRET,
        f"Secret {_secret_name(secret)} holds {len(keys)} plaintext value(s): {shown}",
    )


def _check_structured(data: bytes, *, rel: str, why: _Why | None, is_json: bool) -> list[Finding]:
    findings: list[Finding] = []
    reported_file = False
    stopped: list[int] = []
    for doc in _documents(data, is_json=is_json, stopped=stopped):
        metadata = _sops_metadata(doc)
        if metadata is not None:
            findings.extend(_check_sops_document(doc, metadata, rel=rel))
            continue
        secrets = [f for s in _secret_objects(doc) if (f := _plaintext_secret(s, rel))]
        findings.extend(secrets)
        if secrets or why is None or reported_file:
            continue
        if not why.by_name and _is_kubernetes_object(doc):
            continue  # a manifest under a broad rule; Secrets among them are checked above
        if _would_encrypt(doc, why.encryption):
            reported_file = True
            findings.append(
                Finding(
                    rel,
                    _line(doc),
                    FindingKind.SOPS_FILE_NOT_ENCRYPTED,
                    f"{why.reason} but has no sops metadata",
                )
            )
    if stopped and b"{{" in data:
        return findings  # a Helm / Go template: YAML only once rendered, its values are not
    last = max(1, len(data.splitlines()))  # the parser may stop at the end of the stream
    for line in stopped:  # the parser's own message is not shown: it may quote the file
        what = "JSON" if is_json else "YAML"
        findings.append(
            Finding(
                rel,
                min(line, last),
                FindingKind.UNPARSABLE,
                f"is not valid {what} from this line on: not checked, and a broken file may "
                "still hold a plaintext Secret",
            )
        )
    return findings


def _would_encrypt(doc: yaml.Node, encryption: _Encryption) -> bool:
    return any(
        isinstance(leaf, yaml.ScalarNode) and _is_plaintext(leaf) and encryption.encrypts(path)
        for path, leaf in _leaves(doc, ())
    )


def _check_sops_document(
    doc: yaml.Node, metadata: Mapping[str, object], *, rel: str
) -> list[Finding]:
    encryption = _Encryption.read(metadata)
    secret_data = _text(_get(doc, "kind")) == "Secret"
    findings = []
    for path, leaf in _leaves(doc, ()):
        if path[:1] == ("sops",) or not isinstance(leaf, yaml.ScalarNode):
            continue
        value = leaf.value if isinstance(leaf.value, str) else ""
        if not value or leaf.tag == _TAG_NULL or _is_encrypted(value):
            continue  # sops leaves nulls and empty strings as they are
        dotted = ".".join(path)
        if encryption is not None and encryption.encrypts(path):
            findings.append(
                Finding(
                    rel,
                    _line(leaf),
                    FindingKind.SOPS_VALUE_NOT_ENCRYPTED,
                    f"{dotted} is not encrypted although the file's sops settings encrypt it "
                    "(edited outside sops?)",
                )
            )
        elif secret_data and path[0] in _SECRET_DATA_KEYS and _is_plaintext(leaf):
            findings.append(
                Finding(
                    rel,
                    _line(leaf),
                    FindingKind.SOPS_VALUE_NOT_ENCRYPTED,
                    f"Secret {_secret_name(doc)}: {dotted} is left in plaintext by the file's "
                    "sops settings (encrypted_regex / suffixes)",
                )
            )
    return findings


# --- one SOPS file, for the sops source ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SopsLeaves:
    """What an encrypted SOPS file holds in plaintext, found before it is decrypted.

    `refused`: leaves the file's own sops settings encrypt (edited outside sops) and any
    plaintext under a Secret's `data` / `stringData`: the file must not be used at all.
    `plaintext`: key paths of the other non-empty leaves the settings leave readable
    (`*_unencrypted`, `encrypted_regex`, …): no secret value may be read from them.
    """

    refused: tuple[Finding, ...] = ()
    plaintext: tuple[tuple[str, ...], ...] = ()


def sops_leaves(
    data: bytes, *, rel: str, dotenv: bool = False, is_json: bool = False
) -> SopsLeaves:
    """The plaintext of one SOPS file (YAML, JSON or dotenv bytes as stored in the repo)."""
    if dotenv:
        refused = _check_dotenv(data, rel=rel, why=None)
        bad = {f.line for f in refused}
        text = data.decode("utf-8", errors="replace")
        plain = [
            (match.group(1),)
            for number, line in enumerate(text.splitlines(), start=1)
            if (match := _DOTENV_LINE.match(line)) is not None
            and not match.group(1).startswith("sops_")
            and number not in bad
            and (value := match.group(2).strip())
            and not _is_encrypted(value)
        ]
        return SopsLeaves(tuple(refused), tuple(plain))
    findings: list[Finding] = []
    paths: dict[tuple[str, ...], None] = {}
    for doc in _documents(data, is_json=is_json):
        metadata = _sops_metadata(doc)
        if metadata is None:
            continue
        refused = _check_sops_document(doc, metadata, rel=rel)
        findings.extend(refused)
        bad = {f.line for f in refused}
        for path, leaf in _leaves(doc, ()):
            if path[:1] == ("sops",) or not isinstance(leaf, yaml.ScalarNode):
                continue
            value = leaf.value if isinstance(leaf.value, str) else ""
            readable = bool(value) and leaf.tag != _TAG_NULL and not _is_encrypted(value)
            if readable and _line(leaf) not in bad:
                paths[path] = None
    return SopsLeaves(tuple(findings), tuple(paths))


# --- dotenv --------------------------------------------------------------------------------


def _check_dotenv(data: bytes, *, rel: str, why: _Why | None) -> list[Finding]:
    text = data.decode("utf-8", errors="replace")
    entries: list[tuple[int, str, str]] = []
    metadata: dict[str, object] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        match = _DOTENV_LINE.match(line)
        if match is None:
            continue
        key, value = match.group(1), match.group(2).strip()
        if key.startswith("sops_"):
            metadata[key.removeprefix("sops_")] = value
        else:
            entries.append((number, key, value))
    if "mac" in metadata or "version" in metadata:
        encryption = _Encryption.read(metadata)
        return [
            Finding(
                rel,
                number,
                FindingKind.SOPS_VALUE_NOT_ENCRYPTED,
                f"{key} is not encrypted although the file's sops settings encrypt it "
                "(edited outside sops?)",
            )
            for number, key, value in entries
            if value
            and not _is_encrypted(value)
            and encryption is not None
            and encryption.encrypts((key,))
        ]
    if why is None:
        return []
    first = next(
        (
            number
            for number, key, value in entries
            if value and why.encryption.encrypts((key,)) and not _is_encrypted(value)
        ),
        0,
    )
    if not first:
        return []
    return [Finding(rel, first, FindingKind.SOPS_FILE_NOT_ENCRYPTED, f"{why.reason} but is not")]
