"""The naive baselines: what a user would script instead of secretsync.

Every benchmark measures one of these in the same run, on the same data, beside secretsync:

- Vault: one hvac `read_secret_version` per cluster per key, no de-duplication (`HvacReader`);
- `sealed`: per cluster and secret, read the keys, seal every value with a fresh RSA wrap the
  way running `kubeseal` once per cluster would (the PyPI peer `kubesealpy`, whose output
  secretsync unseals; without it, one hybrid seal per value), dump with pure-Python YAML and
  write the file (`scripted_sealed`);
- `external`: per cluster and secret, build the ExternalSecret and dump it with pure-Python
  YAML (`scripted_external`);
- `direct`: per cluster and secret, read the keys, then GET and create or replace with the
  official typed kubernetes client, one request at a time, waiting out 429s
  (`scripted_direct`).

All of them are sequential, as a script is.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Final

import hvac
import yaml
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException

NAIVE_LABELS: Final = {"app": "naive"}


@dataclass(frozen=True, slots=True, kw_only=True)
class Wanted:
    """One Secret one cluster should hold: its Vault-sourced keys and its literal keys."""

    cluster: str
    namespace: str
    name: str
    refs: Mapping[str, tuple[str, str]] = field(default_factory=dict)  # key -> (path, vault key)
    literals: Mapping[str, str] = field(default_factory=dict)


class HvacReader:
    """One KV v2 read per call, however often the same path was read before."""

    def __init__(self, *, address: str, token: str, mount: str) -> None:
        self.client = hvac.Client(url=address, token=token)
        self.mount = mount
        self.reads = 0

    def read(self, path: str, key: str) -> str:
        answer = self.client.secrets.kv.v2.read_secret_version(
            path=path, mount_point=self.mount, raise_on_deleted_version=True
        )
        self.reads += 1
        return str(answer["data"]["data"][key])

    def values(self, wanted: Wanted) -> dict[str, str]:
        out = {key: self.read(path, vkey) for key, (path, vkey) in wanted.refs.items()}
        return out | dict(wanted.literals)

    def close(self) -> None:
        self.client.adapter.close()


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


# --- sealed -----------------------------------------------------------------------------------


def sealed_baseline_name() -> str:
    try:
        import kubesealpy  # noqa: F401
    except ImportError:
        return (
            "script: hvac read per cluster per key, one hybrid seal per value "
            "(secretsync.delivery.seal.seal_value), pure-Python yaml.dump"
        )
    return (
        "script: hvac read per cluster per key, kubesealpy Sealer.seal per cluster "
        "(one RSA wrap per value) + to_yaml (pure-Python yaml.dump), a file each"
    )


def scripted_sealed(
    wanted: Iterable[Wanted],
    *,
    reader: HvacReader,
    cert_file: Callable[[str], Path],
    out_dir: Path,
) -> int:
    """Seal and write every wanted Secret; returns the number of values sealed."""
    try:
        from kubesealpy import Sealer
    except ImportError:
        return _scripted_sealed_plain(wanted, reader=reader, cert_file=cert_file, out_dir=out_dir)
    sealers: dict[str, Any] = {}
    seals = 0
    for item in wanted:
        sealer = sealers.get(item.cluster)
        if sealer is None:  # what `kubeseal --cert` does on each run for this cluster
            sealer = Sealer.from_certificate_file(cert_file(item.cluster))
            sealers[item.cluster] = sealer
        values = {k: v.encode() for k, v in reader.values(item).items()}
        sealed = sealer.seal(name=item.name, namespace=item.namespace, data=values)
        seals += len(values)
        _write(out_dir / item.cluster / item.namespace / f"{item.name}.yaml", sealed.to_yaml())
    return seals


def _scripted_sealed_plain(
    wanted: Iterable[Wanted],
    *,
    reader: HvacReader,
    cert_file: Callable[[str], Path],
    out_dir: Path,
) -> int:
    from datetime import UTC, datetime

    from secretsync.delivery import seal

    keys: dict[str, Any] = {}
    seals = 0
    for item in wanted:
        key = keys.get(item.cluster)
        if key is None:
            cert = seal.load_certificate(
                cert_file(item.cluster).read_bytes(), source=item.cluster, now=datetime.now(UTC)
            )
            key = keys[item.cluster] = cert.public_key
        label = f"{item.namespace}/{item.name}".encode()
        encrypted = {
            k: seal.seal_value(key, v.encode(), label=label) for k, v in reader.values(item).items()
        }
        seals += len(encrypted)
        manifest = {
            "apiVersion": "bitnami.com/v1alpha1",
            "kind": "SealedSecret",
            "metadata": {"name": item.name, "namespace": item.namespace},
            "spec": {
                "encryptedData": encrypted,
                "template": {"metadata": {"name": item.name, "namespace": item.namespace}},
            },
        }
        _write(
            out_dir / item.cluster / item.namespace / f"{item.name}.yaml",
            yaml.dump(manifest, Dumper=yaml.Dumper),
        )
    return seals


# --- external ---------------------------------------------------------------------------------


EXTERNAL_BASELINE_NAME: Final = (
    "script: build each ExternalSecret, pure-Python yaml.dump, a file each"
)


def scripted_external(
    wanted: Iterable[Wanted], *, out_dir: Path, store: Mapping[str, str], refresh: str = "1h"
) -> int:
    """Write an ExternalSecret per wanted Secret (no Vault reads); returns files written."""
    files = 0
    for item in wanted:
        manifest = {
            "apiVersion": "external-secrets.io/v1",
            "kind": "ExternalSecret",
            "metadata": {"name": item.name, "namespace": item.namespace},
            "spec": {
                "refreshInterval": refresh,
                "secretStoreRef": dict(store),
                "target": {
                    "name": item.name,
                    "template": {"mergePolicy": "Merge", "data": dict(item.literals)},
                },
                "data": [
                    {"secretKey": key, "remoteRef": {"key": path, "property": vkey}}
                    for key, (path, vkey) in sorted(item.refs.items())
                ],
            },
        }
        _write(
            out_dir / item.cluster / item.namespace / f"{item.name}.yaml",
            yaml.dump(manifest, Dumper=yaml.Dumper),
        )
        files += 1
    return files


# --- direct -----------------------------------------------------------------------------------


DIRECT_BASELINE_NAME: Final = (
    "script: hvac read per cluster per key, typed client GET then create/replace, sequential"
)


def with_retry_after[T](call: Callable[[], T]) -> T:
    """The least a script must add to survive a rate limit: on 429, wait Retry-After and
    retry (urllib3 already does this for GET/PUT/DELETE, not for POST)."""
    for _ in range(20):
        try:
            return call()
        except ApiException as exc:
            if exc.status != 429:
                raise
            retry_after = str((exc.headers or {}).get("Retry-After", "1"))
            time.sleep(float(retry_after) if retry_after.isdigit() else 1.0)
    return call()


def typed_client(kubeconfig: Path) -> k8s.ApiClient:
    api: k8s.ApiClient = k8s_config.new_client_from_config(config_file=str(kubeconfig))  # type: ignore[no-untyped-call]
    return api


def close_client(api: k8s.ApiClient) -> None:
    pool = getattr(api, "_pool", None)
    api.close()  # type: ignore[no-untyped-call]
    if pool is not None:
        pool.join()


def scripted_direct(
    wanted: Sequence[Wanted],
    *,
    kubeconfig: Callable[[str], Path],
    reader: HvacReader | None = None,
    namespace: str | None = None,
) -> int:
    """GET then create-or-replace each wanted Secret, one at a time, cluster after cluster;
    returns the API requests made. `namespace` overrides the wanted namespace (so the script
    can write beside secretsync's objects without touching them)."""
    requests = 0
    by_cluster: dict[str, list[Wanted]] = {}
    for item in wanted:
        by_cluster.setdefault(item.cluster, []).append(item)
    for cluster, items in by_cluster.items():
        api = typed_client(kubeconfig(cluster))
        try:
            core = k8s.CoreV1Api(api)
            for item in items:
                values = reader.values(item) if reader is not None else dict(item.literals)
                ns = namespace or item.namespace
                body = k8s.V1Secret(
                    metadata=k8s.V1ObjectMeta(name=item.name, labels=dict(NAIVE_LABELS)),
                    string_data=values,
                )
                requests += 2
                try:
                    with_retry_after(partial(core.read_namespaced_secret, item.name, ns))
                    with_retry_after(partial(core.replace_namespaced_secret, item.name, ns, body))
                except ApiException as exc:
                    if exc.status != 404:
                        raise
                    with_retry_after(partial(core.create_namespaced_secret, ns, body))
        finally:
            close_client(api)
    return requests


def write_literal_fleet(
    root: Path,
    *,
    kubeconfigs: Mapping[str, Path],
    labels: Mapping[str, str],
    secrets: int,
    namespace: str,
) -> None:
    """The literal-only fleet of bench/sync.py and bench/simulated.py: `direct` delivery, every
    FleetSecret on every cluster, two literal keys (one templated with the cluster's name)."""
    (root / "clusters").mkdir(parents=True)
    (root / "secrets").mkdir()
    (root / "secretsync.yaml").write_text(
        "apiVersion: secretsync.dev/v1alpha1\nkind: Fleet\nmetadata: {name: bench}\n"
        "spec: {defaults: {delivery: direct}}\n"
    )
    label_map = ", ".join(f"{k}: '{v}'" for k, v in labels.items())
    docs = [
        f"apiVersion: secretsync.dev/v1alpha1\nkind: Cluster\n"
        f"metadata: {{name: {name}, labels: {{{label_map}}}}}\n"
        f"spec: {{kubeconfig: {{path: {path}}}}}\n"
        for name, path in kubeconfigs.items()
    ]
    (root / "clusters" / "all.yaml").write_text("---\n".join(docs))
    docs = [
        f"apiVersion: secretsync.dev/v1alpha1\nkind: FleetSecret\nmetadata: {{name: s{i:04d}}}\n"
        f"spec:\n  clusterSelector: {{}}\n  target: {{name: s{i:04d}, namespace: {namespace}}}\n"
        f"  data:\n    password: {{value: 'bench-value-{i:04d}-{{{{ cluster.name }}}}'}}\n"
        f"    user: {{value: 'svc-{i:04d}'}}\n"
        for i in range(secrets)
    ]
    (root / "secrets" / "all.yaml").write_text("---\n".join(docs))


def literal_secrets(cluster: str, secrets: int, *, namespace: str) -> list[Wanted]:
    """The literal-only fleet of bench/sync.py and bench/simulated.py, as the script sees it."""
    return [
        Wanted(
            cluster=cluster,
            namespace=namespace,
            name=f"s{i:04d}",
            literals={"password": f"bench-value-{i:04d}-{cluster}", "user": f"svc-{i:04d}"},
        )
        for i in range(secrets)
    ]
