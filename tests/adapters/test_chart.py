"""The Helm chart (charts/secretsync) linted by the real Helm engine (helm-sdkpy), its
values.schema.json, and the Dockerfile's rules, with the image's install steps replayed in a
clean venv. Installing onto a real apiserver is in tests/adapters/test_chart_install.py."""

from __future__ import annotations

import asyncio
import copy
import ipaddress
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_sdkpy
import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "secretsync"
DOCKERFILE = ROOT / "Dockerfile"

ERROR = 3  # helm lint severities: 1 info, 2 warning, 3 error
WARNING = 2

# Value sets the chart must lint cleanly with (besides its defaults).
VALUE_SETS: dict[str, dict[str, Any]] = {
    "git-sync-and-secret-refs": {
        "fleet": {
            "subPath": "fleet",
            "gitSync": {
                "enabled": True,
                "repo": "https://git.example/platform/fleet.git",
                "ref": "main",
                "credentialsSecret": "fleet-git",
            },
        },
        "secrets": {
            "hmacKey": {"existingSecret": "secretsync-hmac"},
            "webhookSecret": {"existingSecret": "secretsync-webhook"},
            "sopsAgeKey": {"existingSecret": "secretsync-age"},
            "kubeconfigFiles": ["prod-use1", "prod-euw1"],
        },
        "vault": {
            "address": "https://vault.example:8200",
            "addressOverride": "https://vault.internal:8200",
            "tokenSecret": {"name": "vault-token"},
            "authSecret": "vault-approle",
        },
    },
    "git-url": {
        "fleet": {
            "git": {
                "url": "https://git.example/platform/fleet.git",
                "branch": "release/1",
                "credentialsSecret": "fleet-git-credentials",
            },
        },
    },
    "git-push": {
        "fleet": {
            "git": {
                "url": "https://git.example/platform/fleet.git",
                "credentialsSecret": "fleet-git-credentials",
                "push": {
                    "enabled": True,
                    "branch": "rendered",
                    "author": "Fleet Bot <fleet-bot@example.com>",
                    "signingKeySecret": "fleet-signing-key",
                },
            },
        },
    },
    "namespaced-rbac": {
        "rbac": {
            "targetNamespaces": ["payments", "web"],
            "kubeconfigSecrets": ["kubeconfig-prod-use1"],
            "rolloutRestart": True,
            "kinds": {"sealedSecrets": False},
        },
    },
    "cluster-wide": {
        "rbac": {"clusterWide": True, "createNamespaces": True},
        "vault": {"tokenReviewer": {"create": True}},
    },
    "everything-optional": {
        "sharding": {"enabled": True},
        "podDisruptionBudget": {"enabled": True},
        "serviceMonitor": {"enabled": True, "labels": {"release": "prom"}},
        "networkPolicy": {
            "ingressFrom": [{"namespaceSelector": {"matchLabels": {"name": "monitoring"}}}],
            "egress": {
                "dns": {
                    "to": [
                        {
                            "namespaceSelector": {},
                            "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
                        }
                    ]
                },
                "kubernetesApi": {"cidrs": ["10.0.0.10/32", "fd00::10/128"], "ports": [6443]},
                "vault": {"peers": [{"namespaceSelector": {"matchLabels": {"name": "vault"}}}]},
                "git": {"cidrs": ["192.0.2.0/24"], "ports": [443]},
                "extraRules": [{"ports": [{"port": 3128, "protocol": "TCP"}]}],
            },
        },
        "settings": {"SECRETSYNC_EXTRA": "1"},
        "daemon": {"git": True, "extraArgs": ["--interval=60"]},
        "topologySpread": {"enabled": False},
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "infra", "operator": "Exists"}],
    },
    "exec-plugins": {"kube": {"allowExecPlugins": ["aws", "gke-gcloud-auth-plugin", "kubelogin"]}},
    "three-shards": {"sharding": {"enabled": True, "shards": 3}},
    "api-auth-readers": {
        "apiAuth": {
            "readers": [
                {"kind": "ServiceAccount", "name": "prometheus", "namespace": "monitoring"},
                {"kind": "Group", "name": "platform-oncall"},
            ]
        }
    },
    "api-auth-off": {"apiAuth": {"enabled": False}},
    "minimal": {
        "networkPolicy": {"enabled": False},
        "serviceAccount": {"create": False, "name": "existing-sa"},
        "rbac": {"create": False},
        "leaderElection": {"enabled": False},
    },
}

