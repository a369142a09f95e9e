"""X1/X2 as a property: for random fleets and policies, the plan delivers only allowed pairs.

Random clusters (labels, delivery, allowedNamespaces) and FleetSecrets (selector, target
namespace, type, sealing scope) and a random Fleet policy are written as YAML, loaded by the
real loader and planned. An oracle written here from the documented rules predicts whether the
plan must refuse; when it does not refuse, every planned (cluster, namespace) pair is allowed,
no forbidden type and no unallowed cluster-wide sealed scope is planned, and every matching
(cluster, secret) pair is planned exactly once.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from secretsync.core import errors
from secretsync.fleet import load, plan

NAMESPACES = ["apps", "payments", "web", "kube-system"]
TYPES = [
    "Opaque",
    "kubernetes.io/tls",
    "kubernetes.io/service-account-token",
    "bootstrap.kubernetes.io/token",
    "example.com/custom",
]
DEFAULT_FORBIDDEN = ("kubernetes.io/service-account-token", "bootstrap.kubernetes.io/token")
LABELS = {"env": ["dev", "prod"], "tier": ["a", "b"]}


@dataclass(frozen=True)
class C:
    name: str
    labels: dict[str, str]
    delivery: str
    allowed: list[str] | None


@dataclass(frozen=True)
class S:
    name: str
    match: dict[str, str]
    namespace: str
    type: str
    scope: str


@dataclass(frozen=True)
class Policy:
    forbidden: list[str] | None  # None: the defaults
    allow_cluster_wide: bool | None  # None: the default (true)


label_sets = st.fixed_dictionaries({}, optional={k: st.sampled_from(v) for k, v in LABELS.items()})


@st.composite
def clusters(draw: st.DrawFn) -> list[C]:
    n = draw(st.integers(1, 5))
    return [
        C(
            name=f"c{i}",
            labels=draw(label_sets),
            delivery=draw(st.sampled_from(["direct", "sealed"])),
            allowed=draw(
                st.none() | st.lists(st.sampled_from(NAMESPACES), unique=True, max_size=3)
            ),
        )
        for i in range(n)
    ]


@st.composite
def fleet_secrets(draw: st.DrawFn) -> list[S]:
    n = draw(st.integers(1, 6))
    return [
        S(
            name=f"s{i}",
            match=draw(label_sets),
            namespace=draw(st.sampled_from(NAMESPACES)),
            type=draw(st.sampled_from(TYPES)),
            scope=draw(st.sampled_from(["strict", "namespace-wide", "cluster-wide"])),
        )
        for i in range(n)
    ]


policies = st.builds(
    Policy,
    forbidden=st.none() | st.lists(st.sampled_from(TYPES), unique=True, max_size=3),
    allow_cluster_wide=st.none() | st.booleans(),
)


def flow(mapping: dict[str, str]) -> str:
    return "{" + ", ".join(f"{k}: {v}" for k, v in mapping.items()) + "}"


def write(root: Path, cs: list[C], ss: list[S], policy: Policy) -> None:
    fleet = "apiVersion: secretsync.dev/v1alpha1\nkind: Fleet\nmetadata: {name: prop}\nspec:\n"
    fleet += "  defaults: {delivery: direct}\n"
    parts = []
    if policy.forbidden is not None:
        parts.append(f"forbiddenTypes: [{', '.join(policy.forbidden)}]")
    if policy.allow_cluster_wide is not None:
        parts.append(f"allowClusterWide: {str(policy.allow_cluster_wide).lower()}")
    if parts:
        fleet += f"  policies: {{{', '.join(parts)}}}\n"
    (root / "secretsync.yaml").write_text(fleet)
    docs = []
    for c in cs:
        spec = [f"delivery: {c.delivery}"]
        if c.delivery == "sealed":
            spec.append(f"sealedSecrets: {{certFile: certs/{c.name}.pem}}")
        if c.allowed is not None:
            spec.append(f"allowedNamespaces: [{', '.join(c.allowed)}]")
        docs.append(
            "apiVersion: secretsync.dev/v1alpha1\nkind: Cluster\n"
            f"metadata: {{name: {c.name}, labels: {flow(c.labels)}}}\n"
            f"spec: {{{', '.join(spec)}}}\n"
        )
    (root / "clusters").mkdir()
    (root / "clusters/all.yaml").write_text("---\n".join(docs))
    docs = [
        "apiVersion: secretsync.dev/v1alpha1\nkind: FleetSecret\n"
        f"metadata: {{name: {s.name}}}\n"
        f"spec:\n  clusterSelector: {{matchLabels: {flow(s.match)}}}\n"
        f"  target: {{name: {s.name}, namespace: {s.namespace}, type: {s.type}, scope: {s.scope}}}\n"
        "  data: {k: {value: fixed}}\n"
        # a selection of nothing is refused when the fleet loads; this test is about policies
        + ("" if any(matches(s, c) for c in cs) else "  allowNoClusters: true\n")
        for s in ss
    ]
    (root / "secrets").mkdir()
    (root / "secrets/all.yaml").write_text("---\n".join(docs))


def matches(s: S, c: C) -> bool:
    return all(c.labels.get(k) == v for k, v in s.match.items())


def violations(cs: list[C], ss: list[S], policy: Policy) -> list[str]:
    """The oracle: every (cluster, secret) pair the documented policy refuses."""
    forbidden = DEFAULT_FORBIDDEN if policy.forbidden is None else tuple(policy.forbidden)
    allow_cw = True if policy.allow_cluster_wide is None else policy.allow_cluster_wide
    out = []
    for c in cs:
        for s in ss:
            if not matches(s, c):
                continue
            if c.allowed is not None and s.namespace not in c.allowed:
                out.append(f"{c.name}/{s.name}: namespace")
            if s.type in forbidden:
                out.append(f"{c.name}/{s.name}: type")
            if s.scope == "cluster-wide" and c.delivery == "sealed" and not allow_cw:
                out.append(f"{c.name}/{s.name}: scope")
    return out


@settings(
    max_examples=150,
    deadline=2000,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(cs=clusters(), ss=fleet_secrets(), policy=policies)
def test_plan_delivers_only_allowed_pairs_or_refuses(
    cs: list[C], ss: list[S], policy: Policy
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write(root, cs, ss, policy)
        fleet = load.load_fleet(root)
        expected = violations(cs, ss, policy)
        refusal = ""
        try:
            desired = plan.plan(fleet)
        except errors.ConfigErrors as exc:
            refusal = exc.render()
    if refusal:
        assert expected, f"plan refused a fleet the policy allows: {refusal}"
        fields = {
            "namespace": "spec.target.namespace",
            "type": "spec.target.type",
            "scope": "spec.target.scope",
        }
        for v in expected:
            assert fields[v.rsplit(": ", 1)[1]] in refusal, (v, refusal)
        return
    assert not expected, f"plan accepted what the policy forbids: {expected}"
    by_name = {c.name: c for c in cs}
    forbidden = DEFAULT_FORBIDDEN if policy.forbidden is None else tuple(policy.forbidden)
    planned = set()
    for d in desired:
        c = by_name[d.cluster.name]
        assert c.allowed is None or d.target.namespace in c.allowed
        assert d.target.type not in forbidden
        if d.cluster.delivery == "sealed" and d.target.scope.value == "cluster-wide":
            assert policy.allow_cluster_wide is not False
        planned.add((d.cluster.name, d.fleet_secret))
    assert len(planned) == len(desired), "a pair was planned twice"
    assert planned == {(c.name, s.name) for c in cs for s in ss if matches(s, c)}
