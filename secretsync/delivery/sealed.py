"""The `sealed` delivery: a SealedSecret whose unchanged keys keep their ciphertext (the key hash
binds the value, the key name, the certificate and the scope label); its settings
(`sealedSecrets`: certificate file, pin, controller) and its plan rule (the cluster-wide scope
policy)."""

from __future__ import annotations

import base64
import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from secretsync.core import errors
from secretsync.core.model import (
    ANNOTATION_CONTENT_HASH,
    ANNOTATION_KEY_HASHES,
    Cluster,
    ControllerRef,
    DesiredSecret,
    Fleet,
    FleetSecret,
    Planned,
    Scope,
    Target,
)
from secretsync.core.values import (
    KeyHasher,
    SecretValue,
    content_hash,
    json_object,
    json_string,
    keyed_digest,
)
from secretsync.delivery import kinds, seal
from secretsync.delivery.rendered import (
    FORMAT,
    Manifest,
    RenderCache,
    RenderContext,
    Rendered,
    SealedHashes,
    _copy_metadata,
    _kept,
    _metadata,
    _needles,
    _shape,
    _stand_in_text,
    _version_annotation,
    _versioned,
    format_key_hashes,
)

_GROUP, _, _VERSION = seal.SEALED_API_VERSION.partition("/")
SEALED_SECRET: Final = kinds.ApiKind(seal.SEALED_KIND, _GROUP, _VERSION, "sealedsecrets")
"""The object (seal's `SEALED_API_VERSION` and `SEALED_KIND`: what unseal accepts)."""

NAME: Final = "sealed"


def _certificate(desired: DesiredSecret, ctx: RenderContext) -> seal.Certificate:
    if ctx.certificate is None:
        raise errors.SealError(f"cluster {desired.cluster.name!r} has no sealing certificate")
    return ctx.certificate


def sealed_hashes(
    desired: DesiredSecret, values: Mapping[str, SecretValue], *, ctx: RenderContext
) -> SealedHashes:
    """The hashes `render_sealed` gives the object (nothing is sealed)."""
    cert = _certificate(desired, ctx)
    if ctx.hashes is not None:
        return ctx.hashes
    key = ctx.hmac_key
    target = desired.target
    scope = target.scope
    label = seal.label_for(target.namespace, target.name, scope)
    b64 = base64.b64encode(label).decode("ascii")
    context = (
        f'{{"cert":{json_string(cert.fingerprint)},"delivery":"sealed",'
        f'"label":{json_string(b64)},"scope":{json_string(scope)}}}'
    )
    hasher = KeyHasher(key, None, blob=context.encode("ascii"))
    key_hashes = {name: hasher.hash(name, value) for name, value in sorted(values.items())}
    try:
        blob = _sealed_json(
            desired, cert.fingerprint, b64, key_hashes, ctx.versions, cache=ctx.cache
        )
        digest = keyed_digest(key, blob)
    except TypeError:  # not strings where the model says so: the generic encoder decides
        digest = _sealed_digest(desired, cert.fingerprint, b64, key_hashes, ctx.versions, key=key)
    return SealedHashes(digest, key_hashes, label)


def _sealed_digest(
    desired: DesiredSecret,
    fingerprint: str,
    b64_label: str,
    key_hashes: Mapping[str, str],
    versions: Mapping[str, str],
    *,
    key: bytes,
) -> str:
    """The content hash of a SealedSecret: what `_sealed_json` writes faster."""
    context = {"cert": fingerprint, "label": b64_label, "scope": desired.target.scope}
    return content_hash(
        key,
        _versioned(
            {
                "format": FORMAT,
                "kind": "SealedSecret",
                **_shape(desired),
                **context,
                "keys": dict(key_hashes),
            },
            versions,
        ),
    )


def _sealed_json(
    desired: DesiredSecret,
    fingerprint: str,
    b64_label: str,
    key_hashes: Mapping[str, str],
    versions: Mapping[str, str],
    *,
    cache: RenderCache | None = None,
) -> bytes:
    """`canonical_json` of `_sealed_digest`'s parts, written directly (keys in sorted order):
    the content hash is computed for every object of every render, changed or not. A property
    test holds it equal to the generic encoder. TypeError when a field is not what the model
    says (the caller then uses the generic path)."""
    target = desired.target
    head, middle, tail = (
        cache.target_parts(target, _target_json) if cache is not None else _target_json(target)
    )
    text = (
        f"{head}{json_string(fingerprint)},"
        f'"cluster":{json_string(desired.cluster.name)},'
        f'"fleetSecret":{json_string(desired.fleet_secret)}{middle}{json_object(key_hashes)},'
        f'"kind":"SealedSecret","label":{json_string(b64_label)}{tail}'
        + (f',"versions":{json_object(versions)}' if versions else "")
        + "}"
    )
    return text.encode("ascii")


