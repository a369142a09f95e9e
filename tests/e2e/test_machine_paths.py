"""Machine paths through the real CLI process (issue 12 item 2, issue 13 item 12).

Credential paths — `kubeconfig.path`, `tokenFile`, `jwtFile`, `roleIdFile`, `secretIdFile` —
name files of the machine secretsync runs on: a relative one (which used to resolve inside the
fleet repo, so a repo writer could supply a kubeconfig whose `exec` plugin ran with
secretsync's environment) or an absolute one inside the repo is refused by `validate`, `plan`,
`render` and `sync` with exit 2 and `file:line: field: message`, before anything is read or
run. A `kubeconfig.secretRef` cluster outside a pod says to pass `--home-kubeconfig`.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support import cli

MakeRepo = Callable[[dict[str, str | bytes]], Path]
COMMANDS = [["validate"], ["plan"], ["render"], ["sync", "--dry-run"], ["sync"]]

FLEET = """\
apiVersion: secretsync.dev/v1alpha1
kind: Fleet
metadata: {name: paths}
spec:
  defaults: {delivery: direct}
  sources:
    vault:
      address: http://127.0.0.1:1
      auth:
        method: approle
        roleIdFile: vault/role-id
        secretIdFile: ./vault/secret-id
        tokenFile: vault/token
        jwtFile: jwt
"""
CLUSTER = """\
apiVersion: secretsync.dev/v1alpha1
kind: Cluster
metadata: {name: a}
spec:
  kubeconfig: {path: PATH}
"""
SECRET = """\
apiVersion: secretsync.dev/v1alpha1
kind: FleetSecret
metadata: {name: s}
spec:
  clusterSelector: {}
  target: {name: s, namespace: default}
  data: {k: {value: literal}}
"""
# the plugin a repo writer would have run: it leaves a marker behind if it ever runs
EVIL_KUBECONFIG = """\
apiVersion: v1
kind: Config
current-context: x
contexts: [{name: x, context: {cluster: x, user: x}}]
clusters: [{name: x, cluster: {server: "http://127.0.0.1:1"}}]
users:
- name: x
  user:
    exec:
      apiVersion: client.authentication.k8s.io/v1beta1
      command: sh
      args: ["-c", "touch MARKER"]
"""


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return cli.run(
        *args,
        env=cli.environ(SECRETSYNC_HMAC_KEY="paths-key", **(env or {})),
        timeout=60,
        text=True,
    )


def test_relative_machine_paths_are_refused_by_every_command_with_exit_2(
    fleet_repo: MakeRepo, tmp_path: Path
) -> None:
    marker = tmp_path / "marker"
    root = fleet_repo(
        {
            "secretsync.yaml": FLEET,
            "clusters/a.yaml": CLUSTER.replace("PATH", "kube/evil.yaml"),
            "secrets/s.yaml": SECRET,
            "kube/evil.yaml": EVIL_KUBECONFIG.replace("MARKER", str(marker)),
        }
    )
    expected = [
        "secretsync.yaml:13: spec.sources.vault.auth.tokenFile: 'vault/token' must be an "
        "absolute path",
        "secretsync.yaml:11: spec.sources.vault.auth.roleIdFile: 'vault/role-id' must be an "
        "absolute path",
        "secretsync.yaml:12: spec.sources.vault.auth.secretIdFile: './vault/secret-id' must be an "
        "absolute path",
        "secretsync.yaml:14: spec.sources.vault.auth.jwtFile: 'jwt' must be an absolute path",
        "clusters/a.yaml:5: spec.kubeconfig.path: 'kube/evil.yaml' must be an absolute path",
    ]
    for command in COMMANDS:
        proc = run(*command, str(root))
        assert proc.returncode == 2, (command, proc.returncode, proc.stderr[-2000:])
        for line in expected:
            assert line in proc.stderr, (command, line, proc.stderr[-2000:])
        assert "5 error(s); nothing was changed" in proc.stderr
        assert not marker.exists(), f"{command} ran the repo's kubeconfig plugin"
    assert not (root / "rendered").exists()


@pytest.mark.parametrize("inside", ["kube/evil.yaml", "kube/link.yaml"])
def test_absolute_machine_path_into_the_fleet_repo_is_refused(
    fleet_repo: MakeRepo, tmp_path: Path, inside: str
) -> None:
    """The daemon's checkout has a known absolute path: naming the repo's own kubeconfig by
    it (or through a symlink outside the repo pointing back in) is refused the same way."""
    marker = tmp_path / "marker"
    link = tmp_path / "machine" / "kube.yaml"
    root = fleet_repo(
        {
            "secretsync.yaml": FLEET.split("  sources:", maxsplit=1)[0],
            "secrets/s.yaml": SECRET,
            "kube/evil.yaml": EVIL_KUBECONFIG.replace("MARKER", str(marker)),
        }
    )
    link.parent.mkdir()
    link.symlink_to(root / "kube/evil.yaml")
    (root / "kube/link.yaml").symlink_to(link)  # in the repo, resolving back into it
    named = root / inside if inside == "kube/evil.yaml" else link
    (root / "clusters").mkdir()
    (root / "clusters/a.yaml").write_text(CLUSTER.replace("PATH", str(named)))
    for command in (["validate"], ["sync", "--dry-run"]):
        proc = run(*command, str(root), env={"SECRETSYNC_ALLOW_EXEC_PLUGINS": "sh"})
        assert proc.returncode == 2, (command, proc.stderr[-2000:])
        assert (
            f"clusters/a.yaml:5: spec.kubeconfig.path: '{named}' lies inside the fleet repo"
            in proc.stderr
        )
        assert not marker.exists()


def test_secret_ref_cluster_outside_a_pod_says_to_pass_home_kubeconfig(
    fleet_repo: MakeRepo,
) -> None:
    root = fleet_repo(
        {
            "secretsync.yaml": FLEET.split("  sources:", maxsplit=1)[0],
            "clusters/a.yaml": CLUSTER.replace(
                "{path: PATH}", "{secretRef: {namespace: secretsync, name: kubeconfig-a}}"
            ),
            "secrets/s.yaml": SECRET,
        }
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_SERVICE")}
    env.pop("SECRETSYNC_HOME_KUBECONFIG", None)
    proc = cli.run(
        "sync", str(root), env={**env, "SECRETSYNC_HMAC_KEY": "paths-key"}, timeout=60, text=True
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "failed: cluster a: kubeconfig.secretRef:" in proc.stderr
    assert "pass --home-kubeconfig FILE (or set SECRETSYNC_HOME_KUBECONFIG)" in proc.stderr
    assert "inCluster: true" not in proc.stderr
