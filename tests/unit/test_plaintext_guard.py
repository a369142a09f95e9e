"""The Git sink's plaintext guard: no false refusals of values that equal text the manifest
holds anyway, and still a refusal for every extra occurrence of a value, in any of its forms.

The values here are the manifest's own words (`true`, a key's name, a label's value), not
canaries: that is the point. They are structural text of every file the tests write, so the
session's canary scan has nothing to look for in them.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import re
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from secretsync.core.values import MIN_GUARDED_LEN, SecretValue
from secretsync.delivery import materialize, seal
from secretsync.delivery.rendered import RenderContext, Rendered, dump_yaml, holds_plaintext
from secretsync.fleet import load, plan
from secretsync.sinks.git.sink import GitSink
from tests.support import cycles, keys
from tests.support.fakes import FakeSource

MakeRepo = Callable[[dict[str, str | bytes]], Path]
KEY = b"guard-test-hmac-key"
KEYS = ("merge2", "flag", "scope-word", "label-word")

FLEET = """\
apiVersion: secretsync.dev/v1alpha1
kind: Fleet
metadata: {name: guard}
spec: {defaults: {delivery: sealed}, output: {dir: rendered}}
"""
CLUSTER = """\
apiVersion: secretsync.dev/v1alpha1
kind: Cluster
metadata: {name: prod-use1, labels: {env: production}}
spec: {sealedSecrets: {certFile: certs/prod-use1.pem}}
"""
SECRET = """\
apiVersion: secretsync.dev/v1alpha1
kind: FleetSecret
metadata: {name: merge-test}
spec:
  clusterSelector: {}
  target:
    name: merge-test
    namespace: payments
    scope: namespace-wide
    immutable: true
    labels: {app: payments-api}
    annotations: {team: payments}
  data:
    merge2: {vault: {path: app/merge, key: merge2}}
    flag: {vault: {path: app/merge, key: flag}}
    scope-word: {vault: {path: app/merge, key: scope}}
    label-word: {vault: {path: app/merge, key: label}}
    region: {value: "{{ cluster.labels.env }}"}
"""


def fleet_files() -> dict[str, str | bytes]:
    return {
        "secretsync.yaml": FLEET,
        "clusters/c.yaml": CLUSTER,
        "secrets/s.yaml": SECRET,
        "certs/prod-use1.pem": keys.cert_pem(keys.rsa_key(0)),
    }


def test_values_equal_to_the_manifests_own_text_are_written(fleet_repo: MakeRepo) -> None:
    """`true` beside `immutable: true`, `namespace-wide` beside the scope annotation, a value
    equal to its key's name (`merge2: merge2`, as in Flux's test data) and to a label's value:
    written, and they open to those very values (all four were refused before)."""
    root = fleet_repo(fleet_files())
    source = FakeSource(
        {
            "app/merge": {
                "merge2": "merge2",
                "flag": "true",
                "scope": "namespace-wide",
                "label": "payments-api",
            }
        }
    )
    sink = GitSink(out_dir=root / "rendered", index=False)
    cycles.render(root, source, sink=sink, key=KEY, check=True)
    manifest = yaml.safe_load((root / "rendered/prod-use1/payments/merge-test.yaml").read_text())
    assert seal.unseal_manifest(manifest, [keys.rsa_key(0)]) == {
        "merge2": b"merge2",
        "flag": b"true",
        "scope-word": b"namespace-wide",
        "label-word": b"payments-api",
        "region": b"production",
    }


class Renderer:
    """The planned FleetSecret and its cluster's certificate, rendered with any values."""

    def __init__(self, root: Path) -> None:
        for rel, text in fleet_files().items():
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(text if isinstance(text, bytes) else text.encode())
        (self.desired,) = plan.plan(load.load_fleet(root))
        pem = (root / "certs/prod-use1.pem").read_bytes()
        self.cert = seal.load_certificate(pem, source="certs/prod-use1.pem", now=datetime.now(UTC))
        self.vocabulary = self._vocabulary()

    def __call__(self, values: dict[str, str]) -> Rendered:
        resolved = {key: SecretValue.of(text) for key, text in values.items()}
        resolved["region"] = SecretValue.of("production")
        ctx = RenderContext(hmac_key=KEY, certificate=self.cert)
        return materialize.render(self.desired, resolved, ctx=ctx)

    def _vocabulary(self) -> list[str]:
        """Every word and every whole scalar of a rendered manifest (key names, label values,
        `true`, `namespace-wide`, annotation names, the API version...) as long as a guarded
        value; not its ciphertext nor its hashes, which are random text."""
        manifest = self(dict.fromkeys(KEYS, "x" * 8)).manifest
        for enc in (manifest["spec"], manifest["spec"]["template"]):
            enc.pop("encryptedData", None)
        for meta in (manifest["metadata"], manifest["spec"]["template"]["metadata"]):
            for name in ("secretsync.dev/content-hash", "secretsync.dev/key-hashes"):
                meta["annotations"][name] = "-"
        text = dump_yaml(manifest).decode()
        words = set(re.split(r"[\s:,=/\"'{}\[\]]+", text))
        words.update(line.partition(": ")[2].strip() for line in text.splitlines())
        words.update(KEYS)  # in the key-hashes annotation
        return sorted(w for w in words if len(w) >= MIN_GUARDED_LEN)


