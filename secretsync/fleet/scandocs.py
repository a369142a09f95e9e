"""The checks `scan` makes of one file's content: YAML/JSON documents (plaintext Secrets,
unencrypted SOPS values) and dotenv files."""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Final

import yaml
from yaml.representer import SafeRepresenter

from secretsync.fleet.sopsrules import _Encryption, _Why

_SECRET_DATA_KEYS: Final = ("data", "stringData")


_TAG_NULL: Final = "tag:yaml.org,2002:null"


_TEMPLATE: Final = re.compile(r"\{\{.*\}\}|\$\{[^}]*\}", re.DOTALL)


_PLACEHOLDER: Final = re.compile(r"^<[^<>\n]+>$")


_DOTENV_LINE: Final = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_.-]*)\s*=(.*)$")


_INI_SOPS: Final = re.compile(rb"^\[sops\][ \t]*\r?$", re.M)


_JSON_SOPS: Final = re.compile(rb"\"sops\"\s*:\s*\{")


_DOTENV_SOPS: Final = re.compile(rb"^sops_(?:mac|version)=", re.M)


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


@dataclass(frozen=True, slots=True, order=True)
class Finding:
    """One leak: `file` relative to the scanned path (POSIX), 1-based `line`, never a value."""

    file: str
    line: int
    kind: FindingKind
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.kind}: {self.message}"
