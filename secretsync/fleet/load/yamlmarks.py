"""YAML with line numbers: composing documents (alias expansion capped), and `Map`, the reader
of one mapping field by field that reports every problem with its file, line and field."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import yaml

from secretsync.core import errors
from secretsync.core.model import (
    Origin,
)

MAX_NODES: Final = 200_000
STR = "tag:yaml.org,2002:str"
BOOL = "tag:yaml.org,2002:bool"
INT = "tag:yaml.org,2002:int"
FLOAT = "tag:yaml.org,2002:float"
NULL = "tag:yaml.org,2002:null"


def compose(data: bytes, *, file: str) -> list[yaml.Node]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise errors.ConfigError("file is not UTF-8 text", file=file) from None
    try:
        nodes = list(yaml.compose_all(text, Loader=yaml.CSafeLoader))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        line = mark.line + 1 if mark else 0
        raise errors.ConfigError(
            f"invalid YAML: {exc.problem or exc.context}", file=file, line=line
        ) from None
    except yaml.YAMLError as exc:
        raise errors.ConfigError(f"invalid YAML: {type(exc).__name__}", file=file) from None
    docs = [
        n for n in nodes if n is not None and not (isinstance(n, yaml.ScalarNode) and n.tag == NULL)
    ]
    for doc in docs:
        if (size := _expanded_size(doc, {})) > MAX_NODES:
            raise errors.ConfigError(
                f"document expands to {size} or more nodes, over the {MAX_NODES} limit "
                "(YAML alias bomb?)",
                file=file,
                line=doc.start_mark.line + 1,
            )
    return docs


def _expanded_size(node: yaml.Node, memo: dict[int, int]) -> int:
    """Nodes the document would have with every alias expanded (linear time, memoised)."""
    if (known := memo.get(id(node))) is not None:
        return known
    memo[id(node)] = 1  # a cycle counts once
    size = 1
    if isinstance(node, yaml.SequenceNode):
        for child in node.value:
            size += _expanded_size(child, memo)
            if size > MAX_NODES:
                break
    elif isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            size += _expanded_size(key, memo) + _expanded_size(value, memo)
            if size > MAX_NODES:
                break
    memo[id(node)] = size
    return size


@dataclass(slots=True)
class Ctx:
    """Collects errors for one load; counts nodes to cap alias expansion."""

    file: str = ""
    errors: list[errors.ConfigError] = field(default_factory=list)
    nodes: int = 0
    root: Path | None = None  # the fleet repo: fleet paths are confined to it

    def error(self, node: yaml.Node | None, field: str, message: str) -> None:
        line = node.start_mark.line + 1 if node is not None else 0
        self.errors.append(errors.ConfigError(message, file=self.file, line=line, field=field))

    def count(self, node: yaml.Node) -> None:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise errors.ConfigError(
                f"document expands to more than {MAX_NODES} nodes (YAML alias bomb?)",
                file=self.file,
                line=node.start_mark.line + 1,
            )


class Map:
    """A YAML mapping being read field by field; `done()` reports unknown fields."""

    def __init__(
        self, ctx: Ctx, node: yaml.MappingNode, path: str, at: yaml.Node | None = None
    ) -> None:
        self.ctx = ctx
        self.node = node
        self.key = at  # the key this mapping is the value of: where a missing field is reported
        self.path = path
        self.entries: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        self.used: set[str] = set()
        for key_node, value_node in node.value:
            ctx.count(key_node)
            ctx.count(value_node)
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag not in (STR, INT):
                ctx.error(key_node, path, "keys must be strings")
                continue
            key = str(key_node.value)
            if key in self.entries:
                first = self.entries[key][0].start_mark.line + 1
                ctx.error(key_node, self.field(key), f"duplicate key (first on line {first})")
                continue
            self.entries[key] = (key_node, value_node)

    def field(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    @property
    def line(self) -> int:
        return self.node.start_mark.line + 1

    def origin(self) -> Origin:
        return Origin(self.ctx.file, self.line)

    def key_node(self, key: str) -> yaml.Node | None:
        entry = self.entries.get(key)
        return entry[0] if entry else None

    def raw(self, key: str, *, required: bool = False) -> yaml.Node | None:
        self.used.add(key)
        entry = self.entries.get(key)
        if entry is None:
            if required:
                self.ctx.error(self.key or self.node, self.field(key), "required field is missing")
            return None
        value = entry[1]
        if isinstance(value, yaml.ScalarNode) and value.tag == NULL:
            if required:
                self.ctx.error(entry[0], self.field(key), "required field is empty")
            return None
        return value

    def text(self, key: str, *, required: bool = False, scalar: bool = False) -> str | None:
        node = self.raw(key, required=required)
        if node is None:
            return None
        allowed = (STR, INT, FLOAT, BOOL) if scalar else (STR,)
        if not isinstance(node, yaml.ScalarNode) or node.tag not in allowed:
            self.ctx.error(self.key_node(key), self.field(key), "must be a string")
            return None
        value = str(node.value)
        if required and value == "":
            self.ctx.error(self.key_node(key), self.field(key), "must not be empty")
            return None
        return value

    def flag(self, key: str) -> bool | None:
        node = self.raw(key)
        if node is None:
            return None
        if not isinstance(node, yaml.ScalarNode) or node.tag != BOOL:
            self.ctx.error(self.key_node(key), self.field(key), "must be true or false")
            return None
        return str(node.value).lower() in ("true", "yes", "on")

    def number(self, key: str, *, integer: bool = False, minimum: float = 0) -> float | None:
        node = self.raw(key)
        if node is None:
            return None
        tags = (INT,) if integer else (INT, FLOAT)
        if not isinstance(node, yaml.ScalarNode) or node.tag not in tags:
            kind = "an integer" if integer else "a number"
            self.ctx.error(self.key_node(key), self.field(key), f"must be {kind}")
            return None
        value = float(int(str(node.value), 0)) if node.tag == INT else float(node.value)
        if value < minimum:
            self.ctx.error(self.key_node(key), self.field(key), f"must be at least {minimum:g}")
            return None
        return value

    def map(self, key: str, *, required: bool = False) -> Map | None:
        node = self.raw(key, required=required)
        if node is None:
            return None
        if not isinstance(node, yaml.MappingNode):
            self.ctx.error(self.key_node(key), self.field(key), "must be a mapping")
            return None
        return Map(self.ctx, node, self.field(key), self.key_node(key))

    def seq(self, key: str) -> list[tuple[yaml.Node, str]] | None:
        node = self.raw(key)
        if node is None:
            return None
        if not isinstance(node, yaml.SequenceNode):
            self.ctx.error(self.key_node(key), self.field(key), "must be a list")
            return None
        out = []
        for i, item in enumerate(node.value):
            self.ctx.count(item)
            out.append((item, f"{self.field(key)}[{i}]"))
        return out

    def str_list(self, key: str) -> list[tuple[str, yaml.Node]] | None:
        items = self.seq(key)
        if items is None:
            return None
        out: list[tuple[str, yaml.Node]] = []
        for item, path in items:
            if not isinstance(item, yaml.ScalarNode) or item.tag != STR:
                self.ctx.error(item, path, "must be a string")
                continue
            out.append((str(item.value), item))
        return out

    def str_map(self, key: str) -> dict[str, tuple[str, yaml.Node]] | None:
        sub = self.map(key)
        if sub is None:
            return None
        out = {}
        for k, (knode, vnode) in sub.entries.items():
            sub.used.add(k)
            if not isinstance(vnode, yaml.ScalarNode) or vnode.tag != STR:
                self.ctx.error(knode, sub.field(k), "must be a string (quote it)")
                continue
            out[k] = (str(vnode.value), knode)
        return out

    def done(self) -> None:
        for key, (knode, _) in self.entries.items():
            if key not in self.used:
                self.ctx.error(knode, self.field(key), "unknown field")


def as_map(ctx: Ctx, node: yaml.Node, path: str) -> Map | None:
    ctx.count(node)
    if not isinstance(node, yaml.MappingNode):
        ctx.error(node, path, "must be a mapping")
        return None
    return Map(ctx, node, path)


def enum_field[E](
    m: Map, key: str, choices: Callable[[str], E], names: list[str], *, default: E
) -> E:
    value = m.text(key)
    if value is None:
        return default
    try:
        return choices(value)
    except ValueError:
        m.ctx.error(m.key_node(key), m.field(key), f"must be one of: {', '.join(names)}")
        return default
