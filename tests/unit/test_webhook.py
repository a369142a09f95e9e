"""Standard Webhooks verification and strict body parsing (tests/MATRIX.md rows W1-W3, W5)."""

from __future__ import annotations

import base64
import contextlib
import json
import time
from datetime import UTC, datetime

import pytest
import standardwebhooks
from hypothesis import given, settings
from hypothesis import strategies as st

from secretsync.daemon import webhook

KEY = b"unit-test-webhook-key-0123456789"
NOW = 1_750_000_000


def verifier(**kw: object) -> webhook.Verifier:
    return webhook.Verifier(key=KEY, clock=lambda: float(NOW), **kw)  # type: ignore[arg-type]


def headers(
    body: bytes, *, msg_id: str = "msg_1", ts: int = NOW, key: bytes = KEY
) -> dict[str, str]:
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(ts),
        "webhook-signature": webhook.sign(key, msg_id, ts, body),
    }


BODY = json.dumps({"paths": ["secret/payments/prod/db", "secret/data/web/prod"]}).encode()


@pytest.mark.parametrize("length", [1, 2, 3, 24, 32])
def test_parse_secret_is_base64_padded_or_not_with_or_without_the_prefix(length: int) -> None:
    raw = bytes(range(256 - length, 256))
    padded = base64.b64encode(raw).decode()
    unpadded = padded.rstrip("=")
    for text in (padded, unpadded, "whsec_" + padded, "whsec_" + unpadded):
        assert webhook.parse_secret(text) == raw, text


@pytest.mark.parametrize(
    "text", ["whsec_%%%", "plain text key", "whsec_abcde", "whsec_ab=c", "whsec_===="]
)
def test_parse_secret_refuses_what_is_not_base64(text: str) -> None:
    with pytest.raises(ValueError, match="not base64") as info:
        webhook.parse_secret(text)
    assert text.removeprefix("whsec_") not in str(info.value)


@pytest.mark.parametrize("text", ["", "whsec_"])
def test_parse_secret_refuses_an_empty_key(text: str) -> None:
    with pytest.raises(ValueError, match="is empty"):
        webhook.parse_secret(text)


# The reference library's own secrets: `whsec_` + base64 of 24 or 32 random bytes, as
# Standard Webhooks senders hand them out; some drop the base64 padding.
REFERENCE_SECRETS = [
    "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    "whsec_" + base64.b64encode(bytes(range(32))).decode(),
    "whsec_" + base64.b64encode(bytes(range(32))).decode().rstrip("="),
    base64.b64encode(bytes(range(100, 132))).decode().rstrip("="),
]


@pytest.mark.parametrize("secret", REFERENCE_SECRETS)
def test_signatures_of_the_reference_library_verify(secret: str) -> None:
    reference = standardwebhooks.Webhook(secret)
    stamp = datetime.fromtimestamp(NOW, tz=UTC)
    signature = reference.sign("msg_ref", stamp, BODY.decode())
    got = webhook.Verifier(key=webhook.parse_secret(secret), clock=lambda: float(NOW)).verify(
        {"webhook-id": "msg_ref", "webhook-timestamp": str(NOW), "webhook-signature": signature},
        BODY,
    )
    assert got.paths == ("secret/payments/prod/db", "secret/data/web/prod")


@pytest.mark.parametrize("secret", REFERENCE_SECRETS)
def test_our_signatures_verify_with_the_reference_library(secret: str) -> None:
    now = int(time.time())
    h = headers(BODY, msg_id="msg_ours", ts=now, key=webhook.parse_secret(secret))
    assert standardwebhooks.Webhook(secret).verify(BODY, h) == json.loads(BODY)


def test_good_signature_gives_normalised_paths() -> None:
    got = verifier().verify(headers(BODY), BODY)
    assert got == webhook.Verified("msg_1", ("secret/payments/prod/db", "secret/data/web/prod"))


def test_worked_example_from_the_readme() -> None:
    key = webhook.parse_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    body = b'{"paths": ["secret/payments/prod/db"]}'
    assert webhook.sign(key, "msg_2a", 1750000000, body) == (
        "v1,X/IPrwkUjPYtl1gFH73IEx1osMTw1I3EKgZ0RqfDTsQ="
    )


def test_one_of_several_signatures_is_enough() -> None:
    h = headers(BODY)
    h["webhook-signature"] = "v1,AAAA v2,whatever " + h["webhook-signature"]
    assert verifier().verify(h, BODY).paths


