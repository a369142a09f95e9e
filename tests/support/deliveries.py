"""A delivery that exists only in the tests (`digest`): registered from a test, it proves that
a delivery is one module plus one registration, through load, plan, render and both sinks,
without a product module knowing of it."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from secretsync.core import errors
from secretsync.core.model import (
    ANNOTATION_CONTENT_HASH,
    Cluster,
    DesiredSecret,
    Fleet,
    FleetSecret,
    Planned,
    ValueRef,
)
from secretsync.core.values import SecretValue, content_hash
from secretsync.delivery import kinds
from secretsync.delivery.rendered import RenderContext, Rendered


@dataclass(frozen=True, slots=True)
class DigestSettings:
    team: str


class DigestKind:
    """A `SecretDigest`: the keyed hash of each key's value, never the value. Into Git, or
    (`in_git=False`) only to the Kubernetes API, where its CRD (`DIGEST_CRD`) must be served."""

    api_kind = kinds.ApiKind("SecretDigest", "test.secretsync.dev", "v1", "secretdigests")
    holds_values = False
    reads_values = True
    controller_writes_secret = False
    seals = False
    field = "digests"

    def __init__(self, *, name: str = "digest", in_git: bool = True) -> None:
        self.name = name
        self.in_git = in_git
        self.leak = False  # a faulty delivery: the value itself goes into the object

    def read_settings(
        self, spec: Any, *, cluster: str, files: kinds.FleetFiles, chosen: bool
    ) -> DigestSettings | None:
        m = spec.map(self.field, required=chosen)
        if m is None:
            return None
        team = m.text("team", required=True) or ""
        if team and not team.isalpha():
            m.ctx.error(m.key_node("team"), m.field("team"), "must be letters only")
        m.done()
        return DigestSettings(team)

    def check_secret(
        self, *, secret: FleetSecret, cluster: Cluster, data: Mapping[str, Planned], fleet: Fleet
    ) -> list[errors.ConfigError]:
        if secret.target.type != "kubernetes.io/tls":
            return []
        origin = secret.target_origin
        return [
            errors.ConfigError(
                f"cluster {cluster.name!r} takes no digest of a TLS Secret",
                file=origin.file,
                line=origin.line,
                field="spec.target.type",
            )
        ]

    def _digests(self, values: Mapping[str, SecretValue], ctx: RenderContext) -> dict[str, str]:
        return {k: content_hash(ctx.hmac_key, {k: v.reveal().hex()}) for k, v in values.items()}

    def content_hash(
        self, desired: DesiredSecret, values: Mapping[str, SecretValue], *, ctx: RenderContext
    ) -> str:
        return content_hash(
            ctx.hmac_key, {"d": self._digests(values, ctx), "n": str(desired.key.name)}
        )

    def render(
        self, desired: DesiredSecret, values: Mapping[str, SecretValue], *, ctx: RenderContext
    ) -> Rendered:
        digest = self.content_hash(desired, values, ctx=ctx)
        team = kinds.settings(desired.cluster, self.name, DigestSettings, DigestSettings(""))
        manifest = {
            "apiVersion": self.api_kind.api_version,
            "kind": self.api_kind.kind,
            "metadata": {
                "name": desired.target.name,
                "namespace": desired.target.namespace,
                "labels": {
                    "app.kubernetes.io/managed-by": "secretsync",
                    "secretsync.dev/fleet-secret": desired.fleet_secret,
                },
                "annotations": {
                    "secretsync.dev/cluster": desired.cluster.name,
                    ANNOTATION_CONTENT_HASH: digest,
                    "test.secretsync.dev/team": team.team,
                },
            },
            "digests": self._digests(values, ctx),
        }
        if self.leak:  # a faulty delivery: the Git sink's plaintext check must stop it
            manifest["token"] = values["token"].reveal().decode()
        return Rendered(
            key=desired.key,
            fleet_secret=desired.fleet_secret,
            delivery=self.name,
            kind=self.api_kind.kind,
            content_hash=digest,
            key_hashes={},
            manifest=manifest,
            needles=tuple(
                values[k].reveal() for k, v in desired.data.items() if isinstance(v, ValueRef)
            ),
        )

    def drift(self, obj: Mapping[str, Any]) -> dict[str, object]:
        return {"digests": obj.get("digests") or {}}


@contextmanager
def registered(kind: DigestKind) -> Iterator[DigestKind]:
    """`kind` registered for the block, unregistered after it whatever happened."""
    kinds.register(kind)
    try:
        yield kind
    finally:
        kinds.unregister(kind.name)
