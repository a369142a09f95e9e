"""T7: a real kube-apiserver behind an HTTP proxy that answers 429 with `Retry-After`.
(The same proxy, slowing lists down, shows that the sink lists a bounded number of clusters
at once.)

The proxy (aiohttp, plain HTTP on 127.0.0.1, forwarding over TLS to the apiserver with the
caller's own bearer token) throttles chosen clusters: the first `throttle` write requests get
`429 Too Many Requests` and `Retry-After: 2`. Every request is stamped on arrival, so the test
can check that once a cluster said "not before", nothing more reached it until then, while an
unthrottled cluster was served at once.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
import ssl
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import pytest
import yaml
from aiohttp import web
from kubernetes import client as k8s

from secretsync.engine.cycle import Engine
from secretsync.fleet import load
from secretsync.kube.clusters import ClientFactory
from secretsync.sinks.kube.sink import KubeSink
from tests.adapters.conftest_kube import NamespaceFactory
from tests.support import canary
from tests.support.fakes import FakeSource
from tests.support.kubecluster import KubeCluster

KEY = b"kube-throttle-hmac-key"
RETRY_AFTER_S = 2
MakeRepo = Callable[[dict[str, str | bytes]], Path]


@dataclass
class ThrottlingProxy:
    """Forwards to one apiserver; answers 429 to the first `throttle` writes."""

    cluster: KubeCluster
    throttle: int = 0
    arrivals: list[tuple[float, str]] = field(default_factory=list)
    refused_at: list[float] = field(default_factory=list)
    port: int = 0
    list_delay_s: float = 0.0
    lists: list[tuple[float, float]] = field(default_factory=list)  # (arrived, answered)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        now = time.monotonic()
        self.arrivals.append((now, request.method))
        if request.method == "GET" and "labelSelector" in request.query:
            await asyncio.sleep(self.list_delay_s)  # the fault: a slow list
            answer = await self.forward(request)
            self.lists.append((now, time.monotonic()))
            return answer
        return await self.forward(request)

    async def forward(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        if request.method in ("PATCH", "POST", "PUT") and len(self.refused_at) < self.throttle:
            self.refused_at.append(time.monotonic())
            return web.json_response(
                {"kind": "Status", "status": "Failure", "reason": "TooManyRequests", "code": 429},
                status=429,
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )
        headers = {
            k: v
            for k, v in request.headers.items()
            if k.lower() in ("authorization", "accept", "content-type")
        }
        context = ssl.create_default_context(cafile=str(self.cluster.ca_file))
        async with (
            aiohttp.ClientSession() as session,
            session.request(
                request.method,
                self.cluster.server + request.path_qs,
                data=body,
                headers=headers,
                ssl=context,
            ) as upstream,
        ):
            payload = await upstream.read()
            return web.Response(
                body=payload,
                status=upstream.status,
                content_type=upstream.content_type,
            )


@pytest.fixture
async def proxies(kube_clusters: list[KubeCluster]) -> AsyncIterator[list[ThrottlingProxy]]:
    started: list[tuple[ThrottlingProxy, web.AppRunner]] = []
    for cluster in kube_clusters[:2]:
        proxy = ThrottlingProxy(cluster)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", proxy.handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        proxy.port = runner.addresses[0][1]
        started.append((proxy, runner))
    try:
        yield [p for p, _ in started]
    finally:
        for _, runner in started:
            await runner.cleanup()


def kubeconfig(proxy: ThrottlingProxy, path: Path) -> Path:
    proxy.cluster.kubeconfig(path)
    doc = yaml.safe_load(path.read_text())
    cluster = doc["clusters"][0]["cluster"]
    cluster["server"] = f"http://127.0.0.1:{proxy.port}"
    cluster.pop("certificate-authority", None)
    cluster.pop("certificate-authority-data", None)
    path.write_text(yaml.safe_dump(doc))
    return path


def cluster_docs(proxies: list[ThrottlingProxy], tmp_path: Path) -> str:
    """One Cluster per proxy, reached through it, with fresh names."""
    suffix = secrets.token_hex(3)
    return "---\n".join(
        f"apiVersion: secretsync.dev/v1alpha1\nkind: Cluster\n"
        f"metadata: {{name: c{i}-{suffix}, labels: {{env: prod}}}}\n"
        f"spec: {{kubeconfig: {{path: {kubeconfig(p, tmp_path / f'c{i}.yaml')}}}}}\n"
        for i, p in enumerate(proxies)
    )


async def test_retry_after_holds_every_request_to_that_cluster_only(
    fleet_repo: MakeRepo,
    kube_clusters: list[KubeCluster],
    kube_namespace: NamespaceFactory,
    proxies: list[ThrottlingProxy],
    tmp_path: Path,
) -> None:
    throttled, free = proxies
    throttled.throttle = 1
    ns = kube_namespace()
    clusters = cluster_docs(proxies, tmp_path)
    count = 30  # more than the sink keeps in flight, so requests keep coming after the 429
    secret_docs = "---\n".join(
        f"apiVersion: secretsync.dev/v1alpha1\nkind: FleetSecret\nmetadata: {{name: s{i}}}\n"
        f"spec:\n  clusterSelector: {{}}\n  target: {{name: s{i}, namespace: {ns}}}\n"
        f"  data: {{v: {{vault: {{path: p{i}, key: v}}}}}}\n"
        for i in range(count)
    )
    root = fleet_repo(
        {
            "secretsync.yaml": "apiVersion: secretsync.dev/v1alpha1\nkind: Fleet\n"
            "metadata: {name: throttle}\nspec: {defaults: {delivery: direct}}\n",
            "clusters/all.yaml": clusters,
            "secrets/all.yaml": secret_docs,
        }
    )
    values: dict[str, dict[str, object]] = {
        f"p{i}": {"v": canary.new(f"t7-{i}")} for i in range(count)
    }
    sink = KubeSink(clients=ClientFactory(root=root), hmac_key=KEY, backoff_s=0.1)
    engine = Engine(
        sources={"vault": FakeSource(values)},
        sinks=[sink],
        hmac_key=KEY,
        clock=lambda: datetime.now(UTC),
        cluster_timeout_s=30.0,
    )
    report = await engine.run_cycle(load.load_fleet(root))
    assert report.ok, (report.failures, report.failed_clusters)
    assert report.writes == 2 * count

    (refused,) = throttled.refused_at
    # requests already on the wire when the 429 left may still arrive; after that, nothing
    # until Retry-After has passed
    grace = 0.3
    early = [
        round(t - refused, 3)
        for t, _ in throttled.arrivals
        if refused + grace < t < refused + RETRY_AFTER_S - 0.05
    ]
    assert early == [], f"requests within Retry-After: {early}"
    later = [t for t, _ in throttled.arrivals if t >= refused + RETRY_AFTER_S - 0.05]
    assert later, "the throttled cluster was never retried"
    # the other cluster was not held: all its requests were served before the hold ended
    assert free.arrivals and max(t for t, _ in free.arrivals) < refused + RETRY_AFTER_S
    for proxy in proxies:
        with proxy.cluster.api_client() as api:
            for i in range(count):
                got = k8s.CoreV1Api(api).read_namespaced_secret(f"s{i}", ns)
                assert base64.b64decode(got.data["v"]) == str(values[f"p{i}"]["v"]).encode()


@pytest.mark.parametrize("at_once", [1, 2])
async def test_the_sink_lists_a_bounded_number_of_clusters_at_once(
    fleet_repo: MakeRepo,
    proxies: list[ThrottlingProxy],
    tmp_path: Path,
    at_once: int,
) -> None:
    """Lists of a hundred clusters answering together would all wait in memory while the
    client compares one of them: `observe_concurrency` bounds how many are in flight."""
    clusters = cluster_docs(proxies, tmp_path)
    root = fleet_repo(
        {
            "secretsync.yaml": "apiVersion: secretsync.dev/v1alpha1\nkind: Fleet\n"
            "metadata: {name: lists}\nspec: {defaults: {delivery: direct}}\n",
            "clusters/all.yaml": clusters,
        }
    )
    fleet = load.load_fleet(root)
    for proxy in proxies:
        proxy.list_delay_s = 0.5
    sink = KubeSink(clients=ClientFactory(root=root), hmac_key=KEY, observe_concurrency=at_once)
    await asyncio.gather(*(sink.observe(c) for c in fleet.clusters.values()))
    (a,), (b,) = (p.lists for p in proxies)
    first, second = sorted((a, b))
    overlapped = second[0] < first[1]
    assert overlapped == (at_once == 2), (first, second)


async def test_lists_come_a_page_at_a_time(
    fleet_repo: MakeRepo,
    kube_namespace: NamespaceFactory,
    proxies: list[ThrottlingProxy],
    tmp_path: Path,
) -> None:
    """A cluster's owned objects are listed `list_page` at a time, following the apiserver's
    continue token to the last page (a cluster of 10,000 Secrets never holds its whole list)."""
    proxy = proxies[0]
    ns = kube_namespace(proxy.cluster)
    count = 5
    root = fleet_repo(
        {
            "secretsync.yaml": "apiVersion: secretsync.dev/v1alpha1\nkind: Fleet\n"
            "metadata: {name: pages}\nspec: {defaults: {delivery: direct}}\n",
            "clusters/all.yaml": cluster_docs([proxy], tmp_path),
            "secrets/all.yaml": "---\n".join(
                f"apiVersion: secretsync.dev/v1alpha1\nkind: FleetSecret\nmetadata: {{name: s{i}}}\n"
                f"spec:\n  clusterSelector: {{}}\n  target: {{name: s{i}, namespace: {ns}}}\n"
                f"  data: {{v: {{vault: {{path: p{i}, key: v}}}}}}\n"
                for i in range(count)
            ),
        }
    )
    values: dict[str, dict[str, object]] = {
        f"p{i}": {"v": canary.new(f"page-{i}")} for i in range(count)
    }
    fleet = load.load_fleet(root)
    sink = KubeSink(clients=ClientFactory(root=root), hmac_key=KEY, list_page=2)
    engine = Engine(
        sources={"vault": FakeSource(values)},
        sinks=[sink],
        hmac_key=KEY,
        clock=lambda: datetime.now(UTC),
    )
    assert (await engine.run_cycle(fleet)).ok
    (cluster,) = fleet.clusters.values()
    proxy.lists.clear()
    found = await sink.observe(cluster)
    assert {k.name for k, o in found.items() if o.owned and k.namespace == ns} == {
        f"s{i}" for i in range(count)
    }
    assert len(proxy.lists) >= 3, "5 owned objects, 2 a page"
    warm = await engine.run_cycle(fleet)
    assert warm.ok and warm.writes == 0
