"""The Cluster kind: delivery (and the settings each delivery kind reads: see
`delivery.kinds`), Vault source, kubeconfig reference, namespaces."""

from __future__ import annotations

from pathlib import Path

from secretsync.core.model import Cluster, Fleet, Kubeconfig
from secretsync.delivery import kinds as delivery_kinds
from secretsync.fleet.load.files import (
    read_fleet_file,
)
from secretsync.fleet.load.schema import (
    DNS_LABEL,
    Header,
    is_dns_label,
    machine_path,
)
from secretsync.fleet.load.yamlmarks import Ctx, enum_field
from secretsync.fleet.repopath import confine


def read_cluster(ctx: Ctx, header: Header, fleet: Fleet) -> Cluster | None:
    spec = header.spec
    if not DNS_LABEL.fullmatch(header.name) or len(header.name) > 63:
        ctx.error(
            header.name_node,
            "metadata.name",
            "cluster name must be a DNS label (lowercase alphanumerics and '-', at most 63)",
        )
    if spec is None:
        return None
    delivery = enum_field(
        spec,
        "delivery",
        delivery_kinds.known,
        list(delivery_kinds.kinds()),
        default=fleet.default_delivery,
    )
    files = _Files(fleet.root)
    settings: dict[str, object] = {}
    for kind in delivery_kinds.kinds().values():  # each kind reads its own settings
        found = kind.read_settings(
            spec, cluster=header.name, files=files, chosen=kind.name == delivery
        )
        if found is not None:
            settings[kind.name] = found
    vault_source: str | None = None
    vault = spec.map("vault")
    if vault is not None:
        vault_source = vault.text("source", required=True)
        if vault_source is not None and not is_dns_label(vault_source):
            ctx.error(vault.key_node("source"), vault.field("source"), "must be a source name")
            vault_source = None
        vault.done()
    kubeconfig = None
    kube = spec.map("kubeconfig")
    if kube is not None:
        secret_ref = kube.map("secretRef")
        sref: dict[str, str | None] = {}
        if secret_ref is not None:
            sref = {
                "secret_namespace": secret_ref.text("namespace", required=True),
                "secret_name": secret_ref.text("name", required=True),
                "secret_key": secret_ref.text("key") or "kubeconfig",
            }
            secret_ref.done()
        in_cluster = kube.flag("inCluster") or False
        path = machine_path(kube, "path")
        given = sum(1 for x in (secret_ref, path, in_cluster or None) if x)
        if given != 1:
            ctx.error(
                kube.node, kube.path, "must have exactly one of secretRef, path or inCluster: true"
            )
        kubeconfig = Kubeconfig(
            path=path,
            context=kube.text("context"),
            in_cluster=in_cluster,
            **sref,  # type: ignore[arg-type]
        )
        kube.done()
    allowed = spec.str_list("allowedNamespaces")
    if allowed is not None:
        for ns, node in allowed:
            if not DNS_LABEL.fullmatch(ns) or len(ns) > 63:
                ctx.error(node, "spec.allowedNamespaces", f"{ns!r} is not a valid namespace name")
    apply = spec.flag("apply") or False
    create_ns = spec.flag("createNamespaces") or False
    spec.done()
    return Cluster(
        name=header.name,
        labels=header.labels,
        delivery=delivery,
        origin=header.origin,
        settings=settings,
        vault_source=vault_source,
        kubeconfig=kubeconfig,
        apply=apply,
        allowed_namespaces=tuple(ns for ns, _ in allowed) if allowed is not None else None,
        create_namespaces=create_ns,
    )


class _Files:
    """The fleet repo as the delivery kinds read their settings files from it."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def confine(self, relative: str) -> None:
        confine(self.root, relative)

    def read(self, relative: str) -> bytes:
        return read_fleet_file(self.root, relative)
