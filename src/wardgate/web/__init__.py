"""The web UI: server-rendered pages for humans at /ui on the API listener."""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import quote

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from fastapi import FastAPI

# What every /ui response carries: no framing, no sniffing, scripts and styles from
# this origin only, nothing cached (pages show statements and results).
UI_HEADERS = [
    (
        b"content-security-policy",
        # 'wasm-unsafe-eval' lets asciinema-player compile its WebAssembly terminal; it
        # allows no eval() of JavaScript.
        b"default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; style-src 'self' 'unsafe-inline'; "
        b"img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; "
        b"form-action 'self' http: https:; base-uri 'none'; object-src 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
]


class UiHeaders:
    """Adds UI_HEADERS (and no-store on pages) to every response under /ui."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if not path.startswith("/ui"):
            await self.app(scope, receive, send)
            return
        static = path.startswith("/ui/static/")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.extend(UI_HEADERS)
                if not static:
                    headers.append((b"cache-control", b"no-store"))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


def mount_ui(app: FastAPI) -> None:
    from wardgate.api.app import http_problem, validation_problem
    from wardgate.web import auth, pages
    from wardgate.web.render import HERE, error_page

    def _page(request: Request) -> bool:
        path = request.url.path
        return (path == "/ui" or path.startswith("/ui/")) and not path.startswith("/ui/static/")

    @app.exception_handler(StarletteHTTPException)
    async def ui_http_error(request: Request, exc: StarletteHTTPException) -> Response:
        # Pages answer errors as pages (the same words the API would give); the API and
        # static files keep problem details.
        if _page(request) and request.headers.get("x-requested-with") != "fetch":
            return error_page(request, exc.status_code, str(exc.detail))
        return await http_problem(request, exc)

    @app.exception_handler(RequestValidationError)
    async def ui_invalid(request: Request, exc: RequestValidationError) -> Response:
        if _page(request):
            where = "; ".join(
                f"{'.'.join(str(p) for p in e.get('loc', ())[1:])}: {e.get('msg', '')}"
                for e in exc.errors()[:5]
            )
            return error_page(request, 422, f"This form or link is not valid ({where}).")
        return await validation_problem(request, exc)

    @app.exception_handler(auth.LoginRequired)
    async def to_login(request: Request, _exc: auth.LoginRequired) -> Response:
        # Scripts (live updates) get a status they can act on; pages go to sign-in.
        if request.headers.get("x-requested-with") == "fetch" or request.method != "GET":
            return JSONResponse({"detail": "signed out"}, status_code=401)
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/ui/login?next={quote(target, safe='')}", status_code=303)

    @app.get("/", include_in_schema=False)
    async def root() -> Response:
        return RedirectResponse("/ui/reviews", status_code=307)

    app.include_router(auth.router)
    app.include_router(pages.router)
    # asciinema-player's prebuilt bundle, from npm (scripts/_env.sh: ensure_ui_assets).
    # Mounted first: /ui/static would otherwise shadow it.
    player = HERE / "assets" / "node_modules" / "asciinema-player" / "dist" / "bundle"
    if player.is_dir():
        app.mount(
            "/ui/static/vendor/asciinema-player", StaticFiles(directory=player), name="ui-player"
        )
    app.mount("/ui/static", StaticFiles(directory=HERE / "static"), name="ui-static")
    app.add_middleware(UiHeaders)