# Values the chart must refuse, with the path the refusal names.
REFUSED: dict[str, tuple[dict[str, Any], str]] = {
    "replicaCount-string": ({"replicaCount": "many"}, "replicaCount"),
    "root-allowed": ({"podSecurityContext": {"runAsNonRoot": False}}, "runAsNonRoot"),
    "privilege-escalation": (
        {"securityContext": {"allowPrivilegeEscalation": True}},
        "allowPrivilegeEscalation",
    ),
    "unknown-value": ({"replicas": 2}, "replicas"),
    "bad-namespace": ({"rbac": {"targetNamespaces": ["Payments_NS"]}}, "targetNamespaces"),
    "secret-value-in-hmac-ref": ({"secrets": {"hmacKey": {"value": "c2VjcmV0"}}}, "value"),
    "fleet-subpath-escape": ({"fleet": {"subPath": "../etc"}}, "subPath"),
    "vault-override-credentials": (
        {"vault": {"addressOverride": "https://u:p@vault.internal"}},
        "addressOverride",
    ),
    "git-sync-without-repo": ({"fleet": {"gitSync": {"enabled": True}}}, "repo"),
    "git-url-and-git-sync": (
        {
            "fleet": {
                "git": {"url": "https://git.example/fleet.git"},
                "gitSync": {"enabled": True, "repo": "https://git.example/fleet.git"},
            }
        },
        "enabled",
    ),
    "git-url-with-subpath": (
        {"fleet": {"git": {"url": "https://git.example/fleet.git"}, "subPath": "fleet"}},
        "subPath",
    ),
    "git-url-with-credentials": (
        {"fleet": {"git": {"url": "https://bot:tok@git.example/fleet.git"}}},
        "url",
    ),
    "git-secret-value": ({"fleet": {"git": {"password": "tok"}}}, "password"),
    "git-push-without-url": ({"fleet": {"git": {"push": {"enabled": True}}}}, "url"),
    "git-push-bad-author": (
        {"fleet": {"git": {"url": "https://git.example/f.git", "push": {"author": "bot"}}}},
        "author",
    ),
    "no-shard": ({"sharding": {"enabled": True, "shards": 0}}, "shards"),
    "shards-without-a-statefulset": ({"sharding": {"shards": 3}}, "enabled"),
    "shards-as-text": ({"sharding": {"enabled": True, "shards": "3"}}, "shards"),
    "shards-beyond-64": ({"sharding": {"enabled": True, "shards": 65}}, "shards"),
    "poll-below-a-second": ({"daemon": {"pollInterval": 0.5}}, "pollInterval"),
    "no-sink": ({"daemon": {"kube": False, "git": False}}, "daemon"),
    "exec-plugin-as-a-path": (
        {"kube": {"allowExecPlugins": ["/usr/local/bin/aws"]}},
        "allowExecPlugins",
    ),
    "egress-cidr-without-prefix": (
        {"networkPolicy": {"egress": {"vault": {"cidrs": ["10.0.0.5"]}}}},
        "cidrs",
    ),
    "egress-port-out-of-range": (
        {"networkPolicy": {"egress": {"git": {"ports": [70000]}}}},
        "ports",
    ),
    "egress-as-a-list-of-rules": ({"networkPolicy": {"egress": []}}, "egress"),
    "egress-unknown-target": (
        {"networkPolicy": {"egress": {"smtp": {"ports": [25]}}}},
        "smtp",
    ),
}


