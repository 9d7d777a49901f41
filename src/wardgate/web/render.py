"""Rendering pages: one Jinja2 environment (autoescaped) and the filters templates use."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

if TYPE_CHECKING:
    from wardgate.web.auth import SignedIn

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=HERE / "templates")


def _when(ts: float | None) -> str:
    if ts is None:
        return "—"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


templates.env.filters["when"] = _when


def render(
    request: Request,
    name: str,
    context: dict[str, Any],
    *,
    me: SignedIn | None = None,
    status: int = 200,
) -> HTMLResponse:
    """A page; ``me`` (the signed-in human) gives the layout its name, nav and CSRF token."""
    ctx = {"me": me, "csrf": me.csrf if me is not None else "", **context}
    return templates.TemplateResponse(request, name, ctx, status_code=status)
