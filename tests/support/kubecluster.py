"""Real Kubernetes API servers for secretsync's tests: etcd + kube-apiserver (+ controller manager).

    cluster = start_cluster(name="a", workdir=tmp)    # ready (/readyz ok) when it returns
    cluster.server, cluster.ca_file, cluster.ca_data  # "https://127.0.0.1:PORT", CA to trust
    cluster.admin_token, cluster.unprivileged_token   # system:masters / no rights (403)
    cluster.api_client()                              # a fresh kubernetes.client.ApiClient
    cluster.kubeconfig(tmp / "a.yaml", user="unprivileged")
    cluster.pause(); cluster.resume()                 # SIGSTOP / SIGCONT of the apiserver
    cluster.stop()                                    # kills only its own PIDs, drops its data
    stop_clusters(clusters)                           # several at once

    with running_clusters(["a", "b", "c"], workdir=tmp) as clusters:   # started side by side
        ...

Each cluster is its own etcd (data in /dev/shm, free loopback client and peer ports) and its
own kube-apiserver on a free 127.0.0.1 port, with a self-made CA and serving certificate,
service-account keys, a static token file (an admin in `system:masters`, an unprivileged
user), RBAC, and priority-and-fairness off. With `controller_manager=True` a
kube-controller-manager runs the namespace, garbage-collector and service-account
controllers, so namespace deletion and owner-reference GC work.

Binaries are found by `find_binaries()`, with the same rules as `scripts/build-kube.sh`: for
each binary the explicit variable (`SECRETSYNC_KUBE_APISERVER`,
`SECRETSYNC_KUBE_CONTROLLER_MANAGER`, `SECRETSYNC_ETCD`), then the folder
`SECRETSYNC_KUBE_ASSETS` (e.g. an envtest folder), then the build cache
`${SECRETSYNC_CACHE:-~/.cache/secretsync}/kube/v1.20.2/` (etcd: `etcd` on PATH). When the
apiserver is supplied by the user, the controller manager is only taken from the user too.

Processes are started from the calling thread with a parent-death signal (`setpriv
--pdeathsig`), so a test run that dies abruptly does not leave servers behind.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import functools
import ipaddress
import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Literal

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from kubernetes import client as k8s

from secretsync.kube.clusters import Endpoint

KUBE_VERSION = "v1.20.2"
"""The version `scripts/build-kube.sh` builds and caches."""

User = Literal["admin", "unprivileged"]

_BUILD_HINT = (
    "run scripts/build-kube.sh (or point SECRETSYNC_KUBE_APISERVER / SECRETSYNC_ETCD at binaries)"
)
_START_ATTEMPTS = 3
_STOP_GRACE_S = 3.0
_DATA_PREFIX = "secretsync-kube-"


class KubeInfraError(RuntimeError):
    """The test clusters could not be found, started or reached."""


# --- binaries --------------------------------------------------------------------------------


@dataclass(frozen=True)
class KubeBinaries:
    """Where the cluster binaries are; `controller_manager` is None when none is available."""

    apiserver: Path
    etcd: Path
    controller_manager: Path | None


def default_cache_dir(env: Mapping[str, str] | None = None) -> Path:
    """The folder `scripts/build-kube.sh` caches the kube binaries in."""
    env = os.environ if env is None else env
    root = env.get("SECRETSYNC_CACHE") or str(Path.home() / ".cache" / "secretsync")
    return Path(root) / "kube" / KUBE_VERSION


def find_binaries(env: Mapping[str, str] | None = None) -> KubeBinaries:
    """Locate kube-apiserver, etcd and kube-controller-manager (see the module docstring)."""
    env = os.environ if env is None else env
    assets = Path(env["SECRETSYNC_KUBE_ASSETS"]) if env.get("SECRETSYNC_KUBE_ASSETS") else None
    cache = default_cache_dir(env)

    def user_supplied(var: str, name: str) -> Path | None:
        if env.get(var):
            path = Path(env[var])
            if not _is_exe(path):
                raise KubeInfraError(f"{var}={path} is not an executable file")
            return path
        if assets is not None and _is_exe(assets / name):
            return assets / name
        return None

    apiserver = user_supplied("SECRETSYNC_KUBE_APISERVER", "kube-apiserver")
    controller_manager = user_supplied(
        "SECRETSYNC_KUBE_CONTROLLER_MANAGER", "kube-controller-manager"
    )
    if apiserver is None:
        apiserver = cache / "kube-apiserver"
        if not _is_exe(apiserver):
            raise KubeInfraError(f"no kube-apiserver at {apiserver}: {_BUILD_HINT}")
        if controller_manager is None and _is_exe(cache / "kube-controller-manager"):
            controller_manager = cache / "kube-controller-manager"

    etcd = user_supplied("SECRETSYNC_ETCD", "etcd")
    if etcd is None:
        found = shutil.which("etcd", path=env.get("PATH", os.defpath)) or "/usr/bin/etcd"
        etcd = Path(found)
        if not _is_exe(etcd):
            raise KubeInfraError(f"no etcd binary found: {_BUILD_HINT}")
    return KubeBinaries(apiserver=apiserver, etcd=etcd, controller_manager=controller_manager)


def _is_exe(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


@functools.cache
def _minor_version(binary: Path) -> int:
    """The Kubernetes minor version a binary reports (`Kubernetes v1.20.2` -> 20)."""
    out = subprocess.run(
        [str(binary), "--version"], capture_output=True, text=True, timeout=30, check=False
    ).stdout
    match = re.search(r"v1\.(\d+)\.", out)
    if match is None:
        raise KubeInfraError(f"{binary} --version did not report a Kubernetes version")
    return int(match.group(1))


# --- certificates and tokens -----------------------------------------------------------------


def _pem_key(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write_private(path: Path, data: bytes) -> None:
    path.touch(mode=0o600)
    path.write_bytes(data)


def _make_pki(directory: Path, name: str) -> None:
    """A CA, a serving certificate for 127.0.0.1/localhost, and a service-account key pair."""
    now = datetime.datetime.now(datetime.UTC)
    validity = (now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=2))

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"secretsync-test-ca-{name}")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(validity[0])
        .not_valid_after(validity[1])
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )

    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(validity[0])
        .not_valid_after(validity[1])
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.IPAddress(ipaddress.IPv4Address("127.0.0.1")),
                    x509.DNSName("localhost"),
                    x509.DNSName("kubernetes.default.svc"),
                ]
            ),
            critical=False,
        )
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )

    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    (directory / "ca.crt").write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    (directory / "apiserver.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_private(directory / "apiserver.key", _pem_key(key))
    _write_private(directory / "sa.key", _pem_key(sa_key))
    (directory / "sa.pub").write_bytes(
        sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def _free_port_sockets(count: int) -> list[socket.socket]:
    """Bound (not listening) loopback sockets holding `count` distinct free ports."""
    held = []
    for _ in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        held.append(sock)
    return held


def _spawn(argv: list[str], log: IO[bytes]) -> subprocess.Popen[bytes]:
    """Start a server process that dies with this process (parent-death signal)."""
    setpriv = shutil.which("setpriv")
    prefix = [setpriv, "--pdeathsig", "KILL", "--"] if setpriv else []
    return subprocess.Popen(
        [*prefix, *argv],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _sweep_orphaned_data(parent: Path) -> None:
    """Delete etcd data left in `parent` by test processes that died without stopping."""
    for candidate in parent.glob(f"{_DATA_PREFIX}*"):
        try:
            owner = int((candidate / "owner.pid").read_text())
        except (OSError, ValueError):
            continue  # not one of ours, or still being created
        try:
            os.kill(owner, 0)
        except ProcessLookupError:
            shutil.rmtree(candidate, ignore_errors=True)
        except PermissionError:
            continue  # alive, another user's


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(text[-lines:])


# --- one cluster -----------------------------------------------------------------------------


AUDIT_POLICY = """\
# Writes to Secrets and workloads, at Metadata level (who, what, which object: never a body),
# for tests that count what reached the server by verb and namespace.
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: Metadata
  verbs: [create, update, patch, delete, deletecollection]
  resources:
  - {group: "", resources: [secrets]}
  - {group: apps, resources: [deployments, statefulsets, daemonsets]}
