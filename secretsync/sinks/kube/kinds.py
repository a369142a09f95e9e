"""The annotations the Kubernetes sink keeps on what it writes, the workloads it restarts, the
media types of its metadata-only reads, and its API error. (The kinds it writes, their API
paths and drift projections are the delivery kinds': `delivery.kinds`.)"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from secretsync.core import errors
from secretsync.core.model import LABEL_MANAGED_BY, MANAGED_BY

ANNOTATION_APPLIED_HASH: Final = "secretsync.dev/applied-hash"


ANNOTATION_RESTARTED_FOR: Final = "secretsync.dev/restarted-for"


SELECTOR: Final = f"{LABEL_MANAGED_BY}={MANAGED_BY}"


# names, labels and annotations only: no Secret data travels for a name check
METADATA_LIST: Final = (
    "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1, application/json"
)


METADATA_ONLY: Final = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"


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


def _describe(status: int, doc: Mapping[str, Any] | None, *, what: str, cluster: str) -> str:
    if status == 0:
        return f"cluster {cluster!r}: {what}: cannot reach the API server"
    reason = ""
    if doc is not None and isinstance(doc.get("reason"), str):
        reason = f" {doc['reason']}"  # a machine word such as Forbidden, never the message
    return f"cluster {cluster!r}: {what}: HTTP {status}{reason}"
