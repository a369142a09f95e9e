"""One Kubernetes API client per cluster, built from `Cluster.spec.kubeconfig` — never global.

`kubeconfig.path` (+ `context`) is a machine path, read only here; `secretRef` names a
Secret holding a kubeconfig in the cluster secretsync itself runs in (the *home* cluster,
reached in-cluster or through `--home-kubeconfig`); `inCluster: true` uses the pod's service
account. Every client gets its own `Configuration`, so clusters never share credentials.
"""

from __future__ import annotations

import base64
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException
from kubernetes.config import incluster_config

from secretsync import errors
from secretsync.model import Cluster, Kubeconfig

SA_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"
SA_CA = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"


def _from_dict(config: Mapping[str, Any], context: str | None) -> k8s.ApiClient:
    configuration = k8s.Configuration()
    k8s_config.load_kube_config_from_dict(
        dict(config), context=context, client_configuration=configuration, persist_config=False
    )
    return _client(configuration)


def _client(configuration: k8s.Configuration) -> k8s.ApiClient:
    # No retries inside the HTTP library: the sinks retry themselves (with Retry-After, back-off
    # and budgets they can see and count); hidden retries held worker threads asleep.
    configuration.retries = 0
    return k8s.ApiClient(configuration)


def in_cluster_client() -> k8s.ApiClient:
    configuration = k8s.Configuration()
    try:
        incluster_config.InClusterConfigLoader(
            token_filename=SA_TOKEN, cert_filename=SA_CA
        ).load_and_set(configuration)
    except k8s_config.ConfigException:
        raise errors.DeliveryError(
            "inCluster: true, but this process does not run in a Kubernetes pod"
        ) from None
    return _client(configuration)


def client_from_file(path: Path, *, context: str | None = None) -> k8s.ApiClient:
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise errors.DeliveryError(f"cannot read kubeconfig {path}: {exc.strerror}") from None
    except yaml.YAMLError:
        raise errors.DeliveryError(f"kubeconfig {path} is not valid YAML") from None
    if not isinstance(data, dict):
        raise errors.DeliveryError(f"kubeconfig {path} is not a kubeconfig")
    try:
        return _from_dict(data, context)
    except (k8s_config.ConfigException, ValueError, KeyError, TypeError):
        raise errors.DeliveryError(
            f"kubeconfig {path}: no usable context {context or '(current)'}"
        ) from None


def call(
    api: k8s.ApiClient,
    method: str,
    path: str,
    *,
    query: list[tuple[str, str]] | None = None,
    body: object = None,
    content_type: str = "application/json",
    accept: str = "application/json",
    timeout_s: float = 15.0,
) -> tuple[int, bytes, Mapping[str, str]]:
    """One raw API request: (status, body bytes, headers); status 0 when unreachable.

    Never raises for HTTP errors and never puts a response body in an exception: callers
    decide from the status.
    """
    headers = {"Accept": accept}
    if body is not None:
        headers["Content-Type"] = content_type
    method_, url, header_params, body_, post = api.param_serialize(
        method=method,
        resource_path=path,
        query_params=query or [],
        header_params=headers,
        body=body,
        auth_settings=["BearerToken"],
    )
    try:
        response = api.call_api(
            method_, url, header_params, body_, post, _request_timeout=timeout_s
        )
        raw = response.read()
    except ApiException as exc:
        return int(exc.status or 0), b"", {}
    except Exception:  # urllib3 / socket errors, whose text may name hosts but not data
        return 0, b"", {}
    return int(response.status), raw or b"", dict(response.headers or {})


class ClientFactory:
    """Builds and caches the API client of each cluster (thread-safe)."""

    def __init__(self, *, root: Path, home: k8s.ApiClient | None = None) -> None:
        self.root = root
        self._home = home
        self._clients: dict[str, k8s.ApiClient] = {}
        self._lock = threading.Lock()

    def home(self) -> k8s.ApiClient:
        if self._home is None:
            self._home = in_cluster_client()
        return self._home

    def for_cluster(self, cluster: Cluster) -> k8s.ApiClient:
        with self._lock:
            cached = self._clients.get(cluster.name)
            if cached is None:
                cached = self._clients[cluster.name] = self._build(cluster)
            return cached

    def _build(self, cluster: Cluster) -> k8s.ApiClient:
        spec = cluster.kubeconfig
        if spec is None:
            raise errors.DeliveryError(f"cluster {cluster.name!r} has no spec.kubeconfig")
        if spec.in_cluster:
            return in_cluster_client()
        if spec.path is not None:
            path = Path(spec.path)
            return client_from_file(
                path if path.is_absolute() else self.root / path, context=spec.context
            )
        return self._from_secret(cluster.name, spec)

    def _from_secret(self, name: str, spec: Kubeconfig) -> k8s.ApiClient:
        namespace, secret_name = spec.secret_namespace, spec.secret_name
        if namespace is None or secret_name is None:
            raise errors.DeliveryError(f"cluster {name!r}: kubeconfig.secretRef is incomplete")
        where = f"{namespace}/{secret_name}"
        try:
            secret = k8s.CoreV1Api(self.home()).read_namespaced_secret(secret_name, namespace)
        except k8s.ApiException as exc:
            raise errors.DeliveryError(
                f"cluster {name!r}: cannot read kubeconfig Secret {where} "
                f"(HTTP {exc.status} {exc.reason})"
            ) from None
        raw = (secret.data or {}).get(spec.secret_key)
        if raw is None:
            raise errors.DeliveryError(
                f"cluster {name!r}: Secret {where} has no key {spec.secret_key!r}"
            )
        try:
            data = yaml.safe_load(base64.b64decode(raw))
            return _from_dict(data, spec.context)
        except Exception:  # any malformed kubeconfig: say so without echoing it
            raise errors.DeliveryError(
                f"cluster {name!r}: Secret {where} key {spec.secret_key!r} is not a usable "
                "kubeconfig"
            ) from None

    def close(self) -> None:
        with self._lock:
            for api in self._clients.values():
                api.close()
            self._clients.clear()


def close(api: k8s.ApiClient) -> None:
    """Release an API client's connection pool."""
    api.close()
