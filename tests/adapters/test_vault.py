"""VaultSource against a real OpenBao dev server: reads, auth, and fault rows V1-V7, V10, V11.

Requests are counted on the wire by `CountingProxy` (what a user could verify) as well as by
the source's own counters. Every secret value is a unique canary; each test checks that no
canary, token, secret_id or JWT reaches an error message or a log record.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path

import hvac
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from secretsync.core import errors, model
from secretsync.core.values import SecretValue
from secretsync.sources import resolve, vault
from tests.support import canary as canaries
from tests.support import keys
from tests.support.openbao import CountingProxy, OpenBao, start_openbao

FAST = vault.RetryPolicy(
    attempts=4,
    base_delay_s=0.02,
    max_delay_s=0.2,
    budget_s=5.0,
    breaker_threshold=5,
    breaker_cooldown_s=0.2,
    login_backoff_s=30.0,
)


def canary() -> str:
    """A unique secret value, also watched by the session-wide leak scan (tests/support/canary.py)."""
    return canaries.new("vault")


def assert_clean(
    needles: Iterable[str], *texts: str, caplog: pytest.LogCaptureFixture | None = None
) -> None:
    """No needle (value, token, secret_id, JWT) in any text or captured log record.

    The needles are also handed to the session-wide leak scan, which checks every log record
    of the whole run.
    """
    haystack = list(texts)
    if caplog is not None:
        haystack += [record.getMessage() for record in caplog.records]
        haystack += [repr(record.args) for record in caplog.records]
    for needle in needles:
        assert needle
        canaries.remember(needle)
        for text in haystack:
            assert needle not in text, f"secret material leaked into: {text[:200]!r}"


def make_source(
    address: str,
    *,
    env: Mapping[str, str] | None = None,
    root: Path | None = None,
    auth: model.VaultAuth | None = None,
    kv_mount: str = "secret",
    kv_version: int | None = None,
    limits: model.VaultLimits | None = None,
    retry: vault.RetryPolicy = FAST,
    clock: Callable[[], float] = time.monotonic,
    tls: model.VaultTLS | None = None,
    namespace: str | None = None,
) -> vault.VaultSource:
    settings = model.VaultSettings(
        address=address,
        namespace=namespace,
        kv_mount=kv_mount,
        kv_version=kv_version,
        auth=auth or model.VaultAuth(),
        tls=tls or model.VaultTLS(),
        limits=limits or model.VaultLimits(timeout_seconds=5.0),
    )
    return vault.build_vault_source(
        settings, env=env or {}, root=root or Path("/nonexistent"), retry=retry, clock=clock
    )


def loc(mount: str, path: str, version: int | None = None) -> model.Location:
    return model.Location(source="vault", path=path, mount=mount, version=version)


def ref(mount: str, path: str, key: str, version: int | None = None) -> model.ValueRef:
    return model.ValueRef(location=loc(mount, path, version), key=key)


async def wait_until(probe: Callable[[], Awaitable[bool]], *, deadline_s: float, what: str) -> None:
    """Poll `probe` until it returns True, failing the test at the deadline."""
    end = time.monotonic() + deadline_s
    while not await probe():
        if time.monotonic() > end:
            pytest.fail(f"{what}: not within {deadline_s}s")
        await asyncio.sleep(0.05)


def kv2_mount(server: OpenBao, name: str) -> str:
    server.enable_kv(name, version=2)
    return name


def allow_read_policy(server: OpenBao, name: str, mount: str) -> None:
    server.client().sys.create_or_update_policy(
        name=name, policy=f'path "{mount}/data/*" {{ capabilities = ["read"] }}'
    )


def approle(server: OpenBao, name: str, *, policies: list[str], **role: object) -> tuple[str, str]:
    """An AppRole auth mount and role named `name`; returns (role_id, secret_id)."""
    client = server.client()
    client.sys.enable_auth_method("approle", path=name)
    client.auth.approle.create_or_update_approle(
        role_name=name, token_policies=policies, mount_point=name, **role
    )
    role_id = client.auth.approle.read_role_id(role_name=name, mount_point=name)["data"]["role_id"]
    secret_id = client.auth.approle.generate_secret_id(role_name=name, mount_point=name)["data"][
        "secret_id"
    ]
    return str(role_id), str(secret_id)


def issued_tokens(proxy: CountingProxy) -> list[str]:
    return [s.token for s in proxy.seen if s.method == "ISSUED" and s.token]


# --- reads -----------------------------------------------------------------------------------


async def test_kv2_reads_latest_and_pinned_versions_with_json_types_kept(
    openbao: OpenBao, proxy: CountingProxy, unique: str, caplog: pytest.LogCaptureFixture
) -> None:
    mount = kv2_mount(openbao, unique)
    first, second = canary(), canary()
    openbao.write_kv(mount, "db", {"password": first, "port": 5432})
    openbao.write_kv(
        mount, "db", {"password": second, "port": 5433, "tls": True, "pool": {"size": 7}}
    )
    source = make_source(proxy.address, env={"VAULT_TOKEN": openbao.root_token}, kv_mount=mount)
    try:
        latest = await source.fetch(loc(mount, "db"))
        pinned = await source.fetch(loc(mount, "db", 1))
        default_mount = await source.fetch(loc("", "db"))
    finally:
        await source.aclose()

    assert latest.version == "2"
    assert latest.document == {"password": second, "port": 5433, "tls": True, "pool": {"size": 7}}
    assert pinned.version == "1"
    assert pinned.document == {"password": first, "port": 5432}
    assert default_mount == latest
    assert resolve.lookup(latest.document, "port", where="x").reveal() == b"5433"
    assert resolve.lookup(latest.document, "tls", where="x").reveal() == b"true"
    assert resolve.lookup(latest.document, "pool.size", where="x").reveal() == b"7"
    assert proxy.count("GET", f"/v1/sys/internal/ui/mounts/{mount}") == 1
    assert proxy.count("GET", f"/v1/{mount}/data/db") == 3
    assert [s.query for s in proxy.seen if s.path == f"/v1/{mount}/data/db"] == [
        "",
        "version=1",
        "",
    ]
    assert source.counters.reads == 3
    assert source.counters.mount_lookups == 1
    assert_clean([first, second, openbao.root_token], repr(source), caplog=caplog)


async def test_nested_object_or_list_without_a_sub_key_is_an_error_never_its_text(
    openbao: OpenBao, unique: str, caplog: pytest.LogCaptureFixture
) -> None:
    """V11: picking a mapping or a list is an error naming the ref, never `str(dict)`; a
    sub-key reaches into a mapping, an index into a list; values that are not text are read as the JSON text Vault
    stores (a binary value is stored as base64 text and delivered as that text)."""
    mount = kv2_mount(openbao, unique)
    inner, item, encoded = canary(), canary(), canary()
    openbao.write_kv(
        mount,
        "app",
        {
            "db": {"password": inner, "port": 5432},
            "hosts": [item, "b"],
            "cert.b64": base64.b64encode(encoded.encode()).decode(),
            "none": None,
        },
    )
    source = make_source(openbao.address, env={"VAULT_TOKEN": openbao.root_token})
    keys = ("db", "hosts", "db.password", "hosts.0", "cert.b64", "none")
    refs = {k: ref(mount, "app", k) for k in keys}
    try:
        result = await resolve.resolve(refs.values(), {"vault": source})
    finally:
        await source.aclose()
    assert result.reads == 1
    for key, what in (("db", "a nested object"), ("hosts", "a list")):
        failure = result.failures[refs[key]]
        assert isinstance(failure, errors.RefNotFound)
        assert str(failure).startswith(f"vault:{mount}/app: key {key!r} holds {what}, not a value")
    assert result.values[refs["db.password"]].reveal() == inner.encode()
    assert result.values[refs["hosts.0"]].reveal() == item.encode()  # as ESO's property paths
    assert result.values[refs["cert.b64"]].reveal() == base64.b64encode(encoded.encode())
    assert result.values[refs["none"]].reveal() == b"null"
    texts = [str(f) for f in result.failures.values()]
    assert_clean([inner, item, encoded], *texts, caplog=caplog)
    assert not any("{" in t or "[" in t for t in texts), "no container text in an error"


async def test_kv1_mount_detected_or_explicit_has_no_versions(
    openbao: OpenBao, proxy: CountingProxy, unique: str, caplog: pytest.LogCaptureFixture
) -> None:
    openbao.enable_kv(unique, version=1)
    value = canary()
    openbao.write_kv(unique, "app/key", {"token": value, "n": 1.5}, version=1)
    env = {"VAULT_TOKEN": openbao.root_token}
    detected = make_source(proxy.address, env=env)
    explicit = make_source(proxy.address, env=env, kv_version=1)
    try:
        got = await detected.fetch(loc(unique, "app/key"))
        assert got == resolve.Fetched(document={"token": value, "n": 1.5}, version=None)
        with pytest.raises(errors.RefNotFound) as pinned:
            await detected.fetch(loc(unique, "app/key", 3))
        lookups = proxy.count("GET", "/v1/sys/internal/ui/mounts/")
        assert await explicit.fetch(loc(unique, "app/key")) == got
        assert proxy.count("GET", "/v1/sys/internal/ui/mounts/") == lookups == 1
    finally:
        await detected.aclose()
        await explicit.aclose()
    assert "KV version 1" in str(pinned.value)
    assert f"vault:{unique}/app/key@3" in str(pinned.value)
    assert explicit.counters.mount_lookups == 0
    assert_clean([value, openbao.root_token], str(pinned.value), caplog=caplog)


async def test_wrong_explicit_kv_version_is_named(
    openbao: OpenBao, unique: str, caplog: pytest.LogCaptureFixture
) -> None:
    mount = kv2_mount(openbao, unique)
    openbao.write_kv(mount, "p", {"k": canary()})
    source = make_source(openbao.address, env={"VAULT_TOKEN": openbao.root_token}, kv_version=1)
    try:
        with pytest.raises(errors.RefNotFound, match="check kvVersion"):
            await source.fetch(loc(mount, "p"))
    finally:
        await source.aclose()


async def test_each_unique_location_is_read_once_for_the_whole_fleet(
    openbao: OpenBao, proxy: CountingProxy, unique: str, caplog: pytest.LogCaptureFixture
) -> None:
    mount = kv2_mount(openbao, unique)
    paths, keys, clusters = 25, 10, 20
    expected: dict[model.ValueRef, str] = {}
    for p in range(paths):
        data = {f"k{k}": canary() for k in range(keys)}
        openbao.write_kv(mount, f"env/p{p}", data)
        for k in range(keys):
            expected[ref(mount, f"env/p{p}", f"k{k}")] = data[f"k{k}"]
    pinned = ref(mount, "env/p0", "k0", version=1)  # another Location on the same path
    expected[pinned] = expected[ref(mount, "env/p0", "k0")]
    # every cluster asks for every key: 20 x 251 refs, 26 unique Locations
    refs = [r for _ in range(clusters) for r in expected]
    source = make_source(proxy.address, env={"VAULT_TOKEN": openbao.root_token})
    try:
        result = await resolve.resolve(refs, {"vault": source}, concurrency=16)
    finally:
        await source.aclose()

    assert not result.failures
    assert {r: v.reveal().decode() for r, v in result.values.items()} == expected
    assert result.reads == paths + 1
    assert source.counters.reads == paths + 1
    assert proxy.count("GET", f"/v1/{mount}/data/") == paths + 1
    assert source.counters.logins == 1
    assert proxy.count("GET", "/v1/auth/token/lookup-self") == 1
    assert result.versions[pinned.location] == "1"
    assert_clean([*expected.values(), openbao.root_token], caplog=caplog)


async def test_missing_path_and_missing_key_are_ref_not_found(
    openbao: OpenBao, unique: str, caplog: pytest.LogCaptureFixture
) -> None:
    mount = kv2_mount(openbao, unique)
    value = canary()
    openbao.write_kv(mount, "present", {"user": value})
    source = make_source(openbao.address, env={"VAULT_TOKEN": openbao.root_token})
    refs = [
        ref(mount, "absent", "user"),
        ref(mount, "present", "password"),
        ref(mount, "present", "user"),
        ref(mount, "present", "user", version=9),
    ]
    try:
        result = await resolve.resolve(refs, {"vault": source})
    finally:
        await source.aclose()

    assert result.values == {refs[2]: SecretValue.of(value)}
    missing_path, missing_key, missing_version = (result.failures[r] for r in refs[:2] + refs[3:])
    assert isinstance(missing_path, errors.RefNotFound)
    assert str(missing_path) == f"vault:{mount}/absent: no secret at this path (HTTP 404)"
    assert isinstance(missing_key, errors.RefNotFound)
    assert "'password' not found" in str(missing_key)
    assert f"vault:{mount}/present" in str(missing_key)
    assert isinstance(missing_version, errors.RefNotFound)
    assert "version 9 does not exist" in str(missing_version)
    assert source.counters.failures == {"not_found": 2}
    assert_clean([value], *(str(e) for e in result.failures.values()), caplog=caplog)


async def test_deleted_and_destroyed_versions_are_reported_as_such(
    openbao: OpenBao, unique: str, caplog: pytest.LogCaptureFixture
) -> None:
    mount = kv2_mount(openbao, unique)
    old, new = canary(), canary()
    openbao.write_kv(mount, "rotating", {"key": old})
    openbao.write_kv(mount, "rotating", {"key": new})
    kv = openbao.client().secrets.kv.v2
    kv.delete_latest_version_of_secret(path="rotating", mount_point=mount)
    source = make_source(openbao.address, env={"VAULT_TOKEN": openbao.root_token})
    try:
        with pytest.raises(errors.RefNotFound) as deleted:
            await source.fetch(loc(mount, "rotating"))
        still_there = await source.fetch(loc(mount, "rotating", 1))
        kv.destroy_secret_versions(path="rotating", versions=[1], mount_point=mount)
        with pytest.raises(errors.RefNotFound) as destroyed:
            await source.fetch(loc(mount, "rotating", 1))
    finally:
        await source.aclose()

    message = str(deleted.value)
    assert message.startswith(f"vault:{mount}/rotating: latest version 2 is deleted")
    assert "deletion_time" in message
    assert still_there == resolve.Fetched(document={"key": old}, version="1")
    assert str(destroyed.value) == f"vault:{mount}/rotating@1: version 1 is destroyed"
    assert source.counters.failures == {"deleted": 2}
    assert_clean([old, new], message, str(destroyed.value), caplog=caplog)


async def test_path_that_climbs_out_of_its_mount_is_refused_without_a_request(
    openbao: OpenBao, proxy: CountingProxy, unique: str
) -> None:
    source = make_source(proxy.address, env={"VAULT_TOKEN": openbao.root_token})
    try:
        for location in (
            loc("secret", "../../auth/token/lookup-self"),
            loc("secret", "a/./b"),
            loc("secret", "a//b"),
            loc("../sys", "x"),
        ):
            with pytest.raises(errors.RefNotFound, match=r"'\.' or '\.\.' segment"):
                await source.fetch(location)
    finally:
        await source.aclose()
    assert proxy.seen == []


async def test_namespace_from_the_environment_is_sent(
    openbao: OpenBao, unique: str, caplog: pytest.LogCaptureFixture
) -> None:
    openbao.client().sys.create_namespace(path=unique)
    scoped = hvac.Client(url=openbao.address, token=openbao.root_token, namespace=unique)
    scoped.sys.enable_secrets_engine("kv", path="kv", options={"version": "2"})
    value = canary()
    scoped.secrets.kv.v2.create_or_update_secret(path="p", secret={"v": value}, mount_point="kv")
    env = {"VAULT_TOKEN": openbao.root_token, "VAULT_NAMESPACE": unique}
    source = make_source(openbao.address, env=env)
    outside = make_source(openbao.address, env={"VAULT_TOKEN": openbao.root_token})
    try:
        assert (await source.fetch(loc("kv", "p"))).document == {"v": value}
        with pytest.raises(errors.AccessDenied, match="mount 'kv' does not exist"):
            await outside.fetch(loc("kv", "p"))
    finally:
        await source.aclose()
        await outside.aclose()


# --- auth ------------------------------------------------------------------------------------


async def test_approle_logs_in_once_for_many_concurrent_reads(
    openbao: OpenBao,
    proxy: CountingProxy,
    unique: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    mount = kv2_mount(openbao, unique)
    allow_read_policy(openbao, unique, mount)
    role_id, secret_id = approle(openbao, unique, policies=[unique])
    (tmp_path / "role-id").write_text(role_id + "\n")
    values = {f"p{i}": canary() for i in range(40)}
    for path, value in values.items():
        openbao.write_kv(mount, path, {"v": value})
    source = make_source(
        proxy.address,
        env={"MY_SECRET_ID": secret_id},
        root=tmp_path,
        kv_mount=mount,
        kv_version=2,  # no mount lookup to serialise the first calls: 32 race for the login
        auth=model.VaultAuth(
            method="approle",
            role_id_file="role-id",
            secret_id_env="MY_SECRET_ID",
            mount_path=unique,
        ),
    )
    try:
        result = await resolve.resolve(
            [ref(mount, path, "v") for path in values], {"vault": source}, concurrency=32
        )
    finally:
        await source.aclose()

    assert not result.failures
    assert {r.location.path: v.reveal().decode() for r, v in result.values.items()} == values
    assert proxy.count("POST", f"/v1/auth/{unique}/login") == 1
    assert source.counters.logins == 1
    login = next(s for s in proxy.seen if s.path == f"/v1/auth/{unique}/login")
    assert login.token is None
    assert sorted(json.loads(login.body)) == ["role_id", "secret_id"]
    assert_clean(
        [*values.values(), role_id, secret_id, *issued_tokens(proxy)], repr(source), caplog=caplog
    )


async def test_approle_logs_in_again_once_after_its_token_is_revoked(
    openbao: OpenBao,
    proxy: CountingProxy,
    unique: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    mount = kv2_mount(openbao, unique)
    allow_read_policy(openbao, unique, mount)
    role_id, secret_id = approle(openbao, unique, policies=[unique])
    (tmp_path / "secret-id").write_text(secret_id)
    a, b = canary(), canary()
    openbao.write_kv(mount, "a", {"v": a})
    openbao.write_kv(mount, "b", {"v": b})
    source = make_source(
        proxy.address,
        root=tmp_path,
        kv_mount=mount,
        auth=model.VaultAuth(
            method="approle", role_id=role_id, secret_id_file="secret-id", mount_path=unique
        ),
    )
    try:
        assert (await source.fetch(loc(mount, "a"))).document == {"v": a}
        [first] = issued_tokens(proxy)
        openbao.client().auth.token.revoke(first)
        assert (await source.fetch(loc(mount, "b"))).document == {"v": b}
    finally:
        await source.aclose()

    assert source.counters.logins == 2
    assert proxy.count("POST", f"/v1/auth/{unique}/login") == 2
    assert proxy.count("GET", f"/v1/{mount}/data/b", status=403) == 1
    assert proxy.count("GET", f"/v1/{mount}/data/b", status=200) == 1
    assert_clean([a, b, role_id, secret_id, *issued_tokens(proxy)], caplog=caplog)


async def test_second_403_after_the_relogin_is_access_denied_without_more_logins(
    openbao: OpenBao, proxy: CountingProxy, unique: str, caplog: pytest.LogCaptureFixture
) -> None:
    mount = kv2_mount(openbao, unique)
    allow_read_policy(openbao, unique, mount)
    role_id, secret_id = approle(openbao, unique, policies=[unique])
    values = {f"p{i}": canary() for i in range(5)}
    for path, value in values.items():
        openbao.write_kv(mount, path, {"v": value})
    env = {"SID": secret_id}
    auth = model.VaultAuth(
        method="approle", role_id=role_id, secret_id_env="SID", mount_path=unique
    )
    source = make_source(proxy.address, env=env, kv_mount=mount, auth=auth)
    try:
        assert (await source.fetch(loc(mount, "p0"))).document == {"v": values["p0"]}
        # the role loses its policy and the token in use is revoked: the re-login succeeds,
        # but its token is denied too
        client = openbao.client()
        client.auth.approle.create_or_update_approle(
            role_name=unique, token_policies=["default"], mount_point=unique
        )
        client.auth.token.revoke(issued_tokens(proxy)[0])
        with pytest.raises(errors.AccessDenied) as denied:
            await source.fetch(loc(mount, "p1"))
        result = await resolve.resolve(
            [ref(mount, f"p{i}", "v") for i in range(2, 5)], {"vault": source}
        )
    finally:
        await source.aclose()

    assert str(denied.value) == f"vault:{mount}/p1: permission denied (HTTP 403)"
    assert all(isinstance(e, errors.AccessDenied) for e in result.failures.values())
    assert len(result.failures) == 3
    assert source.counters.logins == 2
    assert proxy.count("POST", f"/v1/auth/{unique}/login") == 2
    assert source.counters.failures == {"denied": 4}
    assert_clean(
        [*values.values(), role_id, secret_id, *issued_tokens(proxy)],
        *(str(e) for e in result.failures.values()),
        caplog=caplog,
    )


async def test_policy_that_denies_half_the_paths_fails_only_those_without_a_login_storm(
    openbao: OpenBao, proxy: CountingProxy, unique: str, caplog: pytest.LogCaptureFixture
) -> None:
    mount = kv2_mount(openbao, unique)
    openbao.client().sys.create_or_update_policy(
        name=unique, policy=f'path "{mount}/data/open/*" {{ capabilities = ["read"] }}'
    )
    role_id, secret_id = approle(openbao, unique, policies=[unique])
    allowed = {f"open/p{i}": canary() for i in range(20)}
    denied = {f"closed/p{i}": canary() for i in range(20)}
    for path, value in {**allowed, **denied}.items():
        openbao.write_kv(mount, path, {"v": value})
    source = make_source(
        proxy.address,
        env={"SID": secret_id},
        kv_mount=mount,
        auth=model.VaultAuth(
            method="approle", role_id=role_id, secret_id_env="SID", mount_path=unique
        ),
    )
    refs = [ref(mount, path, "v") for path in [*allowed, *denied]]
    caplog.clear()
    try:
        result = await resolve.resolve(refs, {"vault": source}, concurrency=16)
    finally:
        await source.aclose()
    # V10: one aggregated line for the 20 denied paths, not one per path (those are DEBUG),
    # besides one line per login
    shown = [
        r.getMessage()
        for r in caplog.records
        if r.name.startswith("secretsync") and r.levelno >= logging.INFO
    ]
    logins = [m for m in shown if m.startswith("vault: logged in with approle")]
    assert len(logins) == source.counters.logins, shown
    assert [m for m in shown if m not in logins] == [
        f"AccessDenied: vault:{mount}/closed/p0: permission denied (HTTP 403) "
        f"(and {len(denied) - 1} more)"
    ], shown

    assert {r.location.path: v.reveal().decode() for r, v in result.values.items()} == allowed
    assert {r.location.path for r in result.failures} == set(denied)
    assert all(isinstance(e, errors.AccessDenied) for e in result.failures.values())
    # one login: the denied token is looked up once (it is good), never replaced
    assert source.counters.logins == 1
    assert proxy.count("GET", "/v1/auth/token/lookup-self", status=200) == 1
    assert proxy.count("POST", f"/v1/auth/{unique}/login") == source.counters.logins
    assert proxy.count("GET", f"/v1/{mount}/data/closed/", status=403) <= len(denied) + 16
    assert_clean(
        [*allowed.values(), *denied.values(), role_id, secret_id, *issued_tokens(proxy)],
        *(str(e) for e in result.failures.values()),
        caplog=caplog,
    )


async def test_token_file_is_read_again_when_its_token_is_revoked(
    openbao: OpenBao,
    proxy: CountingProxy,
    unique: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    mount = kv2_mount(openbao, unique)
    allow_read_policy(openbao, unique, mount)
    tokens = openbao.client().auth.token
    first = tokens.create(policies=[unique], ttl="1h")["auth"]["client_token"]
    second = tokens.create(policies=[unique], ttl="1h")["auth"]["client_token"]
    value = canary()
    openbao.write_kv(mount, "p", {"v": value})
    (tmp_path / "creds").mkdir()
    (tmp_path / "creds" / "token").write_text(first + "\n")
    source = make_source(
        proxy.address,
        root=tmp_path,
        kv_mount=mount,
        auth=model.VaultAuth(method="token", token_file="creds/token"),
    )
    try:
        assert (await source.fetch(loc(mount, "p"))).document == {"v": value}
        tokens.revoke(first)
        (tmp_path / "creds" / "token").write_text(second)  # as an agent rotating it would
        assert (await source.fetch(loc(mount, "p"))).document == {"v": value}
    finally:
        await source.aclose()
    assert source.counters.logins == 2
    assert {s.token for s in proxy.seen if s.path.startswith(f"/v1/{mount}/")} == {first, second}
    assert_clean([value, first, second], caplog=caplog)


async def test_revoked_environment_token_is_access_denied(
    openbao: OpenBao, unique: str, caplog: pytest.LogCaptureFixture
) -> None:
    mount = kv2_mount(openbao, unique)
    allow_read_policy(openbao, unique, mount)
    token = openbao.client().auth.token.create(policies=[unique], ttl="1h")["auth"]["client_token"]
    value = canary()
    openbao.write_kv(mount, "p", {"v": value})
    source = make_source(openbao.address, env={"BAO_TOKEN": token}, kv_mount=mount)
    try:
        assert (await source.fetch(loc(mount, "p"))).document == {"v": value}
        openbao.client().auth.token.revoke(token)
        with pytest.raises(errors.AccessDenied) as denied:
            await source.fetch(loc(mount, "p"))
    finally:
        await source.aclose()
    assert str(denied.value) == f"vault:{mount}/p: the token from BAO_TOKEN was refused (403)"
    assert_clean([value, token], str(denied.value), caplog=caplog)


class FakeClock:
    """Token lifetimes are judged by this clock; the server keeps real time."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_token_is_renewed_before_expiry_and_replaced_after_it(
    openbao: OpenBao, proxy: CountingProxy, unique: str, caplog: pytest.LogCaptureFixture
) -> None:
    mount = kv2_mount(openbao, unique)
    allow_read_policy(openbao, unique, mount)
    role_id, secret_id = approle(
        openbao, unique, policies=[unique], token_ttl="60s", token_max_ttl="1h"
    )
    value = canary()
    openbao.write_kv(mount, "p", {"v": value})
    clock = FakeClock()
    source = make_source(
        proxy.address,
        env={"SID": secret_id},
        kv_mount=mount,
        auth=model.VaultAuth(
            method="approle", role_id=role_id, secret_id_env="SID", mount_path=unique
        ),
        clock=clock,
    )
    try:
        await source.fetch(loc(mount, "p"))
        clock.now += 30  # half the TTL: nothing to do
        await source.fetch(loc(mount, "p"))
        assert (source.counters.logins, source.counters.renewals) == (1, 0)
        clock.now += 15  # past two thirds of the TTL: renewed, same token
        await source.fetch(loc(mount, "p"))
        assert (source.counters.logins, source.counters.renewals) == (1, 1)
        clock.now += 500  # long past expiry: a new login
        await source.fetch(loc(mount, "p"))
    finally:
        await source.aclose()
    assert (source.counters.logins, source.counters.renewals) == (2, 1)
    assert proxy.count("POST", "/v1/auth/token/renew-self", status=200) == 1
    assert proxy.count("POST", f"/v1/auth/{unique}/login") == 2
    assert_clean([value, role_id, secret_id, *issued_tokens(proxy)], caplog=caplog)