def merged(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """`extra` deep-merged over `base` (as Helm merges --values over values.yaml)."""
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def default_values() -> dict[str, Any]:
    data = yaml.safe_load((CHART / "values.yaml").read_text())
    assert isinstance(data, dict)
    return data


def schema() -> dict[str, Any]:
    data = json.loads((CHART / "values.schema.json").read_text())
    assert isinstance(data, dict)
    return data


def lint(chart: Path) -> dict[str, Any]:
    """`helm lint` through helm-sdkpy (the Helm engine itself, offline)."""
    config = helm_sdkpy.Configuration(namespace="default")
    result = asyncio.run(helm_sdkpy.Lint(config).run(str(chart)))
    assert isinstance(result, dict)
    return result


def chart_with_values(tmp_path: Path, values: dict[str, Any]) -> Path:
    """A copy of the chart whose values.yaml is `values` (Lint takes no value overrides)."""
    copy_dir = tmp_path / "secretsync"
    shutil.copytree(CHART, copy_dir)
    (copy_dir / "values.yaml").write_text(yaml.safe_dump(values, sort_keys=False))
    return copy_dir


def severities(result: dict[str, Any]) -> list[tuple[int, str]]:
    return [(int(m["Severity"]), str(m["Path"])) for m in result.get("Messages") or []]


def lint_text(result: dict[str, Any]) -> str:
    return json.dumps(result)


# --- lint -------------------------------------------------------------------------------------


def test_lint_default_values_has_no_warning_or_error() -> None:
    result = lint(CHART)
    assert result["TotalChartsLinted"] == 1
    assert [s for s in severities(result) if s[0] >= WARNING] == []
    assert not result.get("Errors")


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_lint_value_sets(name: str, tmp_path: Path) -> None:
    chart = chart_with_values(tmp_path, merged(default_values(), VALUE_SETS[name]))
    result = lint(chart)
    assert [s for s in severities(result) if s[0] >= WARNING] == [], lint_text(result)[:2000]


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_lint_refuses_bad_values(name: str, tmp_path: Path) -> None:
    extra, _where = REFUSED[name]
    chart = chart_with_values(tmp_path, merged(default_values(), extra))
    result = lint(chart)
    # helm-sdkpy serialises most lint errors without their text: the severity and the file
    # say that the schema refused the values (the schema test below names the path)
    assert (ERROR, "values.yaml") in severities(result)


# --- values.schema.json -----------------------------------------------------------------------


def _leaves(value: Any, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    if isinstance(value, dict) and value:
        return [p for k, v in value.items() for p in _leaves(v, (*path, str(k)))]
    return [path]


def _schema_at(node: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any] | None:
    for key in path:
        props = node.get("properties") or {}
        if key in props:
            node = props[key]
        elif isinstance(node.get("additionalProperties"), dict):
            node = node["additionalProperties"]
        else:
            return None
    return node


def test_schema_describes_every_value() -> None:
    values, doc = default_values(), schema()
    missing = [".".join(p) for p in _leaves(values) if _schema_at(doc, p) is None]
    assert missing == []
    # objects are closed: an unknown value is an error, not silently ignored
    for path in _leaves(values):
        for depth in range(len(path)):
            node = _schema_at(doc, path[:depth])
            assert node is not None
            if node.get("properties"):
                assert node.get("additionalProperties") is False, ".".join(path[:depth])


def test_schema_accepts_defaults_and_value_sets() -> None:
    doc = schema()
    jsonschema.validate(default_values(), doc)
    for extra in VALUE_SETS.values():
        jsonschema.validate(merged(default_values(), extra), doc)


def test_schema_refuses_what_lint_refuses() -> None:
    doc = schema()
    for extra, where in REFUSED.values():
        with pytest.raises(jsonschema.ValidationError) as refused:
            jsonschema.validate(merged(default_values(), extra), doc)
        error = refused.value
        assert where in [*map(str, error.absolute_path)] or f"'{where}'" in error.message


def test_values_name_secrets_and_never_hold_them() -> None:
    """Every value under `secrets`, and Vault's token, is an existing Secret's name or key."""
    values = default_values()
    refs = values["secrets"]
    for name in ("hmacKey", "webhookSecret", "sopsAgeKey"):
        assert set(refs[name]) == {"existingSecret", "key"}
        assert refs[name]["existingSecret"] == ""
    assert set(values["vault"]["tokenSecret"]) == {"name", "key"}
    text = (CHART / "values.yaml").read_text()
    assert not re.search(r"(?i)^\s*(password|token|secretId|hmac|privateKey)\s*:", text, re.M)
    for template in (CHART / "templates").glob("*"):
        body = template.read_text()
        assert "stringData" not in body
        assert not re.search(r"^data:", body, re.M) or template.name == "configmap.yaml"


# --- rendered by Helm (install onto a real kube-apiserver, no kubelet) ----------------------


@pytest.fixture(scope="module")
def helm_config(tmp_path_factory: pytest.TempPathFactory) -> Iterator[helm_sdkpy.Configuration]:
    from tests.support.kubecluster import start_cluster

    workdir = tmp_path_factory.mktemp("chart-render")
    cluster = start_cluster(name="chart", workdir=workdir)
    try:
        kubeconfig = cluster.kubeconfig(workdir / "helm.yaml")
        yield helm_sdkpy.Configuration(namespace="default", kubeconfig=str(kubeconfig))
    finally:
        cluster.stop()


def installed(
    config: helm_sdkpy.Configuration, release: str, values: dict[str, Any]
) -> list[dict[str, Any]]:
    """The objects Helm installed for `values` as release `release`."""
    result = asyncio.run(
        helm_sdkpy.Install(config).run(release, str(CHART), values=values, wait=False, timeout=60)
    )
    return [d for d in yaml.safe_load_all(result["manifest"]) if d]


def render_workload(
    config: helm_sdkpy.Configuration, release: str, values: dict[str, Any]
) -> dict[str, Any]:
    """The pod spec of the chart's workload as Helm rendered it for `values`."""
    docs = installed(config, release, values)
    (workload,) = [d for d in docs if d["kind"] in ("Deployment", "StatefulSet")]
    spec = workload["spec"]["template"]["spec"]
    assert isinstance(spec, dict)
    return spec


def settings_configmap(
    config: helm_sdkpy.Configuration, release: str, values: dict[str, Any]
) -> dict[str, str]:
    docs = installed(config, release, values)
    (settings,) = [
        d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-settings")
    ]
    data = settings["data"]
    assert isinstance(data, dict)
    return data


def test_vault_address_override_is_set_only_when_given(
    helm_config: helm_sdkpy.Configuration,
) -> None:
    values = {"vault": {"address": "https://a.example:8200", "addressOverride": "https://b:8200"}}
    data = settings_configmap(helm_config, "vault-override", values)
    assert data["VAULT_ADDR"] == "https://a.example:8200"  # the default, below the Fleet's
    assert data["SECRETSYNC_VAULT_ADDRESS"] == "https://b:8200"  # wins over the Fleet's
    assert "SECRETSYNC_VAULT_ADDRESS" not in settings_configmap(helm_config, "vault-none", {})


def test_git_url_renders_flags_working_folder_and_credentials(
    helm_config: helm_sdkpy.Configuration,
) -> None:
    spec = render_workload(helm_config, "git-url", VALUE_SETS["git-url"])
    (daemon,) = spec["containers"]  # no git-sync sidecar
    assert daemon["args"][:2] == ["serve", "/git/fleet"]
    assert "--git-url=https://git.example/platform/fleet.git" in daemon["args"]
    assert "--git-branch=release/1" in daemon["args"]
    assert "--git-credentials-file=/etc/secretsync/git/.git-credentials" in daemon["args"]
    mounts = {m["name"]: m for m in daemon["volumeMounts"]}
    assert mounts["fleet"]["mountPath"] == "/git"
    assert mounts["fleet"]["readOnly"] is False  # the working folder the daemon clones into
    assert mounts["git-credentials"] == {
        "name": "git-credentials",
        "mountPath": "/etc/secretsync/git",
        "readOnly": True,
    }
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert "emptyDir" in volumes["fleet"]
    assert volumes["git-credentials"]["secret"] == {
        "secretName": "fleet-git-credentials",
        "defaultMode": 0o440,
        "items": [{"key": ".git-credentials", "path": ".git-credentials"}],
    }
    assert daemon["securityContext"]["readOnlyRootFilesystem"] is True


def test_api_auth_on_by_default_with_review_rules_and_reader_role(
    helm_config: helm_sdkpy.Configuration,
) -> None:
    readers = [{"kind": "ServiceAccount", "name": "prometheus", "namespace": "monitoring"}]
    values = {"apiAuth": {"readers": readers}, "serviceMonitor": {"enabled": True}}
    result = asyncio.run(
        helm_sdkpy.Install(helm_config).run(
            "api-auth", str(CHART), values=values, wait=False, timeout=60
        )
    )
    docs = [d for d in yaml.safe_load_all(result["manifest"]) if d]
    by_name = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    (workload,) = [d for d in docs if d["kind"] in ("Deployment", "StatefulSet")]
    assert "--api-auth=kubernetes" in workload["spec"]["template"]["spec"]["containers"][0]["args"]
    reviews = by_name[("ClusterRole", "api-auth-secretsync-default-reviews")]
    assert reviews["rules"] == [
        {
            "apiGroups": ["authentication.k8s.io"],
            "resources": ["tokenreviews"],
            "verbs": ["create"],
        },
        {
            "apiGroups": ["authorization.k8s.io"],
            "resources": ["subjectaccessreviews"],
            "verbs": ["create"],
        },
    ]
    reader = by_name[("ClusterRole", "api-auth-secretsync-default-status-reader")]
    assert reader["rules"] == [
        {"nonResourceURLs": ["/v1/status", "/v1/status/*", "/", "/metrics"], "verbs": ["get"]}
    ]
    binding = by_name[("ClusterRoleBinding", "api-auth-secretsync-default-status-reader")]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "prometheus", "namespace": "monitoring"}
    ]
    off = render_workload(helm_config, "api-auth-off", {"apiAuth": {"enabled": False}})
    assert not any(a.startswith("--api-auth") for a in off["containers"][0]["args"])


