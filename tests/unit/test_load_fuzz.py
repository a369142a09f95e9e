"""Hypothesis fuzzing of the fleet loader (tests/MATRIX.md row S5).

Random documents built from the schema's own field names and odd YAML (anchors, aliases,
tags, flow and block styles, bad bytes), dropped into any of the files the loader reads, must
load or raise `errors.ConfigError` (or `ConfigErrors`) — never anything else — and quickly.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from secretsync.core import errors
from secretsync.core.model import Fleet
from secretsync.fleet import load

API = "secretsync.dev/v1alpha1"
FIELDS = [
    "apiVersion", "kind", "metadata", "name", "labels", "spec", "defaults", "delivery",
    "sources", "vault", "sops", "address", "auth", "method", "kvMount", "kubeconfig", "path",
    "context", "secretRef", "namespace", "allowedNamespaces", "sealedSecrets", "certFile",
    "clusterSelector", "matchLabels", "matchExpressions", "key", "operator", "values",
    "target", "type", "scope", "immutable", "data", "value", "file", "version", "mount",
    "overlays", "clusters", "policies", "forbiddenTypes", "allowClusterWide", "layout",
    "secrets", "adopt", "rollout", "restart", "refreshInterval", "createNamespaces", "apply",
]  # fmt: skip
KINDS = ["Fleet", "Cluster", "FleetSecret", "Secret", "", "fleet"]
SCALARS = st.one_of(
    st.sampled_from(
        [
            API,
            *KINDS,
            "direct",
            "sealed",
            "external",
            "In",
            "NotIn",
            "Exists",
            "prod",
            "{{ cluster.name }}",
            "{{ cluster.labels.env }}",
            "{{",
            "../x",
            "/etc/passwd",
            "a/../../b",
            "cluster-wide",
            "strict",
            "kube-system",
            "1h",
            "-1s",
            "",
        ]
    ),
    st.text(max_size=12),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True),
    st.booleans(),
    st.none(),
    st.binary(max_size=8),
)
KEYS = st.sampled_from(FIELDS) | st.text(max_size=8)
TREES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=5),
    max_leaves=30,
)


@st.composite
def documents(draw: st.DrawFn) -> dict[str, Any]:
    """A document that often gets past the header checks, so the deeper parsers are hit."""
    doc: dict[str, Any] = {}
    if draw(st.booleans()):
        doc["apiVersion"] = API
    doc["kind"] = draw(st.sampled_from(KINDS))
    if draw(st.integers(0, 4)):
        doc["metadata"] = draw(st.fixed_dictionaries({"name": SCALARS}, optional={"labels": TREES}))
    doc["spec"] = draw(TREES)
    doc.update(draw(st.dictionaries(KEYS, TREES, max_size=2)))
    return doc


SNIPPETS = [
    "&a ", "*a", "*b ", "!!python/object:os.system ", "!!binary ", "<<: ", "? ", "- ", ": ",
    "{", "}", "[", "]", "---\n", "...\n", "\t", "\x00", "\ufeff", "'", '"', "|\n", ">-\n",
    "%YAML 1.1\n", "!<tag:x> ", "&b [*b]\n",
]  # fmt: skip


@st.composite
def texts(draw: st.DrawFn) -> bytes:
    docs = draw(st.lists(documents(), min_size=1, max_size=3))
    try:
        text = yaml.safe_dump_all(docs, default_flow_style=draw(st.booleans()), sort_keys=False)
    except yaml.YAMLError:
        text = "{}"
    for _ in range(draw(st.integers(0, 4))):
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.sampled_from(SNIPPETS)) + text[at:]
    data = text.encode("utf-8", "surrogatepass")
    if draw(st.integers(0, 9)) == 0:
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.binary(min_size=1, max_size=4)) + data[at:]
    return data


VALID_FLEET = f"apiVersion: {API}\nkind: Fleet\nmetadata: {{name: fz}}\nspec: {{}}\n".encode()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    where=st.sampled_from(["secretsync.yaml", "clusters/a.yaml", "secrets/b.yml"]),
    data=texts(),
)
def test_random_documents_load_or_raise_only_config_errors_quickly(where: str, data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "clusters").mkdir()
        (root / "secrets").mkdir()
        (root / "secretsync.yaml").write_bytes(VALID_FLEET)
        (root / where).write_bytes(data)
        started = time.monotonic()
        problem: errors.ConfigError | None = None
        try:
            result: Fleet | None = load.load_fleet(root)
        except errors.ConfigError as exc:  # anything else fails the test
            problem, result = exc, None
        elapsed = time.monotonic() - started
    assert elapsed < 1.0, f"load took {elapsed:.2f}s"
    if problem is None:
        assert isinstance(result, Fleet)
        return
    assert problem.render()  # renders without raising
    if isinstance(problem, errors.ConfigErrors):
        assert problem.errors
        assert all(isinstance(e, errors.ConfigError) for e in problem.errors)


@settings(max_examples=100, deadline=None)
@given(depth=st.integers(50, 3000), open_=st.sampled_from(["[", "{a: ", "- "]))
def test_deep_nesting_is_a_config_error_not_a_recursion_error(depth: int, open_: str) -> None:
    if open_ == "- ":
        text = "".join("  " * i + "-\n" for i in range(depth))
    else:
        close = "]" if open_ == "[" else "}"
        text = "spec: " + open_ * depth + "1" + close * depth + "\n"
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "secretsync.yaml").write_bytes(VALID_FLEET)
        (root / "clusters").mkdir()
        (root / "clusters/deep.yaml").write_text(text)
        started = time.monotonic()
        problem = ""
        try:
            load.load_fleet(root)
        except errors.ConfigError as exc:  # anything else (RecursionError) fails the test
            problem = exc.render()
        assert time.monotonic() - started < 2.0
    assert not problem or "clusters/deep.yaml" in problem
