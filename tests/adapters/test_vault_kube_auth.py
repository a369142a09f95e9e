"""Kubernetes auth end to end: OpenBao asks a real kube-apiserver (1.20) to review the JWT.

Each test gets a fresh namespace on the session's test cluster with three ServiceAccounts
(their token Secrets made by the controller manager): `secretsync`, the account the role is
bound to; `stranger`, an account the role does not name; and `vault-reviewer`, bound to the
ClusterRole `system:auth-delegator`, whose token OpenBao uses for TokenReview. OpenBao gets a
kubernetes auth mount of its own, configured with the cluster's server URL and CA and the
issuer of 1.20 service-account token Secrets, plus a KV v2 mount only the role's policy reads.

Requests are counted on the wire by `CountingProxy` and by the source's counters. Every
secret value is a canary; JWTs and issued tokens are checked against errors and log records
and handed to the session-wide leak scan.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from kubernetes import client as k8s

from secretsync.core import errors, model
from secretsync.sources import resolve, vault
from tests.adapters.conftest_kube import NamespaceFactory
from tests.support import canary as canaries
from tests.support.kubecluster import KubeCluster
from tests.support.openbao import REVIEWER, CountingProxy, OpenBao, kubernetes_auth

WAIT_S = 60.0
ROLE = "secretsync"

FAST = vault.RetryPolicy(
    attempts=4,
    base_delay_s=0.02,
    max_delay_s=0.2,
    budget_s=10.0,
    breaker_threshold=5,
    breaker_cooldown_s=0.2,
    login_backoff_s=30.0,
)


@dataclass(frozen=True)
class KubeAuth:
    """What one test's Kubernetes auth setup made, in the cluster and in OpenBao."""

    cluster: KubeCluster
    namespace: str
    auth_mount: str  # the kubernetes auth mount path in OpenBao
    kv_mount: str  # a KV v2 mount the role's policy may read
    app_jwt: str = field(repr=False)  # token of `secretsync`, bound to the role
    stranger_jwt: str = field(repr=False)  # token of `stranger`, not bound to the role
    reviewer_jwt: str = field(repr=False)  # token of `vault-reviewer`, for TokenReview

    def secrets(self) -> list[str]:
        return [self.app_jwt, self.stranger_jwt, self.reviewer_jwt]


# --- helpers ---------------------------------------------------------------------------------


def canary() -> str:
    return canaries.new("vault-kube")


def assert_clean(needles: Iterable[str], *texts: str, caplog: pytest.LogCaptureFixture) -> None:
    """No needle (value, JWT, token) in any text or captured log record; all join the scan."""
    haystack = [*texts]
    haystack += [record.getMessage() for record in caplog.records]
    haystack += [repr(record.args) for record in caplog.records]
    for needle in needles:
        assert needle
        canaries.remember(needle)
        for text in haystack:
            assert needle not in text, f"secret material leaked into: {text[:200]!r}"


def loc(mount: str, path: str) -> model.Location:
    return model.Location(source="vault", path=path, mount=mount)


def ref(mount: str, path: str, key: str) -> model.ValueRef:
    return model.ValueRef(location=loc(mount, path), key=key)


def kube_source(address: str, jwt_file: Path, auth_mount: str) -> vault.VaultSource:
    """The source as a Fleet would configure it: method kubernetes, role, mountPath, jwtFile."""
    settings = model.VaultSettings(
        address=address,
        auth=model.VaultAuth(
            method="kubernetes", role=ROLE, mount_path=auth_mount, jwt_file=str(jwt_file)
        ),
        limits=model.VaultLimits(timeout_seconds=5.0),
    )
    return vault.build_vault_source(settings, env={}, root=jwt_file.parent, retry=FAST)


def issued_tokens(proxy: CountingProxy) -> list[str]:
    return [s.token for s in proxy.seen if s.method == "ISSUED" and s.token]


def token_review_passes(cluster: KubeCluster, jwt: str) -> bool:
    """What the apiserver's TokenReview says about `jwt` (asked with the admin token)."""
    with cluster.api_client() as api:
        review = k8s.AuthenticationV1Api(api).create_token_review(
            k8s.V1TokenReview(spec=k8s.V1TokenReviewSpec(token=jwt))
        )
    assert review.status is not None
    return review.status.authenticated is True


async def wait_until_rejected(cluster: KubeCluster, jwt: str) -> float:
    """Poll TokenReview until it rejects `jwt`; returns the seconds it took (deadline WAIT_S).

    The apiserver caches successful token authentications for a few seconds, so a deleted
    account's token still passes for a short while.
    """
    start = time.monotonic()
    while await asyncio.to_thread(token_review_passes, cluster, jwt):
        if time.monotonic() - start > WAIT_S:
            pytest.fail(f"TokenReview still accepts the deleted account's token after {WAIT_S}s")
        await asyncio.sleep(0.1)
    return time.monotonic() - start