def test_git_url_without_credentials_and_default_branch(
    helm_config: helm_sdkpy.Configuration,
) -> None:
    values = {"fleet": {"git": {"url": "https://git.example/public/fleet.git"}}}
    spec = render_workload(helm_config, "git-url-public", values)
    (daemon,) = spec["containers"]
    assert "--git-branch=main" in daemon["args"]
    assert not [a for a in daemon["args"] if a.startswith("--git-credentials-file")]
    assert "git-credentials" not in {m["name"] for m in daemon["volumeMounts"]}
    assert "git-credentials" not in {v["name"] for v in spec["volumes"]}


def test_git_push_renders_its_flags(helm_config: helm_sdkpy.Configuration) -> None:
    spec = render_workload(helm_config, "git-push", VALUE_SETS["git-push"])
    (daemon,) = spec["containers"]
    args = daemon["args"]
    assert "--git" in args  # the output folder is rendered, daemon.git or not
    assert "--git-url=https://git.example/platform/fleet.git" in args
    assert "--git-push" in args
    assert "--git-push-branch=rendered" in args
    assert "--git-author=Fleet Bot <fleet-bot@example.com>" in args
    assert "--git-signing-key=/etc/secretsync/git-signing/ssh-privatekey" in args
    assert "--cert-refresh-interval=86400" in args
    mounts = {m["name"]: m for m in daemon["volumeMounts"]}
    assert mounts["git-signing-key"]["mountPath"] == "/etc/secretsync/git-signing"
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["git-signing-key"]["secret"]["secretName"] == "fleet-signing-key"
    off = render_workload(helm_config, "git-url-only", VALUE_SETS["git-url"])
    assert not [a for a in off["containers"][0]["args"] if a.startswith("--git-push")]


