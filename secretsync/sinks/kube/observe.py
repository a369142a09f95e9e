"""What the Kubernetes sink observes: one label-selected, paged list per cluster (per allowed
namespace when a cluster-wide list is forbidden), parsed into what secretsync owns."""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any

from secretsync.core.model import (
    ANNOTATION_CONTENT_HASH,
    ANNOTATION_KEY_HASHES,
    ANNOTATION_SOURCE_VERSIONS,
    LABEL_FLEET_SECRET,
    Cluster,
    ObjectKey,
    Observed,
    is_owned,
)
from secretsync.core.values import SecretValue, content_hash
from secretsync.delivery import kinds as delivery_kinds
from secretsync.delivery.kinds import ApiKind, DeliveryKind
from secretsync.delivery.rendered import parse_key_hashes
from secretsync.sinks.kube.calls import KubeCalls
from secretsync.sinks.kube.kinds import (
    ANNOTATION_APPLIED_HASH,
    SELECTOR,
    ApiError,
)

log = logging.getLogger(__name__)


class KubeObserve(KubeCalls):
    """What the Kubernetes sink observes: one label-selected, paged list per cluster (per allowed
    namespace when a cluster-wide list is forbidden), parsed into what secretsync owns."""

    async def observe(self, cluster: Cluster) -> Mapping[ObjectKey, Observed]:
        loop = asyncio.get_running_loop()
        gate = self._observing.get(loop)
        if gate is None:
            gate = self._observing[loop] = asyncio.Semaphore(self.observe_concurrency)
        async with gate:
            found = await self._observe_kind(cluster, delivery_kinds.of(cluster))
        self.drifted[cluster.name] = sum(o.drifted for o in found.values())
        return found

    async def observe_everything(self, cluster: Cluster) -> list[Observed]:
        """Every object secretsync owns on the cluster, of every kind it delivers (a kind
        whose CRD is not installed has none)."""
        out: list[Observed] = []
        for kind in delivery_kinds.kinds().values():
            try:
                found = await self._observe_kind(cluster, kind)
            except ApiError as exc:
                if exc.status != 404:
                    raise
                continue
            out.extend(o for o in found.values() if o.owned)
        return out

    async def _observe_kind(
        self, cluster: Cluster, kind: DeliveryKind
    ) -> dict[ObjectKey, Observed]:
        found: dict[ObjectKey, Observed] = {}
        async for page in self._pages(cluster, kind.api_kind):
            for obj in page:
                observed = self._observed(cluster, kind, obj)
                if observed is not None:
                    found[observed.key] = observed
        return found

    async def _pages(self, cluster: Cluster, kind: ApiKind) -> AsyncIterator[list[dict[str, Any]]]:
        """The owned objects of `kind`, a page at a time (each page becomes Observed objects
        before the next is asked for: a cluster of 10,000 Secrets never holds its whole list
        as JSON). Cluster-wide, or per allowed namespace when that is forbidden."""
        what = f"list {kind.plural}"
        status, doc = await self._call(
            cluster,
            "GET",
            kind.collection(),
            query=self._page_query(None),
            what=what,
            ok=(200, 403),
        )
        if status == 200 and doc is not None:
            async for page in self._follow(cluster, kind.collection(), what=what, first=doc):
                yield page
            return
        if status == 404:
            raise ApiError(
                f"cluster {cluster.name!r}: the API has no {kind.kind} kind "
                f"({kind.api_version}); is its CRD installed?",
                status=404,
            )
        if cluster.allowed_namespaces is None:
            raise ApiError(
                f"cluster {cluster.name!r}: forbidden to list {kind.plural} in all namespaces "
                "(grant it, or set allowedNamespaces)",
                status=403,
            )
        for namespace in cluster.allowed_namespaces:
            async for page in self._follow(
                cluster, kind.collection(namespace), what=f"{what} in {namespace}"
            ):
                yield page

    async def _follow(
        self, cluster: Cluster, path: str, *, what: str, first: dict[str, Any] | None = None
    ) -> AsyncIterator[list[dict[str, Any]]]:
        """The pages of one list, from `first` (already read) or from the start, following
        `metadata.continue`. A continue token that expired (HTTP 410, the list took longer
        than the server keeps its snapshot) fails the cluster for this cycle."""
        doc, token = first, None
        while True:
            if doc is None:
                status, doc = await self._call(
                    cluster, "GET", path, query=self._page_query(token), what=what
                )
                if status != 200 or doc is None:
                    return  # a namespace that does not exist holds nothing
            yield list(doc.get("items") or [])
            token = (doc.get("metadata") or {}).get("continue")
            if not isinstance(token, str) or not token:
                return
            doc = None

    def _page_query(self, token: str | None) -> list[tuple[str, str]]:
        query = [("labelSelector", SELECTOR), ("limit", str(self.list_page))]
        if token:
            query.append(("continue", token))
        return query

    def _observed(
        self, cluster: Cluster, kind: DeliveryKind, obj: Mapping[str, Any]
    ) -> Observed | None:
        meta = obj.get("metadata") or {}
        labels = meta.get("labels") or {}
        annotations = meta.get("annotations") or {}
        name, namespace = meta.get("name"), meta.get("namespace")
        if not isinstance(name, str) or not isinstance(namespace, str):
            return None
        key = ObjectKey(cluster.name, namespace, name)
        owned = is_owned(labels, annotations, cluster.name)
        if isinstance(meta.get("uid"), str):
            self._uids[key] = meta["uid"]
        applied = annotations.get(ANNOTATION_APPLIED_HASH)
        drifted = owned and applied != self._applied_hash(kind, obj)
        key_hashes: dict[str, str] = {}
        encrypted: dict[str, str] = {}
        if kind.holds_values:
            hasher = self._hasher
            data = kind.drift(obj)["data"]
            for k, v in (data if isinstance(data, Mapping) else {}).items():
                if not isinstance(v, str):
                    continue
                try:
                    value = SecretValue(base64.b64decode(v, validate=True))
                except (ValueError, TypeError):
                    continue
                key_hashes[k] = hasher.hash(k, value)
        else:
            raw = annotations.get(ANNOTATION_KEY_HASHES)
            if isinstance(raw, str):
                key_hashes = parse_key_hashes(raw)
            if kind.seals:
                enc = (obj.get("spec") or {}).get("encryptedData") or {}
                encrypted = {str(k): v for k, v in enc.items() if isinstance(v, str)}
        raw_versions = annotations.get(ANNOTATION_SOURCE_VERSIONS)
        versions = parse_key_hashes(raw_versions) if isinstance(raw_versions, str) else {}
        content = annotations.get(ANNOTATION_CONTENT_HASH)
        fleet_secret = labels.get(LABEL_FLEET_SECRET)
        return Observed(
            key=key,
            kind=kind.api_kind.kind,
            owned=owned,
            fleet_secret=fleet_secret if isinstance(fleet_secret, str) else None,
            content_hash=content if isinstance(content, str) else None,
            key_hashes=key_hashes,
            encrypted=encrypted,
            drifted=drifted,
            versions=versions,
        )

    def _applied_hash(self, kind: DeliveryKind, obj: Mapping[str, Any]) -> str:
        """The hash of what secretsync manages of `obj` (its kind's drift projection)."""
        return content_hash(self.hmac_key, {"kind": kind.api_kind.kind, "managed": kind.drift(obj)})

    async def detail(self, observed: Observed) -> Observed:
        return observed
