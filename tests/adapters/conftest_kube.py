"""pytest fixtures for real Kubernetes API servers (a plugin module: list it in pytest_plugins).

    pytest_plugins = ["tests.adapters.conftest_kube"]

Fixtures:

- `kube_binaries` (session): the binaries found by `tests.support.kubecluster.find_binaries()`; a
  missing build is an error naming `scripts/build-kube.sh`, never a skip.
- `kube_clusters` (session): three independent clusters `kube-a`, `kube-b`, `kube-c`, each
  with its own etcd, kube-apiserver and kube-controller-manager, started side by side (no
  controller manager only when the user supplied an apiserver without one).
- `kube_cluster` (session): the first of them, for tests that need one.
- `kube_namespace`: a factory `kube_namespace(*clusters, prefix="t") -> str` that creates one
  fresh namespace of the same name in each cluster given (all three when none is given) and
  deletes it after the test.

`create_namespace(api, name)` and `new_namespace_name(prefix)` are plain helpers for code that
manages namespaces itself.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import pytest
import urllib3
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from tests.support.kubecluster import KubeBinaries, KubeCluster, find_binaries, running_clusters

CLUSTER_NAMES = ("kube-a", "kube-b", "kube-c")


def new_namespace_name(prefix: str = "t") -> str:
    """A namespace name that no other test uses (DNS label, random suffix)."""
    return f"{prefix}-{secrets.token_hex(4)}"


def create_namespace(api: k8s.ApiClient, name: str, labels: dict[str, str] | None = None) -> str:
    """Create namespace `name` through `api`; return its name."""
    body = k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=name, labels=labels or {}))
    k8s.CoreV1Api(api).create_namespace(body)
    return name


def delete_namespace(api: k8s.ApiClient, name: str, *, timeout: float = 10.0) -> None:
    """Ask for namespace `name` to be deleted (the controller manager finishes it); 404 is fine."""
    try:
        k8s.CoreV1Api(api).delete_namespace(name, _request_timeout=timeout)
    except ApiException as exc:
        if exc.status != 404:
            raise


class NamespaceFactory(Protocol):
    def __call__(self, *clusters: KubeCluster, prefix: str = "t") -> str: ...


@pytest.fixture(scope="session")
def kube_binaries() -> KubeBinaries:
    return find_binaries()


@pytest.fixture(scope="session")
def kube_clusters(
    kube_binaries: KubeBinaries, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[KubeCluster]]:
    workdir: Path = tmp_path_factory.mktemp("kube")
    # User-supplied binaries (e.g. envtest) may come without a controller manager; the tests
    # that need one then fail on their own precondition.
    with_cm = kube_binaries.controller_manager is not None
    with running_clusters(
        CLUSTER_NAMES, workdir=workdir, controller_manager=with_cm, binaries=kube_binaries
    ) as clusters:
        yield clusters


@pytest.fixture(scope="session")
def kube_cluster(kube_clusters: list[KubeCluster]) -> KubeCluster:
    return kube_clusters[0]


@pytest.fixture
def kube_namespace(kube_clusters: list[KubeCluster]) -> Iterator[NamespaceFactory]:
    created: list[tuple[KubeCluster, str]] = []

    def make(*clusters: KubeCluster, prefix: str = "t") -> str:
        name = new_namespace_name(prefix)
        for cluster in clusters or tuple(kube_clusters):
            with cluster.api_client() as api:
                create_namespace(api, name)
            created.append((cluster, name))
        return name

    yield make
    for cluster, name in created:
        # A stopped or paused cluster (a test may do that) must not fail or stall the teardown.
        config = cluster.configuration()
        config.retries = 0
        with (
            contextlib.suppress(OSError, urllib3.exceptions.HTTPError),
            k8s.ApiClient(config) as api,
        ):
            delete_namespace(api, name, timeout=5.0)
