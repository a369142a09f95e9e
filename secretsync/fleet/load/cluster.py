"""The Cluster kind: delivery, sealing certificate (and its pin), External Secrets store,
kubeconfig reference, namespaces."""

from __future__ import annotations

from pathlib import Path

from secretsync.core import errors
from secretsync.core.model import (
    Cluster,
    ControllerRef,
    Delivery,
    Fleet,
    Kubeconfig,
    StoreRef,
)
from secretsync.delivery import seal
from secretsync.fleet.load.files import (
    read_fleet_file,
)
from secretsync.fleet.load.schema import (
    DNS_LABEL,
    Header,
    is_dns_label,
    machine_path,
)
from secretsync.fleet.load.yamlmarks import (
    Ctx,
    Map,
    as_map,
    enum_field,
)
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
        spec, "delivery", Delivery, [d.value for d in Delivery], default=fleet.default_delivery
    )
    cert_file: str | None = None
    cert_sha256: str | None = None
    controller: ControllerRef | None = None
    sealed = spec.map("sealedSecrets")
    if sealed is not None:
        cert_file = sealed.text("certFile")
        cert_ok = cert_file is not None
        if cert_file is not None:
            try:
                confine(fleet.root, cert_file)
            except errors.ConfigError as exc:
                cert_ok = False
                ctx.error(sealed.key_node("certFile"), sealed.field("certFile"), exc.message)
        pin = sealed.text("certificateSha256")
        if pin is not None:
            cert_sha256 = _pinned(ctx, sealed, pin, cert_file if cert_ok else None, fleet.root)
        ctrl = sealed.map("controller")
        if ctrl is not None:
            controller = ControllerRef(
                namespace=ctrl.text("namespace") or "kube-system",
                name=ctrl.text("name") or "sealed-secrets-controller",
            )
            ctrl.done()
        sealed.done()
    if delivery is Delivery.SEALED and cert_file is None:
        if controller is not None:
            # the controller is where the certificate comes from: `cluster refresh-cert` and
            # `serve --git-push` fetch it into the file of the usual name
            cert_file = f"certs/{header.name}.pem"
            try:  # fetched and written there later: it must not lead out of the repo either
                confine(fleet.root, cert_file)
            except errors.ConfigError as exc:
                ctx.error(
                    sealed.key_node("controller") if sealed else None,
                    spec.field("sealedSecrets.controller"),
                    exc.message,
                )
        else:
            ctx.error(
                spec.key_node("sealedSecrets") or spec.node,
                spec.field("sealedSecrets.certFile"),
                "a sealed cluster needs a certificate file, or the controller to fetch it from "
                "(run `secretsync cluster add` to fetch it)",
            )
    store_ref = StoreRef()
    store_refs: dict[str, StoreRef] = {}
    external = spec.map("externalSecrets")
    if external is not None:
        ref = external.map("storeRef")
        if ref is not None:
            store_ref = read_store_ref(ref)
        named = external.map("storeRefs")
        if named is not None:
            for name, (knode, vnode) in named.entries.items():
                named.used.add(name)
                if name == "default":  # the default source's store is `storeRef`
                    ctx.error(knode, named.field(name), "the default source's store is storeRef")
                    continue
                entry = as_map(ctx, vnode, named.field(name))
                if entry is not None:
                    entry.key = knode
                    store_refs[name] = read_store_ref(entry)
        external.done()
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
        cert_file=cert_file,
        cert_sha256=cert_sha256,
        controller=controller,
        store_ref=store_ref,
        store_refs=store_refs,
        vault_source=vault_source,
        kubeconfig=kubeconfig,
        apply=apply,
        allowed_namespaces=tuple(ns for ns, _ in allowed) if allowed is not None else None,
        create_namespaces=create_ns,
    )


def _pinned(ctx: Ctx, sealed: Map, pin: str, cert_file: str | None, root: Path) -> str | None:
    """Check `sealedSecrets.certificateSha256` against the certificate file; the normalised
    pin, or None (with an error) when it is malformed or does not match."""
    node, field = sealed.key_node("certificateSha256"), sealed.field("certificateSha256")
    expected = seal.normalize_sha256(pin)
    if expected is None:
        ctx.error(node, field, "must be a SHA-256 fingerprint: 64 hex digits (colons allowed)")
        return None
    if cert_file is None:
        if "certFile" not in sealed.entries:
            ctx.error(node, field, "pins the certificate of certFile, which is not set")
        return None
    try:
        actual = seal.certificate_sha256(read_fleet_file(root, cert_file), source=cert_file)
        seal.check_pin(actual, expected, source=cert_file)
    except errors.ConfigError as exc:
        ctx.error(node, field, f"{cert_file}: {exc.message}")
        return None
    except errors.SealError as exc:
        ctx.error(node, field, str(exc))
        return None
    return expected


def read_store_ref(ref: Map) -> StoreRef:
    """`{kind, name}` of an External Secrets store."""
    kind = ref.text("kind") or "ClusterSecretStore"
    if kind not in ("ClusterSecretStore", "SecretStore"):
        ref.ctx.error(
            ref.key_node("kind"), ref.field("kind"), "must be ClusterSecretStore or SecretStore"
        )
    store = StoreRef(kind=kind, name=ref.text("name", required=True) or "vault")
    ref.done()
    return store
