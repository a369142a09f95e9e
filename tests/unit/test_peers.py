"""Peer URLs of `serve --peer` and the ids of forwarded webhooks (`secretsync.daemon.peers`)."""

from __future__ import annotations

import pytest

from secretsync.daemon import peers, webhook


def test_a_chart_list_skips_this_pod() -> None:
    urls = [f"http://rel-{n}.rel-peers.ns.svc:8080" for n in range(3)]
    assert peers.others(urls, hostname="rel-1") == (urls[0], urls[2])
    # `rel-1` is not a prefix match of `rel-10`
    assert peers.others(["http://rel-10.rel-peers.ns.svc:8080"], hostname="rel-1") == (
        "http://rel-10.rel-peers.ns.svc:8080",
    )
    assert peers.others([*urls, urls[0]], hostname="") == tuple(urls)


@pytest.mark.parametrize(
    "url", ["rel-0:8080", "ftp://h:1", "http://h:1/v1/webhooks/vault", "http://h:99999", "http://"]
)
def test_a_bad_peer_url_is_refused(url: str) -> None:
    with pytest.raises(ValueError, match="--peer"):
        peers.check_peer(url)


def test_a_peer_url_is_its_base() -> None:
    assert peers.check_peer(" https://h.example:8443/ ") == "https://h.example:8443"


def test_the_forwarded_id_is_derived_and_accepted() -> None:
    fid = peers.forwarded_id("x" * webhook.MAX_ID_CHARS)
    assert fid == peers.forwarded_id("x" * webhook.MAX_ID_CHARS)
    assert fid != peers.forwarded_id("msg_2") and fid.startswith("fwd_")
    verifier = webhook.Verifier(key=b"k", clock=lambda: 1000.0)
    body = b'{"paths": ["secret/a"]}'
    headers = {
        "webhook-id": fid,
        "webhook-timestamp": "1000",
        "webhook-signature": webhook.sign(b"k", fid, 1000, body),
    }
    assert verifier.verify(headers, body).paths == ("secret/a",)


def test_a_chart_peer_url_names_its_shard() -> None:
    assert peers.ordinal("http://rel-2.rel-peers.ns.svc:8080") == 2
    assert peers.ordinal("http://127.0.0.1:8080") is None
    assert peers.ordinal("http://rel.example:8080") is None


async def test_a_peer_token_is_for_one_path_one_key_one_use_and_one_minute() -> None:
    now = 1_800_000_000.0
    check = peers.PeerTokens(b"key", clock=lambda: now)
    token = peers.peer_token(b"key", path="/v1/status", now=now - 30)
    assert (await check.check(token, path="/v1/status")).status == 200
    assert (await check.check(token, path="/v1/status")).status == 401  # a replay
    fresh = peers.peer_token(b"key", path="/v1/status", now=now)
    assert (await check.check(fresh, path="/metrics")).status == 401  # made for another path
    assert (await check.check(fresh, path="/v1/status")).status == 200
    made = peers.peer_token(b"key", path="/metrics", now=now)
    assert (await check.check(made, path="/metrics")).status == 403  # status only
    other = peers.peer_token(b"other", path="/v1/status", now=now)
    assert (await check.check(other, path="/v1/status")).status == 401
    old = peers.peer_token(b"key", path="/v1/status", now=now - 61)
    assert (await check.check(old, path="/v1/status")).status == 401
    assert (await check.check("not.a.peer.token", path="/v1/status")).status == 401
    # a webhook signature under the same secret is not a peer token
    sig = webhook.sign(b"key", "msg_1", int(now), b"/v1/status").removeprefix("v1,")
    forged = f"ssp1.{int(now)}.{'n' * 24}.{sig}"
    assert (await check.check(forged, path="/v1/status")).status == 401