# --- the setup -------------------------------------------------------------------------------


@pytest.fixture
def kube_auth(
    kube_cluster: KubeCluster, kube_namespace: NamespaceFactory, openbao: OpenBao, unique: str
) -> Iterator[KubeAuth]:
    """The shared kubernetes auth setup plus a role `ROLE` bound to the account `ROLE`, whose
    policy reads the whole KV mount."""
    with kubernetes_auth(
        openbao,
        kube_cluster,
        namespace=kube_namespace(kube_cluster, prefix="vk"),
        unique=unique,
        accounts=(ROLE, "stranger"),
    ) as made:
        setup = KubeAuth(
            cluster=kube_cluster,
            namespace=made.namespace,
            auth_mount=made.auth_mount,
            kv_mount=made.kv_mount,
            app_jwt=made.jwts[ROLE],
            stranger_jwt=made.jwts["stranger"],
            reviewer_jwt=made.jwts[REVIEWER],
        )
        client = openbao.client()
        client.sys.create_or_update_policy(
            name=setup.kv_mount,
            policy=f'path "{setup.kv_mount}/data/*" {{ capabilities = ["read"] }}',
        )
        client.adapter.post(
            f"/v1/auth/{setup.auth_mount}/role/{ROLE}",
            json={
                "bound_service_account_names": [ROLE],
                "bound_service_account_namespaces": [setup.namespace],
                "token_policies": [setup.kv_mount],
            },
        )
        yield setup


# --- tests -----------------------------------------------------------------------------------