def _target_json(t: Target) -> tuple[str, str, str]:
    """The parts of `_sealed_json` that only the target decides (kept per Target by a
    `RenderCache`)."""
    if type(t.immutable) is not bool:
        raise TypeError("immutable")
    return (
        f'{{"annotations":{json_object(t.annotations)},"cert":',
        f',"format":{FORMAT:d},"immutable":{"true" if t.immutable else "false"},"keys":',
        f',"labels":{json_object(t.labels)},"name":{json_string(t.name)},'
        f'"namespace":{json_string(t.namespace)},"scope":{json_string(t.scope)},'
        f'"type":{json_string(t.type)}',
    )


def to_seal(
    desired: DesiredSecret, values: Mapping[str, SecretValue], *, ctx: RenderContext
) -> list[tuple[str, bytes]]:
    """(key, plaintext) of the values `render_sealed` would seal anew: those whose previous
    ciphertext cannot be kept. The label to seal them with is `sealed_hashes(...).label`."""
    hashes = sealed_hashes(desired, values, ctx=ctx)
    return [
        (key, value.reveal())
        for key, value in sorted(values.items())
        if _kept(ctx.previous, key, hashes.key_hashes[key]) is None
    ]


def render_sealed(
    desired: DesiredSecret, values: Mapping[str, SecretValue], *, ctx: RenderContext
) -> Rendered:
    cert = _certificate(desired, ctx)
    scope = desired.target.scope
    hashes = sealed_hashes(desired, values, ctx=ctx)
    digest, key_hashes, label = hashes.digest, hashes.key_hashes, hashes.label
    encrypted: dict[str, str] = {}
    resealed = 0
    for key, value in sorted(values.items()):
        old = _kept(ctx.previous, key, key_hashes[key])
        if old is not None:
            encrypted[key] = old
            continue
        done = ctx.sealed.get(key) if ctx.sealed is not None else None
        if done is not None:
            encrypted[key] = done
        else:
            kwargs = {"rng": ctx.rng} if ctx.rng else {}
            encrypted[key] = seal.seal_value(cert.public_key, value.reveal(), label=label, **kwargs)
        resealed += 1
    annotations = {
        **seal.scope_annotations(scope),
        ANNOTATION_CONTENT_HASH: digest,
        ANNOTATION_KEY_HASHES: format_key_hashes(key_hashes),
        **_version_annotation(ctx.versions),
    }
    meta = _metadata(desired, annotations)
    template: dict[str, Any] = {
        "metadata": _copy_metadata(meta),
        "type": desired.target.type,
    }
    if desired.target.immutable:
        template["immutable"] = True
    manifest: Manifest = {
        "apiVersion": SEALED_SECRET.api_version,
        "kind": SEALED_SECRET.kind,
        "metadata": meta,
        "spec": {"encryptedData": encrypted, "template": template},
    }
    return Rendered(
        key=desired.key,
        fleet_secret=desired.fleet_secret,
        delivery=NAME,
        kind=SEALED_SECRET.kind,
        content_hash=digest,
        key_hashes=key_hashes,
        manifest=manifest,
        needles=_needles(values, desired),
        resealed=resealed,
        standin=functools.partial(_sealed_standin, desired, values, ctx, hashes, encrypted),
    )


def _sealed_standin(
    desired: DesiredSecret,
    values: Mapping[str, SecretValue],
    ctx: RenderContext,
    hashes: SealedHashes,
    encrypted: Mapping[str, str],
) -> Manifest:
    """The SealedSecret rendered again with every value replaced by a random stand-in of the
    same length, and every ciphertext sealed anew by random text of the same length. Its hashes
    are the real object's (hex text that only the keyed HMAC decides) and so is the ciphertext
    it keeps from the previous object (written before, and sealed from the same value), so what
    differs between the two is what the values put into the text, directly or through a seal."""
    standin = RenderContext(
        hmac_key=ctx.hmac_key,
        certificate=ctx.certificate,
        previous=ctx.previous,
        versions=ctx.versions,
        hashes=hashes,
        sealed={key: _stand_in_text(len(text)).decode("ascii") for key, text in encrypted.items()},
        cache=ctx.cache,
    )
    stand = {key: SecretValue(_stand_in_text(len(value))) for key, value in values.items()}
    return render_sealed(desired, stand, ctx=standin).manifest


