"""`clusters.Endpoint` against a real kube-apiserver: TLS with the cluster's CA, the bearer
token read again after a 401, an unreachable or untrusted server as status 0."""

from __future__ import annotations

import json
from pathlib import Path

from secretsync.kube.clusters import Endpoint
from tests.support import keys
from tests.support.kubecluster import KubeCluster


async def test_request_reaches_the_apiserver_over_tls(kube_cluster: KubeCluster) -> None:
    endpoint = kube_cluster.endpoint()
    status, raw, headers = await endpoint.request(
        "GET", "/api/v1/namespaces", query=[("labelSelector", "kubernetes.io/metadata.name")]
    )
    assert status == 200
    assert json.loads(raw)["kind"] == "NamespaceList"
    assert headers["Content-Type"].startswith("application/json")
    await endpoint.aclose()


async def test_a_rotated_token_is_read_again_after_a_401(kube_cluster: KubeCluster) -> None:
    configuration = kube_cluster.configuration()
    configuration.api_key = {"authorization": "not-a-token"}
    endpoint = Endpoint(configuration)
    status, _, _ = await endpoint.request("GET", "/api/v1/namespaces/default")
    assert status == 401
    # the credential source now holds a valid token (as after a rotation): within the token
    # cache's lifetime, only the 401 makes the endpoint read it again
    configuration.api_key = {"authorization": kube_cluster.token()}
    status, _, _ = await endpoint.request("GET", "/api/v1/namespaces/default")
    assert status == 200
    await endpoint.aclose()


async def test_untrusted_certificate_is_unreachable_without_detail(
    kube_cluster: KubeCluster, tmp_path: Path
) -> None:
    other_ca = tmp_path / "other-ca.pem"
    other_ca.write_bytes(keys.cert_pem(keys.rsa_key(3)))  # a certificate the server's is not
    configuration = kube_cluster.configuration()
    configuration.ssl_ca_cert = str(other_ca)
    endpoint = Endpoint(configuration)
    assert await endpoint.request("GET", "/api/v1/namespaces/default") == (0, b"", {})
    await endpoint.aclose()


async def test_closed_port_is_unreachable(kube_cluster: KubeCluster) -> None:
    configuration = kube_cluster.configuration()
    configuration.host = "https://127.0.0.1:9"
    endpoint = Endpoint(configuration)
    assert await endpoint.request("GET", "/api", timeout_s=2.0) == (0, b"", {})
    await endpoint.aclose()
