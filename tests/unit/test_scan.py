"""secretsync.fleet.scan: plaintext Secrets and unencrypted SOPS files, by file and line, never values."""

from __future__ import annotations

import json
import os
import tempfile
import textwrap
import time
import uuid
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from secretsync.core.model import SopsSettings, VaultTransitKey
from secretsync.fleet.scan import scan
from secretsync.fleet.scandocs import Finding, FindingKind
from tests.support import canary

REPO = Path(__file__).resolve().parents[2]


def write(root: Path, files: dict[str, str | bytes]) -> Path:
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(textwrap.dedent(content).lstrip("\n"))
    return root


def enc(n: int = 0) -> str:
    """A value shaped like sops' ciphertext (scan never decrypts, so any ENC[…] will do)."""
    return f"ENC[AES256_GCM,data:QUJD{n}==,iv:aXZpdg==,tag:dGFnZw==,type:str]"


def sops_stanza(**settings: str) -> str:
    extra = "".join(f"    {k}: {v}\n" for k, v in settings.items()) or (
        "    unencrypted_suffix: _unencrypted\n"
    )
    return (
        "sops:\n"
        "    age:\n"
        "        - recipient: age1qqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqq\n"
        "          enc: |\n"
        "            -----BEGIN AGE ENCRYPTED FILE-----\n"
        "            YWdlLWVuY3J5cHRpb24ub3JnL3YxCg==\n"
        "            -----END AGE ENCRYPTED FILE-----\n"
        '    lastmodified: "2026-01-01T00:00:00Z"\n'
        f"    mac: {enc(99)}\n"
        f"{extra}"
        "    version: 3.11.0\n"
    )


def kinds(findings: list[Finding]) -> list[tuple[str, int, FindingKind]]:
    return [(f.file, f.line, f.kind) for f in findings]


def assert_no_values(findings: list[Finding], *values: str) -> None:
    text = "\n".join(str(f) for f in findings)
    assert [v for v in values if v in text] == []


# --- plaintext Kubernetes Secrets ----------------------------------------------------------


def test_plaintext_secret_is_found_at_its_first_value(tmp_path: Path) -> None:
    password, token = canary.new("pw"), canary.new("token")
    write(
        tmp_path,
        {
            "apps/db.yaml": f"""
            apiVersion: v1
            kind: Deployment
            metadata: {{name: x}}
            ---
            apiVersion: v1
            kind: Secret
            metadata:
              name: db
              namespace: payments
            type: Opaque
            stringData:
              password: {password}
              token: {token}
            """
        },
    )
    findings = scan(tmp_path)
    assert kinds(findings) == [("apps/db.yaml", 12, FindingKind.PLAINTEXT_SECRET)]
    message = findings[0].message
    assert "payments/db" in message
    assert "stringData.password" in message
    assert "stringData.token" in message
    assert_no_values(findings, password, token)
    assert str(findings[0]).startswith("apps/db.yaml:12: plaintext-secret: Secret payments/db")


def test_base64_data_and_json_and_lists_are_found(tmp_path: Path) -> None:
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "api"},
        "data": {"key": "c2VjcmV0LXZhbHVl"},
    }
    write(
        tmp_path,
        {
            "a.json": json.dumps(secret, indent=2),
            "b.json": '{"kind": "Secret", "data": {"k": "a\\/b"}}',  # valid JSON, not YAML 1.1
            "c.yml": yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": [secret]}),
        },
    )
    assert kinds(scan(tmp_path)) == [
        ("a.json", 8, FindingKind.PLAINTEXT_SECRET),
        ("b.json", 1, FindingKind.PLAINTEXT_SECRET),
        ("c.yml", 5, FindingKind.PLAINTEXT_SECRET),
    ]


