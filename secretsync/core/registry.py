"""A registry of kinds by name (source kinds, delivery kinds): the built-in ones registered by
importing their modules on first use, others registered and unregistered at run time (the
tests' own kinds)."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Protocol

from secretsync.core import errors


class Named(Protocol):
    @property
    def name(self) -> str: ...


class Registry[K: Named]:
    """Kinds of one sort by name, the built-in ones first."""

    def __init__(self, what: str, *, builtin: tuple[str, ...], reserved: tuple[str, ...] = ("",)):
        self.what = what  # "source kind": how an error names the sort
        self.builtin = builtin  # modules that each register one kind when imported
        self.reserved = reserved  # names no kind may take
        self._kinds: dict[str, K] = {}
        self._loaded = False

    def register(self, kind: K) -> K:
        """Add a kind (a second one of the same name replaces the first: tests re-register)."""
        if kind.name in self.reserved:
            raise ValueError(f"{kind.name!r} cannot name a {self.what}")
        self._kinds[kind.name] = kind
        # the built-in ones first, in `builtin` order, whatever order imports register them in
        # (an error message lists the kinds: the same text on every run)
        rank = {module: i for i, module in enumerate(self.builtin)}
        self._kinds = dict(
            sorted(self._kinds.items(), key=lambda kv: rank.get(type(kv[1]).__module__, len(rank)))
        )
        return kind

    def unregister(self, name: str) -> None:
        self._kinds.pop(name, None)

    def all(self) -> Mapping[str, K]:
        """Every registered kind by name. The built-in modules are imported on the first call,
        not at import time: each imports this registry's module, which must load first."""
        if not self._loaded:
            self._loaded = True
            for module in self.builtin:
                importlib.import_module(module)
        return self._kinds

    def get(self, name: str) -> K:
        """The kind of that name; `errors.ConfigError` when none is registered."""
        kind = self.all().get(name)
        if kind is None:
            raise errors.ConfigError(f"no {self.what} {name!r} is known")
        return kind