async def test_refused_login_is_shared_by_concurrent_reads(
    openbao: OpenBao, proxy: CountingProxy, unique: str, caplog: pytest.LogCaptureFixture
) -> None:
    mount = kv2_mount(openbao, unique)
    role_id, _ = approle(openbao, unique, policies=["default"])
    wrong = canary()
    source = make_source(
        proxy.address,
        env={"SID": wrong},
        kv_mount=mount,
        kv_version=2,
        auth=model.VaultAuth(
            method="approle", role_id=role_id, secret_id_env="SID", mount_path=unique
        ),
    )
    refs = [ref(mount, f"p{i}", "v") for i in range(30)]
    try:
        first = await resolve.resolve(refs, {"vault": source}, concurrency=30)
        second = await resolve.resolve(refs, {"vault": source}, concurrency=30)
    finally:
        await source.aclose()
    for result in (first, second):
        assert set(result.failures) == set(refs)
        assert all(isinstance(e, errors.AccessDenied) for e in result.failures.values())
    message = str(first.failures[refs[0]])
    assert message == f"vault:{mount}/p0: login with approle at auth/{unique} was refused (400)"
    assert proxy.count("POST", f"/v1/auth/{unique}/login") == 1
    assert source.counters.logins == 1
    assert_clean([wrong, role_id], message, caplog=caplog)