@pytest.fixture(scope="module")
def render(tmp_path_factory: pytest.TempPathFactory) -> Renderer:
    return Renderer(tmp_path_factory.mktemp("guard-fleet"))


def test_the_vocabulary_holds_the_words_that_were_refused(render: Renderer) -> None:
    assert {"true", "merge2", "namespace-wide", "payments-api", "Opaque"} <= set(render.vocabulary)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_no_value_from_the_manifests_vocabulary_is_refused(
    render: Renderer, data: st.DataObject
) -> None:
    words = st.sampled_from(render.vocabulary)
    values = data.draw(st.fixed_dictionaries(dict.fromkeys(KEYS, words)))
    rendered = render(values)
    assert not holds_plaintext(dump_yaml(rendered.manifest), rendered)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), which=st.sampled_from(KEYS), b64=st.booleans(), own=st.booleans())
def test_any_extra_occurrence_of_a_value_is_refused(
    render: Renderer, data: st.DataObject, which: str, b64: bool, own: bool
) -> None:
    """The same values, and one of them (as text or base64) put once more into the object by
    a renderer gone wrong: an annotation of its own, or appended to a label. The emitter
    writes it plain or quoted (escaped as JSON escapes it): either way it is refused."""
    words = st.sampled_from(render.vocabulary)
    values = data.draw(st.fixed_dictionaries(dict.fromkeys(KEYS, words)))
    rendered = render(values)
    value = values[which]
    leaked = base64.b64encode(value.encode()).decode() if b64 else value
    manifest = json.loads(json.dumps(rendered.manifest))
    meta = manifest["metadata"]
    if own:
        meta["annotations"]["debug"] = leaked
    else:
        meta["labels"]["app"] = meta["labels"]["app"] + leaked
    leaking = dataclasses.replace(rendered, manifest=manifest)
    assert holds_plaintext(dump_yaml(manifest), leaking)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), which=st.sampled_from(KEYS), form=st.integers(0, 2))
def test_any_form_of_a_value_added_to_the_bytes_is_refused(
    render: Renderer, data: st.DataObject, which: str, form: int
) -> None:
    """Each needle form (raw, base64, JSON-escaped) spliced into the bytes about to be
    written, at a random place (not inside an occurrence already there, which it would break
    up rather than add to): one occurrence more than the stand-in has is refused."""
    words = st.sampled_from(render.vocabulary)
    values = data.draw(st.fixed_dictionaries(dict.fromkeys(KEYS, words)))
    rendered = render(values)
    raw = values[which].encode()
    needle = (raw, base64.b64encode(raw), json.dumps(values[which])[1:-1].encode())[form]
    written = dump_yaml(rendered.manifest)
    inside = {
        i
        for start in range(len(written))
        if written.startswith(needle, start)
        for i in range(start + 1, start + len(needle))
    }
    at = data.draw(st.sampled_from([i for i in range(len(written) + 1) if i not in inside]))
    assert holds_plaintext(written[:at] + needle + written[at:], rendered)


def test_a_seal_that_returns_plaintext_is_refused(
    render: Renderer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ciphertext is compared against random text of its length: a seal gone wrong that
    writes the value (here: its base64) is caught, even for a value the manifest holds."""

    def broken(public_key: object, plaintext: bytes, **_: object) -> str:
        return base64.b64encode(plaintext).decode()

    monkeypatch.setattr(seal, "seal_value", broken)
    for values in (dict.fromkeys(KEYS, "true"), dict(zip(KEYS, ("abcdwxyz",) * 4, strict=True))):
        rendered = render(values)
        assert holds_plaintext(dump_yaml(rendered.manifest), rendered)


def test_without_a_stand_in_every_occurrence_is_a_leak(render: Renderer) -> None:
    rendered = dataclasses.replace(render(dict.fromkeys(KEYS, "true")), standin=None)
    assert holds_plaintext(dump_yaml(rendered.manifest), rendered)
