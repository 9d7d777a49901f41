"""The HTTP API: health, reviews, grants and proposals (the web UI builds on it).

Errors are RFC 9457 problem details (``application/problem+json``). Authentication is
a wardgate token as ``Authorization: Bearer``; no response ever carries a credential.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException

from wardgate import __version__

if TYPE_CHECKING:
    from wardgate.core.services import Services

log = logging.getLogger("wardgate.api")

PROBLEM = "application/problem+json"


def problem(status: int, detail: str, title: str | None = None, **extra: Any) -> JSONResponse:
    from http import HTTPStatus

    body = {
        "type": "about:blank",
        "title": title or HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        **extra,
    }
    headers = {"WWW-Authenticate": 'Bearer realm="wardgate"'} if status == 401 else None
    return JSONResponse(body, status_code=status, media_type=PROBLEM, headers=headers)


async def http_problem(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
    return problem(exc.status_code, str(exc.detail))


async def store_problem(_request: Request, exc: SQLAlchemyError) -> JSONResponse:
    """The store failed under a request (a bearer token cannot even be checked): 503,
    saying so, and no traceback per request (attack20; before: a bare 500)."""
    from wardgate.audit.records import AUDIT_UNAVAILABLE_HINT
    from wardgate.store.db import describe_error

    log.warning("API request failed on the store: %s", describe_error(exc))
    return problem(
        503,
        "wardgate cannot serve this request: its store is unavailable. "
        + AUDIT_UNAVAILABLE_HINT.removeprefix("Nothing was run. "),
    )


async def validation_problem(_request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = [
        {"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", ""))}
        for e in exc.errors()
    ]
    where = "; ".join(f"{'.'.join(e['loc'])}: {e['msg']}" for e in errors[:5])
    return problem(422, f"invalid request: {where}", errors=errors)


def create_app(services: Services | None = None) -> FastAPI:
    app = FastAPI(title="wardgate", version=__version__)
    # The web UI (mount_ui) answers errors on its pages as pages, the rest like this.
    app.add_exception_handler(StarletteHTTPException, http_problem)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, validation_problem)  # type: ignore[arg-type]
    app.add_exception_handler(SQLAlchemyError, store_problem)  # type: ignore[arg-type]

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok", "version": __version__}

    if services is not None:
        from wardgate.api import probes, resources, signin
        from wardgate.api.reviews import router

        app.state.services = services
        app.include_router(probes.router)
        app.include_router(router)
        app.include_router(resources.router)
        app.include_router(signin.router)
    return app


__all__ = ["HTTPException", "create_app", "problem"]