def test_allowed_exec_plugins_reach_the_daemon_environment(
    helm_config: helm_sdkpy.Configuration,
) -> None:
    spec = render_workload(helm_config, "exec-plugins", VALUE_SETS["exec-plugins"])
    env = {e["name"]: e.get("value") for e in spec["containers"][0]["env"]}
    assert env["SECRETSYNC_ALLOW_EXEC_PLUGINS"] == "aws,gke-gcloud-auth-plugin,kubelogin"
    spec = render_workload(helm_config, "no-exec-plugins", {})
    assert "SECRETSYNC_ALLOW_EXEC_PLUGINS" not in {e["name"] for e in spec["containers"][0]["env"]}


def test_events_flag_pod_reference_and_role(helm_config: helm_sdkpy.Configuration) -> None:
    """Events are on by default: the flag, the downward API names of the Pod they are about,
    and create/patch on `events` in the release namespace only; off, neither flag nor rule."""

    def render(release: str, values: dict[str, Any]) -> list[dict[str, Any]]:
        result = asyncio.run(
            helm_sdkpy.Install(helm_config).run(
                release, str(CHART), values=values, wait=False, timeout=60
            )
        )
        return [d for d in yaml.safe_load_all(result["manifest"]) if d]

    def parts(docs: list[dict[str, Any]]) -> tuple[list[str], dict[str, str], list[Any]]:
        (workload,) = [d for d in docs if d["kind"] in ("Deployment", "StatefulSet")]
        daemon = workload["spec"]["template"]["spec"]["containers"][0]
        fields = {
            e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"]
            for e in daemon["env"]
            if "fieldRef" in e.get("valueFrom", {})
        }
        rules = [r for d in docs if d["kind"] == "Role" for r in d["rules"]]
        return daemon["args"], fields, rules

    args, fields, rules = parts(render("events-on", {}))
    assert "--events" in args
    assert fields == {
        "POD_NAME": "metadata.name",
        "POD_NAMESPACE": "metadata.namespace",
        "POD_UID": "metadata.uid",
        "NODE_NAME": "spec.nodeName",
    }
    assert {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"]} in rules
    args, _, rules = parts(
        render("events-off", {"events": {"enabled": False}, "leaderElection": {"enabled": False}})
    )
    assert "--no-events" in args and "--events" not in args
    assert not [r for r in rules if "events" in r["resources"]]


def test_without_git_url_no_git_flags(helm_config: helm_sdkpy.Configuration) -> None:
    spec = render_workload(helm_config, "git-sync", VALUE_SETS["git-sync-and-secret-refs"])
    daemon = spec["containers"][0]
    assert not [a for a in daemon["args"] if a.startswith("--git-")]
    assert {m["name"]: m for m in daemon["volumeMounts"]}["fleet"]["readOnly"] is True
    assert "git-credentials" not in {v["name"] for v in spec["volumes"]}


@pytest.mark.parametrize(
    ("release", "values", "shards", "poll"),
    [
        ("deployment", {}, None, None),
        ("one-shard", {"sharding": {"enabled": True}}, "1", None),
        ("three-shards", VALUE_SETS["three-shards"], "3", "60"),
        (
            "three-no-poll",
            merged(VALUE_SETS["three-shards"], {"daemon": {"pollInterval": 0}}),
            "3",
            None,
        ),
        (
            "three-poll-15",
            merged(VALUE_SETS["three-shards"], {"daemon": {"pollInterval": 15}}),
            "3",
            "15",
        ),
        ("one-poll-30", {"daemon": {"pollInterval": 30}}, None, "30"),
    ],
)
def test_shards_and_poll_reach_the_daemon(
    helm_config: helm_sdkpy.Configuration,
    release: str,
    values: dict[str, Any],
    shards: str | None,
    poll: str | None,
) -> None:
    """`--shards N` with the StatefulSet; with more than one shard a webhook reaches one replica,
    so the KV v2 poll is on unless turned off."""
    spec = render_workload(helm_config, release, values)
    daemon = spec["containers"][0]

    def flag(name: str) -> list[str]:
        return [a.removeprefix(f"--{name}=") for a in daemon["args"] if a.startswith(f"--{name}=")]

    assert flag("shards") == ([shards] if shards else [])
    assert flag("poll-interval") == ([poll] if poll else [])
    # the shard index is the ordinal at the end of the pod's name (HOSTNAME in a StatefulSet
    # pod, POD_NAME from the downward API names the Lease holder)
    env = {e["name"]: e for e in daemon["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert "SECRETSYNC_SHARD_INDEX" not in env


def test_sharded_replicas_name_each_other_as_webhook_peers(
    helm_config: helm_sdkpy.Configuration,
) -> None:
    """With more than one shard and a webhook secret, every replica gets the pod DNS name of
    every ordinal under the headless Service (the daemon skips its own by HOSTNAME), and the
    egress policy lets it reach them on the daemon's port."""
    hooked = {"secrets": {"webhookSecret": {"existingSecret": "hook"}}}
    sharded = merged(VALUE_SETS["three-shards"], hooked)

    def peers(release: str, values: dict[str, Any]) -> list[str]:
        args = render_workload(helm_config, release, values)["containers"][0]["args"]
        return [a.removeprefix("--peer=") for a in args if a.startswith("--peer")]

    assert peers("pe", sharded) == [
        f"http://pe-secretsync-{n}.pe-secretsync-peers.default.svc:8080" for n in range(3)
    ]
    assert peers("pe-nohook", VALUE_SETS["three-shards"]) == []  # nothing to sign them with
    assert peers("pe-one", merged({"sharding": {"enabled": True}}, hooked)) == []
    assert peers("pe-deploy", hooked) == []

    egress = merged(sharded, {"networkPolicy": {"enabled": True, "egress": {"enabled": True}}})
    spec = render_network_policy(helm_config, "pe-np", egress)
    to_replicas = [
        rule
        for rule in spec["egress"]
        for peer in rule.get("to", [])
        if peer.get("podSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/instance")
        == "pe-np"
    ]
    assert [r["ports"] for r in to_replicas] == [[{"port": 8080, "protocol": "TCP"}]]


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("git-url-and-git-sync", "two fleet sources"),
        ("git-url-with-subpath", "fleet.subPath is not supported with fleet.git.url"),
        ("git-push-without-url", "fleet.git.push.enabled needs fleet.git.url"),
        ("shards-without-a-statefulset", "sharding.shards > 1 needs sharding.enabled"),
    ],
)
def test_template_refuses_git_url_conflicts_without_the_schema(
    helm_config: helm_sdkpy.Configuration, name: str, message: str
) -> None:
    """The workload template says why, even when the schema is skipped."""
    with pytest.raises(helm_sdkpy.InstallError, match=message):
        asyncio.run(
            helm_sdkpy.Install(helm_config).run(
                name, str(CHART), values=REFUSED[name][0], wait=False, skip_schema_validation=True
            )
        )


def test_template_refuses_shards_without_their_leases(
    helm_config: helm_sdkpy.Configuration,
) -> None:
    values = merged(VALUE_SETS["three-shards"], {"leaderElection": {"enabled": False}})
    with pytest.raises(helm_sdkpy.InstallError, match=re.escape("needs leaderElection.enabled")):
        asyncio.run(
            helm_sdkpy.Install(helm_config).run("no-leases", str(CHART), values=values, wait=False)
        )
    # one shard without Leases stays possible (with --no-leader-elect, as the NOTES say)
    one = {"sharding": {"enabled": True}, "leaderElection": {"enabled": False}}
    assert render_workload(helm_config, "one-no-leases", one)["containers"]


# --- NetworkPolicy egress (rendered by Helm, accepted by a real apiserver) ---------------------


def render_network_policy(
    config: helm_sdkpy.Configuration, release: str, values: dict[str, Any]
) -> dict[str, Any]:
    (policy,) = [d for d in installed(config, release, values) if d["kind"] == "NetworkPolicy"]
    spec = policy["spec"]
    assert isinstance(spec, dict)
    return spec


def egress_allows(spec: dict[str, Any], address: str, port: int, protocol: str = "TCP") -> bool:
    """NetworkPolicy egress semantics for an address outside the cluster's pods: open unless
    Egress is a policy type; then some rule must match the port (a rule without ports: every
    port) and the address (a rule without `to`: every address; an ipBlock: its CIDR minus
    `except`; pod and namespace selectors never match an outside address)."""
    if "Egress" not in spec["policyTypes"]:
        return True
    ip = ipaddress.ip_address(address)
    for rule in spec.get("egress") or []:
        ports = rule.get("ports")
        if ports and not any(
            p.get("port") == port and p.get("protocol", "TCP") == protocol for p in ports
        ):
            continue
        peers = rule.get("to")
        if not peers:
            return True
        for peer in peers:
            block = peer.get("ipBlock")
            if block is None:
                continue
            network = ipaddress.ip_network(block["cidr"])
            excluded = [ipaddress.ip_network(e) for e in block.get("except", [])]
            inside = ip.version == network.version and ip in network
            if inside and not any(ip.version == e.version and ip in e for e in excluded):
                return True
    return False


def test_default_egress_is_dns_the_api_vault_and_git_ports_only(
    helm_config: helm_sdkpy.Configuration,
) -> None:
    spec = render_network_policy(helm_config, "egress-default", {})
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    anywhere = "203.0.113.9"
    for port, protocol in [
        (53, "UDP"),
        (53, "TCP"),
        (443, "TCP"),
        (6443, "TCP"),
        (8200, "TCP"),
        (22, "TCP"),
    ]:
        assert egress_allows(spec, anywhere, port, protocol), (port, protocol)
    for port, protocol in [(80, "TCP"), (25, "TCP"), (8080, "TCP"), (443, "UDP"), (5432, "TCP")]:
        assert not egress_allows(spec, anywhere, port, protocol), (port, protocol)
    assert all(rule.get("ports") for rule in spec["egress"]), "no rule opens every port"


def test_egress_cidrs_and_peers_narrow_each_target(helm_config: helm_sdkpy.Configuration) -> None:
    kube_dns = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
        "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
    }
    vault_ns = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "vault"}}}
    values = {
        "networkPolicy": {
            "egress": {
                "dns": {"to": [kube_dns]},
                "kubernetesApi": {"cidrs": ["10.0.0.10/32", "198.51.100.0/28"], "ports": [6443]},
                "vault": {"cidrs": ["10.1.0.0/16"], "peers": [vault_ns]},
                "git": {"cidrs": ["192.0.2.0/24", "2001:db8::/32"]},
            }
        }
    }
    spec = render_network_policy(helm_config, "egress-narrow", values)
    allowed = [
        ("10.0.0.10", 6443), ("198.51.100.5", 6443), ("10.1.2.3", 8200),
        ("192.0.2.7", 443), ("192.0.2.7", 22), ("2001:db8::7", 443),
    ]  # fmt: skip
    refused = [
        ("10.0.0.11", 6443), ("10.0.0.10", 443), ("203.0.113.9", 8200), ("10.1.2.3", 443),
        ("203.0.113.9", 443), ("2001:db9::7", 443), ("192.0.2.7", 8200),
    ]  # fmt: skip
    for address, port in allowed:
        assert egress_allows(spec, address, port), (address, port)
    for address, port in refused:
        assert not egress_allows(spec, address, port), (address, port)
    # DNS only to the cluster's resolver pods, never to an outside address
    assert not egress_allows(spec, "8.8.8.8", 53, "UDP")
    (dns,) = [r for r in spec["egress"] if {"port": 53, "protocol": "UDP"} in r["ports"]]
    assert dns["to"] == [kube_dns]
    (vault,) = [r for r in spec["egress"] if {"port": 8200, "protocol": "TCP"} in r["ports"]]
    assert vault["to"] == [{"ipBlock": {"cidr": "10.1.0.0/16"}}, vault_ns]