@pytest.mark.parametrize("drop", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_missing_header_is_401(drop: str) -> None:
    h = headers(BODY)
    del h[drop]
    with pytest.raises(webhook.Unauthorized):
        verifier().verify(h, BODY)


@pytest.mark.parametrize("offset", [-301, 301, -10_000, 10_000])
def test_stale_or_future_timestamp_is_401(offset: int) -> None:
    body = BODY
    with pytest.raises(webhook.Unauthorized, match="too far"):
        verifier().verify(headers(body, ts=NOW + offset), body)


@pytest.mark.parametrize("offset", [-300, 0, 300])
def test_timestamp_within_five_minutes_passes(offset: int) -> None:
    assert verifier().verify(headers(BODY, ts=NOW + offset), BODY).paths


def test_wrong_key_is_401() -> None:
    with pytest.raises(webhook.Unauthorized, match="no valid signature"):
        verifier().verify(headers(BODY, key=b"another key"), BODY)


def test_one_changed_byte_is_401() -> None:
    h = headers(BODY)
    for i in range(len(BODY)):
        tampered = BODY[:i] + bytes([BODY[i] ^ 1]) + BODY[i + 1 :]
        with pytest.raises(webhook.Unauthorized):
            verifier().verify(h, tampered)


def test_reserialised_json_is_401() -> None:
    h = headers(BODY)
    again = json.dumps(json.loads(BODY), separators=(",", ":")).encode()
    assert again != BODY
    with pytest.raises(webhook.Unauthorized):
        verifier().verify(h, again)


def test_signature_over_other_id_or_timestamp_is_401() -> None:
    h = headers(BODY)
    h["webhook-id"] = "msg_other"
    with pytest.raises(webhook.Unauthorized):
        verifier().verify(h, BODY)
    h = headers(BODY)
    h["webhook-timestamp"] = str(NOW + 1)
    with pytest.raises(webhook.Unauthorized):
        verifier().verify(h, BODY)


def test_replayed_id_is_acknowledged_once_and_does_no_work() -> None:
    v = verifier()
    first = v.verify(headers(BODY), BODY)
    again = v.verify(headers(BODY), BODY)
    assert not first.replay and first.paths
    assert again.replay and again.paths == ()


def test_seen_ids_are_bounded() -> None:
    v = verifier(max_seen=3)
    for i in range(10):
        v.verify(headers(BODY, msg_id=f"m{i}"), BODY)
    assert "seen=3" in repr(v)
    assert not v.verify(headers(BODY, msg_id="m0"), BODY).replay  # evicted, timestamp still valid


def test_unsigned_request_does_not_mark_the_id_seen() -> None:
    v = verifier()
    bad = headers(BODY, key=b"wrong")
    with pytest.raises(webhook.Unauthorized):
        v.verify(bad, BODY)
    assert not v.verify(headers(BODY), BODY).replay


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"\xff\xfe",
        b"[]",
        b'{"paths": []}',
        b'{"paths": "secret/x"}',
        b'{"paths": [1]}',
        b'{"paths": ["secret/x"], "extra": 1}',
        b'{"paths": ["secret/../other/x"]}',
        b'{"paths": ["secret/./x"]}',
        b'{"paths": ["secret//x"]}',
        b'{"paths": ["justmount"]}',
        b'{"paths": ["secret\\\\x/y"]}',
        b'{"paths": ["secret/x\\n"]}',
        json.dumps({"paths": ["secret/" + "a" * 600]}).encode(),
        json.dumps({"paths": [f"secret/p{i}" for i in range(300)]}).encode(),
        b"[" * 50_000 + b"]" * 50_000,
    ],
)
def test_bad_body_is_refused_as_400(body: bytes) -> None:
    with pytest.raises(webhook.BadBody):
        verifier().verify(headers(body), body)


def test_leading_and_trailing_slashes_and_duplicates_are_normalised() -> None:
    body = b'{"paths": ["/secret/web/prod/", "secret/web/prod"]}'
    assert verifier().verify(headers(body), body).paths == ("secret/web/prod",)


_text = st.text(max_size=40)
_headers = st.dictionaries(
    st.sampled_from(["webhook-id", "webhook-timestamp", "webhook-signature", "other"]),
    _text | st.sampled_from([str(NOW), "v1,", "v1,AAAA", "msg_1"]),
)


@settings(max_examples=400, deadline=None)
@given(h=_headers, body=st.binary(max_size=300))
def test_random_requests_raise_only_webhook_errors(h: dict[str, str], body: bytes) -> None:
    with contextlib.suppress(webhook.WebhookError):
        verifier().verify(h, body)


@settings(max_examples=300, deadline=None)
@given(body=st.binary(max_size=300) | st.text(max_size=200).map(str.encode))
def test_signed_random_bodies_raise_only_bad_body(body: bytes) -> None:
    with contextlib.suppress(webhook.BadBody):
        verifier().verify(headers(body), body)


@settings(max_examples=300, deadline=None)
@given(
    body=st.binary(max_size=200) | st.just(BODY),
    signature=st.binary(min_size=32, max_size=32),
    msg_id=st.text(min_size=1, max_size=20),
)
def test_wrong_signatures_are_always_refused(body: bytes, signature: bytes, msg_id: str) -> None:
    h = {
        "webhook-id": msg_id,
        "webhook-timestamp": str(NOW),
        "webhook-signature": "v1," + base64.b64encode(signature).decode(),
    }
    with pytest.raises(webhook.Unauthorized):
        verifier().verify(h, body)


@settings(max_examples=200, deadline=None)
@given(paths=st.lists(st.text(max_size=30), min_size=1, max_size=5))
def test_signed_random_paths_either_parse_cleanly_or_are_400(paths: list[str]) -> None:
    body = json.dumps({"paths": paths}).encode()
    try:
        got = verifier().verify(headers(body), body)
    except webhook.BadBody:
        return
    for path in got.paths:
        segments = path.split("/")
        assert len(segments) >= 2
        assert not {"", ".", ".."} & set(segments)
