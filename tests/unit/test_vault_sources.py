"""Named Vault sources and per-cluster identities in load and plan, webhook bodies naming a
source, and the source-kind registry proven by a kind that exists only in this file."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import pytest
import yaml

from secretsync.core import errors
from secretsync.core.model import (
    Cluster,
    Fleet,
    Identity,
    Location,
    RefSpec,
    ValueRef,
)
from secretsync.daemon import webhook
from secretsync.delivery import materialize, seal
from secretsync.delivery.rendered import RenderContext
from secretsync.engine.cycle import Engine
from secretsync.fleet import load, plan
from secretsync.sinks.git.sink import GitSink
from secretsync.sources import kinds, resolve
from secretsync.sources.vault import kind as vault_kind
from tests.support import canary, keys

MakeRepo = Callable[[dict[str, str | bytes]], Path]
TENANT = "{{ cluster.labels.tenant }}"

FLEET = f"""\
apiVersion: secretsync.dev/v1alpha1
kind: Fleet
metadata: {{name: f}}
spec:
  sources:
    vault:
      address: https://us.vault.example:8200
      auth: {{method: kubernetes, role: "secretsync-{TENANT}", jwtFile: /var/run/sa/token}}
    vaults:
      eu:
        address: https://eu.vault.example:8200
        namespace: "tenants/{TENANT}"
        kvMount: kv
        auth:
          method: approle
          roleIdFile: "/etc/secretsync/eu/{TENANT}/role-id"
          secretIdFile: "/etc/secretsync/eu/{TENANT}/secret-id"
"""


def cluster(name: str, tenant: str, index: int, extra: str = "") -> str:
    return (
        "apiVersion: secretsync.dev/v1alpha1\nkind: Cluster\n"
        f"metadata: {{name: {name}, labels: {{tenant: {tenant}}}}}\n"
        f"spec:\n  sealedSecrets: {{certFile: certs/{index}.pem}}\n{extra}"
    )


SECRET = f"""\
apiVersion: secretsync.dev/v1alpha1
kind: FleetSecret
metadata: {{name: db}}
spec:
  clusterSelector: {{}}
  target: {{name: db, namespace: payments}}
  data:
    password: {{vault: {{path: "{TENANT}/db", key: password}}}}
    banner: {{vault: {{source: default, path: common/banner, key: text}}}}
  overlays:
    - clusters: [us-b]
      data:
        password: {{vault: {{source: eu, path: "{TENANT}/db", key: password}}}}
