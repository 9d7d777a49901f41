"""Probes and metrics on the API port, for orchestrators and Prometheus.

``/healthz``: the process answers (liveness). ``/readyz``: it should get new clients:
the store answers, the recorder's writes to it succeed, every configured listener
accepts, and it is not draining (readiness; 503 with the reasons otherwise). ``/metrics``: Prometheus text format.
None of them needs a token and none says anything secret: keep the API port off the
public internet all the same (docs/deployment.md).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from wardgate import __version__
from wardgate.lifecycle import STORE_PING_TIMEOUT

if TYPE_CHECKING:
    from wardgate.core.services import Services

router = APIRouter(include_in_schema=False)


@router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    services: Services = request.app.state.services
    try:
        problems = await asyncio.wait_for(
            asyncio.to_thread(services.lifecycle.not_ready, services.store),
            STORE_PING_TIMEOUT + 1.0,
        )
    except TimeoutError:
        problems = ["the store did not answer in time"]
    if (recording := services.recorder.problem) is not None:
        problems.append(recording)
    body = {"status": "ok" if not problems else "unavailable", "version": __version__}
    if problems:
        return JSONResponse({**body, "problems": problems}, status_code=503)
    return JSONResponse(body)


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    from wardgate.metrics import exposition

    services: Services = request.app.state.services
    body, content_type = await asyncio.to_thread(exposition, services.store)
    return Response(body, media_type=content_type)
