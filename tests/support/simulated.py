"""A fake Kubernetes API server: in-process stand-ins for kube-apiserver, for tests and benchmarks.

One aiohttp application per cluster, each on its own free 127.0.0.1 port (plain HTTP, bearer
token `TOKEN`), all served by one event loop in one background thread (`SimFleet`), or by a
process of their own (`SimFleetProcess`, which bench/run.py uses so that the client under test
keeps its GIL). Each serves the core/v1 calls secretsync's KubeSink and a typed client make, for
Secrets and Namespaces:

- LIST (`/api/v1/secrets`, `/api/v1/namespaces/{ns}/secrets`, `/api/v1/namespaces`) with a
  `labelSelector` of equality terms (`k=v`, `k==v`, `k!=v`, `k`, `!k`, comma = and);
- GET, POST (create; 409 AlreadyExists), PUT (replace; optional resourceVersion precondition);
- PATCH `application/apply-patch+yaml` (server-side apply): creates (201) or merges the
  applied fields into the stored object, removes the fields the same field manager applied
  before and no longer applies (tracked in `metadata.managedFields`, FieldsV1), bumps
  `resourceVersion` only when something changed; conflicts with other managers give 409 unless
  `force=true`;
- DELETE with `preconditions.uid` / `resourceVersion` (409 on mismatch);
- `stringData` folded into `data`, immutable Secrets (422), writes into a missing namespace
  (404), errors as `Status` JSON.

Each cluster adds a fixed latency to every response (`asyncio.sleep`, standing in for network
RTT) and has a token-bucket rate limit that answers 429 with `Retry-After` (whole seconds, as
HTTP requires) when it is empty. Not simulated: watches, other kinds, schema validation beyond
names and Secret data, admission, authorization (any request with the token is allowed), etcd.
Tests that run on it say so in their names and docstrings; the real kube-apiserver is
tests/support/kubecluster.py. The benchmark on it is bench/simulated.py.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import math
import multiprocessing
import os
import re
import socket
import statistics
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Final, Protocol

import yaml
from aiohttp import web

TOKEN: Final = "simulated-bearer-token"  # a dummy: the simulated servers only compare it
# the field manager a real server derives from the typed client, when a write names none
DEFAULT_MANAGER: Final = "OpenAPI-Generator"
_CLK_TCK: Final = os.sysconf("SC_CLK_TCK")

JSONDoc = dict[str, Any]
FieldPath = tuple[str, ...]
_MISSING: Final = object()


def _proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a running process (its threads included)."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    # after "pid (comm)": field 3 is index 0, so utime (14) is index 11, stime (15) index 12
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


# --- the simulated API server ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Resource:
    plural: str
    kind: str
    namespaced: bool


SECRETS: Final = Resource("secrets", "Secret", namespaced=True)
NAMESPACES: Final = Resource("namespaces", "Namespace", namespaced=False)
# fields the server owns: never part of a field manager's set, never taken from a request
SYSTEM_FIELDS: Final = frozenset(
    {
        ("apiVersion",),
        ("kind",),
        ("status",),
        ("metadata", "name"),
        ("metadata", "namespace"),
        ("metadata", "uid"),
        ("metadata", "resourceVersion"),
        ("metadata", "creationTimestamp"),
        ("metadata", "managedFields"),
    }
)
NAME_RE: Final = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")


class StatusError(Exception):
    """An API error, answered as a `Status` document."""

    def __init__(
        self,
        code: int,
        reason: str,
        message: str,
        *,
        details: JSONDoc | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details
        self.headers = dict(headers or {})

    def body(self) -> bytes:
        doc: JSONDoc = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details is not None:
            doc["details"] = self.details
        return _dump(doc)


def _not_found(res: Resource, name: str) -> StatusError:
    return StatusError(
        404,
        "NotFound",
        f'{res.plural} "{name}" not found',
        details={"name": name, "kind": res.plural},
    )


def _dump(doc: object) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def leaf_paths(doc: Mapping[str, Any], prefix: FieldPath = ()) -> set[FieldPath]:
    """The paths of the leaves (non-map values, and empty maps) below a map."""
    out: set[FieldPath] = set()
    for key, value in doc.items():
        path = (*prefix, str(key))
        if path in SYSTEM_FIELDS:
            continue
        if isinstance(value, dict) and value:
            out |= leaf_paths(value, path)
        else:
            out.add(path)
    return out


def to_fields_v1(paths: set[FieldPath]) -> JSONDoc:
    root: JSONDoc = {}
    for path in sorted(paths):
        node = root
        for part in path:
            node = node.setdefault(f"f:{part}", {})
    return root


def from_fields_v1(fields: Mapping[str, Any], prefix: FieldPath = ()) -> set[FieldPath]:
    out: set[FieldPath] = set()
    for key, value in fields.items():
        if not key.startswith("f:"):
            continue
        path = (*prefix, key[2:])
        if isinstance(value, dict) and value:
            out |= from_fields_v1(value, path)
        else:
            out.add(path)
    return out


def get_path(doc: Mapping[str, Any], path: FieldPath) -> object:
    node: object = doc
    for part in path:
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def remove_path(doc: JSONDoc, path: FieldPath) -> None:
    node: object = doc
    for part in path[:-1]:
        if not isinstance(node, dict):
            return
        node = node.get(part)
    if isinstance(node, dict):
        node.pop(path[-1], None)


def deep_merge(dst: JSONDoc, src: Mapping[str, Any]) -> None:
    for key, value in src.items():
        if isinstance(value, dict) and value and isinstance(dst.get(key), dict):
            deep_merge(dst[key], value)
        else:
            dst[key] = value


def _entry(manager: str, operation: str, paths: set[FieldPath], when: str) -> JSONDoc:
    return {
        "manager": manager,
        "operation": operation,
        "apiVersion": "v1",
        "time": when,
        "fieldsType": "FieldsV1",
        "fieldsV1": to_fields_v1(paths),
    }


def reassign(
    entries: Sequence[JSONDoc],
    manager: str,
    operation: str,
    taken: set[FieldPath],
    present: set[FieldPath],
) -> list[JSONDoc]:
    """managedFields after `manager` wrote `taken`: an Apply owns exactly what it applied, an
    Update adds what it changed; the others lose what was taken and what no longer exists."""
    out: list[JSONDoc] = []
    placed = False
    for entry in entries:
        before = from_fields_v1(entry.get("fieldsV1") or {})
        if entry.get("manager") == manager and entry.get("operation") == operation:
            placed = True
            mine = set(taken) if operation == "Apply" else (before & present) | taken
            if mine == before:
                out.append(entry)
            elif mine:
                out.append(_entry(manager, operation, mine, _now()))
            continue
        left = (before & present) - taken
        if left == before:
            out.append(entry)
        elif left:
            out.append({**entry, "fieldsV1": to_fields_v1(left)})
    if not placed and taken:
        out.append(_entry(manager, operation, taken, _now()))
    return out


def _content(obj: Mapping[str, Any]) -> JSONDoc:
    """An object without the fields every write changes."""
    meta = {
        k: v
        for k, v in (obj.get("metadata") or {}).items()
        if k not in ("resourceVersion", "managedFields")
    }
    return {**obj, "metadata": meta}


def parse_selector(text: str) -> list[tuple[str, str, str]]:
    """`k=v,k==v,k!=v,k,!k` as (op, key, value) terms, all of which must hold."""
    terms: list[tuple[str, str, str]] = []
    for raw in text.split(","):
        term = raw.strip()
        if not term:
            continue
        if "!=" in term:
            key, value = term.split("!=", 1)
            op = "!="
        elif "=" in term:
            key, value = term.split("==", 1) if "==" in term else term.split("=", 1)
            op = "="
        elif term.startswith("!"):
            key, value, op = term[1:], "", "absent"
        else:
            key, value, op = term, "", "present"
        key, value = key.strip(), value.strip()
        if not key or any(c in key + value for c in " ()"):
            raise StatusError(400, "BadRequest", f"unable to parse requirement: {term!r}")
        terms.append((op, key, value))
    return terms


def selector_matches(labels: Mapping[str, str], terms: Sequence[tuple[str, str, str]]) -> bool:
    for op, key, value in terms:
        if op == "=" and labels.get(key) != value:
            return False
        if op == "!=" and labels.get(key) == value:
            return False
        if op == "present" and key not in labels:
            return False
        if op == "absent" and key in labels:
            return False
    return True


class TokenBucket:
    """`rate` tokens a second up to `burst`; rate 0 is unlimited."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = max(burst, 1.0)
        self.tokens = self.burst
        self.stamp = time.monotonic()

    def take(self) -> float:
        """0.0 when a token was taken, else the seconds until one will be there."""
        if self.rate <= 0:
            return 0.0
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate

    def fill(self) -> None:
        self.tokens = self.burst
        self.stamp = time.monotonic()


