"""The Kubernetes sink: objects applied through each cluster's API with server-side apply.

- Observes what secretsync owns with one label-selected list per cluster (per allowed
  namespace when a cluster-wide list is forbidden), read 500 objects a page, at most 16
  clusters at once. An object is owned when it carries the managed-by label and this
  cluster's annotation.
- Detects drift: every applied object carries `secretsync.dev/applied-hash`, a keyed HMAC of
  the content secretsync manages (Secret data and type; SealedSecret encryptedData; the
  ExternalSecret's refs and template). A hand edit makes it disagree; the object is reported
  drifted and applied again. A deleted object is simply created again.
- Writes with server-side apply, field manager `secretsync`, and only what changed. Before a
  create it checks the name is free: an object secretsync does not own is never modified or
  deleted (adoption only with `adopt: true`).
- Deletes (prunes) only owned objects, with a uid precondition.
- Retries 429 (honouring Retry-After) and 5xx/connection errors with back-off, within the
  cluster's timeout. Errors carry the HTTP status and reason, never a response body.
- Restarts workloads named in `rollout.restart` with a pod-template annotation, only when an
  object they read changed: once per workload and cycle, after the cluster's last batch, and
  for a SealedSecret only once its controller has written the new Secret (`restarts.py`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Set
from typing import ClassVar

from secretsync.core import bounded, errors
from secretsync.core.model import (
    ANNOTATION_CONTENT_HASH,
    ANNOTATION_MANAGED_KEYS,
    FIELD_MANAGER,
    LABEL_MANAGED_BY,
    MANAGED_BY,
    Cluster,
    ObjectKey,
    Observed,
    is_owned,
)
from secretsync.delivery import kinds as delivery_kinds
from secretsync.delivery.kinds import ApiKind
from secretsync.delivery.rendered import Manifest, Rendered
from secretsync.sinks.deliver import ApplyResult, ChangeSet
from secretsync.sinks.kube.kinds import (
    ANNOTATION_APPLIED_HASH,
    ANNOTATION_RESTARTED_FOR,
    METADATA_LIST,
    METADATA_ONLY,
    WORKLOADS,
)
from secretsync.sinks.kube.observe import KubeObserve
from secretsync.sinks.restarts import Cause, Workload, stamp

log = logging.getLogger(__name__)


class KubeSink(KubeObserve):
    """Delivers to clusters through their API servers."""

    name: ClassVar[str] = "kube"
    stages: ClassVar[bool] = False  # objects are sent in `apply`, a batch at a time
    shared: ClassVar[bool] = False  # one API per cluster: each cluster's own writer

    def progress(self, cluster: Cluster, mark: Callable[[], None] | None) -> None:
        if mark is None:
            self._progress.pop(cluster.name, None)
        else:
            self._progress[cluster.name] = mark

    def accepts(self, cluster: Cluster) -> bool:
        return not delivery_kinds.of(cluster).in_git or cluster.apply

    def observes(self, cluster: Cluster) -> bool:
        return self.accepts(cluster)  # no credentials are assumed for other clusters

    async def orphans(self, known: Set[str]) -> list[str]:
        return []

    # --- HTTP ---------------------------------------------------------------------------------

    # --- observe ------------------------------------------------------------------------------

    # --- apply --------------------------------------------------------------------------------

    def stage(self, cluster: Cluster, item: Rendered) -> None:
        """Nothing is written ahead: each object is sent in `apply` (`stages` is False, so the
        engine does not call this)."""

    async def finish_cluster(self, cluster: Cluster) -> None:
        """Make the restarts the cluster owes: each workload once, those waiting on a
        controller's Secret once it carries the delivered content hash (else next cycle)."""
        owed = self.restarts.take(cluster.name)
        if not owed:
            return
        waiting = {w: c for w, c in owed.items() if any(x.via_controller for x in c.values())}
        late = await self._unwritten(cluster, waiting) if waiting else set()
        for workload, causes in sorted(owed.items()):
            if workload in late:
                self.restarts.keep(cluster.name, workload, causes)
                log.warning(
                    "cluster %s: restart of %s pending: Secret not updated yet",
                    cluster.name,
                    workload,
                    extra={"cluster": cluster.name},
                )
                continue
            await self._restart(cluster, workload, causes)

    def discard(self, cluster: Cluster) -> None:
        """Nothing is kept for a cluster between batches."""

    async def apply(self, cluster: Cluster, changes: ChangeSet) -> ApplyResult:
        result = ApplyResult()
        foreign = await self._foreign_names(cluster, [i for i in changes.create if not i.adopt])

        async def one(change: tuple[Rendered | Observed, bool]) -> None:
            item, exists = change
            try:
                if isinstance(item, Observed):
                    await self._delete(cluster, item)
                    result.deleted.append(item.key)
                    return
                await self._write(cluster, item, exists=exists, foreign=foreign)
                result.written.append(item.key)
            except errors.DeliveryError as exc:
                result.failed[item.key] = str(exc)
                return
            if item.restarts:
                self.restarts.add(cluster.name, item)

        work: list[tuple[Rendered | Observed, bool]] = [
            *((i, False) for i in changes.create),
            *((i, True) for i in changes.update),
            *((o, True) for o in changes.delete),
        ]
        await bounded.each(work, one, limit=self.concurrency)
        return result

    def _body(self, item: Rendered) -> Manifest:
        manifest = dict(item.manifest)
        meta = dict(manifest["metadata"])
        annotations = dict(meta.get("annotations") or {})
        kind = delivery_kinds.get(item.delivery)
        if kind.holds_values:
            annotations[ANNOTATION_MANAGED_KEYS] = ",".join(sorted(manifest.get("data") or {}))
        meta["annotations"] = annotations
        manifest["metadata"] = meta
        annotations[ANNOTATION_APPLIED_HASH] = self._applied_hash(kind, manifest)
        meta["annotations"] = annotations
        manifest["metadata"] = meta
        return manifest

    async def _foreign_names(
        self, cluster: Cluster, creates: list[Rendered]
    ) -> dict[ObjectKey, bool]:
        """For the objects about to be created: does an object secretsync does not own hold
        the name? One metadata-only list per namespace and kind instead of a read per object
        (a cold cluster of 1,000 Secrets costs 1,001 requests, not 2,000). Objects in a
        namespace that cannot be listed are left out of the answer and read one by one."""
        wanted: dict[tuple[ApiKind, str], set[str]] = {}
        for item in creates:
            kind = delivery_kinds.get(item.delivery).api_kind
            wanted.setdefault((kind, item.key.namespace), set()).add(item.key.name)
        foreign: dict[ObjectKey, bool] = {}
        for (kind, namespace), names in wanted.items():
            if len(names) == 1:
                continue  # one read costs what a list costs
            status, doc = await self._call(
                cluster,
                "GET",
                kind.collection(namespace),
                accept=METADATA_LIST,
                what=f"list {kind.plural} in {namespace}",
                ok=(200, 403),
            )
            if status != 200 or doc is None:
                continue
            for free in names:
                foreign[ObjectKey(cluster.name, namespace, free)] = False
            for obj in doc.get("items") or []:
                meta = (obj.get("metadata") if isinstance(obj, Mapping) else None) or {}
                if (taken := meta.get("name")) in names:
                    owned = is_owned(
                        meta.get("labels") or {}, meta.get("annotations") or {}, cluster.name
                    )
                    foreign[ObjectKey(cluster.name, namespace, taken)] = not owned
        return foreign

    async def _write(
        self,
        cluster: Cluster,
        item: Rendered,
        *,
        exists: bool,
        foreign: Mapping[ObjectKey, bool],
    ) -> None:
        delivery = delivery_kinds.get(item.delivery)
        kind = delivery.api_kind
        key = item.key
        what = f"{kind.kind} {key.namespace}/{key.name}"
        if not exists and not item.adopt:
            taken = foreign.get(key)
            if taken is None:
                status, current = await self._call(
                    cluster, "GET", kind.item(key.namespace, key.name), what=f"read {what}"
                )
                meta = (current or {}).get("metadata") or {}
                taken = status == 200 and not is_owned(
                    meta.get("labels") or {}, meta.get("annotations") or {}, cluster.name
                )
            if taken:
                raise errors.DeliveryError(
                    f"{what} exists and is not managed by secretsync (set adopt: true on "
                    "the FleetSecret to take it over)"
                )
        query = [("fieldManager", FIELD_MANAGER), ("force", "true")]
        body = self._body(item)
        for attempt in (1, 2):
            status, _ = await self._call(
                cluster,
                "PATCH",
                kind.item(key.namespace, key.name),
                query=query,
                body=body,
                content_type="application/apply-patch+yaml",
                what=f"apply {what}",
                ok=(200, 201, 422, 403),
            )
            if status in (200, 201):
                self.writes += 1
                return
            if status == 404 and attempt == 1 and await self._namespace_missing(cluster, key):
                if not cluster.create_namespaces:
                    raise errors.DeliveryError(
                        f"{what}: namespace {key.namespace!r} does not exist (create it, or set "
                        "createNamespaces: true on the cluster)"
                    )
                await self._create_namespace(cluster, key.namespace)
                continue
            if status == 403:
                raise errors.DeliveryError(f"{what}: forbidden (HTTP 403): check secretsync's RBAC")
            if status == 422:
                hint = (
                    " (the Secret is immutable: delete it to let secretsync recreate it)"
                    if (delivery.holds_values and exists)
                    else ""
                )
                raise errors.DeliveryError(f"{what}: rejected as invalid (HTTP 422){hint}")
            raise errors.DeliveryError(f"{what}: HTTP {status}")

    async def _namespace_missing(self, cluster: Cluster, key: ObjectKey) -> bool:
        status, _ = await self._call(
            cluster,
            "GET",
            f"/api/v1/namespaces/{key.namespace}",
            what="read namespace",
            ok=(200, 403),
        )
        return status == 404

    async def _create_namespace(self, cluster: Cluster, namespace: str) -> None:
        body = {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": namespace, "labels": {LABEL_MANAGED_BY: MANAGED_BY}},
        }
        await self._call(
            cluster, "POST", "/api/v1/namespaces", body=body, what=f"create namespace {namespace}"
        )

    async def _delete(self, cluster: Cluster, observed: Observed) -> None:
        delivery = delivery_kinds.by_object(observed.kind)
        if delivery is None:
            raise errors.DeliveryError(f"no delivery writes {observed.kind} objects")
        kind = delivery.api_kind
        key = observed.key
        body: dict[str, object] = {"apiVersion": "v1", "kind": "DeleteOptions"}
        if (uid := self._uids.get(key)) is not None:
            body["preconditions"] = {"uid": uid}
        status, _ = await self._call(
            cluster,
            "DELETE",
            kind.item(key.namespace, key.name),
            body=body,
            what=f"delete {kind.kind} {key.namespace}/{key.name}",
            ok=(200, 202),
        )
        if status == 409:
            raise errors.DeliveryError(
                f"{kind.kind} {key.namespace}/{key.name} was replaced meanwhile; not deleted"
            )
        self.writes += 1

    async def _unwritten(
        self, cluster: Cluster, waiting: Mapping[Workload, Mapping[str, Cause]]
    ) -> set[Workload]:
        """The workloads whose Secrets a controller has not yet written with the delivered
        content hash, after waiting up to `restart_wait_s` (reading metadata only)."""
        wanted = {
            (w.namespace, c.secret): c.content_hash
            for w, causes in waiting.items()
            for c in causes.values()
            if c.via_controller
        }
        deadline = time.monotonic() + self.restart_wait_s
        while True:
            for (namespace, name), digest in list(wanted.items()):
                if await self._secret_hash(cluster, namespace, name) == digest:
                    del wanted[(namespace, name)]
            if not wanted or time.monotonic() >= deadline:
                break
            await asyncio.sleep(self.restart_poll_s)
        return {
            w
            for w, causes in waiting.items()
            if any((w.namespace, c.secret) in wanted for c in causes.values())
        }

    async def _secret_hash(self, cluster: Cluster, namespace: str, name: str) -> str | None:
        """The content-hash annotation of a Secret (metadata only: no value is fetched)."""
        try:
            status, doc = await self._call(
                cluster,
                "GET",
                f"/api/v1/namespaces/{namespace}/secrets/{name}",
                accept=METADATA_ONLY,
                what=f"read Secret {namespace}/{name}",
            )
        except errors.DeliveryError as exc:
            log.warning("cluster %s: %s", cluster.name, exc)
            return None
        if status != 200 or doc is None:
            return None
        annotations = (doc.get("metadata") or {}).get("annotations") or {}
        value = annotations.get(ANNOTATION_CONTENT_HASH)
        return value if isinstance(value, str) else None

    async def _restart(
        self, cluster: Cluster, workload: Workload, causes: Mapping[str, Cause]
    ) -> None:
        patch = {
            "spec": {
                "template": {"metadata": {"annotations": {ANNOTATION_RESTARTED_FOR: stamp(causes)}}}
            }
        }
        path = WORKLOADS[workload.kind].format(ns=workload.namespace, name=workload.name)
        try:
            status, _ = await self._call(
                cluster,
                "PATCH",
                path,
                body=patch,
                content_type="application/strategic-merge-patch+json",
                what=f"restart {workload}",
            )
        except errors.DeliveryError as exc:
            log.warning("cluster %s: %s", cluster.name, exc)
            return
        if status == 404:
            log.warning("cluster %s: %s to restart does not exist", cluster.name, workload)
        else:
            self.writes += 1