"""


def repo(make: MakeRepo, **extra: str | bytes) -> Path:
    files: dict[str, str | bytes] = {
        "secretsync.yaml": FLEET,
        "clusters/a.yaml": "---\n".join(
            [
                cluster("us-a", "acme", 0),
                cluster("us-a2", "acme", 1),
                cluster("us-b", "acme", 2),
                cluster("us-g", "globex", 3),
                cluster("eu-a", "acme", 4, "  vault: {source: eu}\n"),
            ]
        ),
        "secrets/db.yaml": SECRET,
        **{f"certs/{i}.pem": keys.cert_pem(keys.rsa_key(i)) for i in range(5)},
    }
    files.update(extra)
    return make(files)


def load_errors(root: Path) -> list[str]:
    with pytest.raises(errors.ConfigErrors) as info:
        load.load_fleet(root)
    return [e.render() for e in info.value.errors]


def password(desired: list[Any], name: str) -> Location:
    [d] = [d for d in desired if d.cluster.name == name]
    ref = d.data["password"]
    assert isinstance(ref, ValueRef)
    return ref.location


# --- load and plan ---------------------------------------------------------------------------


def test_clusters_read_their_source_as_their_tenant_and_share_identical_reads(
    fleet_repo: MakeRepo,
) -> None:
    fleet = load.load_fleet(repo(fleet_repo))
    assert set(fleet.vaults) == {"eu"}
    desired = plan.plan(fleet)
    us_acme = Identity(auth=(("role", "secretsync-acme"),))
    assert password(desired, "us-a") == Location("vault", "acme/db", "secret", None, "", us_acme)
    # same tenant, same source, same path: one Location, so one read and one login
    assert password(desired, "us-a2") == password(desired, "us-a")
    assert password(desired, "us-g").identity == Identity(auth=(("role", "secretsync-globex"),))
    eu_acme = Identity(
        namespace="tenants/acme",
        auth=(
            ("roleIdFile", "/etc/secretsync/eu/acme/role-id"),
            ("secretIdFile", "/etc/secretsync/eu/acme/secret-id"),
        ),
    )
    # the Cluster's source, and an overlay that moves one cluster to it
    assert password(desired, "eu-a") == Location("vault", "acme/db", "kv", None, "eu", eu_acme)
    assert password(desired, "us-b") == password(desired, "eu-a")
    assert str(password(desired, "eu-a")) == "vault:eu:kv/acme/db"
    # `source: default` keeps a ref of an eu cluster on the default source
    [eu] = [d for d in desired if d.cluster.name == "eu-a"]
    banner = eu.data["banner"]
    assert isinstance(banner, ValueRef)
    assert banner.location.instance == ""
    assert banner.location.identity == us_acme
    unique = {r.location for d in desired for r in d.refs()}
    assert len(unique) == 5  # us: acme/db, globex/db; eu: acme/db; banner as acme, as globex
    assert {r.location for d in desired for r in d.refs()} == unique


def test_validate_names_every_unknown_source_with_file_line_and_field(
    fleet_repo: MakeRepo,
) -> None:
    found = load_errors(
        repo(
            fleet_repo,
            **{
                "clusters/b.yaml": cluster(
                    "x",
                    "acme",
                    0,
                    "  vault: {source: apac}\n  externalSecrets:\n"
                    "    storeRefs: {mars: {name: mars}}\n",
                ),
                "secrets/e.yaml": SECRET.replace("name: db}", "name: e}")
                .replace("name: db, namespace", "name: e, namespace")
                .replace("source: eu", "source: us-west"),
            },
        )
    )
    assert any(
        e.startswith("clusters/b.yaml:1: spec.vault.source: no Vault source 'apac'") for e in found
    ), found
    assert any(
        e.startswith("clusters/b.yaml:1: spec.externalSecrets.storeRefs.mars: no Vault source")
        for e in found
    ), found
    assert any(
        e.startswith(
            "secrets/e.yaml:13: spec.data.password.vault.source: no Vault source "
            "'us-west' in spec.sources.vaults (known: eu;"
        )
        for e in found
    ), found


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        (
            "    vaults:\n      default: {address: https://x.example}\n",
            "spec.sources.vaults.default: a source name must be a DNS label other than 'default'",
        ),
        (
            "    vaults:\n      eu: {kvMount: kv}\n",
            "spec.sources.vaults.eu.address: a named Vault source needs its address",
        ),
        (
            '    vault:\n      namespace: "{{ cluster.region }}"\n',
            "spec.sources.vault.namespace: template {{ cluster.region }} is not allowed",
        ),
        (
            '    vault:\n      auth: {method: approle, roleIdFile: "etc/{{ cluster.name }}", '
            "secretIdEnv: S}\n",
            "spec.sources.vault.auth.roleIdFile: 'etc/{{ cluster.name }}' must be an absolute",
        ),
    ],
)
def test_bad_source_settings_are_refused_at_load(
    fleet_repo: MakeRepo, settings: str, expected: str
) -> None:
    fleet = "apiVersion: secretsync.dev/v1alpha1\nkind: Fleet\nmetadata: {name: f}\n"
    root = fleet_repo({"secretsync.yaml": f"{fleet}spec:\n  sources:\n{settings}"})
    found = load_errors(root)
    assert any(expected in e for e in found), found


def test_a_label_an_identity_needs_fails_that_cluster_naming_the_source(
    fleet_repo: MakeRepo,
) -> None:
    root = repo(fleet_repo)
    (root / "clusters/c.yaml").write_text(
        "apiVersion: secretsync.dev/v1alpha1\nkind: Cluster\n"
        "metadata: {name: bare}\nspec: {sealedSecrets: {certFile: certs/0.pem}}\n"
    )
    with pytest.raises(errors.ConfigErrors) as info:
        plan.plan(load.load_fleet(root))
    text = "\n".join(e.render() for e in info.value.errors)
    assert "no label 'tenant'" in text or "'tenant'" in text, text
    assert "sources.vault" in text, text


def test_external_clusters_name_the_store_of_the_source_they_read(
    fleet_repo: MakeRepo,
) -> None:
    ext = (
        "apiVersion: secretsync.dev/v1alpha1\nkind: Cluster\n"
        "metadata: {name: ext, labels: {tenant: acme}}\n"
        "spec:\n  delivery: external\n  vault: {source: eu}\n"
        "  externalSecrets:\n    storeRef: {name: vault-us}\n"
        "    storeRefs: {eu: {kind: SecretStore, name: vault-eu}}\n"
    )
    only_password = SECRET.replace(
        "    banner: {vault: {source: default, path: common/banner, key: text}}\n", ""
    )
    root = repo(fleet_repo, **{"clusters/x.yaml": ext, "secrets/db.yaml": only_password})
    desired = plan.plan(load.load_fleet(root))
    [d] = [d for d in desired if d.cluster.name == "ext"]
    assert password([d], "ext").identity is None  # ESO reads with the store's own auth
    rendered = materialize.render(d, {}, ctx=RenderContext(hmac_key=b"k" * 32))
    spec = rendered.manifest["spec"]
    assert spec["secretStoreRef"] == {"kind": "SecretStore", "name": "vault-eu"}
    assert spec["data"][0]["remoteRef"]["key"] == "acme/db"

    # without a store for its source, an external cluster is refused at plan time
    root = repo(
        fleet_repo,
        **{
            "clusters/x.yaml": ext.replace(
                "    storeRefs: {eu: {kind: SecretStore, name: vault-eu}}\n", ""
            ),
            "secrets/db.yaml": only_password,
        },
    )
    with pytest.raises(errors.ConfigErrors) as info:
        plan.plan(load.load_fleet(root))
    assert "spec.externalSecrets.storeRefs.eu" in info.value.errors[0].render()


# --- webhook ---------------------------------------------------------------------------------


def test_webhook_paths_are_named_by_source() -> None:
    assert webhook.parse_paths(b'{"paths": ["secret/a"]}') == ("secret/a",)
    assert webhook.parse_paths(b'{"source": "default", "paths": ["secret/a"]}') == ("secret/a",)
    assert webhook.parse_paths(b'{"source": "eu", "paths": ["kv/a", "/kv/b/"]}') == (
        "eu:kv/a",
        "eu:kv/b",
    )
    eu = Location("vault", "a", "kv", instance="eu")
    assert kinds.path_names(eu) == ("eu:kv/a", "eu:kv/data/a")
    for body in (
        b'{"source": "EU", "paths": ["kv/a"]}',
        b'{"source": 3, "paths": ["kv/a"]}',
        b'{"source": "eu", "paths": ["kv/a"], "more": 1}',
    ):
        with pytest.raises(webhook.BadBody):
            webhook.parse_paths(body)


# --- a source kind registered from the tests -------------------------------------------------


@dataclass(frozen=True, slots=True)
class MemoSpec(RefSpec):
    item: str
    key: str
    kind: ClassVar[str] = "memo"

    def templates(self) -> tuple[str, ...]:
        return (self.item, self.key)


@dataclass(frozen=True, slots=True)
class MemoSettings:
    shelf: str


SHELVES: dict[str, dict[str, dict[str, str]]] = {}
"""Documents by shelf, then item: the values never enter the fleet repo."""


class MemoSource:
    kind: ClassVar[str] = "memo"

    def __init__(self, documents: Mapping[str, Mapping[str, str]]) -> None:
        self.documents = documents
        self.reads: list[Location] = []

    async def fetch(self, location: Location) -> resolve.Fetched:
        self.reads.append(location)
        if location.path not in self.documents:
            raise errors.RefNotFound(f"{location}: no such item")
        return resolve.Fetched(self.documents[location.path])

    async def aclose(self) -> None:
        return None


class MemoKind:
    name = "memo"
    versioned = False
    pollable = False
    external = False
    built: ClassVar[list[MemoSource]] = []

    def read_settings(self, sources: Any) -> dict[str, object]:
        m = sources.map("memo")
        if m is None:
            return {}
        shelf = m.text("shelf", required=True) or ""
        m.done()
        return {"other_sources": {"memo": MemoSettings(shelf)}}

    def read_ref(self, ref: Any) -> RefSpec | None:
        item, key = ref.text("item", required=True), ref.text("key", required=True)
        return MemoSpec(item, key) if item and key else None

    def check_ref(self, spec: RefSpec, fleet: Fleet) -> list[tuple[str, str]]:
        return [] if "memo" in fleet.other_sources else [("item", "no spec.sources.memo")]

    def cluster_problems(self, cluster: Cluster, fleet: Fleet) -> list[tuple[str, str]]:
        return []

    def plan_inputs(self, spec: RefSpec, fleet: Fleet) -> tuple[str, ...]:
        return spec.templates()

    def cluster_inputs(self, cluster: Cluster) -> tuple[object, ...]:
        return ()

    def plan_ref(self, spec: RefSpec, plan: kinds.RefPlan) -> ValueRef:
        assert isinstance(spec, MemoSpec)
        return ValueRef(Location("memo", plan.fill(spec.item, "item")), plan.fill(spec.key, "key"))

    def build(self, fleet: Fleet, options: kinds.BuildOptions) -> dict[str, resolve.Source]:
        settings = fleet.other_sources.get("memo")
        if not isinstance(settings, MemoSettings):
            return {}
        source = MemoSource(SHELVES[settings.shelf])
        self.built.append(source)
        return {"memo": source}

    def path_names(self, location: Location) -> tuple[str, ...]:
        return ()


@pytest.fixture
def memo_kind() -> Iterator[MemoKind]:
    kind = MemoKind()
    kinds.register(kind)
    try:
        yield kind
    finally:
        kinds.unregister("memo")
        MemoKind.built.clear()


MEMO_FLEET = """\
apiVersion: secretsync.dev/v1alpha1
kind: Fleet
metadata: {name: memo}
spec:
  sources:
    memo: {shelf: s1}
