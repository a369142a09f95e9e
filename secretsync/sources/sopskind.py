"""The `sops` source kind: `{sops: {file, key}}` refs to SOPS files of the fleet repo, read by
`sops.SopsSource`. Files are not versioned by a server and cannot be polled; External Secrets
Operator cannot read them (an `external` cluster may not use them).
"""

from __future__ import annotations

import posixpath
from pathlib import Path
from typing import TYPE_CHECKING

from secretsync.core import errors, templating
from secretsync.core.model import Cluster, Fleet, Location, RefSpec, SopsSpec, ValueRef
from secretsync.fleet.repopath import confine
from secretsync.sources import kinds

if TYPE_CHECKING:
    from secretsync.fleet.load.yamlmarks import Map
    from secretsync.sources.resolve import Source

_CONFINED = "sops.confined"
"""The plan cache entry: filled-in path -> why it leaves the repo (None: it does not)."""


class SopsKind:
    name = "sops"
    versioned = False
    pollable = False
    external = False

    def read_settings(self, sources: Map) -> dict[str, object]:
        from secretsync.fleet.load.sources import read_sops  # noqa: PLC0415 - load imports kinds

        sops = sources.map("sops")
        return {} if sops is None else {"sops": read_sops(sops)}

    def read_ref(self, ref: Map) -> RefSpec | None:
        from secretsync.fleet.load.schema import template_field  # noqa: PLC0415

        ctx = ref.ctx
        file = template_field(ref, "file")
        key = template_field(ref, "key")
        if file and not templating.has_template(file):
            try:  # symlinks too; templated paths are confined per cluster by `plan_ref`
                confine(ctx.root or Path("/"), file)
            except errors.ConfigError as exc:
                ctx.error(ref.key_node("file"), ref.field("file"), exc.message)
        elif file and (file.startswith("/") or ".." in Path(file).parts):
            ctx.error(ref.key_node("file"), ref.field("file"), "must stay inside the repo")
        return SopsSpec(file, key) if file and key else None

    def check_ref(self, spec: RefSpec, fleet: Fleet) -> list[tuple[str, str]]:
        return []

    def cluster_problems(self, cluster: Cluster, fleet: Fleet) -> list[tuple[str, str]]:
        return []

    def plan_inputs(self, spec: RefSpec, fleet: Fleet) -> tuple[str, ...]:
        return spec.templates()

    def cluster_inputs(self, cluster: Cluster) -> tuple[object, ...]:
        return ()

    def plan_ref(self, spec: RefSpec, plan: kinds.RefPlan) -> ValueRef:
        if not isinstance(spec, SopsSpec):
            raise TypeError(f"not a {self.name} ref: {type(spec).__name__}")
        file = plan.fill(spec.file, "file")
        ref_key = plan.fill(spec.key, "key")
        norm = posixpath.normpath(file) if file else file
        if file and (norm.startswith(("/", "../")) or norm == ".."):
            plan.problem(f"sops file {file!r} leaves the fleet repo", "file")
        elif file and templating.has_template(spec.file):
            # The loader confined the literal paths; a filled-in one may reach a symlink.
            cache = plan.cache.setdefault(_CONFINED, {})
            if not isinstance(cache, dict):
                raise TypeError(_CONFINED)
            if norm not in cache:
                try:
                    confine(plan.fleet.root, norm)
                    cache[norm] = None
                except errors.ConfigError as exc:
                    cache[norm] = exc.message
            if (why := cache[norm]) is not None:
                plan.problem(f"cluster {plan.cluster.name!r}: sops file {why}", "file")
        return ValueRef(Location("sops", norm), ref_key)

    def build(self, fleet: Fleet, options: kinds.BuildOptions) -> dict[str, Source]:
        from secretsync.sources.sops import SopsSource  # noqa: PLC0415 - only when built

        return {"sops": SopsSource(root=fleet.root, settings=fleet.sops, env=options.env)}

    def path_names(self, location: Location) -> tuple[str, ...]:
        return ()


kinds.register(SopsKind())