@pytest.mark.parametrize(
    "data",
    [
        "data: {}",
        "data:",
        "data: {a: '', b: null}",
        "stringData: {password: '{{ .Values.password }}'}",
        "stringData: {password: '${DB_PASSWORD}', url: 'postgres://${USER}:${PASS}@db'}",
        "stringData: {password: '<path:secret/data/db#password>'}",
        f"data: {{password: '{enc()}'}}",
        "data:\n  password: {{ .Values.password | b64enc }}",  # a Helm template, not YAML values
    ],
)
def test_secrets_without_readable_values_are_not_findings(tmp_path: Path, data: str) -> None:
    write(tmp_path, {"s.yaml": f"apiVersion: v1\nkind: Secret\nmetadata: {{name: s}}\n{data}\n"})
    assert scan(tmp_path) == []


def test_other_kinds_and_api_groups_are_not_secrets(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "cm.yaml": "apiVersion: v1\nkind: ConfigMap\ndata: {password: hunter22}\n",
            "sealed.yaml": "apiVersion: bitnami.com/v1alpha1\nkind: SealedSecret\n"
            "spec: {encryptedData: {password: AgBy3i4OJSWK}}\n",
            "other.yaml": "apiVersion: example.com/v1\nkind: Secret\ndata: {a: b}\n",
            "broken.yaml": "kind: Secret\ndata: {a: [\n",
        },
    )
    assert [(f.file, f.kind) for f in scan(tmp_path)] == [("broken.yaml", "unparsable-file")]


# --- files that must be SOPS-encrypted -----------------------------------------------------

SOPS_CONFIG = r"""
creation_rules:
  - path_regex: ^dev/[^/]+\.(ya?ml|json|env)$
    age: age1qqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqq
  - path_regex: ^prod/.*
    age: age1qqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqq
"""


def test_files_matched_by_a_creation_rule_must_be_encrypted(tmp_path: Path) -> None:
    value = canary.new("rule")
    write(
        tmp_path,
        {
            "fleet/sops/.sops.yaml": SOPS_CONFIG,
            "fleet/sops/dev/payments.yaml": f"stripe:\n  apiKey: {value}\n",
            "fleet/sops/dev/monitoring.env": f"# comment\nGRAFANA_ADMIN_PASSWORD={value}\n",
            "fleet/sops/dev/ok.yaml": f"stripe:\n  apiKey: {enc()}\n{sops_stanza()}",
            "fleet/sops/dev/nested/other.yaml": f"k: {value}\n",  # the rule says [^/]+
            "fleet/sops/prod/key.pem": f"-----BEGIN KEY-----\n{value}\n",
            "fleet/sops/prod/README.md": "# what lives here\n",
            "fleet/sops/prod/empty.yaml": "",
            "fleet/sops/staging/payments.yaml": f"k: {value}\n",  # no rule for staging
            "fleet/dev/payments.yaml": f"k: {value}\n",  # rules are relative to .sops.yaml
        },
    )
    findings = scan(tmp_path)
    assert kinds(findings) == [
        ("fleet/sops/dev/monitoring.env", 2, FindingKind.SOPS_FILE_NOT_ENCRYPTED),
        ("fleet/sops/dev/payments.yaml", 1, FindingKind.SOPS_FILE_NOT_ENCRYPTED),
        ("fleet/sops/prod/key.pem", 1, FindingKind.SOPS_FILE_NOT_ENCRYPTED),
    ]
    assert "creation rule 1" in findings[0].message
    assert "fleet/sops/.sops.yaml" in findings[0].message
    assert "creation rule 2" in findings[2].message
    assert_no_values(findings, value)