def test_egress_off_or_a_target_without_ports(helm_config: helm_sdkpy.Configuration) -> None:
    off = render_network_policy(
        helm_config, "egress-off", {"networkPolicy": {"egress": {"enabled": False}}}
    )
    assert off["policyTypes"] == ["Ingress"]
    assert "egress" not in off
    assert egress_allows(off, "203.0.113.9", 5432)
    no_vault = render_network_policy(
        helm_config,
        "egress-no-vault",
        {"networkPolicy": {"egress": {"vault": {"ports": []}, "dns": {"enabled": False}}}},
    )
    assert not egress_allows(no_vault, "203.0.113.9", 8200)
    assert not egress_allows(no_vault, "203.0.113.9", 53, "UDP")
    assert egress_allows(no_vault, "203.0.113.9", 6443)


def test_egress_rule_check_can_fail() -> None:
    """The evaluator above refuses what a rule does not cover and admits what it does."""
    spec = {
        "policyTypes": ["Ingress", "Egress"],
        "egress": [
            {
                "ports": [{"port": 443}],
                "to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.9.0.0/16"]}}],
            }
        ],
    }
    assert egress_allows(spec, "10.1.1.1", 443)
    assert not egress_allows(spec, "10.9.1.1", 443)
    assert not egress_allows(spec, "11.1.1.1", 443)
    assert not egress_allows(spec, "10.1.1.1", 80)
    assert egress_allows({"policyTypes": ["Ingress"]}, "11.1.1.1", 80)


