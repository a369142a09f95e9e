"""Rendered manifests against the upstream schemas, ESO's admission rules and ObjectMeta rules.

The fleet of tests/support/fleets.py (plus one FleetSecret that uses every optional target field) is
rendered through the Engine and the Git sink; every file it writes is checked, and so is every
DesiredSecret rendered as a direct Secret. The negative controls show each validator refusing a
broken object, so a validator that accepts everything fails this module.
"""

from __future__ import annotations

import copy
import dataclasses
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from secretsync.core.model import DesiredSecret, ValueRef
from secretsync.core.values import SecretValue
from secretsync.delivery import direct
from secretsync.delivery import rendered as rendering
from secretsync.fleet import load, plan
from tests.support import canary, cycles, fleets, schema

MakeRepo = Callable[[dict[str, str | bytes]], Path]
KEY = b"test-hmac-key-schema-0123456789"

EVERY_FIELD_SECRET = """\
apiVersion: secretsync.dev/v1alpha1
kind: FleetSecret
metadata: {name: web-basic-auth}
spec:
  clusterSelector: {}
  refreshInterval: 15m
  target:
    name: basic-auth
    namespace: web
    type: kubernetes.io/basic-auth
    scope: cluster-wide
    immutable: true
    labels: {team: web, app.kubernetes.io/part-of: shop}
    annotations: {example.com/owner: web-team, note: "free text: {any} value"}
  data:
    username: {value: "svc-{{ cluster.name }}"}
    password: {vault: {path: "web/{{ cluster.labels.env }}", key: token, version: 3}}
"""


def with_every_field_secret(root: Path) -> Path:
    (root / "secrets/every-field.yaml").write_text(EVERY_FIELD_SECRET)
    return root


def render_fleet(root: Path, docs: dict[str, dict[str, object]]) -> Path:
    """Run one Engine cycle into `root/rendered`; the folder it wrote."""
    cycles.render(root, docs, key=KEY, check=True)
    return root / "rendered"