def test_broad_rules_leave_manifests_alone_but_not_their_secrets(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            ".sops.yaml": "creation_rules:\n"
            "  - path_regex: .*\\.yaml$\n"
            "    encrypted_regex: ^(data|stringData)$\n"
            "    age: age1qqqq\n",
            "apps/deploy.yaml": "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n",
            "apps/cm.yaml": "apiVersion: v1\nkind: ConfigMap\ndata: {a: b}\n",
            "apps/values.yaml": "replicas: 3\nimage: nginx\n",  # encrypted_regex: nothing to do
            "apps/creds.yaml": "database:\n  data: hunter22\n",
            "apps/secret.yaml": "apiVersion: v1\nkind: Secret\nstringData: {a: hunter22}\n",
        },
    )
    assert kinds(scan(tmp_path)) == [
        ("apps/creds.yaml", 1, FindingKind.SOPS_FILE_NOT_ENCRYPTED),
        ("apps/secret.yaml", 3, FindingKind.PLAINTEXT_SECRET),
    ]


def test_a_catch_all_rule_first_declares_nothing(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            ".sops.yaml": "creation_rules:\n  - age: age1q\n  - path_regex: .*\n    age: age1q\n",
            "values.yaml": "password: hunter22\n",
        },
    )
    assert scan(tmp_path) == []


def test_files_named_sops_must_be_encrypted(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "secrets.sops.yaml": "apiVersion: v1\nkind: ConfigMap\ndata: {a: b}\n",
            "values.sops.json": '{"a": "b"}',
            "app.sops.env": "A=b\n",
            "done.sops.yaml": f"a: {enc()}\n{sops_stanza()}",
            "done.sops.env": f"A={enc()}\nsops_mac={enc(1)}\nsops_version=3.11.0\n",
            ".sops.yaml": "creation_rules: []\n",
        },
    )
    assert kinds(scan(tmp_path)) == [
        ("app.sops.env", 1, FindingKind.SOPS_FILE_NOT_ENCRYPTED),
        ("secrets.sops.yaml", 1, FindingKind.SOPS_FILE_NOT_ENCRYPTED),
        ("values.sops.json", 1, FindingKind.SOPS_FILE_NOT_ENCRYPTED),
    ]


# --- values left in plaintext inside SOPS files --------------------------------------------


def test_a_plaintext_leaf_in_a_sops_file_is_found(tmp_path: Path) -> None:
    added = canary.new("added")
    write(
        tmp_path,
        {
            "s.yaml": (
                f"stripe:\n  apiKey: {enc(1)}\n  added: {added}\n"
                f"note_unencrypted: fine\nlist:\n  - {enc(2)}\n  - plain\nnothing: null\nblank: ''\n"
                f"{sops_stanza()}"
            )
        },
    )
    findings = scan(tmp_path)
    assert kinds(findings) == [
        ("s.yaml", 3, FindingKind.SOPS_VALUE_NOT_ENCRYPTED),
        ("s.yaml", 7, FindingKind.SOPS_VALUE_NOT_ENCRYPTED),
    ]
    assert "stripe.added is not encrypted" in findings[0].message
    assert_no_values(findings, added)


def test_encrypted_regex_is_honoured_but_secret_data_must_be_encrypted(tmp_path: Path) -> None:
    secret = "apiVersion: v1\nkind: Secret\nmetadata:\n  name: db\n"
    write(
        tmp_path,
        {
            "good.yaml": f"{secret}data:\n  password: {enc()}\n"
            + sops_stanza(encrypted_regex="^(data|stringData)$"),
            "missed.yaml": f"{secret}data:\n  password: aHVudGVyMjI=\n  token: {enc()}\n"
            + sops_stanza(encrypted_regex="^(token)$"),
        },
    )
    findings = scan(tmp_path)
    assert kinds(findings) == [("missed.yaml", 6, FindingKind.SOPS_VALUE_NOT_ENCRYPTED)]
    assert "Secret db: data.password is left in plaintext" in findings[0].message


def test_suffix_settings_are_honoured(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "only.yaml": f"password_enc: {enc()}\nhost: db.example\n"
            + sops_stanza(encrypted_suffix="_enc"),
            "not.yaml": f"password_enc: plain\nhost: {enc()}\n"
            + sops_stanza(encrypted_suffix="_enc"),
            "unre.yaml": f"password: {enc()}\npublic_host: db.example\n"
            + sops_stanza(unencrypted_regex="^public_"),
        },
    )
    assert kinds(scan(tmp_path)) == [("not.yaml", 1, FindingKind.SOPS_VALUE_NOT_ENCRYPTED)]