# --- Dockerfile -------------------------------------------------------------------------------


def dockerfile_stages(text: str) -> list[dict[str, Any]]:
    """The Dockerfile as stages: {"from": image, "name": alias, "instructions": [(op, arg)]}."""
    joined = re.sub(r"\\\n", " ", text)
    stages: list[dict[str, Any]] = []
    for raw in joined.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        op, _, arg = line.partition(" ")
        op, arg = op.upper(), " ".join(arg.split())
        if op == "FROM":
            parts = arg.split()
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None
            stages.append({"from": parts[0], "name": name, "instructions": []})
        else:
            assert stages, f"{op} before FROM"
            stages[-1]["instructions"].append((op, arg))
    return stages


COMPILERS = re.compile(
    r"\b(build-essential|gcc|g\+\+|clang|make|cmake|cargo|rustc|libc6-dev|python3-dev|golang)\b"
)


def test_dockerfile_rules() -> None:
    stages = dockerfile_stages(DOCKERFILE.read_text())
    assert len(stages) >= 2, "multi-stage"
    assert all(s["from"] == "python:3.12-slim" for s in stages)
    final = stages[-1]
    ops = final["instructions"]
    users = [arg for op, arg in ops if op == "USER"]
    assert users, "the final stage sets USER"
    user, _, group = users[-1].partition(":")
    assert user.isdigit() and int(user) > 0
    assert not group or (group.isdigit() and int(group) > 0)
    entrypoints = [arg for op, arg in ops if op == "ENTRYPOINT"]
    assert entrypoints and json.loads(entrypoints[-1]) == ["secretsync"]
    runs = " ".join(arg for op, arg in ops if op == "RUN")
    assert not COMPILERS.search(runs), "no compilers in the final stage"
    assert "pip install" not in runs, "the final stage installs nothing from PyPI"
    assert re.search(r"apt-get install[^&]*\bgit\b", runs), "git in the final image"
    assert "rm -rf /var/lib/apt/lists" in runs
    assert "sops --version" in runs, "the image checks its sops binary at build time"
    copies = [arg for op, arg in ops if op == "COPY"]
    assert any(c.startswith(f"--from={stages[0]['name']} ") for c in copies)
    # USER comes after every RUN (nothing of the final image runs as root at run time)
    last_user = max(i for i, (op, _) in enumerate(ops) if op == "USER")
    assert all(i < last_user for i, (op, _) in enumerate(ops) if op == "RUN")