def self_signed_ca_pem() -> str:
    now = datetime.datetime.now(datetime.UTC)
    return keys.self_signed_pem(
        ec.generate_private_key(ec.SECP256R1()),
        common_name="test-kube-ca",
        not_before=now,
        not_after=now + datetime.timedelta(days=1),
        ca=True,
    ).decode()


async def test_kubernetes_login_sends_role_and_jwt_and_a_bad_jwt_is_denied(
    openbao: OpenBao,
    proxy: CountingProxy,
    unique: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = openbao.client()
    client.sys.enable_auth_method("kubernetes", path=unique)
    client.auth.kubernetes.configure(
        kubernetes_host="https://127.0.0.1:9",  # nothing listens: no TokenReview can pass
        kubernetes_ca_cert=self_signed_ca_pem(),
        disable_local_ca_jwt=True,
        mount_point=unique,
    )
    client.auth.kubernetes.create_role(
        name="secretsync",
        bound_service_account_names=["secretsync"],
        bound_service_account_namespaces=["secretsync"],
        policies=["default"],
        mount_point=unique,
    )
    jwt = f"eyJhbGciOiJSUzI1NiJ9.{canary()}.{canary()}"
    (tmp_path / "sa-token").write_text(jwt)
    source = make_source(
        proxy.address,
        root=tmp_path,
        auth=model.VaultAuth(
            method="kubernetes", role="secretsync", jwt_file="sa-token", mount_path=unique
        ),
    )
    missing = make_source(
        proxy.address,
        root=tmp_path,
        auth=model.VaultAuth(method="kubernetes", role="secretsync", mount_path=unique),
    )
    try:
        with pytest.raises(errors.AccessDenied) as denied:
            await source.fetch(loc("secret", "p"))
        logins = proxy.count("POST", f"/v1/auth/{unique}/login")
        with pytest.raises(errors.AccessDenied) as no_file:
            await missing.fetch(loc("secret", "p"))
    finally:
        await source.aclose()
        await missing.aclose()

    assert logins == 1
    assert proxy.count("POST", f"/v1/auth/{unique}/login") == 1  # no file, no request
    [login] = [s for s in proxy.seen if s.path == f"/v1/auth/{unique}/login"]
    assert json.loads(login.body) == {"role": "secretsync", "jwt": jwt}
    assert login.status == 403
    assert str(denied.value) == (
        f"vault:secret/p: login with kubernetes at auth/{unique} was refused (403)"
    )
    assert str(no_file.value) == (
        "vault:secret/p: cannot read jwtFile "
        "/var/run/secrets/kubernetes.io/serviceaccount/token: No such file or directory"
    )
    assert_clean([jwt], str(denied.value), caplog=caplog)


# --- faults ----------------------------------------------------------------------------------


async def test_sealed_server_is_unavailable_then_read_again_after_unseal(
    own_openbao: OpenBao, caplog: pytest.LogCaptureFixture
) -> None:
    value = canary()
    own_openbao.write_kv("secret", "p", {"v": value})
    source = make_source(own_openbao.address, env={"VAULT_TOKEN": own_openbao.root_token})
    refs = [ref("secret", f"q{i}", "v") for i in range(20)]
    try:
        assert (await source.fetch(loc("secret", "p"))).document == {"v": value}
        own_openbao.seal()
        sent = source.counters.requests
        with pytest.raises(errors.SourceUnavailable) as sealed:
            await source.fetch(loc("secret", "p"))
        result = await resolve.resolve(refs, {"vault": source}, concurrency=16)
        assert all(isinstance(e, errors.SourceUnavailable) for e in result.failures.values())
        # the circuit opened: 21 fetches x 4 attempts would be 84 requests; here the first
        # fetch's attempts and the 16 first requests already in flight went out, no more
        assert source.counters.requests - sent <= FAST.attempts + 16
        own_openbao.unseal()

        async def readable() -> bool:
            try:
                return (await source.fetch(loc("secret", "p"))).document == {"v": value}
            except errors.SourceUnavailable:
                return False

        await wait_until(readable, deadline_s=10, what="read after unseal")
    finally:
        await source.aclose()
    assert str(sealed.value).startswith("vault:secret/p: the server is sealed (HTTP 503)")
    assert source.counters.failures["sealed"] >= 21
    assert_clean([value, own_openbao.root_token], str(sealed.value), caplog=caplog)


async def test_rate_limit_quota_is_met_with_back_off_then_every_read_succeeds(
    openbao: OpenBao, proxy: CountingProxy, unique: str, caplog: pytest.LogCaptureFixture
) -> None:
    mount = kv2_mount(openbao, unique)
    values = {f"p{i}": canary() for i in range(60)}
    for path, value in values.items():
        openbao.write_kv(mount, path, {"v": value})
    quota = 20
    openbao.client().sys.create_or_update_quota(
        name=unique, rate=quota, path=f"{mount}/", interval="1s"
    )
    source = make_source(
        proxy.address,
        env={"VAULT_TOKEN": openbao.root_token},
        limits=model.VaultLimits(concurrency=16, requests_per_second=1000, timeout_seconds=5),
        retry=vault.RetryPolicy(attempts=8, base_delay_s=0.05, max_delay_s=1.0, budget_s=20),
    )
    started = time.monotonic()
    try:
        result = await resolve.resolve(
            [ref(mount, path, "v") for path in values], {"vault": source}, concurrency=16
        )
    finally:
        await source.aclose()
        openbao.client().sys.delete_quota(name=unique)
    elapsed = time.monotonic() - started

    assert not result.failures
    assert {r.location.path: v.reveal().decode() for r, v in result.values.items()} == values
    limited = proxy.count("GET", f"/v1/{mount}/data/", status=429)
    assert limited > 0
    assert source.counters.retries == limited
    # the server let ~quota reads a second through, so the client waited instead of storming
    assert elapsed >= (len(values) - quota) / quota * 0.8
    assert limited <= len(values)
    assert_clean(list(values.values()), caplog=caplog)


async def test_rate_limit_that_outlasts_the_budget_is_unavailable(
    openbao: OpenBao, unique: str, caplog: pytest.LogCaptureFixture
) -> None:
    mount = kv2_mount(openbao, unique)
    for i in range(10):
        openbao.write_kv(mount, f"p{i}", {"v": canary()})
    openbao.client().sys.create_or_update_quota(
        name=unique, rate=1, path=f"{mount}/", interval="10s"
    )
    budget = 1.0
    source = make_source(
        openbao.address,
        env={"VAULT_TOKEN": openbao.root_token},
        retry=vault.RetryPolicy(attempts=20, base_delay_s=0.05, max_delay_s=0.3, budget_s=budget),
    )
    started = time.monotonic()
    try:
        result = await resolve.resolve(
            [ref(mount, f"p{i}", "v") for i in range(10)], {"vault": source}
        )
    finally:
        await source.aclose()
        openbao.client().sys.delete_quota(name=unique)
    elapsed = time.monotonic() - started
    assert len(result.values) <= 1
    assert len(result.failures) >= 9
    for failure in result.failures.values():
        assert isinstance(failure, errors.SourceUnavailable)
        assert "rate-limited by the server (HTTP 429)" in str(failure)
    assert elapsed < budget + 2.0


async def test_hung_server_times_out_within_the_budget_then_recovers(
    own_openbao: OpenBao, caplog: pytest.LogCaptureFixture
) -> None:
    values = {f"p{i}": canary() for i in range(40)}
    for path, value in values.items():
        own_openbao.write_kv("secret", path, {"v": value})
    timeout, budget = 0.5, 1.5
    source = make_source(
        own_openbao.address,
        env={"VAULT_TOKEN": own_openbao.root_token},
        limits=model.VaultLimits(concurrency=8, timeout_seconds=timeout),
        retry=vault.RetryPolicy(
            attempts=3, base_delay_s=0.05, max_delay_s=0.2, budget_s=budget, breaker_cooldown_s=0.3
        ),
    )
    refs = [ref("secret", path, "v") for path in values]
    tasks_before = len(asyncio.all_tasks())
    try:
        await source.fetch(loc("secret", "p0"))  # warm: token checked, mount known
        own_openbao.pause()
        try:
            started = time.monotonic()
            hung = await resolve.resolve(refs, {"vault": source}, concurrency=40)
            elapsed = time.monotonic() - started
        finally:
            own_openbao.resume()
        assert not hung.values
        assert all(isinstance(e, errors.SourceUnavailable) for e in hung.failures.values())
        assert any("no answer within 0.5s" in str(e) for e in hung.failures.values())
        assert elapsed < budget + timeout + 1.0

        async def recovered() -> bool:
            result = await resolve.resolve(refs, {"vault": source}, concurrency=40)
            return not result.failures

        await wait_until(recovered, deadline_s=10, what="reads after SIGCONT")
    finally:
        await source.aclose()
    assert len(asyncio.all_tasks()) == tasks_before
    assert_clean(list(values.values()), *(str(e) for e in hung.failures.values()), caplog=caplog)


async def test_killed_server_is_unreachable_then_read_again_after_restart(
    own_openbao: OpenBao, caplog: pytest.LogCaptureFixture
) -> None:
    value = canary()
    own_openbao.write_kv("secret", "p", {"v": value})
    source = make_source(own_openbao.address, env={"VAULT_TOKEN": own_openbao.root_token})
    try:
        await source.fetch(loc("secret", "p"))
        own_openbao.kill()
        started = time.monotonic()
        with pytest.raises(errors.SourceUnavailable) as down:
            await source.fetch(loc("secret", "p"))
        assert time.monotonic() - started < FAST.budget_s
        own_openbao.restart()  # a fresh in-memory server: same root token, data gone
        own_openbao.write_kv("secret", "p", {"v": value})

        async def readable() -> bool:
            try:
                return (await source.fetch(loc("secret", "p"))).document == {"v": value}
            except errors.SourceUnavailable:
                return False

        await wait_until(readable, deadline_s=10, what="read after restart")
    finally:
        await source.aclose()
    assert "cannot connect to" in str(down.value)
    assert source.counters.failures["unreachable"] >= 1
    assert_clean([value, own_openbao.root_token], str(down.value), caplog=caplog)


async def test_tls_is_verified_with_the_ca_from_the_environment(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = start_openbao(tls=True)
    try:
        value = canary()
        server.write_kv("secret", "p", {"v": value})
        env = {"VAULT_TOKEN": server.root_token}
        trusted = make_source(server.address, env={**env, "VAULT_CACERT": str(server.ca_file)})
        (tmp_path / "ca.pem").write_bytes(server.ca_file.read_bytes())
        from_settings = make_source(
            server.address, env=env, root=tmp_path, tls=model.VaultTLS(ca_file="ca.pem")
        )
        untrusted = make_source(server.address, env=env)
        try:
            assert (await trusted.fetch(loc("secret", "p"))).document == {"v": value}
            assert (await from_settings.fetch(loc("secret", "p"))).document == {"v": value}
            with pytest.raises(errors.SourceUnavailable) as refused:
                await untrusted.fetch(loc("secret", "p"))
        finally:
            for source in (trusted, from_settings, untrusted):
                await source.aclose()
    finally:
        server.stop()
    assert "TLS certificate check with https://127.0.0.1" in str(refused.value)
    assert untrusted.counters.retries == 0


# --- configuration ---------------------------------------------------------------------------


def test_address_and_token_come_from_the_environment_as_the_vault_cli_reads_them() -> None:
    settings = model.VaultSettings()
    source = vault.build_vault_source(
        settings,
        env={"BAO_ADDR": "https://b:1", "VAULT_ADDR": "https://v:2/", "BAO_TOKEN": "x"},
        root=Path("/"),
    )
    assert source.address == "https://v:2"
    source = vault.build_vault_source(
        model.VaultSettings(address="https://s:3"),
        env={"VAULT_ADDR": "https://v:2", "VAULT_TOKEN": "x"},
        root=Path("/"),
    )
    assert source.address == "https://s:3"


@pytest.mark.parametrize(
    ("settings", "env", "field", "message"),
    [
        (model.VaultSettings(), {"VAULT_TOKEN": "t"}, "sources.vault.address", "no Vault address"),
        (
            model.VaultSettings(address="ftp://x"),
            {"VAULT_TOKEN": "t"},
            "sources.vault.address",
            "http",
        ),
        (
            model.VaultSettings(address="https://u:p@x"),
            {"VAULT_TOKEN": "t"},
            "sources.vault.address",
            "credentials",
        ),
        (
            model.VaultSettings(address="http://localhost"),
            {},
            "sources.vault.auth.method",
            "no token",
        ),
        (
            model.VaultSettings(address="http://localhost", kv_version=3),
            {"VAULT_TOKEN": "t"},
            "sources.vault.kvVersion",
            "1 or 2",
        ),
        (
            model.VaultSettings(address="http://localhost", auth=model.VaultAuth(method="ldap")),
            {},
            "sources.vault.auth.method",
            "unknown method 'ldap'",
        ),
        (
            model.VaultSettings(
                address="http://localhost",
                auth=model.VaultAuth(method="approle", role_id="r", role_id_file="f"),
            ),
            {},
            "sources.vault.auth",
            "exactly one of roleId or roleIdFile",
        ),
        (
            model.VaultSettings(
                address="http://localhost",
                auth=model.VaultAuth(method="approle", role_id="r", secret_id_env="NOPE"),
            ),
            {},
            "sources.vault.auth.secretIdEnv",
            "NOPE is not set",
        ),
        (
            model.VaultSettings(
                address="http://localhost", auth=model.VaultAuth(method="kubernetes")
            ),
            {},
            "sources.vault.auth.role",
            "needs a role",
        ),
        (
            model.VaultSettings(address="http://localhost", tls=model.VaultTLS(ca_file="ca.pem")),
            {"VAULT_TOKEN": "t"},
            "sources.vault.tls",
            "http:// address",
        ),
        (
            model.VaultSettings(address="https://x", tls=model.VaultTLS(ca_file="missing.pem")),
            {"VAULT_TOKEN": "t"},
            "sources.vault.tls.caFile",
            "cannot load the CA",
        ),
        (
            model.VaultSettings(
                address="http://localhost", limits=model.VaultLimits(concurrency=0)
            ),
            {"VAULT_TOKEN": "t"},
            "sources.vault.limits.concurrency",
            "at least 1",
        ),
    ],
)
def test_bad_settings_are_config_errors_naming_the_field(
    settings: model.VaultSettings, env: dict[str, str], field: str, message: str, tmp_path: Path
) -> None:
    with pytest.raises(errors.ConfigError) as raised:
        vault.build_vault_source(settings, env=env, root=tmp_path)
    assert raised.value.field == field
    assert message in raised.value.message


def test_secrets_from_the_environment_stay_out_of_the_source_repr() -> None:
    token, secret_id = canary(), canary()
    for settings in (
        model.VaultSettings(address="http://localhost"),
        model.VaultSettings(
            address="http://localhost",
            auth=model.VaultAuth(method="approle", role_id="r", secret_id_env="SID"),
        ),
    ):
        source = vault.build_vault_source(
            settings, env={"VAULT_TOKEN": token, "SID": secret_id}, root=Path("/")
        )
        assert_clean([token, secret_id], repr(source), repr(vars(source)))


def test_this_package_does_not_read_the_process_environment() -> None:
    modules = sorted(Path(vault.__file__).parent.glob("*.py"))
    assert len(modules) >= 6
    for module in modules:
        text = module.read_text()
        assert "os.environ" not in text, module.name
        assert "getenv" not in text, module.name
