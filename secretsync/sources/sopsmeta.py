"""The key groups a SOPS file names, read from its metadata without decrypting.

sops decrypts a file with whatever keys its metadata names, and uses the credentials in its
environment to reach them: an `hc_vault` key group with `vault_address: http://anywhere:8200`
makes sops send its Vault token there. This module reads a file's key groups from its metadata
(YAML, JSON, or the `sops_hc_vault__list_0__map_vault_address=` lines of a dotenv file) without
decrypting anything; `sopskeys` checks them against the Fleet's `sources.sops` policy.

The reading is strict, so that what is checked is what sops would use: every key entry counts,
in the top-level lists and in `key_groups` alike (sops uses one or the other), and a metadata
field, key type or key field this module does not know is refused, as are case variants of
known names (Go's JSON decoder, which sops uses for JSON and dotenv metadata, matches field
names without regard to case), YAML merge keys and identifying values that are not plain
strings. Metadata that cannot be read at all is refused too.
"""

from __future__ import annotations

import enum
import hashlib
import json
import re
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Final

import yaml

KEY_FIELDS: Final[Mapping[str, frozenset[str]]] = {
    "age": frozenset({"recipient", "enc"}),
    "pgp": frozenset({"fp", "enc", "created_at"}),
    "hc_vault": frozenset({"vault_address", "engine_path", "key_name", "created_at", "enc"}),
    "kms": frozenset({"arn", "role", "context", "created_at", "enc", "aws_profile"}),
    "gcp_kms": frozenset({"resource_id", "created_at", "enc"}),
    "azure_kv": frozenset({"vault_url", "name", "version", "created_at", "enc"}),
}
"""The key types secretsync knows, with the fields sops writes for each (sops 3.11)."""

_PLAIN_FIELDS: Final = frozenset(
    {
        "lastmodified",
        "mac",
        "version",
        "shamir_threshold",
        "mac_only_encrypted",
        "unencrypted_suffix",
        "encrypted_suffix",
        "unencrypted_regex",
        "encrypted_regex",
        "unencrypted_comment_regex",
        "encrypted_comment_regex",
    }
)
"""Metadata fields that name no key."""

_IDENTIFYING: Final[Mapping[str, tuple[str, ...]]] = {
    "age": ("recipient",),
    "pgp": ("fp",),
    "hc_vault": ("vault_address", "engine_path", "key_name"),
    "kms": ("arn", "role", "aws_profile"),
    "gcp_kms": ("resource_id",),
    "azure_kv": ("vault_url", "name", "version"),
}
"""Fields that say where sops goes or which credentials it uses: plain strings only."""

MAX_NODES: Final = 100_000
_MAX_DEPTH: Final = 8


class FileFormat(enum.StrEnum):
    """A sops store, named as sops' `--input-type` names it."""

    YAML = "yaml"
    JSON = "json"
    DOTENV = "dotenv"


def format_for(name: str) -> FileFormat | None:
    """The format of a file from its name, or None when sops files may not have that name."""
    lowered = name.lower()
    if lowered.endswith((".yaml", ".yml")):
        return FileFormat.YAML
    if lowered.endswith(".json"):
        return FileFormat.JSON
    if lowered.endswith(".env"):
        return FileFormat.DOTENV
    return None


@dataclass(frozen=True, slots=True)
class KeyEntry:
    """One key a file names: its type, where (`hc_vault[0]`, `key_groups[1].age[0]`), the line
    and its identifying fields (plain strings)."""

    kind: str
    where: str
    line: int
    fields: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a file may not reach sops: the line, the key group (or metadata field) and why."""

    line: int
    where: str
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.where}: {self.message}"


@dataclass(frozen=True, slots=True)
class KeyGroups:
    """What a file's metadata names: its keys, and what in it cannot be read strictly."""

    entries: tuple[KeyEntry, ...]
    malformed: tuple[Refusal, ...]
    marked: bool = False  # the metadata carries a mac or a version: sops wrote it

    @property
    def kinds(self) -> frozenset[str]:
        return frozenset(e.kind for e in self.entries)


