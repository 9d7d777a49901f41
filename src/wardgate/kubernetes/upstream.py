"""The gateway's client to an API server: its CA pinned (never the system trust store),
its credential (bearer token or client certificate) resolved from the vault when the
client is made and added to each request. Clients never see either."""

from __future__ import annotations

import os
import ssl
import tempfile
from pathlib import Path

import httpx

from wardgate.config import Config, KubernetesUpstreamConfig
from wardgate.vault.secrets import Vault, resolve_secret


class Upstreams:
    """One pooled httpx client per Kubernetes connection, made again when its upstream
    settings change (a reload)."""

    def __init__(self, vault: Vault | None) -> None:
        self._vault = vault
        self._clients: dict[
            str, tuple[KubernetesUpstreamConfig, httpx.AsyncClient, str, ssl.SSLContext | None]
        ] = {}

    def client(self, config: Config, name: str) -> tuple[httpx.AsyncClient, str]:
        """The client of connection ``name`` and the Authorization header it sends."""
        found = self._made(config, name)
        return found[1], found[2]

    def stream_target(self, config: Config, name: str) -> tuple[str, ssl.SSLContext | None, str]:
        """For a WebSocket dial (kubernetes/exec.py): the API server's URL, the TLS
        context pinning its CA (None for plain http) and the Authorization header."""
        target, _, auth, context = self._made(config, name)
        return target.url.rstrip("/"), context, auth

    def _made(
        self, config: Config, name: str
    ) -> tuple[KubernetesUpstreamConfig, httpx.AsyncClient, str, ssl.SSLContext | None]:
        target = config.connections[name].kube
        found = self._clients.get(name)
        if found is not None and found[0] == target:
            return found
        client, auth, context = _make(config, target, self._vault)
        self._clients[name] = (target, client, auth, context)
        return self._clients[name]

    async def close(self) -> None:
        for _, client, _, _ in self._clients.values():
            await client.aclose()
        self._clients.clear()


def _make(
    config: Config, target: KubernetesUpstreamConfig, vault: Vault | None
) -> tuple[httpx.AsyncClient, str, ssl.SSLContext | None]:
    base = Path(config.base_dir)
    verify: ssl.SSLContext | bool = False
    if target.url.startswith("https://"):
        assert target.ca is not None  # the config requires it
        context = ssl.create_default_context(cafile=str(config.path(target.ca)))
        if target.client_cert is not None and target.client_key is not None:
            key = resolve_secret(target.client_key, vault, base_dir=base)
            _load_client_cert(context, str(config.path(target.client_cert)), key, config)
        verify = context
    auth = ""
    if target.token is not None:
        auth = "Bearer " + resolve_secret(target.token, vault, base_dir=base).strip()
    limits = config.limits
    client = httpx.AsyncClient(
        base_url=target.url.rstrip("/"),
        verify=verify,
        timeout=httpx.Timeout(60.0, connect=limits.connect_timeout),
        follow_redirects=False,
        trust_env=False,  # no proxy or CA from the environment: the cluster is pinned
        headers={"Accept-Encoding": "identity"},
    )
    return client, auth, verify if isinstance(verify, ssl.SSLContext) else None


def _load_client_cert(context: ssl.SSLContext, cert: str, key: str, config: Config) -> None:
    # ssl reads keys from files only: a private file that lives as long as this call.
    folder = config.data_path
    folder.mkdir(parents=True, exist_ok=True)
    fd, path = tempfile.mkstemp(dir=folder, prefix=".kube-key-")
    try:
        os.write(fd, key.encode())
        os.close(fd)
        context.load_cert_chain(cert, path)
    finally:
        os.unlink(path)
