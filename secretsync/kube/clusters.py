"""How secretsync reaches each cluster's API server — one `Endpoint` per cluster, never global.

`Cluster.spec.kubeconfig` says where: `path` (+ `context`) is a machine path, read only here;
`secretRef` names a Secret holding a kubeconfig in the cluster secretsync itself runs in (the
*home* cluster, reached in-cluster or through `--home-kubeconfig`); `inCluster: true` uses the
pod's service account. The kubernetes client parses kubeconfigs (contexts, token files,
expiring tokens) once `kubeplugins.screen` has taken out the programs a kubeconfig may ask
to run: an operator-allowed `exec` plugin runs from here, with a scrubbed environment.
Requests go over aiohttp, which costs a tenth of the client CPU of the client's own
thread-bound REST layer. Every Endpoint has its own credentials and connection pool.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import os
import ssl
import time
from collections.abc import AsyncGenerator, Mapping
from datetime import UTC, datetime
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import yaml
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.config import incluster_config, kube_config
from yarl import URL

from secretsync.core import errors
from secretsync.core.model import Cluster, Kubeconfig
from secretsync.kube import kubeplugins

SA_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"
SA_CA = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"

Reply = tuple[int, bytes, Mapping[str, str]]
TOKEN_TTL_S = 60.0
EXPIRY_MARGIN_S = 10.0  # an exec plugin's token is renewed this long before it expires
_COMPACT = (",", ":")


class Endpoint:
    """One API server: its address, TLS and credentials, and a connection pool per event loop.

    `request` never raises for HTTP errors or an unreachable server (status 0) and never puts
    a response body in an exception: callers decide from the status; only an exec plugin
    that cannot give credentials raises (`DeliveryError`). Nothing is retried here; the
    callers retry with budgets they can see and count.
    """

    def __init__(
        self,
        configuration: k8s.Configuration,
        *,
        connections: int = 32,
        plugin: kubeplugins.ExecPlugin | None = None,
    ) -> None:
        self.configuration = configuration
        self.base = str(configuration.host).rstrip("/")
        self._connections = connections
        self._tls = self.base.startswith("https:")
        self._ssl = _ssl_context(configuration) if self._tls else None
        self._plugin = plugin
        self._credential: kubeplugins.Credential | None = None
        self._plugin_locks: dict[asyncio.AbstractEventLoop, asyncio.Lock] = {}
        self._server_name = configuration.tls_server_name or (
            configuration.assert_hostname
            if isinstance(configuration.assert_hostname, str)
            else None
        )
        self._timeouts: dict[float, aiohttp.ClientTimeout] = {}
        self._token_value: str | None = None
        self._token_at = float("-inf")
        # per event loop: the pool, and the generator that closes it when the loop shuts down
        self._pools: dict[
            asyncio.AbstractEventLoop,
            tuple[aiohttp.ClientSession, AsyncGenerator[None, None]],
        ] = {}

    async def request(
        self,
        method: str,
        path: str,
        *,
        query: list[tuple[str, str]] | None = None,
        body: object = None,
        content_type: str = "application/json",
        accept: str = "application/json",
        timeout_s: float = 15.0,
    ) -> Reply:
        headers = {"Accept": accept}
        if token := await self._authorization():
            headers["Authorization"] = token
        data: bytes | None = None
        if body is not None:
            data = (
                body if isinstance(body, bytes) else json.dumps(body, separators=_COMPACT).encode()
            )
            headers["Content-Type"] = content_type
        url = URL(
            f"{self.base}{path}?{urlencode(query)}" if query else self.base + path, encoded=True
        )
        timeout = self._timeouts.get(timeout_s)
        if timeout is None:
            timeout = self._timeouts[timeout_s] = aiohttp.ClientTimeout(total=timeout_s)
        try:
            session = await self._session()
            async with session.request(
                method,
                url,
                data=data,
                headers=headers,
                timeout=timeout,
                proxy=self.configuration.proxy or None,
                server_hostname=self._server_name,
            ) as response:
                raw = await response.read()
                if response.status == 401:
                    self._token_at = float("-inf")  # a rotated token: read it again next time
                    self._credential = None  # and ask the exec plugin again
                return response.status, raw, response.headers
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError):
            # connection, TLS and protocol errors: their text may name hosts, never data
            return 0, b"", {}

    async def authenticate(self) -> None:
        """Run the exec plugin now (if any), so that a refused or failing one fails early."""
        await self._authorization()

    async def _authorization(self) -> str | None:
        if self._plugin is None:
            return self._token()
        credential = await self._plugin_credential(self._plugin)
        return f"Bearer {credential.token}" if credential.token else self._token()

    async def _plugin_credential(self, plugin: kubeplugins.ExecPlugin) -> kubeplugins.Credential:
        """The exec plugin's credential: run once, again when it is about to expire or after a
        401 (never per request); concurrent requests wait for the one run."""
        loop = asyncio.get_running_loop()
        lock = self._plugin_locks.setdefault(loop, asyncio.Lock())
        async with lock:
            credential = self._credential
            if credential is None or (
                credential.expires is not None
                and (credential.expires - datetime.now(UTC)).total_seconds() < EXPIRY_MARGIN_S
            ):
                fresh = await plugin.run()
                if self._tls and fresh.client_pem != (credential and credential.client_pem):
                    # a new client certificate: a new TLS context, and new connections
                    self._ssl = _ssl_context(self.configuration, client_pem=fresh.client_pem)
                    pool = self._pools.pop(loop, None)
                    if pool is not None:
                        await pool[0].close()
                credential = self._credential = fresh
            return credential

    def _token(self) -> str | None:
        """The Authorization header. The kubernetes client's refresh hook (exec plugins, token
        files, expiring tokens) re-reads the whole kubeconfig, so it runs at most every
        TOKEN_TTL_S (and after a 401), not on every request."""
        now = time.monotonic()
        if now - self._token_at >= TOKEN_TTL_S:
            auth: Mapping[str, Any] = self.configuration.auth_settings().get("BearerToken") or {}
            self._token_value = auth.get("value") or None
            self._token_at = now
        return self._token_value

    async def _session(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        pool = self._pools.get(loop)
        if pool is not None and not pool[0].closed:
            return pool[0]
        for old in [lp for lp in self._pools if lp.is_closed()]:
            del self._pools[old]
        connector = aiohttp.TCPConnector(
            limit=self._connections, ssl=self._ssl if self._ssl is not None else False
        )
        session = aiohttp.ClientSession(
            connector=connector, auto_decompress=True, skip_auto_headers=("User-Agent",)
        )
        # closed when its loop shuts down (asyncio.run closes the async generators still open),
        # so a caller that never calls aclose() leaves no socket behind; the loop holds
        # generators weakly, hence the reference kept in _pools
        guard = _close_at_shutdown(session)
        self._pools[loop] = (session, guard)
        await anext(guard)
        return session

    async def aclose(self) -> None:
        """Close the connection pool of the running loop."""
        pool = self._pools.pop(asyncio.get_running_loop(), None)
        if pool is not None:
            await pool[0].close()


async def _close_at_shutdown(session: aiohttp.ClientSession) -> AsyncGenerator[None, None]:
    try:
        yield
    finally:
        await session.close()


def _http(status: int) -> str:
    try:
        return f"HTTP {status} {HTTPStatus(status).phrase}"
    except ValueError:
        return f"HTTP {status}"


def _ssl_context(
    configuration: k8s.Configuration, *, client_pem: bytes | None = None
) -> ssl.SSLContext:
    if configuration.verify_ssl:
        context = ssl.create_default_context(
            cafile=configuration.ssl_ca_cert or None, cadata=configuration.ca_cert_data or None
        )
        if configuration.assert_hostname is False:
            context.check_hostname = False
    else:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if client_pem is not None:
        _load_client_pem(context, client_pem)
    elif configuration.cert_file:
        context.load_cert_chain(configuration.cert_file, configuration.key_file or None)
    return context


def _load_client_pem(context: ssl.SSLContext, pem: bytes) -> None:
    """Load an exec plugin's client certificate and key from memory: `ssl` reads them only
    from a path, so they go through an anonymous in-memory file, never to the disk."""
    fd = os.memfd_create("secretsync-client-cert", os.MFD_CLOEXEC)
    try:
        os.write(fd, pem)
        context.load_cert_chain(f"/proc/self/fd/{fd}")
    except (ssl.SSLError, OSError):
        raise errors.DeliveryError("the exec plugin's client certificate is not usable") from None
    finally:
        os.close(fd)


def _from_dict(
    config: Mapping[str, Any],
    context: str | None,
    *,
    plugins: kubeplugins.PluginPolicy,
    where: str,
    base: Path | None,
) -> Endpoint:
    """The Endpoint of a parsed kubeconfig; raises `DeliveryError` for a plugin the operator
    did not allow, the client's own errors for anything else malformed."""
    screened = kubeplugins.screen(config, context=context, policy=plugins, where=where, base=base)
    configuration = k8s.Configuration()
    kube_config.KubeConfigLoader(
        config_dict=screened.config,
        active_context=context,
        get_google_credentials=screened.gcp,
        config_base_path=None,
    ).load_and_set(configuration)
    return Endpoint(configuration, plugin=screened.plugin)