"""

MEMO_SECRET = """\
apiVersion: secretsync.dev/v1alpha1
kind: FleetSecret
metadata: {name: app}
spec:
  clusterSelector: {}
  target: {name: app, namespace: web}
  data:
    token: {memo: {item: "{{ cluster.labels.env }}/app", key: token}}
    mode: {value: "{{ cluster.name }}"}
"""


def test_a_kind_registered_from_the_tests_goes_through_load_plan_and_render(
    fleet_repo: MakeRepo, memo_kind: MemoKind
) -> None:
    values = {"prod": canary.new("memo-prod"), "dev": canary.new("memo-dev")}
    SHELVES["s1"] = {f"{env}/app": {"token": value} for env, value in values.items()}
    clusters = "---\n".join(
        "apiVersion: secretsync.dev/v1alpha1\nkind: Cluster\n"
        f"metadata: {{name: {name}, labels: {{env: {env}}}}}\n"
        f"spec: {{sealedSecrets: {{certFile: certs/{i}.pem}}}}\n"
        for i, (name, env) in enumerate((("p1", "prod"), ("p2", "prod"), ("d1", "dev")))
    )
    root = fleet_repo(
        {
            "secretsync.yaml": MEMO_FLEET,
            "clusters/all.yaml": clusters,
            "secrets/app.yaml": MEMO_SECRET,
            **{f"certs/{i}.pem": keys.cert_pem(keys.rsa_key(i)) for i in range(3)},
        }
    )
    fleet = load.load_fleet(root)
    sources = kinds.build_sources(fleet, kinds.BuildOptions(env={}))
    engine = Engine(
        sources=sources,
        sinks=[GitSink(out_dir=root / "rendered")],
        hmac_key=b"memo-key-0123456789abcdef0123456",
        clock=lambda: datetime.now(UTC),
    )
    report = asyncio.run(engine.run_cycle(fleet))
    assert report.ok, report.failures
    [source] = MemoKind.built
    assert sorted(loc.path for loc in source.reads) == ["dev/app", "prod/app"]  # once each
    for i, (name, env) in enumerate((("p1", "prod"), ("p2", "prod"), ("d1", "dev"))):
        manifest = yaml.safe_load((root / f"rendered/{name}/web/app.yaml").read_text())
        opened = seal.unseal_manifest(manifest, [keys.rsa_key(i)])
        assert opened == {"token": values[env].encode(), "mode": name.encode()}

    # its capabilities are honoured: not usable by External Secrets Operator
    (root / "clusters/ext.yaml").write_text(
        "apiVersion: secretsync.dev/v1alpha1\nkind: Cluster\n"
        "metadata: {name: ext, labels: {env: prod}}\nspec: {delivery: external}\n"
    )
    with pytest.raises(errors.ConfigErrors) as info:
        plan.plan(load.load_fleet(root))
    assert "data.token.memo: cluster 'ext' uses external delivery, which cannot carry a " in (
        info.value.errors[0].render()
    )
    # and the loader names it among the refs an entry may have
    (root / "secrets/app.yaml").write_text(MEMO_SECRET.replace("token: {memo:", "token: {x:"))
    assert any(
        "must have exactly one of vault, sops, memo or value" in e for e in load_errors(root)
    )


# --- poller and metrics per source -----------------------------------------------------------


class Versions:
    """A `poll.VersionSource` of our own: the current version of each path, or a failure."""

    def __init__(self, versions: dict[str, int], *, down: bool = False) -> None:
        self.versions = versions
        self.down = down
        self.asked: list[Location] = []

    async def current_versions(self, locations: Any) -> dict[Location, int | None]:
        wanted = list(locations)
        self.asked.extend(wanted)
        if self.down:
            raise errors.SourceUnavailable("vault:eu: the server is failing")
        return {loc: self.versions.get(loc.path) for loc in wanted}


def test_the_poller_asks_each_source_for_its_own_paths_and_survives_one_being_down() -> None:
    from secretsync.sources import poll

    us_loc = Location("vault", "app/db", "secret")
    eu_loc = Location("vault", "app/db", "kv", instance="eu", identity=Identity(namespace="t1"))
    us, eu = Versions({"app/db": 1}), Versions({"app/db": 7})
    submitted: list[tuple[str, ...]] = []

    async def sources() -> Mapping[str, poll.VersionSource]:
        return {"vault": us, "vault:eu": eu}

    poller = poll.VersionPoller(
        interval_s=60,
        locations=lambda: frozenset({us_loc, eu_loc}),
        sources=sources,
        submit=submitted.append,
    )
    assert asyncio.run(poller.poll_once()) == ()  # the baseline
    assert (us.asked, eu.asked) == ([us_loc], [eu_loc])  # each source only its own, as itself
    eu.versions["app/db"] = 8
    us.down = True  # the default Vault cannot be asked: eu's change still goes through
    assert asyncio.run(poller.poll_once()) == ("eu:kv/app/db",)
    assert submitted == [("eu:kv/app/db",)]
    assert poller.seen[us_loc] == 1  # nothing of the unreachable source is forgotten


def test_metrics_label_stale_paths_and_logins_by_source() -> None:
    from secretsync.daemon.metrics import Metrics
    from secretsync.engine.report import CycleReport

    metrics = Metrics()
    eu = Location("vault", "a", "kv", instance="eu")
    report = CycleReport(read_failed=frozenset({eu, Location("vault", "a", "secret")}))
    metrics.cycle(report, outcome="failed", trigger="t", seconds=0.1)
    metrics.source_logins({"vault": 1, "vault:eu": 10})
    text = metrics.render().decode()
    assert 'secretsync_stale_paths{source="vault:eu"} 1.0' in text
    assert 'secretsync_stale_paths{source="vault"} 1.0' in text
    assert 'secretsync_source_logins{source="vault:eu"} 10.0' in text


def test_a_filled_in_credential_file_inside_the_fleet_repo_is_refused_at_plan(
    fleet_repo: MakeRepo,
) -> None:
    """The template text lies outside the repo (the loader checks it); the filled-in path
    `<repo parent>/fleet0/role-id` is the repo itself, which `plan` refuses for that cluster."""
    parent = fleet_repo({"secretsync.yaml": FLEET}).parent  # fleet0: the repo made next
    role_file = f"{parent}/fleet{{{{ cluster.labels.n }}}}/role-id"
    fleet_yaml = FLEET.replace(
        f'roleIdFile: "/etc/secretsync/eu/{TENANT}/role-id"', f'roleIdFile: "{role_file}"'
    )
    root = fleet_repo(
        {
            "secretsync.yaml": fleet_yaml,
            "clusters/a.yaml": cluster("eu-a", "acme", 0, "  vault: {source: eu}\n").replace(
                "tenant: acme}", "tenant: acme, n: '1'}"
            ),
            "secrets/db.yaml": SECRET.replace(
                "    banner: {vault: {source: default, path: common/banner, key: text}}\n", ""
            ).replace("    - clusters: [us-b]\n", "    - clusters: [eu-a]\n"),
            "certs/0.pem": keys.cert_pem(keys.rsa_key(0)),
        }
    )
    assert root.name == "fleet1"
    with pytest.raises(errors.ConfigErrors) as info:
        plan.plan(load.load_fleet(root))
    text = info.value.errors[0].render()
    assert f"roleIdFile '{parent}/fleet1/role-id' lies inside the fleet repo" in text, text


async def test_operator_pins_bind_named_sources_too(fleet_repo: MakeRepo) -> None:
    """SECURITY.md M1 for several Vaults: once the operator pins an address, a named source
    without its own pin is refused (the Fleet's address would get a tenant's credentials);
    `$SECRETSYNC_VAULT_ADDRESS_<NAME>` pins it and the Fleet's address gets nothing."""
    fleet = load.load_fleet(repo(fleet_repo))
    pinned = "https://vault-eu.internal.example:8200"
    operator = "https://vault.internal.example"

    async def addresses(options: kinds.BuildOptions) -> dict[str, str]:
        sources = kinds.build_sources(fleet, options)
        for source in sources.values():
            await source.aclose()
        return {
            name: getattr(source, "address", "")
            for name, source in sources.items()
            if name.startswith("vault")
        }

    # no pin anywhere: the Fleet's addresses
    assert await addresses(kinds.BuildOptions(env={})) == {
        "vault": "https://us.vault.example:8200",
        "vault:eu": "https://eu.vault.example:8200",
    }
    # the default source pinned, eu not: refused, naming the field and the variable to set
    with pytest.raises(errors.ConfigError) as refused:
        await addresses(kinds.BuildOptions(env={}, vault_address=operator))
    assert (refused.value.file, refused.value.field) == (
        "secretsync.yaml",
        "spec.sources.vaults.eu.address",
    )
    assert "$SECRETSYNC_VAULT_ADDRESS_EU" in str(refused.value)
    # eu pinned (alone or beside the default's pin): the pin wins over the Fleet's address
    env = {"SECRETSYNC_VAULT_ADDRESS_EU": pinned}
    assert (await addresses(kinds.BuildOptions(env=env)))["vault:eu"] == pinned
    assert await addresses(kinds.BuildOptions(env=env, vault_address=operator)) == {
        "vault": operator,
        "vault:eu": pinned,
    }
    # a pin is checked like any address: plain http to a remote host is refused, naming it
    with pytest.raises(errors.ConfigError) as plain:
        await addresses(kinds.BuildOptions(env={"SECRETSYNC_VAULT_ADDRESS_EU": "http://10.0.0.9"}))
    assert plain.value.field == "$SECRETSYNC_VAULT_ADDRESS_EU"
    assert vault_kind.pin_variable("eu-west.1") == "SECRETSYNC_VAULT_ADDRESS_EU_WEST_1"
