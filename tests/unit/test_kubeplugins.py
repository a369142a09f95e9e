"""`kubeplugins`: which kubeconfig credential plugins may run, and with what.

The kubernetes client never sees a plugin; an allowed one is resolved on secretsync's own PATH,
never from the fleet repo, and gets an environment without secretsync's credentials. Plugins
here are real scripts run as processes.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from secretsync.core import errors
from secretsync.kube import kubeplugins
from tests.support import canary

WHERE = "kubeconfig /etc/k.yaml"


def script(path: Path, body: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


def kubeconfig(user: dict[str, Any], *, other: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}],
        "users": [{"name": "u", "user": user}, {"name": "o", "user": other or {"token": "t"}}],
        "contexts": [
            {"name": "main", "context": {"cluster": "c", "user": "u"}},
            {"name": "other", "context": {"cluster": "c", "user": "o"}},
        ],
        "current-context": "main",
    }


def exec_user(command: str, **extra: Any) -> dict[str, Any]:
    return {"exec": {"apiVersion": "client.authentication.k8s.io/v1", "command": command, **extra}}


def policy(tmp_path: Path, *allowed: str, **env: str) -> kubeplugins.PluginPolicy:
    return kubeplugins.PluginPolicy(
        allowed=frozenset(allowed),
        env={"PATH": str(tmp_path / "bin"), **env},
        repo=tmp_path / "fleet",
    )


def test_allowed_names_come_from_repeated_flags_and_comma_lists() -> None:
    assert kubeplugins.parse_allowed(["aws", "gke-gcloud-auth-plugin, kubelogin", ""]) == {
        "aws",
        "gke-gcloud-auth-plugin",
        "kubelogin",
    }
    with pytest.raises(ValueError, match="not a base name"):
        kubeplugins.parse_allowed(["/usr/bin/aws"])


@pytest.mark.parametrize(
    ("user", "name"),
    [
        (exec_user("/opt/tools/aws", args=["eks", "get-token"]), "aws"),
        ({"auth-provider": {"name": "oidc", "config": {"id-token": "x"}}}, "oidc"),
        (
            {"auth-provider": {"name": "gcp", "config": {"cmd-path": "/sdk/bin/gcloud helper"}}},
            "gcloud",
        ),
    ],
)
def test_a_plugin_not_allowed_is_refused_naming_it_and_the_flag(
    tmp_path: Path, user: dict[str, Any], name: str
) -> None:
    with pytest.raises(errors.DeliveryError) as refused:
        kubeplugins.screen(
            kubeconfig(user),
            context=None,
            policy=policy(tmp_path, "kubelogin"),
            where=WHERE,
            base=None,
        )
    assert str(refused.value) == (
        f"{WHERE}: credential plugin {name!r} is not allowed; an operator who trusts it passes "
        f"--allow-exec-plugin {name} (or SECRETSYNC_ALLOW_EXEC_PLUGINS={name})"
    )


def test_the_client_sees_no_plugin_of_any_user(tmp_path: Path) -> None:
    command = script(tmp_path / "bin" / "aws", "exit 0\n")
    config = kubeconfig(exec_user("aws"), other=exec_user("/bin/sh"))
    screened = kubeplugins.screen(
        config, context=None, policy=policy(tmp_path, "aws"), where=WHERE, base=None
    )
    assert [u["user"] for u in screened.config["users"]] == [{}, {}]
    assert screened.plugin is not None and screened.plugin.argv == (str(command),)
    # the other context's user (not selected) is not checked, and never runs
    screened = kubeplugins.screen(
        kubeconfig({"token": "t"}, other=exec_user("/bin/sh")),
        context=None,
        policy=policy(tmp_path),
        where=WHERE,
        base=None,
    )
    assert screened.plugin is None and [u["user"] for u in screened.config["users"]] == [
        {"token": "t"},
        {},
    ]


def test_the_kubeconfig_path_does_not_choose_the_command(tmp_path: Path) -> None:
    real = script(tmp_path / "bin" / "aws", "exit 0\n")
    script(tmp_path / "decoy" / "aws", "exit 0\n")
    user = exec_user("aws", env=[{"name": "PATH", "value": str(tmp_path / "decoy")}])
    screened = kubeplugins.screen(
        kubeconfig(user), context=None, policy=policy(tmp_path, "aws"), where=WHERE, base=None
    )
    assert screened.plugin is not None and screened.plugin.argv[0] == str(real)


@pytest.mark.parametrize("how", ["absolute", "on-path", "relative-to-kubeconfig"])
def test_a_command_inside_the_fleet_repo_is_refused(tmp_path: Path, how: str) -> None:
    inside = script(tmp_path / "fleet" / "bin" / "aws", "exit 0\n")
    command = {"absolute": str(inside), "on-path": "aws", "relative-to-kubeconfig": "./bin/aws"}
    rules = kubeplugins.PluginPolicy(
        allowed=frozenset({"aws"}),
        env={"PATH": f"{tmp_path / 'fleet' / 'bin'}"},
        repo=tmp_path / "fleet",
    )
    with pytest.raises(errors.DeliveryError, match="credential plugin 'aws' lies inside the fleet"):
        kubeplugins.screen(
            kubeconfig(exec_user(command[how])),
            context=None,
            policy=rules,
            where=WHERE,
            base=tmp_path / "fleet",
        )


def test_the_environment_holds_no_secretsync_vault_bao_or_sops_variable(tmp_path: Path) -> None:
    script(tmp_path / "bin" / "aws", "exit 0\n")
    secret = canary.new("env")
    rules = policy(
        tmp_path,
        "aws",
        VAULT_TOKEN=secret,
        vault_token=secret,
        BAO_TOKEN=secret,
        SOPS_AGE_KEY=secret,
        SECRETSYNC_WEBHOOK_SECRET=secret,
        AWS_PROFILE="fleet",
    )
    user = exec_user(
        "aws",
        env=[
            {"name": "VAULT_ADDR", "value": "http://elsewhere"},
            {"name": "AWS_REGION", "value": "eu-west-1"},
        ],
    )
    screened = kubeplugins.screen(
        kubeconfig(user), context=None, policy=rules, where=WHERE, base=None
    )
    assert screened.plugin is not None
    assert dict(screened.plugin.env) == {
        "PATH": str(tmp_path / "bin"),
        "AWS_PROFILE": "fleet",
        "AWS_REGION": "eu-west-1",
    }


def test_a_failing_plugin_is_named_without_its_output(tmp_path: Path) -> None:
    said = canary.new("stderr")
    script(tmp_path / "bin" / "aws", f"echo {said}\necho {said} >&2\nexit 3\n")
    screened = kubeplugins.screen(
        kubeconfig(exec_user("aws")),
        context=None,
        policy=policy(tmp_path, "aws"),
        where=WHERE,
        base=None,
    )
    assert screened.plugin is not None
    with pytest.raises(errors.DeliveryError) as failed:
        asyncio.run(screened.plugin.run())
    assert str(failed.value) == f"{WHERE}: credential plugin 'aws' failed (exit status 3)"


def test_a_token_and_its_expiry_are_read_from_the_exec_credential(tmp_path: Path) -> None:
    script(
        tmp_path / "bin" / "aws",
        """printf '%s' '{"apiVersion":"client.authentication.k8s.io/v1","kind":"ExecCredential",'
printf '%s' '"status":{"token":"tok","expirationTimestamp":"2030-01-02T03:04:05Z"}}'
""",
    )
    screened = kubeplugins.screen(
        kubeconfig(exec_user("aws")),
        context=None,
        policy=policy(tmp_path, "aws"),
        where=WHERE,
        base=None,
    )
    assert screened.plugin is not None
    credential = asyncio.run(screened.plugin.run())
    assert credential.token == "tok" and credential.client_pem is None
    assert credential.expires is not None and credential.expires.isoformat() == (
        "2030-01-02T03:04:05+00:00"
    )