async def test_bound_service_account_logs_in_once_through_tokenreview_for_every_read(
    kube_auth: KubeAuth,
    openbao: OpenBao,
    proxy: CountingProxy,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    mount = kube_auth.kv_mount
    values = {f"app/p{i}": {"user": canary(), "password": canary()} for i in range(40)}
    for path, document in values.items():
        openbao.write_kv(mount, path, document)
    jwt_file = tmp_path / "token"
    jwt_file.write_text(kube_auth.app_jwt + "\n")  # as a pod's token file may end
    # 40 paths x 2 keys, asked for by 3 "clusters": 240 refs, 80 distinct, 40 unique reads
    refs = [
        ref(mount, path, key)
        for _cluster in range(3)
        for path in values
        for key in ("user", "password")
    ]
    source = kube_source(proxy.address, jwt_file, kube_auth.auth_mount)
    try:
        first = await resolve.resolve(refs, {"vault": source})
        # a second cycle, concurrent fetches this time: still the same login
        again = await asyncio.gather(*(source.fetch(loc(mount, path)) for path in values))
    finally:
        await source.aclose()

    assert first.failures == {}
    assert first.reads == 40
    for (path, key), value in {
        (r.location.path, r.key): v for r, v in first.values.items()
    }.items():
        assert value.reveal().decode() == values[path][key]
    assert [fetched.document for fetched in again] == list(values.values())
    assert source.counters.logins == 1
    assert source.counters.reads == 80
    assert source.counters.failures == {}
    [login] = [s for s in proxy.seen if s.path == f"/v1/auth/{kube_auth.auth_mount}/login"]
    assert (login.method, login.status, login.token) == ("POST", 200, None)
    assert json.loads(login.body) == {"role": ROLE, "jwt": kube_auth.app_jwt}
    [issued] = issued_tokens(proxy)
    reads = [s for s in proxy.seen if s.path.startswith(f"/v1/{mount}/data/")]
    assert len(reads) == 80
    assert {(s.status, s.token) for s in reads} == {(200, issued)}
    assert proxy.count("GET", f"/v1/sys/internal/ui/mounts/{mount}", status=200) == 1
    assert any(
        record.getMessage().startswith(
            f"vault: logged in with kubernetes at auth/{kube_auth.auth_mount} "
        )
        for record in caplog.records
    )
    assert_clean(
        [*(v for doc in values.values() for v in doc.values()), *kube_auth.secrets(), issued],
        repr(source),
        caplog=caplog,
    )


async def test_service_account_not_bound_to_the_role_is_access_denied_after_one_login(
    kube_auth: KubeAuth,
    openbao: OpenBao,
    proxy: CountingProxy,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    mount = kube_auth.kv_mount
    values = {f"p{i}": canary() for i in range(5)}
    for path, value in values.items():
        openbao.write_kv(mount, path, {"v": value})
    (tmp_path / "stranger").write_text(kube_auth.stranger_jwt)
    (tmp_path / "app").write_text(kube_auth.app_jwt)
    # the stranger's token is valid for the apiserver: only the role's binding refuses it
    assert token_review_passes(kube_auth.cluster, kube_auth.stranger_jwt)
    stranger = kube_source(proxy.address, tmp_path / "stranger", kube_auth.auth_mount)
    bound = kube_source(proxy.address, tmp_path / "app", kube_auth.auth_mount)
    try:
        with pytest.raises(errors.AccessDenied) as denied:
            await stranger.fetch(loc(mount, "p0"))
        rest = await resolve.resolve(
            [ref(mount, f"p{i}", "v") for i in range(1, 5)], {"vault": stranger}
        )
        allowed = await bound.fetch(loc(mount, "p0"))
    finally:
        await stranger.aclose()
        await bound.aclose()

    refused = f"login with kubernetes at auth/{kube_auth.auth_mount} was refused (403)"
    assert str(denied.value) == f"vault:{mount}/p0: {refused}"
    assert {str(e) for e in rest.failures.values()} == {
        f"vault:{mount}/p{i}: {refused}" for i in range(1, 5)
    }
    assert all(isinstance(e, errors.AccessDenied) for e in rest.failures.values())
    assert rest.values == {}
    # the refusal is remembered: one login for five refs, no KV request at all
    assert stranger.counters.logins == 1
    assert stranger.counters.failures == {"denied": 5}
    logins = [s for s in proxy.seen if s.path == f"/v1/auth/{kube_auth.auth_mount}/login"]
    assert [(s.status, json.loads(s.body)) for s in logins] == [
        (403, {"role": ROLE, "jwt": kube_auth.stranger_jwt}),
        (200, {"role": ROLE, "jwt": kube_auth.app_jwt}),
    ]
    assert proxy.count("GET", f"/v1/{mount}/data/") == 1  # the bound account's read
    assert allowed.document == {"v": values["p0"]}
    assert_clean(
        [*values.values(), *kube_auth.secrets(), *issued_tokens(proxy)],
        str(denied.value),
        *(str(e) for e in rest.failures.values()),
        repr(stranger),
        caplog=caplog,
    )


async def test_deleted_service_account_cannot_log_in_again_once_its_token_is_revoked(
    kube_auth: KubeAuth,
    openbao: OpenBao,
    proxy: CountingProxy,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    mount = kube_auth.kv_mount
    values = {path: canary() for path in ("a", "b", "c", "d")}
    for path, value in values.items():
        openbao.write_kv(mount, path, {"v": value})
    jwt_file = tmp_path / "token"
    jwt_file.write_text(kube_auth.app_jwt)
    source = kube_source(proxy.address, jwt_file, kube_auth.auth_mount)
    try:
        assert (await source.fetch(loc(mount, "a"))).document == {"v": values["a"]}
        [issued] = issued_tokens(proxy)

        with kube_auth.cluster.api_client() as api:
            k8s.CoreV1Api(api).delete_namespaced_service_account(ROLE, kube_auth.namespace)
        waited = await wait_until_rejected(kube_auth.cluster, kube_auth.app_jwt)

        # OpenBao's token outlives the account: reads go on without a new login
        assert (await source.fetch(loc(mount, "b"))).document == {"v": values["b"]}
        assert source.counters.logins == 1

        openbao.client().auth.token.revoke(issued)
        with pytest.raises(errors.AccessDenied) as denied:
            await source.fetch(loc(mount, "c"))
        with pytest.raises(errors.AccessDenied) as after:
            await source.fetch(loc(mount, "d"))
    finally:
        await source.aclose()

    where = f"auth/{kube_auth.auth_mount}"
    assert (
        str(denied.value) == f"vault:{mount}/c: login with kubernetes at {where} was refused (403)"
    )
    # within the back-off window the revoked token's 403 is final: no second failed login
    assert str(after.value) == f"vault:{mount}/d: permission denied (HTTP 403)"
    assert source.counters.logins == 2
    assert source.counters.failures == {"denied": 2}
    logins = [s for s in proxy.seen if s.path == f"/v1/{where}/login"]
    assert [s.status for s in logins] == [200, 403]
    assert json.loads(logins[1].body) == {"role": ROLE, "jwt": kube_auth.app_jwt}
    assert proxy.count("GET", f"/v1/{mount}/data/c", status=403) == 1
    assert proxy.count("GET", f"/v1/{mount}/data/d", status=403) == 1
    assert issued_tokens(proxy) == [issued]
    assert waited < WAIT_S
    assert_clean(
        [*values.values(), *kube_auth.secrets(), issued],
        str(denied.value),
        str(after.value),
        caplog=caplog,
    )
