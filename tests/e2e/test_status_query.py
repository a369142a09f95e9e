"""`/v1/status` filtered and paginated, and `/v1/status/summary`, through aiohttp's test client
against the real Daemon (FakeEngine answers the cycle)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_web import AiohttpClient, FakeEngine, MakeRepo, started
from tests.support import fleets


@pytest.fixture
def repo(fleet_repo: MakeRepo) -> Path:
    return fleets.write_fleet(fleet_repo)


async def _get(client: Any, query: str, *, status: int = 200) -> dict[str, Any]:
    resp = await client.get(f"/v1/status{query}")
    assert resp.status == status, await resp.text()
    doc: dict[str, Any] = await resp.json()
    return doc


def _keys(doc: dict[str, Any]) -> list[tuple[str, str]]:
    return [(o["cluster"], o["fleetSecret"]) for o in doc["objects"]]


async def test_pages_walk_every_object_once_in_order(
    repo: Path, aiohttp_client: AiohttpClient
) -> None:
    _, client = await started(repo, aiohttp_client, FakeEngine())
    whole = await _get(client, "")
    assert "continue" not in whole and len(whole["objects"]) == 8  # the old document stays
    seen: list[tuple[str, str]] = []
    token: str | None = None
    pages = 0
    while True:
        doc = await _get(client, "?limit=3" + (f"&continue={token}" if token else ""))
        assert len(doc["objects"]) <= 3
        assert doc["totals"] == whole["totals"]  # fleet-wide, not the page's
        seen += _keys(doc)
        pages += 1
        token = doc["continue"]
        if token is None:
            break
    assert pages == 3
    assert seen == _keys(whole) == sorted(seen)


async def test_filters_by_cluster_state_and_fleet_secret(
    repo: Path, aiohttp_client: AiohttpClient
) -> None:
    engine = FakeEngine()
    _, client = await started(repo, aiohttp_client, engine)
    doc = await _get(client, "?cluster=prod-use1&cluster=dev-use1")
    assert {o["cluster"] for o in doc["objects"]} == {"prod-use1", "dev-use1"}
    assert len(doc["objects"]) == 3 and doc["continue"] is None
    assert [c["name"] for c in doc["clusters"]] == ["dev-use1", "prod-use1"]
    assert (await _get(client, "?state=failed"))["objects"] == []
    synced = await _get(client, "?state=synced&state=failed")
    assert len(synced["objects"]) == 8
    web = await _get(client, "?fleetSecret=web-api")
    assert web["objects"] and {o["fleetSecret"] for o in web["objects"]} == {"web-api"}
    # one page of a filter: the token resumes within the same filter
    first = await _get(client, "?fleetSecret=web-api&limit=1")
    rest = await _get(client, f"?fleetSecret=web-api&limit=100&continue={first['continue']}")
    assert _keys(first) + _keys(rest) == _keys(web)


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ("?state=broken", "'state'"),
        ("?limit=0", "'limit'"),
        ("?limit=5001", "'limit'"),
        ("?limit=ten", "'limit'"),
        ("?limit=1&limit=2", "'limit'"),
        ("?continue=not-a-token", "'continue'"),
        ("?cluster=", "'cluster'"),
        ("?clusters=prod-use1", "'clusters'"),
    ],
)
async def test_bad_query_is_400_naming_the_parameter(
    repo: Path, aiohttp_client: AiohttpClient, query: str, named: str
) -> None:
    _, client = await started(repo, aiohttp_client, FakeEngine())
    doc = await _get(client, query, status=400)
    assert named in doc["error"]


async def test_token_of_another_fleet_load_is_gone(
    fleet_repo: MakeRepo, aiohttp_client: AiohttpClient
) -> None:
    root = fleets.write_fleet(fleet_repo)
    daemon, client = await started(root, aiohttp_client, FakeEngine())
    token = (await _get(client, "?limit=2"))["continue"]
    await daemon.cycle(trigger="interval")  # same fleet: the token stays good
    assert len((await _get(client, f"?limit=2&continue={token}"))["objects"]) == 2
    (root / "secrets" / "api.yaml").unlink()  # objects leave the fleet
    await daemon.cycle(trigger="interval")
    doc = await _get(client, f"?limit=2&continue={token}", status=410)
    assert "'continue'" in doc["error"] and "list again" in doc["error"]


async def test_summary_counts_without_objects(repo: Path, aiohttp_client: AiohttpClient) -> None:
    engine = FakeEngine()
    daemon, client = await started(repo, aiohttp_client, engine)
    engine.action = "failed"
    await daemon.cycle(trigger="interval")
    resp = await client.get("/v1/status/summary")
    assert resp.status == 200
    doc = await resp.json()
    assert "objects" not in doc
    assert doc["fleet"]["name"] == "acme"
    assert doc["totals"]["failed"] == 8 and doc["totals"]["synced"] == 0
    assert doc["clusters"]["prod-use1"]["failed"] == 2
    assert doc["cycles"] == 2 and doc["lastCycle"]["outcome"] == "failed"
    assert doc["deletesHeld"] == {} and doc["lastPush"] is None


def test_cluster_ranges_do_not_bleed_into_names_that_share_a_prefix() -> None:
    from secretsync.daemon import statusquery
    from secretsync.daemon.status import ClusterInfo, Entry, StatusBoard

    board = StatusBoard()
    for cluster in ("pro", "prod", "prod-a", "prodz", "q"):
        board.clusters[cluster] = ClusterInfo(name=cluster, delivery="direct", labels={})
        for fs in ("a", "b", "c"):
            board.entries[(cluster, fs)] = Entry(
                cluster=cluster, fleet_secret=fs, namespace="ns", name=fs, delivery="direct"
            )
    query = statusquery.parse({"cluster": ["prod", "q"], "limit": ["2"]})
    seen: list[tuple[str, str]] = []
    while True:
        doc = statusquery.page(board, query)
        seen += _keys(doc)
        if doc["continue"] is None:
            break
        query = statusquery.parse(
            {"cluster": ["prod", "q"], "limit": ["2"], "continue": [doc["continue"]]}
        )
    assert seen == [(c, fs) for c in ("prod", "q") for fs in ("a", "b", "c")]
