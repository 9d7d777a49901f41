"""Rendering pages: one Jinja2 environment (autoescaped) and the filters templates use.

Templates never mark text safe themselves: the only markup that is not escaped is what
pygments produced (``sql``, ``shell``, ``code`` filters, which escape the text they
colour) and fragments rendered by this same autoescaped environment.
"""

from __future__ import annotations

import functools
import hashlib
import json
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec

from fastapi import HTTPException, Request
from fastapi.responses import HTMLResponse, Response
from fastapi.templating import Jinja2Templates
from markupsafe import Markup
from pydantic import BaseModel
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import (
    BashLexer,
    MySqlLexer,
    PostgresLexer,
    TextLexer,
)

from wardgate.visible import visible

if TYPE_CHECKING:
    from wardgate.web.auth import SignedIn

P = ParamSpec("P")
HERE = Path(__file__).parent
templates = Jinja2Templates(directory=HERE / "templates")
PLAYER_BUNDLE = (
    HERE / "assets" / "node_modules" / "asciinema-player" / "dist" / "bundle"
) / "asciinema-player.min.js"

# pygments ships no type information (types-Pygments is not a dependency): Any.
_FORMATTER = HtmlFormatter(nowrap=True)
_LEXERS: dict[str, Any] = {
    "postgres": PostgresLexer(),
    "mysql": MySqlLexer(),
    "shell": BashLexer(),
    "text": TextLexer(),
}


def _when(ts: float | None) -> str:
    if ts is None:
        return "—"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _iso(ts: float | None) -> str:
    """For ``<time datetime>``."""
    if ts is None:
        return ""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def span(seconds: float) -> str:
    """A coarse length of time: pages that refresh every few seconds only change when
    the minute (or hour, or day) does."""
    s = abs(seconds)
    if s < 60:
        return "<1 min"
    if s < 3600:
        return f"{s // 60:.0f} min"
    if s < 86400:
        return f"{s // 3600:.0f} h"
    return f"{s // 86400:.0f} d"


def _age(ts: float | None) -> str:
    return "—" if ts is None else f"{span(time.time() - ts)} ago"


def _until(ts: float | None) -> str:
    if ts is None:
        return "—"
    left = ts - time.time()
    return f"in {span(left)}" if left > 0 else f"{span(left)} ago"


def _duration(seconds: float | None) -> str:
    """A configured length (grants, waits): 30m, 2h, 45s."""
    if seconds is None:
        return "—"
    if seconds and seconds % 3600 == 0:
        return f"{seconds / 3600:g} h"
    if seconds and seconds % 60 == 0:
        return f"{seconds / 60:g} min"
    return f"{seconds:g} s"


def _ms(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:.1f} ms" if value < 1000 else f"{value / 1000:.2f} s"


def _coloured(text: object, lexer: str) -> Markup:
    # visible(): control, bidi and zero-width characters shown as escapes, so what an
    # approver reads is what runs. pygments escapes &, <, >, " and ' itself.
    html = highlight(visible("" if text is None else text), _LEXERS[lexer], _FORMATTER)
    return Markup(html.rstrip("\n"))  # pygments' own escaped output


def lexer_for(protocol: str | None, kind: str | None = None) -> str:
    """Which colouring a review's or action's text gets."""
    if kind == "code" or kind == "grant":
        return "text"
    if protocol == "ssh" or kind == "shell":
        return "shell"
    if protocol == "kubernetes" or kind == "kubernetes":
        return "text"  # a request line and headers: no SQL colouring
    if protocol == "mysql":
        return "mysql"
    return "postgres"


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, indent=2, default=str)


def _one_line(text: object, width: int = 120) -> str:
    line = " ".join(visible("" if text is None else text).split())
    return line if len(line) <= width else line[: width - 1] + "…"


templates.env.filters.update(
    {
        "when": _when,
        "iso": _iso,
        "age": _age,
        "until": _until,
        "duration": _duration,
        "ms": _ms,
        "visible": visible,
        "one_line": _one_line,
        "tojson_pretty": _json,
        "highlight": _coloured,
        "sql": lambda text: _coloured(text, "postgres"),
        "shell": lambda text: _coloured(text, "shell"),
    }
)
templates.env.globals["lexer_for"] = lexer_for


def plain(value: BaseModel | dict[str, Any]) -> dict[str, Any]:
    """An API handler's answer as plain data, whether it returns a model or a dict."""
    return value.model_dump(mode="json") if isinstance(value, BaseModel) else value


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


def fragment(request: Request, name: str, context: dict[str, Any], me: SignedIn) -> Markup:
    """Part of a page, rendered by the same autoescaped environment (so it is markup)."""
    ctx = {"request": request, "me": me, "csrf": me.csrf, **context}
    return Markup(templates.get_template(name).render(ctx))  # autoescaped


def version_of(html: str) -> str:
    """What a live region compares to know it changed."""
    return hashlib.sha256(html.encode()).hexdigest()[:16]


def live_fragment(html: Markup) -> HTMLResponse:
    """A live region's new content, for app.js (which swaps it in when the version moved)."""
    return HTMLResponse(str(html), headers={"X-Live-Version": version_of(html)})


def error_page(
    request: Request, status: int, message: str, *, me: SignedIn | None = None
) -> HTMLResponse:
    """An error in the UI's style, with the API's own message."""
    from http import HTTPStatus

    try:
        title = HTTPStatus(status).phrase
    except ValueError:
        title = "Error"
    context = {"status": status, "title": title, "message": message}
    return render(request, "error.html", context, me=me, status=status)


def ui_errors(
    page: Callable[P, Awaitable[Response]],
) -> Callable[P, Awaitable[Response]]:
    """A page whose API calls raise HTTPException answers with the error page instead
    (same status, same message). FastAPI reads the page's own signature through it."""

    @functools.wraps(page)
    async def guarded(*args: P.args, **kwargs: P.kwargs) -> Response:
        try:
            return await page(*args, **kwargs)
        except HTTPException as exc:
            from wardgate.web.auth import SignedIn

            request, me = kwargs.get("request"), kwargs.get("me")
            if not isinstance(request, Request):
                raise
            who = me if isinstance(me, SignedIn) else None
            return error_page(request, exc.status_code, str(exc.detail), me=who)

    return guarded
