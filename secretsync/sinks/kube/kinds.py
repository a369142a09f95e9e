"""The kinds the Kubernetes sink writes (their API paths), the annotations it keeps on them, the
projection its drift hash is taken of, and its API error."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from secretsync.core import errors
from secretsync.core.model import LABEL_MANAGED_BY, MANAGED_BY, Delivery

ANNOTATION_APPLIED_HASH: Final = "secretsync.dev/applied-hash"


ANNOTATION_MANAGED_KEYS: Final = "secretsync.dev/managed-keys"


ANNOTATION_RESTARTED_FOR: Final = "secretsync.dev/restarted-for"


SELECTOR: Final = f"{LABEL_MANAGED_BY}={MANAGED_BY}"


# names, labels and annotations only: no Secret data travels for a name check
METADATA_LIST: Final = (
    "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1, application/json"
)


METADATA_ONLY: Final = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"


@dataclass(frozen=True, slots=True)
class Kind:
    kind: str
    group: str
    version: str
    plural: str

    def collection(self, namespace: str | None = None) -> str:
        base = f"/api/{self.version}" if not self.group else f"/apis/{self.group}/{self.version}"
        if namespace is None:
            return f"{base}/{self.plural}"
        return f"{base}/namespaces/{namespace}/{self.plural}"

    def item(self, namespace: str, name: str) -> str:
        return f"{self.collection(namespace)}/{name}"

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


SECRET = Kind("Secret", "", "v1", "secrets")


SEALED_SECRET = Kind("SealedSecret", "bitnami.com", "v1alpha1", "sealedsecrets")


EXTERNAL_SECRET = Kind("ExternalSecret", "external-secrets.io", "v1", "externalsecrets")


KIND_FOR: Final = {
    Delivery.DIRECT: SECRET,
    Delivery.SEALED: SEALED_SECRET,
    Delivery.EXTERNAL: EXTERNAL_SECRET,
}


WORKLOADS: Final = {
    "Deployment": "/apis/apps/v1/namespaces/{ns}/deployments/{name}",
    "StatefulSet": "/apis/apps/v1/namespaces/{ns}/statefulsets/{name}",
    "DaemonSet": "/apis/apps/v1/namespaces/{ns}/daemonsets/{name}",
}


class ApiError(errors.DeliveryError):
    """An API call failed: status and reason only (a response body may hold data)."""

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.status = status
        self.retryable = status in (0, 429) or status >= 500


def projection(kind: str, obj: Mapping[str, Any]) -> dict[str, object]:
    """The part of an object secretsync manages and checks for drift.

    For a Secret, only the keys secretsync applied count (named in its managed-keys
    annotation): another field manager may add keys of its own, and server-side apply keeps
    them; that is not drift.
    """
    spec = obj.get("spec") or {}
    if kind == "Secret":
        data = obj.get("data") or {}
        keys = ((obj.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION_MANAGED_KEYS)
        if isinstance(keys, str):
            data = {k: data.get(k) for k in keys.split(",") if k}
        return {"data": data, "type": obj.get("type") or "Opaque"}
    if kind == "SealedSecret":
        template = spec.get("template") or {}
        return {"encryptedData": spec.get("encryptedData") or {}, "type": template.get("type")}
    target = spec.get("target") or {}
    template = target.get("template") or {}
    refs = [
        {
            "secretKey": item.get("secretKey"),
            "key": (item.get("remoteRef") or {}).get("key"),
            "property": (item.get("remoteRef") or {}).get("property"),
            "version": (item.get("remoteRef") or {}).get("version"),
        }
        for item in spec.get("data") or []
        if isinstance(item, Mapping)
    ]
    return {
        "refs": refs,
        "templateData": template.get("data") or {},
        "store": spec.get("secretStoreRef") or {},
        "target": target.get("name"),
    }


def _describe(status: int, doc: Mapping[str, Any] | None, *, what: str, cluster: str) -> str:
    if status == 0:
        return f"cluster {cluster!r}: {what}: cannot reach the API server"
    reason = ""
    if doc is not None and isinstance(doc.get("reason"), str):
        reason = f" {doc['reason']}"  # a machine word such as Forbidden, never the message
    return f"cluster {cluster!r}: {what}: HTTP {status}{reason}"
