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