def test_plaintext_line_in_a_sops_dotenv_file(tmp_path: Path) -> None:
    value = canary.new("env")
    write(
        tmp_path,
        {
            "m.env": f"A={enc()}\nB={value}\nC_unencrypted=ok\n#ENC[x]\n"
            f"sops_mac={enc(1)}\nsops_unencrypted_suffix=_unencrypted\nsops_version=3.11.0\n"
        },
    )
    findings = scan(tmp_path)
    assert kinds(findings) == [("m.env", 2, FindingKind.SOPS_VALUE_NOT_ENCRYPTED)]
    assert_no_values(findings, value)


def test_real_sops_files_of_the_example_fleet_are_clean() -> None:
    assert scan(REPO / "examples") == []
    assert scan(REPO / "examples" / "fleet" / "sops" / "prod") == []


# --- walking -------------------------------------------------------------------------------

PLAIN_SECRET = "apiVersion: v1\nkind: Secret\nstringData: {password: hunter22}\n"


def test_skipped_folders_symlinks_and_big_files(tmp_path: Path) -> None:
    outside = write(tmp_path / "outside", {"s.yaml": PLAIN_SECRET})
    root = write(
        tmp_path / "repo",
        {
            ".git/s.yaml": PLAIN_SECRET,
            "node_modules/x/s.yaml": PLAIN_SECRET,
            ".venv/s.yaml": PLAIN_SECRET,
            "big.yaml": PLAIN_SECRET + "# " + "x" * 5000 + "\n",
            "small.yaml": PLAIN_SECRET,
        },
    )
    (root / "linked").symlink_to(outside, target_is_directory=True)
    (root / "linked.yaml").symlink_to(outside / "s.yaml")
    assert kinds(scan(root, max_file_bytes=4096)) == [
        ("small.yaml", 3, FindingKind.PLAINTEXT_SECRET)
    ]


def test_one_file_is_scanned_with_the_sops_config_above_it(tmp_path: Path) -> None:
    write(
        tmp_path, {".git/HEAD": "ref", "sops/.sops.yaml": SOPS_CONFIG, "sops/dev/a.yaml": "k: v\n"}
    )
    findings = scan(tmp_path / "sops" / "dev" / "a.yaml")
    assert kinds(findings) == [("a.yaml", 1, FindingKind.SOPS_FILE_NOT_ENCRYPTED)]
    assert scan(tmp_path / "sops" / "dev") == findings  # a folder below the config, too


def test_alias_bomb_is_cheap(tmp_path: Path) -> None:
    lines = ["a0: &a0 [x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
    write(tmp_path, {"bomb.sops.yaml": "\n".join(lines) + "\n" + sops_stanza()})
    started = time.monotonic()
    findings = scan(tmp_path)
    assert time.monotonic() - started < 2
    assert len(findings) == 1  # the one "x" node, reported once however many aliases reach it


def test_thousands_of_files_scan_fast(tmp_path: Path) -> None:
    files: dict[str, str | bytes] = {}
    for i in range(1500):
        files[f"apps/app{i}/deploy.yaml"] = (
            f"apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: app{i}}}\n"
            "spec:\n  template:\n    spec:\n      containers:\n        - name: c\n"
            "          env:\n            - name: P\n              valueFrom:\n"
            "                secretKeyRef: {name: s, key: p}\n"
        )
        files[f"apps/app{i}/README.md"] = "docs\n"
    for i in range(500):
        files[f"apps/app{i}/sealed.yaml"] = (
            "apiVersion: bitnami.com/v1alpha1\nkind: SealedSecret\n"
            f"spec: {{encryptedData: {{p: AgB{i}}}}}\n"
        )
    files["apps/app7/leak.yaml"] = PLAIN_SECRET
    write(tmp_path, files)
    started = time.monotonic()
    findings = scan(tmp_path)
    elapsed = time.monotonic() - started
    assert kinds(findings) == [("apps/app7/leak.yaml", 3, FindingKind.PLAINTEXT_SECRET)]
    assert elapsed < 5, f"{len(files)} files took {elapsed:.2f} s"


def test_scan_prints_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(tmp_path, {"s.yaml": PLAIN_SECRET})
    assert scan(tmp_path)
    assert capsys.readouterr() == ("", "")


_KEY = st.from_regex(r"[A-Za-z][A-Za-z0-9_.-]{0,15}", fullmatch=True)
_TEXT = st.text(  # braces and angle brackets would make placeholders, which are not findings
    st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="{}<>"),
    max_size=30,
)


