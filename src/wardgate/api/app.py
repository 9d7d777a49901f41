"""The HTTP API. This first version serves health checks; reviews, sessions and the UI build on it."""

from __future__ import annotations

from fastapi import FastAPI

from wardgate import __version__


def create_app() -> FastAPI:
    app = FastAPI(title="wardgate", version=__version__)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok", "version": __version__}

    return app