# --- a neutral tree of the metadata, whatever the format ----------------------------------------


@dataclass(slots=True)
class _Node:
    line: int
    text: str | None = None  # a plain string
    scalar: bool = False  # any other scalar (a number, a tagged value)
    null: bool = False
    items: list[_Node] | None = None
    pairs: list[tuple[str | None, _Node]] | None = None  # key None: not a plain string key
    children: dict[str, _Node] | None = None  # dotenv only: containers in `pairs` by key


class _TooLarge(Exception):
    pass


_STR: Final = "tag:yaml.org,2002:str"
_NULL: Final = "tag:yaml.org,2002:null"


def _from_yaml(node: yaml.Node, budget: list[int], depth: int = 0) -> _Node:
    budget[0] -= 1
    if budget[0] < 0 or depth > _MAX_DEPTH:
        raise _TooLarge
    line = node.start_mark.line + 1 if node.start_mark is not None else 1
    if isinstance(node, yaml.MappingNode):
        pairs: list[tuple[str | None, _Node]] = []
        for k, v in node.value:
            key = k.value if isinstance(k, yaml.ScalarNode) and k.tag == _STR else None
            pairs.append((key, _from_yaml(v, budget, depth + 1)))
        return _Node(line, pairs=pairs)
    if isinstance(node, yaml.SequenceNode):
        return _Node(line, items=[_from_yaml(v, budget, depth + 1) for v in node.value])
    if node.tag == _NULL:
        return _Node(line, null=True)
    if node.tag == _STR:
        return _Node(line, text=str(node.value))
    return _Node(line, scalar=True)


def _from_json(value: object, line: int, budget: list[int], depth: int = 0) -> _Node:
    budget[0] -= 1
    if budget[0] < 0 or depth > _MAX_DEPTH:
        raise _TooLarge
    if isinstance(value, _Pairs):
        return _Node(line, pairs=[(k, _from_json(v, line, budget, depth + 1)) for k, v in value])
    if isinstance(value, list):
        return _Node(line, items=[_from_json(v, line, budget, depth + 1) for v in value])
    if value is None:
        return _Node(line, null=True)
    if isinstance(value, str):
        return _Node(line, text=value)
    return _Node(line, scalar=True)


class _Pairs(list[tuple[str, object]]):
    """A JSON object as its pairs in order, duplicates kept (Go keeps the last; all are checked)."""


_LIST_OR_MAP: Final = re.compile(r"(__list_|__map_)")


def _from_dotenv(data: bytes) -> _Node | None:
    """The `sops_*` lines of a dotenv file as the tree sops builds from them (split on `=`,
    `__map_` and `__list_<n>` as sops' flattening writes them); None without such lines."""
    root = _Node(1, pairs=[], children={})
    found = False
    budget = MAX_NODES
    for number, raw in enumerate(data.split(b"\n"), start=1):
        if not raw or raw.startswith(b"#") or not raw.startswith(b"sops_"):
            continue
        key, sep, value = raw.partition(b"=")
        if not sep:
            continue
        found = True
        budget -= 1
        if budget < 0:
            raise _TooLarge
        text_key = key[len(b"sops_") :].decode("utf-8", errors="replace")
        parts = _LIST_OR_MAP.split(text_key)
        tokens: list[tuple[str, str]] = [("map", parts[0])]
        for i in range(1, len(parts) - 1, 2):
            tokens.append(("list" if parts[i] == "__list_" else "map", parts[i + 1]))
        leaf = _Node(number, text=value.decode("utf-8", errors="replace").replace("\\n", "\n"))
        _place(root, tokens, leaf)
    return root if found else None