@settings(max_examples=60, deadline=None)
@given(data=st.dictionaries(_KEY, _TEXT, min_size=1, max_size=5))
def test_no_value_ever_appears_in_a_finding(data: dict[str, str]) -> None:
    marker = uuid.uuid4().hex
    values = {k: f"{marker}{i}{v}" for i, (k, v) in enumerate(data.items())}
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "x"}}
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        (root / "s.yaml").write_text(yaml.safe_dump({**secret, "stringData": values}))
        (root / "d.sops.yaml").write_text(yaml.safe_dump(values))
        findings = scan(root)
    assert {f.file for f in findings} == {"s.yaml", "d.sops.yaml"}
    assert marker not in "\n".join(str(f) for f in findings)


def test_findings_sort_and_render() -> None:
    a = Finding("b.yaml", 2, FindingKind.PLAINTEXT_SECRET, "m")
    b = Finding("a.yaml", 9, FindingKind.SOPS_FILE_NOT_ENCRYPTED, "m")
    assert sorted([a, b]) == [b, a]
    assert str(b) == "a.yaml:9: sops-file-not-encrypted: m"
    assert os.fspath(Path(b.file)) == "a.yaml"


# --- keys the Fleet does not allow ---------------------------------------------------------


def test_sops_files_naming_keys_their_fleet_refuses_are_findings(tmp_path: Path) -> None:
    vault = (
        "    hc_vault:\n        - vault_address: http://127.0.0.1:8200\n"
        "          engine_path: transit\n          key_name: sops\n"
    )
    stanza = sops_stanza().replace("sops:\n", "sops:\n" + vault, 1)
    root = write(
        tmp_path,
        {
            "a/app.yaml": f"db: {enc(1)}\n" + stanza,
            "b/app.yaml": f"db: {enc(2)}\n" + stanza,
            "b/app.env": f"DB={enc(3)}\nsops_hc_vault__list_0__map_vault_address=http://x\n"
            "sops_mac=ENC[x]\nsops_version=3.11.0\n",
            "c/values.yaml": "sops:\n  enabled: true\n",  # a `sops:` key that is not sops metadata
        },
    )
    transit = SopsSettings(
        key_types=frozenset({"age", "hc_vault"}),
        vault_transit=(VaultTransitKey(address="http://127.0.0.1:8200"),),
    )

    def policy(folder: Path) -> SopsSettings:
        return transit if folder.name == "b" else SopsSettings()

    findings = scan(root, sops_policy=policy)
    assert kinds(findings) == [
        ("a/app.yaml", 4, FindingKind.SOPS_KEY_NOT_ALLOWED),
        ("b/app.env", 2, FindingKind.SOPS_KEY_NOT_ALLOWED),
    ]
    assert "hc_vault[0]: key type hc_vault is not allowed" in str(findings[0])
    assert "'http://x'" in str(findings[1])
    assert kinds(scan(root / "a" / "app.yaml")) == [
        ("app.yaml", 4, FindingKind.SOPS_KEY_NOT_ALLOWED)
    ]