def test_dockerfile_parser_catches_bad_files() -> None:
    """The rule checks above can fail: a root user and a compiler are seen."""
    bad = "FROM python:3.12-slim\nRUN apt-get install -y gcc \\\n  git\nUSER root\n"
    final = dockerfile_stages(bad)[-1]["instructions"]
    assert COMPILERS.search(final[0][1])
    assert final[-1] == ("USER", "root")


def test_dockerignore_keeps_only_the_build_inputs() -> None:
    rules = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert rules[0] == "*", "everything is ignored unless listed"
    kept = {r[1:].rstrip("/") for r in rules if r.startswith("!")}
    sources = set()
    for _op, arg in (
        i for s in dockerfile_stages(DOCKERFILE.read_text()) for i in s["instructions"]
    ):
        if _op == "COPY" and not arg.startswith("--from"):
            sources.update(Path(p).as_posix().rstrip("/") for p in shlex.split(arg)[:-1])
    assert sources == kept
    assert all((ROOT / s).exists() for s in sources)


@pytest.mark.slow
def test_image_install_steps_work_in_a_clean_venv(tmp_path: Path) -> None:
    """Replay the build stage: copy what it COPYs, run its RUN with the venv and source paths
    moved under tmp; then the final stage's check (secretsync, sops) from that venv."""
    build = dockerfile_stages(DOCKERFILE.read_text())[0]
    src, venv = tmp_path / "src", tmp_path / "venv"
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    for op, arg in build["instructions"]:
        if op == "COPY":
            *sources, dest = shlex.split(arg)
            for source in sources:
                target = src if dest.endswith("/") else src / Path(dest).relative_to("/src")
                if (ROOT / source).is_dir():
                    shutil.copytree(
                        ROOT / source,
                        target,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
                    )
                else:
                    target.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(ROOT / source, target / Path(source).name)
        elif op == "RUN":
            command = (
                arg.replace("/opt/secretsync", str(venv))
                .replace("/src", str(src))
                .replace("python -m venv", f"{shlex.quote(sys.executable)} -m venv")
            )
            done = subprocess.run(
                ["bash", "-ec", command],
                check=False,
                env=env,
                timeout=540,
                capture_output=True,
                text=True,
            )
            assert done.returncode == 0, done.stderr[-3000:]
    assert (src / "secretsync" / "cli" / "main.py").is_file()
    clean = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "SOPS_DISABLE_VERSION_CHECK": "1"}
    version = subprocess.run(
        [str(venv / "bin" / "secretsync"), "--version"],
        capture_output=True,
        text=True,
        env=clean,
        check=True,
    )
    assert "0.1.0" in version.stdout
    sops = subprocess.run(
        ["sops", "--version", "--disable-version-check"],
        capture_output=True,
        text=True,
        env=clean,
        check=True,
    )
    assert sops.stdout.startswith("sops 3.")
    # not the project's editable install: the venv holds its own copy
    shown = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import secretsync; print(secretsync.__file__)"],
        capture_output=True,
        text=True,
        env=clean,
        check=True,
        cwd=tmp_path,
    )
    assert shown.stdout.startswith(str(venv))