- level: None
"""


@dataclass
class KubeCluster:
    """A running etcd + kube-apiserver (+ controller manager) on loopback."""

    name: str
    server: str
    ca_file: Path
    ca_data: bytes
    admin_token: str
    unprivileged_token: str
    workdir: Path
    data_dir: Path
    _processes: list[subprocess.Popen[bytes]] = field(default_factory=list, repr=False)
    _logs: list[IO[bytes]] = field(default_factory=list, repr=False)

    @property
    def pids(self) -> list[int]:
        """PIDs of the processes this cluster started (etcd, apiserver, controller manager)."""
        return [proc.pid for proc in self._processes]

    @property
    def audit_log(self) -> Path:
        """The apiserver's audit log: writes to Secrets and workloads, metadata only."""
        return self.workdir / "audit.log"

    @property
    def apiserver_pid(self) -> int:
        return self._processes[1].pid

    def token(self, user: User = "admin") -> str:
        return self.admin_token if user == "admin" else self.unprivileged_token

    def configuration(self, *, user: User = "admin") -> k8s.Configuration:
        """A new client Configuration for this cluster (never the process-global default)."""
        config = k8s.Configuration(host=self.server)
        config.ssl_ca_cert = str(self.ca_file)
        config.verify_ssl = True
        config.api_key = {"authorization": self.token(user)}
        config.api_key_prefix = {"authorization": "Bearer"}
        return config

    def endpoint(self, *, user: User = "admin") -> Endpoint:
        """secretsync's own client of this cluster (`secretsync.kube.clusters.Endpoint`)."""
        return Endpoint(self.configuration(user=user))

    def api_client(self, *, user: User = "admin") -> k8s.ApiClient:
        """A fresh ApiClient for this cluster; close it (or use it as a context manager)."""
        return k8s.ApiClient(self.configuration(user=user))

    def kubeconfig(self, path: Path, *, user: User = "admin") -> Path:
        """Write a kubeconfig (context named after the cluster) for `user`; return its path."""
        user_name = f"{self.name}-{user}"
        document = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": self.name,
                    "cluster": {
                        "server": self.server,
                        "certificate-authority-data": base64.b64encode(self.ca_data).decode(),
                    },
                }
            ],
            "users": [{"name": user_name, "user": {"token": self.token(user)}}],
            "contexts": [{"name": self.name, "context": {"cluster": self.name, "user": user_name}}],
            "current-context": self.name,
            "preferences": {},
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_private(path, yaml.safe_dump(document, sort_keys=False).encode())
        return path

    def pause(self) -> None:
        """SIGSTOP the apiserver: connections are accepted, nothing answers."""
        os.kill(self.apiserver_pid, signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT the apiserver after `pause()`."""
        os.kill(self.apiserver_pid, signal.SIGCONT)

    def stop(self) -> None:
        """Stop the processes this cluster started (by PID) and delete its etcd data."""
        stop_clusters([self])

    def _terminate(self) -> None:
        for proc in reversed(self._processes):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGCONT)  # a paused process cannot exit
                proc.terminate()

    def _reap(self, deadline: float) -> None:
        for proc in reversed(self._processes):
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._processes.clear()
        for log in self._logs:
            log.close()
        self._logs.clear()
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> KubeCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def stop_clusters(clusters: Sequence[KubeCluster]) -> None:
    """Stop several clusters at once: SIGTERM to all, SIGKILL to what still runs after a grace."""
    for cluster in clusters:
        cluster._terminate()
    deadline = time.monotonic() + _STOP_GRACE_S
    for cluster in clusters:
        cluster._reap(deadline)


# --- starting ----------------------------------------------------------------------------------


class _Launch:
    """The start-up of one cluster, in stages, so several can start side by side."""

    def __init__(
        self, name: str, workdir: Path, binaries: KubeBinaries, controller_manager: bool
    ) -> None:
        if not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name):
            raise ValueError(f"cluster name {name!r} must be a DNS label")
        if controller_manager and binaries.controller_manager is None:
            raise KubeInfraError(f"no kube-controller-manager available: {_BUILD_HINT}")
        self.name = name
        self.binaries = binaries
        self.want_cm = controller_manager
        self.dir = workdir / name
        self.dir.mkdir(parents=True, exist_ok=True)
        _make_pki(self.dir, name)
        self.admin_token = secrets.token_urlsafe(32)
        self.unprivileged_token = secrets.token_urlsafe(32)
        cm_token = secrets.token_urlsafe(32)
        _write_private(
            self.dir / "tokens.csv",
            (
                f'{self.admin_token},secretsync-admin,uid-admin,"system:masters"\n'
                f"{self.unprivileged_token},secretsync-unprivileged,uid-unprivileged\n"
                f'{cm_token},system:kube-controller-manager,uid-kcm,"system:masters"\n'
            ).encode(),
        )
        self.cm_token = cm_token
        (self.dir / "audit-policy.yaml").write_text(AUDIT_POLICY)
        self.ca_data = (self.dir / "ca.crt").read_bytes()
        self.ssl = ssl.create_default_context(cadata=self.ca_data.decode())
        self._cluster: KubeCluster | None = None
        self.attempt = 0

    @property
    def cluster(self) -> KubeCluster:
        if self._cluster is None:
            raise KubeInfraError(f"cluster {self.name} was not spawned")
        return self._cluster

    @property
    def spawned(self) -> bool:
        return self._cluster is not None

    # Stage 1: etcd and the apiserver (the apiserver waits for etcd by itself).
    def spawn(self) -> None:
        self.attempt += 1
        shm = Path("/dev/shm")
        data_parent = shm if shm.is_dir() else self.dir
        _sweep_orphaned_data(data_parent)
        data_dir = Path(tempfile.mkdtemp(prefix=f"{_DATA_PREFIX}{self.name}-", dir=data_parent))
        (data_dir / "owner.pid").write_text(str(os.getpid()))
        held = _free_port_sockets(3)
        client_port, peer_port, secure_port = (s.getsockname()[1] for s in held)
        cluster = KubeCluster(
            name=self.name,
            server=f"https://127.0.0.1:{secure_port}",
            ca_file=self.dir / "ca.crt",
            ca_data=self.ca_data,
            admin_token=self.admin_token,
            unprivileged_token=self.unprivileged_token,
            workdir=self.dir,
            data_dir=data_dir,
        )
        self._cluster = cluster
        etcd_url = f"http://127.0.0.1:{client_port}"
        peer_url = f"http://127.0.0.1:{peer_port}"
        etcd_argv = [
            str(self.binaries.etcd),
            f"--name={self.name}",
            f"--data-dir={data_dir / 'etcd'}",
            f"--listen-client-urls={etcd_url}",
            f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls={peer_url}",
            f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster={self.name}={peer_url}",
            "--initial-cluster-state=new",
            "--logger=zap",
            "--log-level=warn",
        ]
        issuer = f"https://{self.name}.secretsync.test"
        apiserver_argv = [
            str(self.binaries.apiserver),
            f"--etcd-servers={etcd_url}",
            "--bind-address=127.0.0.1",
            f"--secure-port={secure_port}",
            "--advertise-address=127.0.0.1",
            "--endpoint-reconciler-type=none",
            f"--cert-dir={self.dir}",
            f"--tls-cert-file={self.dir / 'apiserver.crt'}",
            f"--tls-private-key-file={self.dir / 'apiserver.key'}",
            "--service-cluster-ip-range=10.96.0.0/24",
            f"--service-account-issuer={issuer}",
            f"--api-audiences={issuer}",
            f"--service-account-key-file={self.dir / 'sa.pub'}",
            f"--service-account-signing-key-file={self.dir / 'sa.key'}",
            f"--token-auth-file={self.dir / 'tokens.csv'}",
            "--authorization-mode=RBAC",
            "--enable-priority-and-fairness=false",
            "--profiling=false",
            f"--audit-policy-file={self.dir / 'audit-policy.yaml'}",
            f"--audit-log-path={self.dir / 'audit.log'}",
            "--v=0",
        ]
        if _minor_version(self.binaries.apiserver) < 24:
            apiserver_argv.append("--insecure-port=0")
        for sock in held:
            sock.close()
        suffix = f".{self.attempt}" if self.attempt > 1 else ""
        for argv, log_name in ((etcd_argv, "etcd"), (apiserver_argv, "kube-apiserver")):
            log = (self.dir / f"{log_name}{suffix}.log").open("wb")
            cluster._logs.append(log)
            cluster._processes.append(_spawn(argv, log))

    def failure(self) -> str | None:
        """Why start-up failed (a process exited), or None while all still run."""
        names = ("etcd", "kube-apiserver", "kube-controller-manager")
        cluster = self.cluster
        for proc, log_file, name in zip(cluster._processes, cluster._logs, names, strict=False):
            if proc.poll() is not None:
                log = Path(log_file.name)
                return f"{name} exited with {proc.returncode}; log {log}:\n{_tail(log)}"
        return None

    def _get(self, path: str) -> tuple[int, bytes]:
        request = urllib.request.Request(  # noqa: S310 - https to our own loopback server
            self.cluster.server + path,
            headers={"Authorization": f"Bearer {self.admin_token}"},
        )
        try:
            with urllib.request.urlopen(request, timeout=2, context=self.ssl) as resp:  # noqa: S310
                return int(resp.status), bytes(resp.read())
        except urllib.error.HTTPError as err:
            return err.code, b""
        except (OSError, ssl.SSLError):
            return 0, b""

    def apiserver_ready(self) -> bool:
        status, body = self._get("/readyz")
        if status != 200 or body.strip() != b"ok":
            return False
        # /readyz can answer before the bootstrap controller made the `default` namespace
        status, _ = self._get("/api/v1/namespaces/default")
        return status == 200

    # Stage 2: the controller manager, once the apiserver is ready.
    def spawn_controller_manager(self) -> None:
        if self.binaries.controller_manager is None:
            raise KubeInfraError(f"no kube-controller-manager available: {_BUILD_HINT}")
        kubeconfig = self.dir / "controller-manager.kubeconfig"
        doc = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "local",
                    "cluster": {
                        "server": self.cluster.server,
                        "certificate-authority": str(self.dir / "ca.crt"),
                    },
                }
            ],
            "users": [{"name": "kcm", "user": {"token": self.cm_token}}],
            "contexts": [{"name": "local", "context": {"cluster": "local", "user": "kcm"}}],
            "current-context": "local",
        }
        _write_private(kubeconfig, yaml.safe_dump(doc).encode())
        argv = [
            str(self.binaries.controller_manager),
            f"--kubeconfig={kubeconfig}",
            "--controllers=namespace,garbagecollector,serviceaccount,serviceaccount-token",
            "--leader-elect=false",
            "--secure-port=0",
            f"--service-account-private-key-file={self.dir / 'sa.key'}",
            f"--root-ca-file={self.dir / 'ca.crt'}",
            "--use-service-account-credentials=false",
            "--concurrent-namespace-syncs=5",
            "--concurrent-gc-syncs=10",
            "--v=0",
        ]
        if _minor_version(self.binaries.controller_manager) < 24:
            argv.append("--port=0")
        suffix = f".{self.attempt}" if self.attempt > 1 else ""
        log = (self.dir / f"kube-controller-manager{suffix}.log").open("wb")
        self.cluster._logs.append(log)
        self.cluster._processes.append(_spawn(argv, log))

    def controller_manager_ready(self) -> bool:
        """The service-account controller made the `default` ServiceAccount in `default`."""
        status, _ = self._get("/api/v1/namespaces/default/serviceaccounts/default")
        return status == 200


def start_cluster(
    *,
    name: str,
    workdir: Path,
    controller_manager: bool = False,
    binaries: KubeBinaries | None = None,
    timeout: float = 90.0,
) -> KubeCluster:
    """Start one cluster and wait until it is ready (see `running_clusters` for several)."""
    return _start_all(
        [name],
        workdir=workdir,
        controller_manager=controller_manager,
        binaries=binaries,
        timeout=timeout,
    )[0]


@contextlib.contextmanager
def running_clusters(
    names: Sequence[str],
    *,
    workdir: Path,
    controller_manager: bool = False,
    binaries: KubeBinaries | None = None,
    timeout: float = 90.0,
) -> Iterator[list[KubeCluster]]:
    """Start the named clusters side by side; stop them all when the block ends."""
    clusters = _start_all(
        names,
        workdir=workdir,
        controller_manager=controller_manager,
        binaries=binaries,
        timeout=timeout,
    )
    try:
        yield clusters
    finally:
        stop_clusters(clusters)


def _start_all(
    names: Sequence[str],
    *,
    workdir: Path,
    controller_manager: bool,
    binaries: KubeBinaries | None,
    timeout: float,
) -> list[KubeCluster]:
    """Start clusters from this thread, polling all of them until ready or the deadline."""
    if len(set(names)) != len(names):
        raise ValueError(f"cluster names must be distinct: {list(names)}")
    binaries = binaries or find_binaries()
    launches: list[_Launch] = []
    try:
        for name in names:
            launches.append(_Launch(name, workdir, binaries, controller_manager))
        for launch in launches:
            launch.spawn()
        deadline = time.monotonic() + timeout
        pending = {launch.name: launch for launch in launches}
        cm_started: set[str] = set()
        while pending:
            for launch in list(pending.values()):
                _advance(launch, pending, cm_started)
            if not pending:
                break
            if time.monotonic() > deadline:
                raise KubeInfraError(
                    f"clusters {sorted(pending)} not ready within {timeout:.0f}s; logs in {workdir}"
                )
            time.sleep(0.1)
    except BaseException:
        stop_clusters([launch.cluster for launch in launches if launch.spawned])
        raise
    return [launch.cluster for launch in launches]


def _advance(launch: _Launch, pending: dict[str, _Launch], cm_started: set[str]) -> None:
    """One polling step for one cluster: retry on a dead process, start the CM, mark ready."""
    reason = launch.failure()
    if reason is not None:
        # Most often a free port taken by someone else between probing and binding.
        launch.cluster.stop()
        cm_started.discard(launch.name)
        if launch.attempt >= _START_ATTEMPTS:
            raise KubeInfraError(f"cluster {launch.name}: {reason}")
        launch.spawn()
        return
    if launch.name not in cm_started:
        if not launch.apiserver_ready():
            return
        if not launch.want_cm:
            del pending[launch.name]
            return
        launch.spawn_controller_manager()
        cm_started.add(launch.name)
        return
    if launch.controller_manager_ready():
        del pending[launch.name]
