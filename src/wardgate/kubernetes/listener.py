"""The HTTPS listener kubectl talks to: ``https://<listen.kubernetes>/k8s/<connection>``
with the gateway's TLS pair (kubectl never sends a bearer token over plain HTTP)."""

from __future__ import annotations

from typing import Any

from starlette.applications import Starlette
from starlette.routing import Mount

from wardgate.core.services import Services
from wardgate.core.tls import server_pair
from wardgate.kubernetes.proxy import KubernetesGateway


def kubernetes_app(services: Services) -> Starlette:
    return Starlette(routes=[Mount("/k8s", app=KubernetesGateway(services))])


def kubernetes_server(services: Services, addr: tuple[str, int], server_class: type[Any]) -> Any:
    """A uvicorn server (of ``server_class``, whose signal handling the worker owns)."""
    import uvicorn

    cert, key, _ = server_pair(services.config)
    return server_class(
        uvicorn.Config(
            kubernetes_app(services),
            host=addr[0],
            port=addr[1],
            log_level="warning",
            lifespan="off",
            ssl_certfile=str(cert),
            ssl_keyfile=str(key),
            # A watch is a long response: no keep-alive limit cuts it.
            timeout_keep_alive=30,
        )
    )