def in_cluster_endpoint() -> Endpoint:
    configuration = k8s.Configuration()
    try:
        incluster_config.InClusterConfigLoader(
            token_filename=SA_TOKEN, cert_filename=SA_CA
        ).load_and_set(configuration)
    except k8s_config.ConfigException:
        raise errors.DeliveryError(
            "inCluster: true, but this process does not run in a Kubernetes pod"
        ) from None
    return Endpoint(configuration)


def endpoint_from_file(
    path: Path,
    *,
    context: str | None = None,
    plugins: kubeplugins.PluginPolicy = kubeplugins.NO_PLUGINS,
) -> Endpoint:
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise errors.DeliveryError(f"cannot read kubeconfig {path}: {exc.strerror}") from None
    except yaml.YAMLError:
        raise errors.DeliveryError(f"kubeconfig {path} is not valid YAML") from None
    if not isinstance(data, dict):
        raise errors.DeliveryError(f"kubeconfig {path} is not a kubeconfig")
    try:
        return _from_dict(
            data, context, plugins=plugins, where=f"kubeconfig {path}", base=path.parent
        )
    except (k8s_config.ConfigException, ValueError, KeyError, TypeError):
        raise errors.DeliveryError(
            f"kubeconfig {path}: no usable context {context or '(current)'}"
        ) from None