@dataclass(slots=True)
class Stored:
    labels: dict[str, str]
    raw: bytes  # the object's JSON: a LIST joins these without encoding again


class SimCluster:
    """One simulated API server's state and handlers (runs on the simulation's loop)."""

    def __init__(self, name: str, *, latency_s: float, rate: float, burst: float) -> None:
        self.name = name
        self.latency_s = latency_s
        self.bucket = TokenBucket(rate, burst)
        self.port = 0
        self.rv = 0
        self.objects: dict[str, dict[tuple[str, str], Stored]] = {
            SECRETS.plural: {},
            NAMESPACES.plural: {},
        }
        self.stats: Counter[str] = Counter()
        self.first = 0.0
        self.last = 0.0
        for namespace in ("default", "kube-system"):
            self.create(NAMESPACES, "", {"metadata": {"name": namespace}}, "kube-apiserver")

    def new_phase(self) -> None:
        """Zero the counters and fill the bucket, as after an idle pause."""
        self.stats = Counter()
        self.first = self.last = 0.0
        self.bucket.fill()

    def stored_bytes(self) -> int:
        return sum(len(s.raw) for table in self.objects.values() for s in table.values())

    def count(self, res: Resource, namespace: str) -> int:
        return sum(1 for ns, _ in self.objects[res.plural] if ns == namespace)

    # --- HTTP -----------------------------------------------------------------------------

    async def dispatch(self, request: web.Request) -> web.Response:
        now = time.monotonic()
        self.stats["requests"] += 1
        self.first = self.first or now
        self.last = now
        authorized = request.headers.get("Authorization") == f"Bearer {TOKEN}"
        wait = self.bucket.take() if authorized else 0.0  # admitted (or not) on arrival
        body = await request.read()
        await asyncio.sleep(self.latency_s)  # the simulated round trip, for every answer
        try:
            if not authorized:
                raise StatusError(401, "Unauthorized", "Unauthorized")
            if wait > 0:
                retry = max(1, math.ceil(wait))
                self.stats["throttled"] += 1
                raise StatusError(
                    429,
                    "TooManyRequests",
                    "Too many requests, please try again later.",
                    details={"retryAfterSeconds": retry},
                    headers={"Retry-After": str(retry)},
                )
            code, raw = self.route(request, body)
        except StatusError as exc:
            self.stats[f"HTTP {exc.code}"] += 1
            return web.Response(
                status=exc.code,
                body=exc.body(),
                content_type="application/json",
                headers=exc.headers,
            )
        self.stats[f"HTTP {code}"] += 1
        return web.Response(status=code, body=raw, content_type="application/json")

    def route(self, request: web.Request, body: bytes) -> tuple[int, bytes]:
        parts = [p for p in request.path.split("/") if p]
        if parts[:2] != ["api", "v1"]:
            raise StatusError(404, "NotFound", "the server could not find the requested resource")
        method = request.method
        match parts[2:]:
            case ["secrets"]:
                return self.collection(request, SECRETS, None, body)
            case ["namespaces"]:
                return self.collection(request, NAMESPACES, "", body)
            case ["namespaces", name]:
                return self.item(request, NAMESPACES, "", name, body)
            case ["namespaces", namespace, "secrets"]:
                return self.collection(request, SECRETS, namespace, body)
            case ["namespaces", namespace, "secrets", name]:
                return self.item(request, SECRETS, namespace, name, body)
        self.stats[f"{method} unknown"] += 1
        raise StatusError(404, "NotFound", "the server could not find the requested resource")

    def collection(
        self, request: web.Request, res: Resource, namespace: str | None, body: bytes
    ) -> tuple[int, bytes]:
        if request.method == "GET":
            self.stats[f"LIST {res.plural}"] += 1
            return 200, self.list_(
                res,
                namespace,
                request.query.get("labelSelector", ""),
                limit=int(request.query.get("limit") or 0),
                after=request.query.get("continue", ""),
            )
        if request.method == "POST" and namespace is not None:
            self.stats[f"POST {res.kind}"] += 1
            manager = request.query.get("fieldManager", DEFAULT_MANAGER)
            return self.create(res, namespace, _parse(request, body), manager)
        raise StatusError(405, "MethodNotAllowed", f"{request.method} is not supported here")

    def item(
        self, request: web.Request, res: Resource, namespace: str, name: str, body: bytes
    ) -> tuple[int, bytes]:
        method = request.method
        self.stats[f"{method} {res.kind}"] += 1
        if method == "GET":
            stored = self.objects[res.plural].get((namespace, name))
            if stored is None:
                raise _not_found(res, name)
            return 200, stored.raw
        if method == "PUT":
            manager = request.query.get("fieldManager", DEFAULT_MANAGER)
            return self.replace(res, namespace, name, _parse(request, body), manager)
        if method == "PATCH":
            ctype = request.content_type
            if ctype != "application/apply-patch+yaml":
                raise StatusError(
                    415, "UnsupportedMediaType", f"the simulation applies only, not {ctype}"
                )
            manager = request.query.get("fieldManager", "")
            if not manager:
                raise StatusError(
                    400, "BadRequest", "fieldManager: Required value: is required for apply patch"
                )
            force = request.query.get("force", "false") == "true"
            return self.apply(res, namespace, name, _parse(request, body), manager, force=force)
        if method == "DELETE":
            return self.delete(res, namespace, name, _parse(request, body) if body else {})
        raise StatusError(405, "MethodNotAllowed", f"{method} is not supported here")

    # --- storage ----------------------------------------------------------------------------

    def list_(
        self,
        res: Resource,
        namespace: str | None,
        selector: str,
        *,
        limit: int = 0,
        after: str = "",
    ) -> bytes:
        """The matching objects in key order; with `limit`, a page and a `continue` token (the
        last key of the page, as the real server's token also encodes where to go on)."""
        terms = parse_selector(selector)
        table = self.objects[res.plural]
        start = tuple(after.split("/", 1)) if after else None
        keys = [
            key
            for key in sorted(table)
            if (namespace is None or not res.namespaced or key[0] == namespace)
            and (start is None or key > start)
            and selector_matches(table[key].labels, terms)
        ]
        more = ""
        if limit and len(keys) > limit:
            keys = keys[:limit]
            more = f',"continue":"{keys[-1][0]}/{keys[-1][1]}"'
        head = (
            f'{{"kind":"{res.kind}List","apiVersion":"v1",'
            f'"metadata":{{"resourceVersion":"{self.rv}"{more}}},"items":['
        ).encode()
        return head + b",".join(table[key].raw for key in keys) + b"]}"

    def _commit(self, res: Resource, key: tuple[str, str], obj: JSONDoc) -> bytes:
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        labels = obj["metadata"].get("labels") or {}
        raw = _dump(obj)
        self.objects[res.plural][key] = Stored(
            {sys.intern(str(k)): sys.intern(str(v)) for k, v in labels.items()}, raw
        )
        return raw

    def _require_namespace(self, namespace: str) -> None:
        if ("", namespace) not in self.objects[NAMESPACES.plural]:
            raise _not_found(NAMESPACES, namespace)

    def _identity(
        self, res: Resource, namespace: str, name: str | None, body: JSONDoc
    ) -> tuple[JSONDoc, str]:
        """The request's object with its identity checked and completed, system fields
        dropped; and the resourceVersion it carried ('' if none)."""
        if body.get("apiVersion", "v1") != "v1" or body.get("kind", res.kind) != res.kind:
            raise StatusError(
                400, "BadRequest", f"the body is not a v1 {res.kind} (kind/apiVersion)"
            )
        meta = body.get("metadata")
        if not isinstance(meta, dict):
            meta = {}
        given = meta.get("name")
        if name is not None and given not in (None, name):
            raise StatusError(
                400,
                "BadRequest",
                f"the name of the object ({given}) does not match the name on the URL ({name})",
            )
        final = name if name is not None else given
        if not isinstance(final, str) or not NAME_RE.fullmatch(final):
            raise StatusError(
                422,
                "Invalid",
                f"{res.kind} name {final!r} is invalid",
                details={"kind": res.plural},
            )
        if res.namespaced and meta.get("namespace") not in (None, namespace):
            raise StatusError(
                400,
                "BadRequest",
                "the namespace of the provided object does not match the namespace sent on the "
                "request",
            )
        version = str(meta.get("resourceVersion") or "")
        clean = {k: v for k, v in meta.items() if ("metadata", k) not in SYSTEM_FIELDS}
        clean["name"] = final
        if res.namespaced:
            clean["namespace"] = namespace
        obj = {k: v for k, v in body.items() if (k,) not in SYSTEM_FIELDS}
        obj["apiVersion"], obj["kind"], obj["metadata"] = "v1", res.kind, clean
        if res is SECRETS:
            _fold_string_data(obj)
        return obj, version

    def _defaults(self, res: Resource, obj: JSONDoc) -> None:
        if res is SECRETS:
            obj.setdefault("type", "Opaque")
            for key, value in (obj.get("data") or {}).items():
                try:
                    base64.b64decode(value, validate=True)
                except (binascii.Error, TypeError, ValueError):
                    raise StatusError(
                        422, "Invalid", f"data[{key}]: not base64", details={"kind": "secrets"}
                    ) from None
        else:
            obj.setdefault("spec", {"finalizers": ["kubernetes"]})
            obj["status"] = {"phase": "Active"}

    @staticmethod
    def _immutable(old: Mapping[str, Any], new: Mapping[str, Any]) -> None:
        if old.get("immutable") is True and (
            new.get("immutable") is not True or new.get("data") != old.get("data")
        ):
            raise StatusError(
                422,
                "Invalid",
                "data: Forbidden: field is immutable when `immutable` is set",
                details={"kind": "secrets"},
            )

    def create(
        self, res: Resource, namespace: str, body: JSONDoc, manager: str
    ) -> tuple[int, bytes]:
        obj, _ = self._identity(res, namespace, None, body)
        name = obj["metadata"]["name"]
        if res.namespaced:
            self._require_namespace(namespace)
        key = (namespace, name)
        if key in self.objects[res.plural]:
            raise StatusError(
                409,
                "AlreadyExists",
                f'{res.plural} "{name}" already exists',
                details={"name": name, "kind": res.plural},
            )
        self._defaults(res, obj)
        meta = obj["metadata"]
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = _now()
        paths = leaf_paths(obj)
        meta["managedFields"] = reassign([], manager, "Update", paths, paths)
        return 201, self._commit(res, key, obj)

    def replace(
        self, res: Resource, namespace: str, name: str, body: JSONDoc, manager: str
    ) -> tuple[int, bytes]:
        obj, version = self._identity(res, namespace, name, body)
        key = (namespace, name)
        stored = self.objects[res.plural].get(key)
        if stored is None:
            raise _not_found(res, name)
        cur: JSONDoc = json.loads(stored.raw)
        if version and version != cur["metadata"]["resourceVersion"]:
            raise StatusError(
                409,
                "Conflict",
                "the object has been modified; please apply your changes to the latest version "
                "and try again",
                details={"name": name, "kind": res.plural},
            )
        self._defaults(res, obj)
        self._immutable(cur, obj)
        meta = obj["metadata"]
        meta["uid"] = cur["metadata"]["uid"]
        meta["creationTimestamp"] = cur["metadata"]["creationTimestamp"]
        present = leaf_paths(obj)
        changed = {p for p in present if get_path(cur, p) != get_path(obj, p)}
        entries = cur["metadata"].get("managedFields") or []
        meta["managedFields"] = reassign(entries, manager, "Update", changed, present)
        if _content(obj) == _content(cur) and meta["managedFields"] == entries:
            return 200, stored.raw
        return 200, self._commit(res, key, obj)

    def apply(
        self,
        res: Resource,
        namespace: str,
        name: str,
        body: JSONDoc,
        manager: str,
        *,
        force: bool,
    ) -> tuple[int, bytes]:
        applied, _ = self._identity(res, namespace, name, body)
        applied_paths = leaf_paths(applied)
        key = (namespace, name)
        stored = self.objects[res.plural].get(key)
        if stored is None:
            if res.namespaced:
                self._require_namespace(namespace)
            self._defaults(res, applied)
            meta = applied["metadata"]
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = _now()
            meta["managedFields"] = [_entry(manager, "Apply", applied_paths, _now())]
            return 201, self._commit(res, key, applied)
        cur: JSONDoc = json.loads(stored.raw)
        entries: list[JSONDoc] = cur["metadata"].get("managedFields") or []
        others: set[FieldPath] = set()
        previous: set[FieldPath] = set()
        for entry in entries:
            paths = from_fields_v1(entry.get("fieldsV1") or {})
            if entry.get("manager") == manager and entry.get("operation") == "Apply":
                previous = paths
            else:
                others |= paths
        if not force:
            conflicts = sorted(
                ".".join(p)
                for p in applied_paths & others
                if get_path(cur, p) != get_path(applied, p)
            )
            if conflicts:
                raise StatusError(
                    409,
                    "Conflict",
                    f"Apply failed with {len(conflicts)} conflicts: {', '.join(conflicts[:5])}",
                    details={"name": name, "kind": res.plural},
                )
        obj: JSONDoc = json.loads(stored.raw)
        for path in previous - applied_paths - others:  # no longer applied, nobody else's
            remove_path(obj, path)
        deep_merge(obj, applied)
        self._defaults(res, obj)
        self._immutable(cur, obj)
        obj["metadata"]["managedFields"] = reassign(
            entries, manager, "Apply", applied_paths, leaf_paths(obj)
        )
        if _content(obj) == _content(cur) and obj["metadata"]["managedFields"] == entries:
            return 200, stored.raw
        return 200, self._commit(res, key, obj)

    def delete(
        self, res: Resource, namespace: str, name: str, options: JSONDoc
    ) -> tuple[int, bytes]:
        key = (namespace, name)
        stored = self.objects[res.plural].get(key)
        if stored is None:
            raise _not_found(res, name)
        meta = json.loads(stored.raw)["metadata"]
        pre = options.get("preconditions") or {}
        if pre.get("uid") not in (None, meta["uid"]):
            raise StatusError(
                409,
                "Conflict",
                f"Precondition failed: UID in precondition: {pre['uid']}, UID in object meta: "
                f"{meta['uid']}",
                details={"name": name, "kind": res.plural},
            )
        if pre.get("resourceVersion") not in (None, meta["resourceVersion"]):
            raise StatusError(
                409,
                "Conflict",
                "Precondition failed: resourceVersion does not match",
                details={"name": name, "kind": res.plural},
            )
        del self.objects[res.plural][key]
        if res is NAMESPACES:  # no Terminating phase: its Secrets go at once
            table = self.objects[SECRETS.plural]
            for gone in [k for k in table if k[0] == name]:
                del table[gone]
        self.rv += 1
        return 200, _dump(
            {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Success",
                "details": {"name": name, "kind": res.plural, "uid": meta["uid"]},
            }
        )


