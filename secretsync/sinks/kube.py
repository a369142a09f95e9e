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
import base64
import json
import logging
import random
import time
import weakref
from collections.abc import AsyncIterator, Mapping, Set
from dataclasses import dataclass
from typing import Any, ClassVar, Final

from secretsync.core import bounded, errors
from secretsync.core.model import (
    ANNOTATION_CONTENT_HASH,
    ANNOTATION_KEY_HASHES,
    ANNOTATION_SOURCE_VERSIONS,
    FIELD_MANAGER,
    LABEL_FLEET_SECRET,
    LABEL_MANAGED_BY,
    MANAGED_BY,
    Cluster,
    Delivery,
    ObjectKey,
    Observed,
    is_owned,
)
from secretsync.core.values import SecretValue, content_hash
from secretsync.delivery import materialize
from secretsync.delivery.materialize import Manifest, Rendered
from secretsync.kube.clusters import ClientFactory
from secretsync.sinks.deliver import ApplyResult, ChangeSet, progressed
from secretsync.sinks.restarts import Cause, Restarts, Workload, stamp

log = logging.getLogger(__name__)

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


class _RateLimit:
    """A token bucket per cluster: keeps secretsync under the API server's limits instead of
    finding them with 429s; and when a 429 comes anyway, holds every request to that cluster
    until the time it names."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.burst = max(1.0, rate)
        self.tokens = self.burst
        self.stamp = time.monotonic()
        self.resume = 0.0
        self.lock = asyncio.Lock()

    def hold(self, seconds: float) -> None:
        """No request before `seconds` from now; then resume at the steady rate, not a burst."""
        self.resume = max(self.resume, time.monotonic() + seconds)
        self.tokens = 0.0

    async def take(self) -> None:
        async with self.lock:
            while (wait := self.resume - time.monotonic()) > 0:
                await asyncio.sleep(wait)
            now = time.monotonic()
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
            if self.tokens < 1:
                await asyncio.sleep((1 - self.tokens) / self.rate)
                self.tokens = 1.0
                self.stamp = time.monotonic()
            self.tokens -= 1


class KubeSink:
    """Delivers to clusters through their API servers."""

    name: ClassVar[str] = "kube"
    stages: ClassVar[bool] = False  # objects are sent in `apply`, a batch at a time

    def __init__(
        self,
        *,
        clients: ClientFactory,
        hmac_key: bytes,
        request_timeout_s: float = 15.0,
        concurrency: int = 8,
        max_attempts: int = 4,
        backoff_s: float = 0.5,
        requests_per_second: float = 100.0,
        observe_concurrency: int = 16,
        list_page: int = 500,
        restart_wait_s: float = 10.0,
        restart_poll_s: float = 0.5,
    ) -> None:
        self.clients = clients
        self.hmac_key = hmac_key
        self._hasher = materialize.direct_hasher(hmac_key)
        self.request_timeout_s = request_timeout_s
        self.concurrency = concurrency
        self.max_attempts = max_attempts
        self.requests_per_second = requests_per_second
        self._limits: dict[tuple[int, str], _RateLimit] = {}
        self.backoff_s = backoff_s
        self._uids: dict[ObjectKey, str] = {}
        self.requests = 0
        self.writes = 0
        self.drifted: dict[str, int] = {}
        # Clusters listed at once (per event loop). A list of 1,000 Secrets is ~1.5 MB of JSON
        # and as much again as Observed objects; with a hundred clusters answering together
        # while the client is busy comparing one of them, every answer would wait in memory.
        self.observe_concurrency = observe_concurrency
        self.list_page = list_page  # objects per list request (`limit`, then `continue`)
        self.restarts = Restarts()
        # how long the cluster's last batch waits for a controller to write the Secrets that
        # restarts wait on; past it the restart stays owed and the next cycle looks again
        self.restart_wait_s = restart_wait_s
        self.restart_poll_s = restart_poll_s
        self._observing: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
            weakref.WeakKeyDictionary()
        )

    def accepts(self, cluster: Cluster) -> bool:
        return cluster.delivery is Delivery.DIRECT or cluster.apply

    def observes(self, cluster: Cluster) -> bool:
        return self.accepts(cluster)  # no credentials are assumed for other clusters

    async def orphans(self, known: Set[str]) -> list[str]:
        return []

    async def aclose(self) -> None:
        """Close the connection pools opened on the running loop (they are closed anyway when
        the loop shuts down)."""
        await self.clients.aclose()

    # --- HTTP ---------------------------------------------------------------------------------

    async def _request(
        self,
        cluster: Cluster,
        method: str,
        path: str,
        *,
        query: list[tuple[str, str]] | None = None,
        body: object = None,
        content_type: str = "application/json",
        accept: str = "application/json",
    ) -> tuple[int, dict[str, Any] | None, Mapping[str, str]]:
        endpoint = await self.clients.for_cluster(cluster)
        self.requests += 1
        status, raw, headers = await endpoint.request(
            method,
            path,
            query=query,
            body=body,
            content_type=content_type,
            accept=accept,
            timeout_s=self.request_timeout_s,
        )
        if status == 0:
            log.debug("%s %s on %s: unreachable", method, path, cluster.name)
        doc: dict[str, Any] | None = None
        if raw:
            try:
                parsed = json.loads(raw)
                doc = parsed if isinstance(parsed, dict) else None
            except ValueError:
                doc = None
        return status, doc, headers

    async def _call(
        self,
        cluster: Cluster,
        method: str,
        path: str,
        *,
        what: str,
        ok: tuple[int, ...] = (200, 201),
        **kwargs: Any,
    ) -> tuple[int, dict[str, Any] | None]:
        """One API call with retries; returns (status, body) for statuses in `ok` or 404/409,
        raises ApiError otherwise."""
        loop = asyncio.get_running_loop()
        limit = self._limits.get((id(loop), cluster.name))
        if limit is None:
            limit = self._limits[(id(loop), cluster.name)] = _RateLimit(self.requests_per_second)
        delay = self.backoff_s
        attempt = throttled = 0
        while True:
            await limit.take()
            status, doc, headers = await self._request(cluster, method, path, **kwargs)
            if status in ok or status in (404, 409):
                progressed()
                return status, doc
            retryable = status in (0, 429) or status >= 500
            # 429 says "later", not "broken": it gets a larger budget (the cluster's timeout
            # still bounds the whole)
            if status == 429:
                throttled += 1
            else:
                attempt += 1
            if not retryable or attempt >= self.max_attempts or throttled >= 4 * self.max_attempts:
                raise ApiError(
                    _describe(status, doc, what=what, cluster=cluster.name), status=status
                )
            wait = delay * (0.5 + random.random())  # noqa: S311 - jitter
            delay = min(delay * 2, 10.0)
            if status == 429:
                retry_after = headers.get("Retry-After") or ""
                wait = float(retry_after) if retry_after.isdigit() else wait
            log.debug(
                "%s %s on %s: HTTP %s, retrying in %.1fs", method, what, cluster.name, status, wait
            )
            if status == 429:
                # the cluster is throttling us, not this request: all requests to it wait
                limit.hold(wait)
            else:
                await asyncio.sleep(wait)

    # --- observe ------------------------------------------------------------------------------

    async def observe(self, cluster: Cluster) -> Mapping[ObjectKey, Observed]:
        loop = asyncio.get_running_loop()
        gate = self._observing.get(loop)
        if gate is None:
            gate = self._observing[loop] = asyncio.Semaphore(self.observe_concurrency)
        async with gate:
            found = await self._observe_kind(cluster, KIND_FOR[cluster.delivery])
        self.drifted[cluster.name] = sum(o.drifted for o in found.values())
        return found

    async def observe_everything(self, cluster: Cluster) -> list[Observed]:
        """Every object secretsync owns on the cluster, of every kind it delivers (a kind
        whose CRD is not installed has none)."""
        out: list[Observed] = []
        for kind in KIND_FOR.values():
            try:
                found = await self._observe_kind(cluster, kind)
            except ApiError as exc:
                if exc.status != 404:
                    raise
                continue
            out.extend(o for o in found.values() if o.owned)
        return out

    async def _observe_kind(self, cluster: Cluster, kind: Kind) -> dict[ObjectKey, Observed]:
        found: dict[ObjectKey, Observed] = {}
        async for page in self._pages(cluster, kind):
            for obj in page:
                observed = self._observed(cluster, kind, obj)
                if observed is not None:
                    found[observed.key] = observed
        return found

    async def _pages(self, cluster: Cluster, kind: Kind) -> AsyncIterator[list[dict[str, Any]]]:
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

    def _observed(self, cluster: Cluster, kind: Kind, obj: Mapping[str, Any]) -> Observed | None:
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
        drifted = owned and applied != self._applied_hash(kind.kind, obj)
        key_hashes: dict[str, str] = {}
        encrypted: dict[str, str] = {}
        if kind is SECRET:
            hasher = self._hasher
            for k, v in (projection(kind.kind, obj)["data"] or {}).items():  # type: ignore[attr-defined]
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
                key_hashes = materialize.parse_key_hashes(raw)
            if kind is SEALED_SECRET:
                enc = (obj.get("spec") or {}).get("encryptedData") or {}
                encrypted = {str(k): v for k, v in enc.items() if isinstance(v, str)}
        raw_versions = annotations.get(ANNOTATION_SOURCE_VERSIONS)
        versions = (
            materialize.parse_key_hashes(raw_versions) if isinstance(raw_versions, str) else {}
        )
        content = annotations.get(ANNOTATION_CONTENT_HASH)
        fleet_secret = labels.get(LABEL_FLEET_SECRET)
        return Observed(
            key=key,
            kind=kind.kind,
            owned=owned,
            fleet_secret=fleet_secret if isinstance(fleet_secret, str) else None,
            content_hash=content if isinstance(content, str) else None,
            key_hashes=key_hashes,
            encrypted=encrypted,
            drifted=drifted,
            versions=versions,
        )

    def _applied_hash(self, kind: str, obj: Mapping[str, Any]) -> str:
        return content_hash(self.hmac_key, {"kind": kind, "managed": projection(kind, obj)})

    async def detail(self, observed: Observed) -> Observed:
        return observed

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
        if item.kind == "Secret":
            annotations[ANNOTATION_MANAGED_KEYS] = ",".join(sorted(manifest.get("data") or {}))
        meta["annotations"] = annotations
        manifest["metadata"] = meta
        annotations[ANNOTATION_APPLIED_HASH] = self._applied_hash(item.kind, manifest)
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
        wanted: dict[tuple[Kind, str], set[str]] = {}
        for item in creates:
            kind = KIND_FOR[item.delivery]
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
        kind = KIND_FOR[item.delivery]
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
                    if (kind is SECRET and exists)
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
        kind = next(k for k in KIND_FOR.values() if k.kind == observed.kind)
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


def _describe(status: int, doc: Mapping[str, Any] | None, *, what: str, cluster: str) -> str:
    if status == 0:
        return f"cluster {cluster!r}: {what}: cannot reach the API server"
    reason = ""
    if doc is not None and isinstance(doc.get("reason"), str):
        reason = f" {doc['reason']}"  # a machine word such as Forbidden, never the message
    return f"cluster {cluster!r}: {what}: HTTP {status}{reason}"