def _place(node: _Node, tokens: list[tuple[str, str]], leaf: _Node) -> None:
    """Put `leaf` at the path `tokens`. A list is kept as a mapping of `[index]` keys, so that
    `__list_0` and `__list_00` (one slot for sops) are both checked."""
    for i, (kind, name) in enumerate(tokens):
        key = name if kind == "map" else f"[{name}]"
        pairs = node.pairs if node.pairs is not None else []
        children = node.children if node.children is not None else {}
        if i == len(tokens) - 1:
            pairs.append((key, leaf))
            return
        child = children.get(key)
        if child is None:
            child = children[key] = _Node(leaf.line, pairs=[], children={})
            pairs.append((key, child))
        node = child


# --- reading the metadata -----------------------------------------------------------------------


def read(data: bytes, fmt: FileFormat) -> KeyGroups:
    """The key groups of one SOPS file's metadata. Cached by content: a fleet's files are
    checked on every plan and read again by the sops source, and a parse costs about as much as
    the file is large (a 5 MiB file is about half a second)."""
    digest = hashlib.sha256(data).digest() + fmt.value.encode()
    with _CACHE_LOCK:
        hit = _CACHE.get(digest)
        if hit is not None:
            _CACHE.move_to_end(digest)
            return hit
    found = _read(data, fmt)
    with _CACHE_LOCK:
        _CACHE[digest] = found
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return found


_CACHE_SIZE: Final = 1024
_CACHE: OrderedDict[bytes, KeyGroups] = OrderedDict()  # results only: never file contents
_CACHE_LOCK = threading.Lock()  # the sops source reads files on worker threads


def _unreadable(why: str) -> KeyGroups:
    return KeyGroups((), (Refusal(1, "sops", why),))


def _read(data: bytes, fmt: FileFormat) -> KeyGroups:
    metadata: list[_Node] = []
    try:
        if fmt is FileFormat.DOTENV:
            tree = _from_dotenv(data)
            if tree is not None:
                metadata.append(tree)
        elif fmt is FileFormat.JSON:
            metadata.extend(_json_metadata(data))
        else:
            metadata.extend(_yaml_metadata(data))
    except _TooLarge:
        return _unreadable("the sops metadata is too large or too deeply nested to check")
    except (ValueError, yaml.YAMLError, RecursionError):
        return _unreadable("the sops metadata cannot be read, so its keys cannot be checked")
    if not metadata:
        return _unreadable("the file has no sops metadata")
    entries: list[KeyEntry] = []
    malformed: list[Refusal] = []
    for node in metadata:
        _metadata(node, entries, malformed)
    marked = any(k in ("mac", "version") for node in metadata for k, _ in node.pairs or ())
    return KeyGroups(tuple(entries), tuple(malformed), marked)


_PLAIN_KEY_TAGS: Final = frozenset(
    {_STR, _NULL, "tag:yaml.org,2002:int", "tag:yaml.org,2002:float", "tag:yaml.org,2002:bool"}
)


def _yaml_metadata(data: bytes) -> Iterator[_Node]:
    budget = [MAX_NODES]
    for doc in yaml.compose_all(data, Loader=yaml.CSafeLoader):
        if not isinstance(doc, yaml.MappingNode):
            continue
        for k, v in doc.value:
            if isinstance(k, yaml.ScalarNode) and k.tag == _STR and k.value == "sops":
                yield _from_yaml(v, budget)
            elif not isinstance(k, yaml.ScalarNode) or k.tag not in _PLAIN_KEY_TAGS:
                # a `!!binary` or complex key may decode to `sops` for sops: not checkable
                yield _Node(k.start_mark.line + 1, pairs=[(None, _Node(k.start_mark.line + 1))])