def _parse(request: web.Request, body: bytes) -> JSONDoc:
    try:
        doc = json.loads(body)
    except ValueError:
        if not request.content_type.endswith("yaml"):
            raise StatusError(400, "BadRequest", "the body is not JSON") from None
        try:
            doc = yaml.safe_load(body)
        except yaml.YAMLError:
            raise StatusError(400, "BadRequest", "the body is not YAML") from None
    if not isinstance(doc, dict):
        raise StatusError(400, "BadRequest", "the body is not an object")
    return doc


def _fold_string_data(obj: JSONDoc) -> None:
    string_data = obj.pop("stringData", None)
    if isinstance(string_data, dict) and string_data:
        data = dict(obj.get("data") or {})
        for key, value in string_data.items():
            data[key] = base64.b64encode(str(value).encode()).decode("ascii")
        obj["data"] = data


class SimFleet:
    """N simulated API servers: one aiohttp application each, on its own 127.0.0.1 port, all
    served by one event loop in one background thread."""

    def __init__(self, count: int, *, latency_s: float, rate: float, burst: float) -> None:
        self.clusters = [
            SimCluster(f"sim-{i:03d}", latency_s=latency_s, rate=rate, burst=burst)
            for i in range(count)
        ]
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, name="sim-apiservers", daemon=True)
        self._runners: list[web.AppRunner] = []

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start_all(), self._loop).result(timeout=120)

    async def _start_all(self) -> None:
        for cluster in self.clusters:
            app = web.Application()
            app.router.add_route("*", "/{tail:.*}", cluster.dispatch)
            runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
            await runner.setup()
            self._runners.append(runner)
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            site = web.SockSite(runner, sock, backlog=256)
            await site.start()
            cluster.port = sock.getsockname()[1]

    async def _stop_all(self) -> None:
        for runner in self._runners:
            await runner.cleanup()
        self._runners.clear()

    def stop(self) -> None:
        if not self._thread.is_alive():
            if not self._loop.is_closed():
                self._loop.close()
            return
        try:
            asyncio.run_coroutine_threadsafe(self._stop_all(), self._loop).result(timeout=120)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=30)
            if not self._thread.is_alive():
                self._loop.close()

    def call[T](self, fn: Callable[[], T]) -> T:
        """Run `fn` on the simulation's loop (its state is only touched there)."""

        async def run() -> T:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout=60)

    def cpu_s(self) -> float:
        ident = self._thread.ident
        assert ident is not None
        return time.clock_gettime(time.pthread_getcpuclockid(ident))

    def new_phase(self) -> None:
        def reset() -> None:
            for cluster in self.clusters:
                cluster.new_phase()

        self.call(reset)

    def wire(self, subset: Sequence[SimCluster] | None = None) -> JSONDoc:
        """What reached the servers in this phase (including requests answered 429)."""

        def collect() -> JSONDoc:
            chosen = list(self.clusters if subset is None else subset)
            requests = [c.stats["requests"] for c in chosen]
            busy = [c.last - c.first for c in chosen if c.stats["requests"]]
            calls: Counter[str] = Counter()
            for c in chosen:
                calls.update(c.stats)
            return {
                "requests_per_cluster_mean": round(statistics.fmean(requests), 1),
                "requests_per_cluster_max": max(requests),
                "throttled_429": calls.pop("throttled", 0),
                "calls": dict(sorted((k, v) for k, v in calls.items() if k != "requests")),
                "busy_s_per_cluster": {
                    "min": round(min(busy), 2) if busy else 0.0,
                    "median": round(statistics.median(busy), 2) if busy else 0.0,
                    "max": round(max(busy), 2) if busy else 0.0,
                },
            }

        return self.call(collect)

    def stored(self, namespace: str) -> tuple[int, int]:
        """(Secrets in `namespace` on every cluster, bytes of every stored object)."""
        return self.call(
            lambda: (
                sum(c.count(SECRETS, namespace) for c in self.clusters),
                sum(c.stored_bytes() for c in self.clusters),
            )
        )

    def ensure_namespaces(self, names: Sequence[str]) -> None:
        """Create the namespaces on every server directly (no request, no rate-limit token)."""

        def create() -> None:
            for cluster in self.clusters:
                for name in names:
                    if ("", name) not in cluster.objects[NAMESPACES.plural]:
                        cluster.create(NAMESPACES, "", {"metadata": {"name": name}}, "bench")

        self.call(create)


