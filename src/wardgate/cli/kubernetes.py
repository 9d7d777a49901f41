"""``wardgate kubeconfig CONNECTION``: a kubeconfig for one principal (docs/kubernetes.md)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from wardgate.cli.main import (
    DEFAULT_CONFIG,
    ConfigPath,
    _config,
    _expected_errors,
    _fail,
    _opened,
    _token_service,
)
from wardgate.config import Config


def kubeconfig(
    connection: Annotated[str, typer.Argument(help="A connection of type kubernetes.")],
    principal: Annotated[
        str | None,
        typer.Option("--principal", help="Create a new token for this principal and use it."),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            help="Use this wardgate token (default: $WARDGATE_TOKEN) instead of creating one.",
        ),
    ] = None,
    as_principal: Annotated[
        str, typer.Option("--user-name", help="The user name written in the kubeconfig.")
    ] = "",
    server: Annotated[
        str | None,
        typer.Option(
            "--server",
            help="The gateway's URL as clients reach it (default: https://<listen.kubernetes>).",
        ),
    ] = None,
    ca_file: Annotated[
        str | None,
        typer.Option(
            "--ca-file",
            help="The CA clients pin for the gateway (default: its self-signed certificate; "
            "none with a configured tls pair, which then needs a CA clients trust).",
        ),
    ] = None,
    config: ConfigPath = DEFAULT_CONFIG,
) -> None:
    """Print a kubeconfig whose server is the gateway and whose credential is a wardgate
    token: kubectl then works unchanged, under wardgate's policy."""
    from wardgate.kubernetes.kubeconfig import kubeconfig as render

    with _expected_errors():
        cfg = _config(config)
        conn = cfg.connections.get(connection)
        if conn is None or conn.type != "kubernetes":
            known = ", ".join(
                sorted(n for n, c in cfg.connections.items() if c.type == "kubernetes")
            )
            _fail(f"no Kubernetes connection {connection!r} (there are: {known or 'none'})")
        addr = cfg.listen_address("kubernetes")
        if server is None and addr is None:
            _fail(
                "listen.kubernetes is not set: set it (e.g. 127.0.0.1:16443) or give --server URL"
            )
        if server is None:
            assert addr is not None
            host = f"[{addr[0]}]" if ":" in addr[0] else addr[0]
            server = f"https://{host}:{addr[1]}"
        base = server.rstrip("/")
        ca_pem = _gateway_ca(cfg, ca_file)
        secret = token or os.environ.get("WARDGATE_TOKEN")
        name = as_principal or principal or "wardgate"
        if principal is not None:
            if cfg.principal(principal) is None:
                _fail(f"unknown principal {principal!r}")
            with _opened(config) as (cfg, store):
                issued = _token_service(cfg, store).create(principal, f"kubeconfig {connection}")
            secret = issued.token
        if not secret:
            _fail("give --principal NAME (a new token) or --token / $WARDGATE_TOKEN")
        assert secret is not None
        typer.echo(render(f"{base}/k8s/{connection}", connection, name, secret, ca_pem), nl=False)


def _gateway_ca(cfg: Config, ca_file: str | None) -> bytes | None:
    from wardgate.core.tls import server_context, server_pair

    if ca_file is not None:
        return Path(ca_file).read_bytes()
    cert, _, generated = server_pair(cfg)
    if not generated:
        return None
    if not cert.exists():
        server_context(cfg)  # the gateway makes the same pair on its first start
    return cert.read_bytes()
