"""Key groups read from SOPS metadata (YAML, JSON, dotenv) and the Fleet's key policy.

Files are made by the real sops binary (age), then given key groups the way a fleet-repo
writer would edit them; every way sops would read a key that the reader might miss is refused.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secretsync.core.model import SopsSettings, VaultTransitKey
from secretsync.fleet import repopath
from secretsync.fleet.load import files as load_files
from secretsync.sources import sopskeys, sopsmeta
from secretsync.sources.sopsmeta import FileFormat
from tests.support.sopstool import AgeKey, make_age_key, sops_encrypt

VAULT = "http://127.0.0.1:8200"
TRANSIT = SopsSettings(
    key_types=frozenset({"age", "hc_vault"}), vault_transit=(VaultTransitKey(address=VAULT),)
)


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> AgeKey:
    return make_age_key(tmp_path_factory.mktemp("age"))


def encrypted(key: AgeKey, fmt: FileFormat) -> bytes:
    plain = {
        FileFormat.YAML: (b"a: b\n", "x.yaml"),
        FileFormat.JSON: (b'{"a": "b"}', "x.json"),
        FileFormat.DOTENV: (b"A=b\n", "x.env"),
    }[fmt]
    return sops_encrypt(plain[0], name=plain[1], recipient=key.recipient)


def refused(data: bytes, fmt: FileFormat, policy: SopsSettings | None = None) -> list[str]:
    found = sopsmeta.read(data, fmt)
    return [str(r) for r in sopskeys.refusals(found, policy or SopsSettings())]


def with_vault_yaml(data: bytes, address: str = VAULT, extra: str = "") -> bytes:
    group = (
        f"    hc_vault:\n        - vault_address: {address}\n          engine_path: transit\n"
        f"          key_name: sops\n{extra}"
    )
    return data.replace(b"\nsops:\n", b"\nsops:\n" + group.encode(), 1)


@pytest.mark.parametrize("fmt", list(FileFormat))
def test_age_files_of_every_format_pass_the_default_policy(key: AgeKey, fmt: FileFormat) -> None:
    data = encrypted(key, fmt)
    found = sopsmeta.read(data, fmt)
    assert found.kinds == {"age"}
    assert found.marked
    assert [e.fields for e in found.entries] == [{"recipient": key.recipient}]
    assert refused(data, fmt) == []


@pytest.mark.parametrize("fmt", list(FileFormat))
def test_a_vault_key_group_is_refused_unless_its_address_is_allowed(
    key: AgeKey, fmt: FileFormat
) -> None:
    data = encrypted(key, fmt)
    match fmt:
        case FileFormat.YAML:
            forged = with_vault_yaml(data)
        case FileFormat.JSON:
            document = json.loads(data)
            document["sops"]["hc_vault"] = [
                {"vault_address": VAULT, "engine_path": "transit", "key_name": "sops"}
            ]
            forged = json.dumps(document).encode()
        case FileFormat.DOTENV:
            forged = (
                data
                + (
                    f"sops_hc_vault__list_0__map_vault_address={VAULT}\n"
                    "sops_hc_vault__list_0__map_engine_path=transit\n"
                    "sops_hc_vault__list_0__map_key_name=sops\n"
                ).encode()
            )
    [message] = refused(forged, fmt)
    assert "hc_vault[0]: key type hc_vault is not allowed" in message
    assert "refused before sops runs" in message
    assert refused(forged, fmt, TRANSIT) == []
    elsewhere = SopsSettings(
        key_types=frozenset({"age", "hc_vault"}),
        vault_transit=(VaultTransitKey(address="http://127.0.0.1:8201"),),
    )
    [message] = refused(forged, fmt, elsewhere)
    assert f"at {VAULT!r}" in message
    assert "not in the Fleet's sources.sops.vaultTransit" in message


def test_transit_engine_and_key_name_are_matched_when_the_fleet_names_them(key: AgeKey) -> None:
    forged = with_vault_yaml(encrypted(key, FileFormat.YAML))

    def policy(**named: str) -> SopsSettings:
        return SopsSettings(
            key_types=frozenset({"age", "hc_vault"}),
            vault_transit=(VaultTransitKey(address=VAULT, **named),),  # type: ignore[arg-type]
        )

    assert refused(forged, FileFormat.YAML, policy(engine_path="transit", key_name="sops")) == []
    assert refused(forged, FileFormat.YAML, policy(key_name="other"))
    assert refused(forged, FileFormat.YAML, policy(engine_path="transit2"))
    assert refused(
        with_vault_yaml(encrypted(key, FileFormat.YAML), VAULT + "/"), FileFormat.YAML, TRANSIT
    )


def test_key_groups_are_checked_like_the_top_level_lists(key: AgeKey) -> None:
    data = encrypted(key, FileFormat.YAML)
    head, _, meta = data.partition(b"\nsops:\n")
    age, _, rest = meta.partition(b"    lastmodified:")
    nested = b"".join(b"      " + line + b"\n" for line in age.splitlines())
    group = (
        b"    key_groups:\n        - hc_vault:\n              - vault_address: http://evil:8200\n"
    )
    forged = head + b"\nsops:\n" + group + nested + b"    lastmodified:" + rest
    [message] = refused(forged, FileFormat.YAML, TRANSIT)
    assert message.startswith("line 5: key_groups[0].hc_vault[0]: ")
    assert sopsmeta.read(forged, FileFormat.YAML).kinds == {"age", "hc_vault"}


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (
            lambda d: d.replace(b"\nsops:\n", b"\nsops:\n    hckms:\n        - key_id: x\n"),
            "hckms: an unknown key type",
        ),
        (
            lambda d: with_vault_yaml(d, extra="          token: x\n"),
            "hc_vault[0].token: not a field of a hc_vault key",
        ),
        (
            lambda d: with_vault_yaml(d).replace(
                b"vault_address: ", b"vault_address: !!binary ", 1
            ),
            "hc_vault[0].vault_address: not a plain string",
        ),
        (
            lambda d: (
                b"x: &m {hc_vault: [{vault_address: http://evil}]}\n"
                + d.replace(b"\nsops:\n", b"\nsops:\n    <<: *m\n")
            ),
            "sops: not a plain field name",
        ),
        (
            lambda d: d + b"!!binary c29wcw==: {hc_vault: [{vault_address: 'http://evil'}]}\n",
            "sops: not a plain field name",
        ),
        (
            lambda d: d.replace(b"\nsops:\n", b"\nsops:\n    Hc_Vault: []\n"),
            "a key type spelled 'Hc_Vault'",
        ),
        (lambda d: b"sops: [\n", "the sops metadata cannot be read"),
    ],
    ids=[
        "unknown-type",
        "unknown-field",
        "binary-value",
        "merge-key",
        "binary-key",
        "case",
        "broken",
    ],
)
def test_yaml_metadata_sops_could_read_differently_is_refused(
    key: AgeKey, edit: object, expected: str
) -> None:
    data = encrypted(key, FileFormat.YAML)
    messages = refused(edit(data), FileFormat.YAML, TRANSIT)  # type: ignore[operator]
    assert any(expected in m for m in messages), messages


def test_json_reads_every_spelling_go_would_and_every_duplicate(key: AgeKey) -> None:
    data = encrypted(key, FileFormat.JSON)
    text = data.decode()
    evil = '[{"vault_address": "http://evil:8200"}]'
    duplicate = text.replace('"sops": {', f'"sops": {{"hc_vault": {evil}, "hc_vault": [],', 1)
    assert any(
        "'http://evil:8200'" in m for m in refused(duplicate.encode(), FileFormat.JSON, TRANSIT)
    )
    capitals = text.replace('"sops": {', f'"sops": {{"HC_VAULT": {evil},', 1)
    assert any("spelled 'HC_VAULT'" in m for m in refused(capitals.encode(), FileFormat.JSON))
    second = text.rstrip().removesuffix("}") + f', "Sops": {{"hc_vault": {evil}}}}}'
    assert any("not a plain field name" in m for m in refused(second.encode(), FileFormat.JSON))
    field = text.replace(
        '"sops": {', '"sops": {"hc_vault": [{"VAULT_ADDRESS": "http://evil"}]},', 1
    )
    assert refused(field.encode(), FileFormat.JSON, TRANSIT)


def test_dotenv_keys_are_split_as_sops_splits_them(key: AgeKey) -> None:
    data = encrypted(key, FileFormat.DOTENV)
    padded = (
        data
        + f"sops_hc_vault__list_0__map_vault_address={VAULT}\n".encode()
        + (
            b"sops_hc_vault__list_00__map_vault_address=http://evil:8200\n"  # slot 0 for sops too
        )
    )
    [message] = refused(padded, FileFormat.DOTENV, TRANSIT)
    assert "'http://evil:8200'" in message
    assert message.startswith("line 9: hc_vault[1]: ")
    upper = data + b"sops_HC_VAULT__list_0__map_vault_address=http://evil:8200\n"
    assert any("spelled 'HC_VAULT'" in m for m in refused(upper, FileFormat.DOTENV, TRANSIT))
    nested = data + b"sops_key_groups__list_0__map_hc_vault__list_0__map_vault_address=http://e\n"
    [message] = refused(nested, FileFormat.DOTENV, TRANSIT)
    assert "key_groups[0].hc_vault[0]:" in message


CLOUD = SopsSettings(
    key_types=frozenset({"kms", "gcp_kms", "azure_kv"}),
    aws_kms=("arn:aws:kms:us-east-1:111122223333:", "arn:aws:iam::111122223333:role/sops"),
    gcp_kms=("projects/acme/locations/global/keyRings/sops/",),
    azure_key_vault=("https://acme.vault.azure.net/keys/sops/",),
)


@pytest.mark.parametrize(
    ("group", "allowed"),
    [
        ("kms:\n        - arn: arn:aws:kms:us-east-1:111122223333:key/k1\n", True),
        ("kms:\n        - arn: arn:aws:kms:us-east-1:1111222233334:key/k1\n", False),
        (
            "kms:\n        - arn: arn:aws:kms:us-east-1:111122223333:key/k1\n          role: arn:aws:iam::111122223333:role/sops\n",
            True,
        ),
        (
            "kms:\n        - arn: arn:aws:kms:us-east-1:111122223333:key/k1\n          role: arn:aws:iam::999999999999:role/x\n",
            False,
        ),
        (  # an entry without a trailing separator names one role, not every role it prefixes
            "kms:\n        - arn: arn:aws:kms:us-east-1:111122223333:key/k1\n"
            "          role: arn:aws:iam::111122223333:role/sops-admin\n",
            False,
        ),
        (
            "gcp_kms:\n        - resource_id: projects/acme/locations/global/keyRings/sops/cryptoKeys/k\n",
            True,
        ),
        (
            "gcp_kms:\n        - resource_id: projects/evil/locations/global/keyRings/sops/cryptoKeys/k\n",
            False,
        ),
        (
            "azure_kv:\n        - vault_url: https://acme.vault.azure.net\n          name: sops\n          version: v1\n",
            True,
        ),
        (
            "azure_kv:\n        - vault_url: https://acme.vault.azure.net.evil.example\n          name: sops\n          version: v1\n",
            False,
        ),
    ],
)
def test_cloud_keys_match_exact_names_or_prefixes_ending_in_a_separator(
    key: AgeKey, group: str, allowed: bool
) -> None:
    data = encrypted(key, FileFormat.YAML).replace(
        b"    age:", b"    " + group.encode() + b"    age:", 1
    )
    policy = SopsSettings(
        key_types=CLOUD.key_types | {"age"},
        aws_kms=CLOUD.aws_kms,
        gcp_kms=CLOUD.gcp_kms,
        azure_key_vault=CLOUD.azure_key_vault,
    )
    assert (refused(data, FileFormat.YAML, policy) == []) is allowed


def test_a_sops_key_that_is_not_sops_metadata_is_not_marked() -> None:
    found = sopsmeta.read(b"sops:\n  enabled: true\n", FileFormat.YAML)
    assert not found.marked


def test_check_files_names_the_file_line_key_group_and_reader(key: AgeKey, tmp_path: Path) -> None:
    from secretsync.core.model import Fleet, Origin

    (tmp_path / "sops").mkdir()
    (tmp_path / "sops" / "a.yaml").write_bytes(with_vault_yaml(encrypted(key, FileFormat.YAML)))
    (tmp_path / "sops" / "ok.yaml").write_bytes(encrypted(key, FileFormat.YAML))
    fleet = Fleet(name="f", root=tmp_path, origin=Origin("secretsync.yaml", 1))
    readers = {
        "sops/a.yaml": Origin("secrets/s.yaml", 3),
        "sops/ok.yaml": Origin("secrets/s.yaml", 3),
        "sops/missing.yaml": Origin("secrets/s.yaml", 3),  # left to the source to report
    }
    [error] = sopskeys.check_files(fleet, readers)
    assert error.render().startswith("sops/a.yaml:4: sops: hc_vault[0]: key type hc_vault")
    assert error.render().endswith("(read by secrets/s.yaml:3)")


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(list(FileFormat)),
    st.one_of(
        st.binary(max_size=400),
        st.text(max_size=400).map(lambda t: ("sops:\n  " + t).encode()),
        st.text(max_size=400).map(lambda t: ("sops_" + t).encode()),
        st.text(max_size=400).map(lambda t: ('{"sops": ' + t).encode()),
    ),
)
def test_any_bytes_give_key_groups_or_refusals_never_an_exception(
    fmt: FileFormat, data: bytes
) -> None:
    found = sopsmeta.read(data, fmt)
    sopskeys.refusals(found, TRANSIT)


def test_check_files_shows_ten_refusals_a_file_and_counts_the_rest(
    key: AgeKey, tmp_path: Path
) -> None:
    from secretsync.core.model import Fleet, Origin

    forged = encrypted(key, FileFormat.DOTENV) + b"".join(
        b"sops_hc_vault__list_%d__map_vault_address=http://e\n" % i for i in range(12)
    )
    (tmp_path / "a.env").write_bytes(forged)
    fleet = Fleet(name="f", root=tmp_path, origin=Origin("secretsync.yaml", 1))
    found = sopskeys.check_files(fleet, {"a.env": Origin("secrets/s.yaml", 3)})
    assert len(found) == 11
    assert found[-1].render() == "a.env: sops: and 2 more key groups refused"


def test_check_files_does_not_open_a_fifo_swapped_in_after_the_path_check(
    key: AgeKey, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The path check refuses a FIFO from its lstat; one put in place between that check and
    the open must not block the open (which would hang validate and every cycle)."""
    from secretsync.core.model import Fleet, Origin

    (tmp_path / "a.yaml").write_bytes(with_vault_yaml(encrypted(key, FileFormat.YAML)))
    checked = repopath.confine

    def confine_then_swap(root: Path, relative: str, **kwargs: Any) -> Path:
        real = checked(root, relative, **kwargs)
        real.unlink()
        os.mkfifo(real)
        return real

    monkeypatch.setattr(repopath, "confine", confine_then_swap)
    monkeypatch.setattr(load_files, "confine", confine_then_swap)
    fleet = Fleet(name="f", root=tmp_path, origin=Origin("secretsync.yaml", 1))
    found: list[object] = []
    worker = threading.Thread(
        target=lambda: found.extend(
            sopskeys.check_files(fleet, {"a.yaml": Origin("secrets/s.yaml", 3)})
        ),
        daemon=True,
    )
    worker.start()
    worker.join(timeout=10)
    hung = worker.is_alive()
    if hung:  # blocked opening the FIFO: give it a writer so the thread ends
        with open(tmp_path / "a.yaml", "wb"):
            pass
        worker.join(timeout=10)
    assert not hung, "check_files blocked opening a FIFO"
    assert found == []  # left to the sops source, which refuses it too