@dataclass(frozen=True, slots=True)
class Endpoint:
    name: str
    port: int


class SimFleetProcess:
    """The servers of `SimFleet`, served by a process of their own.

    The client under test then has its own GIL and its CPU is its own; this process's CPU
    (`cpu_s`) is the simulation's. Same operations as SimFleet, by cluster index.
    """

    def __init__(self, count: int, *, latency_s: float, rate: float, burst: float) -> None:
        self.count = count
        self.settings = (latency_s, rate, burst)
        self.endpoints: list[Endpoint] = []
        self._ctx = multiprocessing.get_context("spawn")
        self._conn: Connection | None = None
        self._proc: Any = None

    @property
    def pid(self) -> int:
        assert self._proc is not None
        assert self._proc.pid is not None
        return int(self._proc.pid)

    def start(self) -> None:
        ours, theirs = self._ctx.Pipe()
        latency_s, rate, burst = self.settings
        self._proc = self._ctx.Process(
            target=_serve_fleet,
            args=(theirs, self.count, latency_s, rate, burst),
            name="sim-apiservers",
            daemon=True,
        )
        self._proc.start()
        theirs.close()
        self._conn = ours
        self.endpoints = [Endpoint(name, port) for name, port in self._ask("endpoints")]

    def _ask(self, op: str, *args: object) -> Any:
        assert self._conn is not None
        self._conn.send((op, args))
        if not self._conn.poll(300):
            raise RuntimeError(f"simulated servers did not answer {op!r}")
        ok, value = self._conn.recv()
        if not ok:
            raise RuntimeError(f"simulated servers failed {op!r}: {value}")
        return value

    def new_phase(self) -> None:
        self._ask("new_phase")

    def wire(self, subset: Sequence[int] | None = None) -> JSONDoc:
        return dict(self._ask("wire", None if subset is None else list(subset)))

    def stored(self, namespace: str) -> tuple[int, int]:
        count, size = self._ask("stored", namespace)
        return int(count), int(size)

    def ensure_namespaces(self, names: Sequence[str]) -> None:
        self._ask("ensure_namespaces", list(names))

    def cpu_s(self) -> float:
        return _proc_cpu_s(self.pid)

    def stop(self) -> None:
        if self._proc is None:
            return
        try:
            if self._proc.is_alive():
                self._ask("stop")
        except (RuntimeError, OSError, EOFError):
            pass
        finally:
            self._proc.join(timeout=30)
            if self._proc.is_alive():
                self._proc.kill()  # the process this object started, by its handle
                self._proc.join(timeout=10)
            if self._conn is not None:
                self._conn.close()
            self._proc = None


