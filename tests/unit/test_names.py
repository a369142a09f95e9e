"""Names and keys are checked as whole strings: a trailing newline, `.` or `..` never pass.

Python's `$` also matches before a final newline, so `re.match(r"^[a-z]+$", "web\n")`
succeeds; every checker here must refuse `name + "\n"` for every name it accepts.
One property per kind of name, then the loader and the `seal` command end to end.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from secretsync.core import errors, selectors, templating
from secretsync.daemon import sharding
from secretsync.fleet import load
from tests.support import cli

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "fleet"
dns_labels = st.from_regex(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", fullmatch=True)
dns_subdomains = st.lists(dns_labels, min_size=1, max_size=4).map(".".join)
label_names = st.from_regex(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?", fullmatch=True)
label_keys = st.one_of(label_names, st.tuples(dns_subdomains, label_names).map("/".join))
secret_keys = st.from_regex(r"[-._a-zA-Z0-9]{1,253}", fullmatch=True).filter(
    lambda k: not k.startswith("..") and k != "."
)
line_ends = st.sampled_from(["\n", "\r\n", "\r", " ", "\t", "\x00", "\u2028"])


@given(dns_labels, line_ends)
def test_dns_labels_are_whole_strings(name: str, end: str) -> None:
    assert load.is_dns_label(name)
    assert not load.is_dns_label(name + end)
    assert not load.is_dns_label(end + name)


@given(dns_subdomains.filter(lambda n: len(n) <= 252), line_ends)
def test_dns_subdomains_are_whole_strings(name: str, end: str) -> None:
    assert load.is_dns_subdomain(name)
    assert not load.is_dns_subdomain(name + end)


@given(secret_keys, line_ends)
def test_secret_keys_are_whole_strings(key: str, end: str) -> None:
    assert load.secret_key_problem(key) is None
    assert load.secret_key_problem(key[:252] + end) is not None


@pytest.mark.parametrize("key", [".", "..", "..data", "...", "..x.y"])
def test_dot_keys_are_refused_as_kubernetes_does(key: str) -> None:
    assert "'..'" in (load.secret_key_problem(key) or "")


@pytest.mark.parametrize("key", [".env", ".x..y", "a..", "-", "_", "a.b"])
def test_other_dotted_keys_are_secret_keys(key: str) -> None:
    assert load.secret_key_problem(key) is None


@given(label_keys, line_ends)
def test_label_keys_are_whole_strings(key: str, end: str) -> None:
    assert selectors.label_key_problem(key) is None
    assert selectors.label_key_problem(key + end) is not None
    if "/" in key:
        prefix, name = key.split("/")
        assert selectors.label_key_problem(f"{prefix}{end}/{name}") is not None


@given(label_names, line_ends)
def test_label_values_are_whole_strings(value: str, end: str) -> None:
    assert selectors.label_value_problem(value) is None
    assert selectors.label_value_problem(value + end) is not None


@given(label_keys, line_ends)
def test_template_label_keys_are_whole_label_keys(key: str, end: str) -> None:
    assert templating.check(f"{{{{ cluster.labels.{key} }}}}") == []
    assert templating.check(f"{{{{ cluster.labels.{key}{end}x }}}}") != []


@given(st.integers(min_value=0, max_value=10**6), line_ends)
def test_pod_ordinal_is_read_from_the_whole_name(ordinal: int, end: str) -> None:
    assert (
        sharding.derive_shard_index(explicit=None, env={}, hostname=f"secretsync-{ordinal}")
        == ordinal
    )
    assert (
        sharding.derive_shard_index(explicit=None, env={}, hostname=f"secretsync-{ordinal}{end}")
        is None
    )


# --- the loader: every kind of name in a fleet, each with a trailing newline ------------------

FLEET = """\
apiVersion: secretsync.dev/v1alpha1
kind: Fleet
metadata: {name: acme}
spec: {defaults: {delivery: direct}}
"""

CLUSTER = """\
apiVersion: secretsync.dev/v1alpha1
kind: Cluster
metadata:
  name: "prod\\n"
  labels: {"env\\n": prod, region: "us-east-1\\n"}
spec:
  allowedNamespaces: ["web\\n"]
"""

SECRET = """\
apiVersion: secretsync.dev/v1alpha1
kind: FleetSecret
metadata: {name: "db\\n"}
spec:
  clusterSelector: {matchLabels: {"tier\\n": a}}
  target:
    name: "db\\n"
    namespace: "web\\n"
    labels: {app: "x\\n"}
    annotations: {"team\\n": payments}
  refreshInterval: "1h\\n"
  data:
    "password\\n": {value: a}
    token: {value: "{{ cluster.labels.env\\nx }}"}
    ".": {value: a}
    "..": {value: b}
    "..data": {value: c}
"""

EXPECTED = [
    ("clusters/a.yaml", 4, "metadata.name"),
    ("clusters/a.yaml", 5, "metadata.labels.env\n"),
    ("clusters/a.yaml", 5, "metadata.labels.region"),
    ("clusters/a.yaml", 7, "spec.allowedNamespaces"),
    ("secrets/db.yaml", 3, "metadata.name"),
    ("secrets/db.yaml", 5, "spec.clusterSelector.matchLabels.tier\n"),
    ("secrets/db.yaml", 7, "spec.target.name"),
    ("secrets/db.yaml", 8, "spec.target.namespace"),
    ("secrets/db.yaml", 9, "spec.target.labels.app"),
    ("secrets/db.yaml", 10, "spec.target.annotations.team\n"),
    ("secrets/db.yaml", 11, "spec.refreshInterval"),
    ("secrets/db.yaml", 13, "spec.data.password\n"),
    ("secrets/db.yaml", 14, "spec.data.token.value"),
    ("secrets/db.yaml", 15, "spec.data.."),
    ("secrets/db.yaml", 16, "spec.data..."),
    ("secrets/db.yaml", 17, "spec.data...data"),
]


def test_every_name_in_a_fleet_is_checked_as_a_whole_string(
    fleet_repo: Callable[[dict[str, str | bytes]], Path],
) -> None:
    root = fleet_repo(
        {"secretsync.yaml": FLEET, "clusters/a.yaml": CLUSTER, "secrets/db.yaml": SECRET}
    )
    with pytest.raises(errors.ConfigErrors) as raised:
        load.load_fleet(root)
    found = {(e.file, e.line, e.field) for e in raised.value.errors}
    missing = [where for where in EXPECTED if where not in found]
    assert not missing, (missing, sorted(found))


# --- the seal command: names from argv ---------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--namespace", "web\n", "--name", "api", "--from-stdin", "k"], "--namespace"),
        (["--namespace", "web", "--name", "api\n", "--from-stdin", "k"], "--name"),
        (["--namespace", "web", "--name", "api", "--from-stdin", "k\n"], "--from-stdin"),
        (["--namespace", "web", "--name", "api", "--from-stdin", ".."], "--from-stdin"),
    ],
)
def test_seal_refuses_names_with_a_trailing_newline(args: list[str], named: str) -> None:
    result = cli.invoke(
        "seal", "-f", str(EXAMPLE), "--cluster", "prod-use1", *args,
        stdin="not-a-secret-value", catch_exceptions=True,
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert named in result.output
    assert "BEGIN" not in result.output and "encryptedData" not in result.output