class ClientFactory:
    """Builds and caches the Endpoint of each cluster. `plugins` says which kubeconfig
    credential plugins may run (none by default); none may come from the fleet repo."""

    def __init__(
        self,
        *,
        root: Path,
        home: Endpoint | None = None,
        plugins: kubeplugins.PluginPolicy = kubeplugins.NO_PLUGINS,
    ) -> None:
        self.root = root
        self._home = home
        self._plugins = dataclasses.replace(plugins, repo=root)
        self._endpoints: dict[str, Endpoint] = {}

    def home(self) -> Endpoint:
        if self._home is None:
            try:
                self._home = in_cluster_endpoint()
            except errors.DeliveryError:
                raise errors.DeliveryError(
                    "kubeconfig.secretRef: the kubeconfig Secrets live in the home cluster, and "
                    "this process does not run in a Kubernetes pod: pass --home-kubeconfig FILE "
                    "(or set SECRETSYNC_HOME_KUBECONFIG)"
                ) from None
        return self._home

    async def for_cluster(self, cluster: Cluster) -> Endpoint:
        cached = self._endpoints.get(cluster.name)
        if cached is None:
            endpoint = await self._build(cluster)
            await endpoint.authenticate()
            cached = self._endpoints[cluster.name] = endpoint
        return cached

    async def _build(self, cluster: Cluster) -> Endpoint:
        spec = cluster.kubeconfig
        if spec is None:
            raise errors.DeliveryError(f"cluster {cluster.name!r} has no spec.kubeconfig")
        if spec.in_cluster:
            return in_cluster_endpoint()
        if spec.path is not None:
            path = Path(spec.path)
            if not path.is_absolute():  # the loader refuses these; a Cluster built in code
                raise errors.DeliveryError(
                    f"cluster {cluster.name!r}: kubeconfig.path must be an absolute path"
                )
            return endpoint_from_file(path, context=spec.context, plugins=self._plugins)
        return await self._from_secret(cluster.name, spec)

    async def _from_secret(self, name: str, spec: Kubeconfig) -> Endpoint:
        namespace, secret_name = spec.secret_namespace, spec.secret_name
        if namespace is None or secret_name is None:
            raise errors.DeliveryError(f"cluster {name!r}: kubeconfig.secretRef is incomplete")
        where = f"{namespace}/{secret_name}"
        status, raw, _ = await self.home().request(
            "GET", f"/api/v1/namespaces/{namespace}/secrets/{secret_name}"
        )
        if status != 200:
            reason = "cannot reach the API server" if status == 0 else _http(status)
            raise errors.DeliveryError(
                f"cluster {name!r}: cannot read kubeconfig Secret {where} ({reason})"
            )
        try:
            encoded = (json.loads(raw).get("data") or {}).get(spec.secret_key)
        except (ValueError, AttributeError):
            encoded = None
        if not isinstance(encoded, str):
            raise errors.DeliveryError(
                f"cluster {name!r}: Secret {where} has no key {spec.secret_key!r}"
            )
        try:
            data = yaml.safe_load(base64.b64decode(encoded))
            return _from_dict(
                data,
                spec.context,
                plugins=self._plugins,
                where=f"cluster {name!r}: Secret {where} key {spec.secret_key!r}",
                base=None,
            )
        except errors.DeliveryError:
            raise
        except Exception:  # any malformed kubeconfig: say so without echoing it
            raise errors.DeliveryError(
                f"cluster {name!r}: Secret {where} key {spec.secret_key!r} is not a usable "
                "kubeconfig"
            ) from None

    async def aclose(self) -> None:
        """Close the connection pools this factory opened on the running loop."""
        for endpoint in self._endpoints.values():
            await endpoint.aclose()
        if self._home is not None:
            await self._home.aclose()