def _serve_fleet(conn: Connection, count: int, latency_s: float, rate: float, burst: float) -> None:
    """The body of SimFleetProcess's process: serve, and answer its requests until `stop`."""
    sim = SimFleet(count, latency_s=latency_s, rate=rate, burst=burst)
    sim.start()
    try:
        while True:
            op, args = conn.recv()
            try:
                match op:
                    case "endpoints":
                        value: object = [(c.name, c.port) for c in sim.clusters]
                    case "new_phase":
                        sim.new_phase()
                        value = None
                    case "wire":
                        chosen = None if args[0] is None else [sim.clusters[i] for i in args[0]]
                        value = sim.wire(chosen)
                    case "stored":
                        value = sim.stored(args[0])
                    case "ensure_namespaces":
                        sim.ensure_namespaces(args[0])
                        value = None
                    case "stop":
                        conn.send((True, None))
                        return
                    case _:
                        raise ValueError(f"unknown operation {op!r}")
            except Exception as exc:  # reported to the parent, which raises it
                conn.send((False, repr(exc)))
                continue
            conn.send((True, value))
    finally:
        sim.stop()


# --- clients of the servers ----------------------------------------------------------------


class HasEndpoint(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def port(self) -> int: ...


def write_kubeconfig(path: Path, cluster: HasEndpoint) -> Path:
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": cluster.name, "cluster": {"server": f"http://127.0.0.1:{cluster.port}"}}
        ],
        "users": [{"name": "bench", "user": {"token": TOKEN}}],
        "contexts": [{"name": cluster.name, "context": {"cluster": cluster.name, "user": "bench"}}],
        "current-context": cluster.name,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc))
    return path
