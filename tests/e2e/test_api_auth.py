"""Bearer tokens on the status API, through a real `secretsync serve` process: a static token
file (`--api-token-file`), and TokenReview + SubjectAccessReview against a real kube-apiserver
(`--api-auth kubernetes`). `/healthz`, `/readyz` and the webhook stay as they are."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.test_web import MakeRepo
from tests.support import canary, fleets
from tests.support.served import ServeClient

PROTECTED = ("/v1/status", "/v1/status/summary", "/", "/metrics")


@pytest.fixture
def repo(fleet_repo: MakeRepo) -> Path:
    return fleets.write_fleet(fleet_repo)


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[list[ServeClient]]:
    started: list[ServeClient] = []
    yield started
    for client in started:
        if client.proc.poll() is None:
            client.proc.send_signal(signal.SIGTERM)
            try:
                client.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                client.proc.kill()
                client.proc.wait(timeout=10)


def _start(started: list[ServeClient], repo: Path, tmp_path: Path, *args: str) -> ServeClient:
    log = tmp_path / f"serve{len(started)}.log"
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "SECRETSYNC_HMAC_KEY": canary.new("hmac"),
        "VAULT_ADDR": "http://127.0.0.1:9",  # no Vault: cycles fail, the server serves
    }
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "secretsync", "serve", str(repo), "--listen", "127.0.0.1:0",
             "--no-kube", "--interval", "3600", *args],
            env=env, stdout=sink, stderr=subprocess.STDOUT,
        )  # fmt: skip
    client = ServeClient(proc, log, b"")
    started.append(client)
    client.wait_listening(timeout=60)
    return client


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _open_paths_stay_open(client: ServeClient) -> None:
    assert client.request("/healthz")[0] == 200
    assert client.request("/readyz")[0] in (200, 503)  # as before: no token asked
    code, text = client.request("/v1/webhooks/vault", body=b"{}")
    assert code == 503 and "no webhook secret" in text  # its own rules, not a token


def test_token_file_guards_the_status_api(
    repo: Path, tmp_path: Path, serve: list[ServeClient]
) -> None:
    first, second = canary.new("api-token"), canary.new("api-token")
    tokens = tmp_path / "tokens"
    tokens.write_text(f"# readers\n{first}\n\n")
    client = _start(serve, repo, tmp_path, "--api-token-file", str(tokens))
    for path in PROTECTED:
        code, _ = client.request(path)
        assert code == 401, path
        code, _ = client.request(path, headers=_bearer(second))
        assert code == 401, path
        code, _ = client.request(path, headers={"Authorization": f"Basic {first}"})
        assert code == 401, path
        code, text = client.request(path, headers=_bearer(first))
        assert code == 200, (path, text)
    _open_paths_stay_open(client)
    # the file changes: the new token works at once, the removed one no longer does
    tokens.write_text(f"{second}\n")
    assert client.request("/v1/status", headers=_bearer(second))[0] == 200
    assert client.request("/v1/status", headers=_bearer(first))[0] == 401
    # a file that no longer reads keeps the tokens read before
    tokens.unlink()
    assert client.request("/v1/status", headers=_bearer(second))[0] == 200
    text = client.log_text()
    assert "API token file" in text and first not in text and second not in text


def test_unauthenticated_answer_names_bearer(
    repo: Path, tmp_path: Path, serve: list[ServeClient]
) -> None:
    import urllib.error
    import urllib.request

    tokens = tmp_path / "tokens"
    tokens.write_text(canary.new("api-token") + "\n")
    client = _start(serve, repo, tmp_path, "--api-token-file", str(tokens))
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(client.base + "/v1/status", timeout=10)  # noqa: S310 - loopback
    assert caught.value.code == 401
    assert caught.value.headers["WWW-Authenticate"].startswith("Bearer")


def test_bad_token_file_is_a_usage_error(repo: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_text("# nothing\n\n")
    for path, expected in ((tmp_path / "missing", "FileNotFoundError"), (empty, "no token")):
        done = subprocess.run(
            [sys.executable, "-m", "secretsync", "serve", str(repo), "--no-kube",
             "--api-token-file", str(path)],
            env={"PATH": os.environ["PATH"], "HOME": str(tmp_path), "SECRETSYNC_HMAC_KEY": "k"},
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert done.returncode == 2, done.stderr
        assert "--api-token-file" in done.stderr and expected in done.stderr


def test_kubernetes_review_401_403_200(
    repo: Path, tmp_path: Path, serve: list[ServeClient]
) -> None:
    from kubernetes import client as k8s

    from tests.support.kubecluster import start_cluster

    cluster = start_cluster(name="apiauth", workdir=tmp_path / "kube")
    try:
        # the daemon's identity reviews tokens: a ServiceAccount with the chart's rules only
        home = _daemon_identity(cluster, tmp_path)
        client = _start(
            serve, repo, tmp_path, "--api-auth", "kubernetes", "--home-kubeconfig", str(home),
            "--no-leader-elect",
        )  # fmt: skip
        reader = cluster.unprivileged_token  # authenticated, no RBAC yet
        for path in PROTECTED:
            assert client.request(path)[0] == 401, path
            assert client.request(path, headers=_bearer(canary.new("bogus")))[0] == 401, path
            assert client.request(path, headers=_bearer(reader))[0] == 403, path
        _open_paths_stay_open(client)
        rbac = k8s.RbacAuthorizationV1Api(cluster.api_client())
        rbac.create_cluster_role(
            k8s.V1ClusterRole(
                metadata=k8s.V1ObjectMeta(name="secretsync-status-reader"),
                rules=[
                    k8s.V1PolicyRule(
                        verbs=["get"], non_resource_urls=["/v1/status", "/v1/status/*", "/"]
                    )
                ],
            )
        )
        rbac.create_cluster_role_binding(
            k8s.V1ClusterRoleBinding(
                metadata=k8s.V1ObjectMeta(name="secretsync-status-reader"),
                role_ref=k8s.V1RoleRef(
                    api_group="rbac.authorization.k8s.io",
                    kind="ClusterRole",
                    name="secretsync-status-reader",
                ),
                subjects=[
                    k8s.RbacV1Subject(
                        kind="User",
                        name="secretsync-unprivileged",
                        api_group="rbac.authorization.k8s.io",
                    )
                ],
            )
        )
        # a refusal is cached for 10 s: the binding shows within that (plus RBAC's own delay)
        started = time.monotonic()
        # each path's refusal was cached when it was asked, so each is waited for on its own
        for path in ("/v1/status", "/v1/status/summary", "/"):
            client.wait_for(
                lambda path=path: client.request(path, headers=_bearer(reader))[0] == 200,
                timeout=30,
                what=f"the bound reader gets {path}",
            )
        waited = time.monotonic() - started
        assert client.request("/metrics", headers=_bearer(reader))[0] == 403  # not granted
        text = client.log_text()
        assert reader not in text and "secretsync-unprivileged may not get" in text
        assert waited < 30
    finally:
        cluster.stop()


def _daemon_identity(cluster: object, tmp_path: Path) -> Path:
    """A kubeconfig for a ServiceAccount bound to only `tokenreviews` and
    `subjectaccessreviews` create (the chart's rules for the status API)."""
    from kubernetes import client as k8s

    from tests.support.kubecluster import KubeCluster

    assert isinstance(cluster, KubeCluster)
    api = cluster.api_client()
    core, rbac = k8s.CoreV1Api(api), k8s.RbacAuthorizationV1Api(api)
    core.create_namespaced_service_account(
        "default", k8s.V1ServiceAccount(metadata=k8s.V1ObjectMeta(name="secretsync"))
    )
    rbac.create_cluster_role(
        k8s.V1ClusterRole(
            metadata=k8s.V1ObjectMeta(name="secretsync-reviews"),
            rules=[
                k8s.V1PolicyRule(
                    api_groups=["authentication.k8s.io"], resources=["tokenreviews"],
                    verbs=["create"],
                ),
                k8s.V1PolicyRule(
                    api_groups=["authorization.k8s.io"], resources=["subjectaccessreviews"],
                    verbs=["create"],
                ),
            ],
        )
    )  # fmt: skip
    rbac.create_cluster_role_binding(
        k8s.V1ClusterRoleBinding(
            metadata=k8s.V1ObjectMeta(name="secretsync-reviews"),
            role_ref=k8s.V1RoleRef(
                api_group="rbac.authorization.k8s.io", kind="ClusterRole", name="secretsync-reviews"
            ),
            subjects=[k8s.RbacV1Subject(kind="ServiceAccount", name="secretsync", namespace="default")],
        )
    )  # fmt: skip
    token = core.create_namespaced_service_account_token(
        "secretsync", "default", k8s.AuthenticationV1TokenRequest(spec=k8s.V1TokenRequestSpec(
            audiences=[], expiration_seconds=3600))
    ).status.token  # fmt: skip
    path = cluster.kubeconfig(tmp_path / "home.yaml")
    text = path.read_text().replace(cluster.admin_token, token)
    path.write_text(text)
    return path