@dataclass(frozen=True, slots=True, kw_only=True)
class SealedSettings:
    """A Cluster's `sealedSecrets`: its sealing certificate (file and pin) and controller."""

    cert_file: str | None = None
    cert_sha256: str | None = None  # pinned SHA-256 of the certificate's DER (64 hex digits)
    controller: ControllerRef | None = None


NO_SETTINGS: Final = SealedSettings()


def settings(cluster: Cluster) -> SealedSettings:
    """`cluster`'s `sealedSecrets` (empty when it has none)."""
    return kinds.settings(cluster, NAME, SealedSettings, NO_SETTINGS)


def _read_settings(
    spec: kinds.Map, *, cluster: str, files: kinds.FleetFiles, chosen: bool
) -> SealedSettings | None:
    ctx = spec.ctx
    cert_file: str | None = None
    cert_sha256: str | None = None
    controller: ControllerRef | None = None
    sealed = spec.map("sealedSecrets")
    if sealed is not None:
        cert_file = sealed.text("certFile")
        cert_ok = cert_file is not None
        if cert_file is not None:
            try:
                files.confine(cert_file)
            except errors.ConfigError as exc:
                cert_ok = False
                ctx.error(sealed.key_node("certFile"), sealed.field("certFile"), exc.message)
        pin = sealed.text("certificateSha256")
        if pin is not None:
            cert_sha256 = _pinned(sealed, pin, cert_file if cert_ok else None, files)
        ctrl = sealed.map("controller")
        if ctrl is not None:
            controller = ControllerRef(
                namespace=ctrl.text("namespace") or "kube-system",
                name=ctrl.text("name") or "sealed-secrets-controller",
            )
            ctrl.done()
        sealed.done()
    if chosen and cert_file is None:
        if controller is not None:
            # the controller is where the certificate comes from: `cluster refresh-cert` and
            # `serve --git-push` fetch it into the file of the usual name
            cert_file = f"certs/{cluster}.pem"
            try:  # fetched and written there later: it must not lead out of the repo either
                files.confine(cert_file)
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
    if sealed is None and cert_file is None:
        return None
    return SealedSettings(cert_file=cert_file, cert_sha256=cert_sha256, controller=controller)


def _pinned(
    sealed: kinds.Map, pin: str, cert_file: str | None, files: kinds.FleetFiles
) -> str | None:
    """Check `sealedSecrets.certificateSha256` against the certificate file; the normalised
    pin, or None (with an error) when it is malformed or does not match. (The file is read
    again for sealing, by `fleet.certificates`, which checks the pin again: a file swapped
    after the load is refused, not sealed to.)"""
    ctx = sealed.ctx
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
        actual = seal.certificate_sha256(files.read(cert_file), source=cert_file)
        seal.check_pin(actual, expected, source=cert_file)
    except errors.ConfigError as exc:
        ctx.error(node, field, f"{cert_file}: {exc.message}")
        return None
    except errors.SealError as exc:
        ctx.error(node, field, str(exc))
        return None
    return expected


class SealedKind:
    name = NAME
    api_kind = SEALED_SECRET
    in_git = True
    holds_values = False
    reads_values = True
    controller_writes_secret = True
    seals = True
    field = "sealedSecrets"

    def read_settings(
        self, spec: kinds.Map, *, cluster: str, files: kinds.FleetFiles, chosen: bool
    ) -> SealedSettings | None:
        return _read_settings(spec, cluster=cluster, files=files, chosen=chosen)

    def check_secret(
        self, *, secret: FleetSecret, cluster: Cluster, data: Mapping[str, Planned], fleet: Fleet
    ) -> list[errors.ConfigError]:
        if secret.target.scope is Scope.CLUSTER_WIDE and not fleet.policies.allow_cluster_wide:
            return [
                errors.ConfigError(
                    "cluster-wide sealing scope is not allowed by the Fleet's policies "
                    "(set spec.policies.allowClusterWide: true)",
                    file=secret.target_origin.file,
                    line=secret.target_origin.line,
                    field="spec.target.scope",
                )
            ]
        return []

    def render(
        self, desired: DesiredSecret, values: Mapping[str, SecretValue], *, ctx: RenderContext
    ) -> Rendered:
        return render_sealed(desired, values, ctx=ctx)

    def content_hash(
        self, desired: DesiredSecret, values: Mapping[str, SecretValue], *, ctx: RenderContext
    ) -> str:
        return sealed_hashes(desired, values, ctx=ctx).digest

    def drift(self, obj: Mapping[str, Any]) -> dict[str, object]:
        spec = obj.get("spec") or {}
        template = spec.get("template") or {}
        return {"encryptedData": spec.get("encryptedData") or {}, "type": template.get("type")}


kinds.register(SealedKind())