def _json_metadata(data: bytes) -> Iterator[_Node]:
    parsed = json.loads(data, object_pairs_hook=_Pairs)
    if not isinstance(parsed, _Pairs):
        return
    budget = [MAX_NODES]
    text = data.decode("utf-8", errors="replace")
    at = 0
    for key, value in parsed:
        # Go's JSON decoder, which sops uses, takes `"SOPS"` (or a long-s spelling) for `sops`
        if key.casefold() != "sops":
            continue
        at = text.find('"sops"', at)
        line = text.count("\n", 0, max(at, 0)) + 1
        at = max(at, 0) + 1
        if key != "sops":
            yield _Node(line, pairs=[(None, _Node(line))])
        else:
            yield _from_json(value, line, budget)


def _metadata(node: _Node, entries: list[KeyEntry], malformed: list[Refusal]) -> None:
    if node.pairs is None:
        malformed.append(Refusal(node.line, "sops", "the sops metadata is not a mapping"))
        return
    for key, value in node.pairs:
        if key is None:
            malformed.append(_unknown(value.line, "sops", None))
        elif key in _PLAIN_FIELDS:
            continue
        elif key == "key_groups":
            for g, group in enumerate(_items(value, "key_groups", malformed)):
                where = f"key_groups[{g}]"
                if group.pairs is None:
                    if not group.null:
                        malformed.append(Refusal(group.line, where, "not a mapping"))
                    continue
                for kind, keys in group.pairs:
                    if kind is not None and kind in KEY_FIELDS:
                        _keys(kind, keys, f"{where}.{kind}", entries, malformed)
                    else:
                        malformed.append(_unknown(keys.line, f"{where}.{kind}", kind))
        elif key in KEY_FIELDS:
            _keys(key, value, key, entries, malformed)
        else:
            malformed.append(_unknown(value.line, str(key), key))


def _unknown(line: int, where: str, key: str | None) -> Refusal:
    if key is not None and key.lower() in KEY_FIELDS and key not in KEY_FIELDS:
        why = f"a key type spelled {key!r}: sops reads it as {key.lower()!r}; refused"
    elif key is None or key == "<<":
        why = "not a plain field name (a merge key, tag or complex key); refused"
    else:
        why = (
            f"an unknown key type or metadata field {key!r}; secretsync knows "
            f"{', '.join(KEY_FIELDS)} keys only and refuses what it cannot check"
        )
    return Refusal(line, where, why)


def _items(node: _Node, where: str, malformed: list[Refusal]) -> list[_Node]:
    if node.null:
        return []
    if node.items is not None:
        return node.items
    if (
        node.children is not None  # built from dotenv lines, where a list is `[index]` keys
        and node.pairs is not None
        and all(k is not None and k.startswith("[") for k, _ in node.pairs)
    ):
        return [n for _, n in node.pairs]
    malformed.append(Refusal(node.line, where, "not a list"))
    return []


def _keys(
    kind: str, node: _Node, where: str, entries: list[KeyEntry], malformed: list[Refusal]
) -> None:
    for i, key in enumerate(_items(node, where, malformed)):
        here = f"{where}[{i}]"
        if key.pairs is None:
            malformed.append(Refusal(key.line, here, "not a mapping"))
            continue
        fields: dict[str, str] = {}
        bad = False
        for name, value in key.pairs:
            if name not in KEY_FIELDS[kind]:
                malformed.append(
                    Refusal(
                        value.line,
                        f"{here}.{name}",
                        f"not a field of a {kind} key ({', '.join(sorted(KEY_FIELDS[kind]))}); "
                        "refused",
                    )
                )
                bad = True
            elif name in _IDENTIFYING[kind]:
                if value.text is None and not value.null:
                    malformed.append(
                        Refusal(value.line, f"{here}.{name}", "not a plain string; refused")
                    )
                    bad = True
                elif name in fields and fields[name] != (value.text or ""):
                    malformed.append(Refusal(value.line, f"{here}.{name}", "given twice; refused"))
                    bad = True
                else:
                    fields[name] = value.text or ""
        if not bad:
            entries.append(KeyEntry(kind, here, key.line, fields))