def rendered_documents(out: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    for path in sorted(out.rglob("*")):
        if path.is_file():
            loaded = list(yaml.safe_load_all(path.read_text()))
            assert len(loaded) == 1, f"{path}: one document per file"
            assert isinstance(loaded[0], dict), path
            yield str(path.relative_to(out)), loaded[0]


@pytest.fixture
def rendered_dir(fleet_repo: MakeRepo) -> Path:
    """The `rendered/` folder of the fleet after one cycle."""
    return render_fleet(
        with_every_field_secret(fleets.write_fleet(fleet_repo)), fleets.vault_docs()
    )


@pytest.fixture
def rendered(rendered_dir: Path) -> dict[str, dict[str, Any]]:
    """Every file the fleet renders, parsed, by path under `rendered/`."""
    return dict(rendered_documents(rendered_dir))


@pytest.fixture
def external_secret(rendered: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return copy.deepcopy(rendered["staging-euw1/payments/db-credentials.yaml"])


@pytest.fixture
def sealed_secret(rendered: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return copy.deepcopy(rendered["prod-use1/payments/db-credentials.yaml"])


def manifests_of(rendered: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    return [doc for path, doc in rendered.items() if not path.endswith("/kustomization.yaml")]


# --- the renderer's output is valid ------------------------------------------------------------


def test_every_rendered_manifest_passes_schema_admission_and_metadata_rules(
    rendered: dict[str, dict[str, Any]],
) -> None:
    manifests = manifests_of(rendered)
    kinds = sorted({(m["apiVersion"], m["kind"]) for m in manifests})
    assert kinds == [schema.SEALED_SECRET, schema.EXTERNAL_SECRET], "both kinds are covered"
    assert len(manifests) == 11  # 3 FleetSecrets on 4 Git clusters; payments-db on 3 of them
    assert schema.validate_manifests(manifests) == []


def test_every_field_secret_reaches_the_validated_output(
    rendered: dict[str, dict[str, Any]],
) -> None:
    """Guards the fixture: the optional fields really are in what the first test validates."""
    sealed = rendered["prod-use1/web/basic-auth.yaml"]
    assert sealed["spec"]["template"]["immutable"] is True
    assert sealed["spec"]["template"]["type"] == "kubernetes.io/basic-auth"
    assert sealed["metadata"]["annotations"]["sealedsecrets.bitnami.com/cluster-wide"] == "true"
    external = rendered["staging-euw1/web/basic-auth.yaml"]["spec"]
    assert external["target"]["immutable"] is True
    assert external["refreshInterval"] == "15m"
    assert external["data"] == [
        {
            "secretKey": "password",
            "remoteRef": {"key": "web/staging", "property": "token", "version": "3"},
        }
    ]
    assert external["target"]["template"]["data"] == {"username": "svc-staging-euw1"}


def test_each_kustomization_lists_its_folder_and_builds_with_kustomize(
    rendered_dir: Path, rendered: dict[str, dict[str, Any]]
) -> None:
    kubectl = shutil.which("kubectl")
    assert kubectl is not None, "kubectl (with kustomize) is part of the test machine"
    clusters = sorted({path.split("/", 1)[0] for path in rendered})
    assert clusters == sorted(c for c in fleets.CLUSTER_NAMES if c != "dev-use1")
    for cluster in clusters:
        kust = rendered[f"{cluster}/kustomization.yaml"]
        assert kust["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
        assert kust["kind"] == "Kustomization"
        files = sorted(
            p.split("/", 1)[1]
            for p in rendered
            if p.startswith(f"{cluster}/") and not p.endswith("/kustomization.yaml")
        )
        assert kust["resources"] == files
        built = subprocess.run(
            [kubectl, "kustomize", str(rendered_dir / cluster)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert built.returncode == 0, built.stderr
        docs = [d for d in yaml.safe_load_all(built.stdout) if d is not None]
        expected = [rendered[f"{cluster}/{f}"] for f in files]
        assert sorted(docs, key=_identity) == sorted(expected, key=_identity)
        assert schema.validate_manifests(docs) == []


def _identity(doc: dict[str, Any]) -> tuple[str, str, str]:
    return (doc["kind"], doc["metadata"]["namespace"], doc["metadata"]["name"])


def _resolved(desired: DesiredSecret, docs: dict[str, dict[str, object]]) -> dict[str, SecretValue]:
    refs = {
        planned: SecretValue.of(str(docs[planned.location.path][planned.key]))
        for planned in desired.data.values()
        if isinstance(planned, ValueRef)
    }
    values = rendering.values_for(desired, refs)
    assert values is not None
    return values


def test_direct_secrets_pass_the_core_schema(fleet_repo: MakeRepo) -> None:
    root = with_every_field_secret(fleets.write_fleet(fleet_repo))
    docs = fleets.vault_docs()
    ctx = rendering.RenderContext(hmac_key=KEY)
    manifests = []
    for desired in plan.plan(load.load_fleet(root)):
        values = _resolved(desired, docs)
        manifests.append(direct.render_direct(desired, values, ctx=ctx).manifest)
        plain = dataclasses.replace(
            desired,
            target=dataclasses.replace(desired.target, labels={}, annotations={}, immutable=False),
        )
        manifests.append(direct.render_direct(plain, values, ctx=ctx).manifest)
    count = len(manifests)  # not the list: it holds the (test) values
    assert count == 2 * 13  # 13 DesiredSecrets (payments-db on 3 clusters, the others on 5)
    assert any(m.get("immutable") is True for m in manifests)
    assert {m["type"] for m in manifests} == {"Opaque", "kubernetes.io/basic-auth"}
    assert schema.validate_manifests(manifests) == []


# --- negative controls: each validator can fail ------------------------------------------------


class _Delete:
    def __repr__(self) -> str:
        return "DELETE"


_DELETE = _Delete()


def _set(doc: dict[str, Any], path: str, value: object) -> None:
    *parents, last = path.split(".")
    node: Any = doc
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if value is _DELETE:
        del node[last]
    elif isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value


def _refused(pristine: dict[str, Any], broken: dict[str, Any]) -> list[str]:
    """The problems of `broken`, after checking in the same run that `pristine` has none."""
    problems = schema.validate_manifests([pristine, broken])
    assert [p for p in problems if not p.startswith("[1] ")] == []
    return problems


EXTERNAL_BREAKS = [
    pytest.param(
        "spec.target.creationPolicy",
        "Sometimes",
        "/spec/target/creationPolicy must be equal to",
        id="creationPolicy-Sometimes",
    ),
    pytest.param(
        "spec.data.0.remoteRef.key",
        _DELETE,
        "/spec/data/0/remoteRef must have required property key",
        id="remoteRef-without-key",
    ),
    pytest.param(
        "spec.data.0.secretKey",
        "db password",
        "/spec/data/0/secretKey must match pattern",
        id="secretKey-with-space",
    ),
    pytest.param(
        "spec.target.template.mergePolicy",
        "Union",
        "/spec/target/template/mergePolicy must be equal",
        id="mergePolicy-Union",
    ),
    pytest.param(
        "spec.target.template.engineVersion",
        "v1",
        "/spec/target/template/engineVersion must be",
        id="engineVersion-v1",
    ),
    pytest.param(
        "spec.secretStoreRef.kind",
        "Store",
        "/spec/secretStoreRef/kind must be equal to",
        id="storeRef-kind-Store",
    ),
    pytest.param(
        "spec.refreshInterval",
        3600,
        "/spec/refreshInterval must be string",
        id="refreshInterval-number",
    ),
    pytest.param(
        "apiVersion",
        "external-secrets.io/v1beta2",
        "no validator for apiVersion",
        id="apiVersion-v1beta2",
    ),
]


@pytest.mark.parametrize(("path", "value", "expected"), EXTERNAL_BREAKS)
def test_npm_validator_refuses_a_broken_external_secret(
    external_secret: dict[str, Any], path: str, value: object, expected: str
) -> None:
    pristine = copy.deepcopy(external_secret)
    _set(external_secret, path, value)
    problems = _refused(pristine, external_secret)
    assert any(expected in p for p in problems), problems


SEALED_BREAKS = [
    pytest.param(
        "spec.encryptedData",
        _DELETE,
        "/spec must have required property encryptedData",
        id="encryptedData-missing",
    ),
    pytest.param(
        "spec.encryptedData.password",
        42,
        "/spec/encryptedData/password must be string",
        id="encryptedData-number-value",
    ),
    pytest.param(
        "spec.encryptedData", ["AgB"], "/spec/encryptedData must be object", id="encryptedData-list"
    ),
    pytest.param(
        "spec.template.immutable",
        "yes",
        "/spec/template/immutable must be boolean",
        id="template-immutable-string",
    ),
    pytest.param("spec", _DELETE, "/ must have required property spec", id="spec-missing"),
    pytest.param("kind", "SealedSecrets", "no validator for apiVersion", id="kind-misspelt"),
]


@pytest.mark.parametrize(("path", "value", "expected"), SEALED_BREAKS)
def test_npm_validator_refuses_a_broken_sealed_secret(
    sealed_secret: dict[str, Any], path: str, value: object, expected: str
) -> None:
    pristine = copy.deepcopy(sealed_secret)
    _set(sealed_secret, path, value)
    problems = _refused(pristine, sealed_secret)
    assert any(expected in p for p in problems), problems


def _direct_secret() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "db", "namespace": "payments", "labels": {"a": "b"}},
        "type": "Opaque",
        "data": {"password": "c2VjcmV0"},
    }


SECRET_BREAKS = [
    pytest.param("stringdata", {}, "'stringdata' was unexpected", id="unknown-field"),
    pytest.param("data.password", 7, "/data/password violates type", id="data-number"),
    pytest.param("immutable", "yes", "/immutable violates type", id="immutable-string"),
    pytest.param(
        "metadata.labels.a",
        "two words",
        "/metadata/labels/a value must be a label value",
        id="label-value-space",
    ),
    pytest.param(
        "metadata.namespace", _DELETE, "/metadata/namespace must be set", id="namespace-missing"
    ),
]


@pytest.mark.parametrize(("path", "value", "expected"), SECRET_BREAKS)
def test_core_validator_refuses_a_broken_secret(path: str, value: object, expected: str) -> None:
    secret = _direct_secret()
    _set(secret, path, value)
    problems = _refused(_direct_secret(), secret)
    assert any(expected in p for p in problems), problems


def test_problems_never_quote_the_value_found() -> None:
    value = canary.new("schema-error")
    secret = _direct_secret()
    secret["data"]["password"] = {"nested": value}
    secret["immutable"] = value
    secret["metadata"]["labels"]["a"] = f"{value} with spaces"
    problems = schema.validate_manifests([secret])
    assert problems
    assert canary.find_in_text("\n".join(problems)) == []


def test_unknown_kinds_fail_closed() -> None:
    problems = schema.validate_manifests(
        [
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a", "namespace": "b"}},
            {"apiVersion": "bitnami.com/v1alpha1", "metadata": {"name": "a", "namespace": "b"}},
            "apiVersion: v1",  # type: ignore[list-item]
        ]
    )
    assert len(problems) == 3
    assert "[0] ConfigMap b/a: / no validator for apiVersion 'v1' kind 'ConfigMap'" in problems[0]
    assert "no validator for apiVersion 'bitnami.com/v1alpha1' kind None" in problems[1]
    assert problems[2] == "[2] str: / must be an object"


# --- ESO admission rules, which its webhook enforces and the schema does not carry ----------


ADMISSION_BREAKS = [
    pytest.param(
        {"spec.data": []}, "either data or dataFrom should be specified", id="no-data-no-dataFrom"
    ),
    pytest.param(
        {"spec.target.deletionPolicy": "Delete", "spec.target.creationPolicy": "Merge"},
        "deletionPolicy Delete needs creationPolicy Owner or Orphan, not Merge",
        id="Delete-with-Merge",
    ),
    pytest.param(
        {"spec.target.deletionPolicy": "Delete", "spec.target.creationPolicy": "None"},
        "deletionPolicy Delete needs creationPolicy Owner or Orphan, not None",
        id="Delete-with-None",
    ),
    pytest.param(
        {"spec.target.deletionPolicy": "Merge", "spec.target.creationPolicy": "None"},
        "deletionPolicy Merge with creationPolicy None",
        id="Merge-with-None",
    ),
    pytest.param({"spec.refreshInterval": "1d"}, "is not a Go duration", id="refresh-1d"),
    pytest.param(
        {"spec.data.1.secretKey": "password"},
        "secretKey 'password' appears 2 times",
        id="duplicate-secretKey",
    ),
    pytest.param(
        {"spec.dataFrom": [{"extract": {"key": "a"}, "find": {"path": "b"}}]},
        "/spec/dataFrom/0 sets extract and find",
        id="extract-and-find",
    ),
    pytest.param(
        {"spec.dataFrom": [{}]},
        "/spec/dataFrom/0 needs extract, find or sourceRef",
        id="empty-dataFrom-item",
    ),
    pytest.param(
        {"spec.target.template.type": "bootstrap.kubernetes.io/token"},
        "is refused",
        id="bootstrap-token-type",
    ),
    pytest.param(
        {"spec.target.template.data": {"a b": "x"}},
        "Secret key 'a b' is not a valid",
        id="bad-template-key",
    ),
]


@pytest.mark.parametrize(("changes", "expected"), ADMISSION_BREAKS)
def test_admission_rules_refuse_what_the_webhook_refuses(
    external_secret: dict[str, Any], changes: dict[str, object], expected: str
) -> None:
    assert schema.eso_admission_problems(external_secret) == []
    for path, value in changes.items():
        _set(external_secret, path, value)
    assert any(expected in p for p in schema.eso_admission_problems(external_secret))
    assert any(expected in p for p in schema.validate_manifests([external_secret]))


def test_admission_rules_accept_the_allowed_policy_combinations(
    external_secret: dict[str, Any],
) -> None:
    for creation in ("Owner", "Orphan", "Merge", "None"):
        for deletion in ("Retain", "Delete", "Merge"):
            _set(external_secret, "spec.target.creationPolicy", creation)
            _set(external_secret, "spec.target.deletionPolicy", deletion)
            refused = bool(schema.eso_admission_problems(external_secret))
            assert refused == (
                (deletion == "Delete" and creation in ("Merge", "None"))
                or (deletion == "Merge" and creation == "None")
            ), (creation, deletion)


# --- the helper refuses to run without its tools -----------------------------------------------


def test_missing_node_modules_is_an_error_naming_the_setup(
    external_secret: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(schema, "JS_DIR", tmp_path)
    with pytest.raises(schema.SchemaToolMissing, match=r"npm ci --prefix tests/js"):
        schema.validate_manifests([external_secret])
