"""The approver's commands: ``wardgate login``, ``reviews``, ``grants`` and ``proposals``.

They talk to a running gateway's API (see `wardgate.cli.client`), never to the store,
so they need a token and no configuration file. Exit 0 on success, 2 on an expected
failure (no token, unreachable API, a refusal the API explains).

How their answers look on a terminal is `wardgate.cli.review_view`. Everything a
requester wrote (statements, reasons, names) is printed through `visible`, there and
here, so what an approver reads on the terminal is what would run.
"""

from __future__ import annotations

import ipaddress
import os
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

import typer
from rich.console import Console
from rich.text import Text

from wardgate.config import OidcConfig

# Made before cli.main is imported: cli.main imports them from here to register them,
# possibly while this module is still half-loaded (see cli/policy.py).
account_app = typer.Typer(help="Log in to a wardgate API.")
reviews_app = typer.Typer(help="Pending reviews: list, show, approve, deny.", no_args_is_help=True)
grants_app = typer.Typer(
    help="Time-boxed role grants: request, list, revoke.", no_args_is_help=True
)
proposals_app = typer.Typer(help="Proposed change sets: submit, show.", no_args_is_help=True)

# `from wardgate.cli import review_view` rather than its names: it imports cli.main
# in turn, and a half-loaded module is found this way whichever is imported first.
from wardgate.cli import review_view as view  # noqa: E402
from wardgate.cli.client import (  # noqa: E402
    DEFAULT_URL,
    ApiClient,
    ApiRefusal,
    Profile,
    check_token,
    load_profile,
    normal_url,
    path_part,
    profile_path,
    remember_config,
    remove_profile,
    save_profile,
)
from wardgate.cli.main import (  # noqa: E402
    CliError,
    JsonFlag,
    _expected_errors,
    _fail,
    _print_json,
    _when,
    print_table,
)
from wardgate.visible import visible  # noqa: E402


class StatusFilter(StrEnum):
    pending = "pending"
    approved = "approved"
    denied = "denied"
    expired = "expired"
    cancelled = "cancelled"
    executing = "executing"
    executed = "executed"
    failed = "failed"
    rolled_back = "rolled_back"
    revoked = "revoked"
    all = "all"


class ReviewKind(StrEnum):
    action = "action"
    grant = "grant"
    proposal = "proposal"


_MAX_TOKEN_INPUT = 8192

UrlOption = Annotated[
    str | None,
    typer.Option(
        "--url",
        help=f"The wardgate API (default: $WARDGATE_URL, the saved login, else {DEFAULT_URL}).",
        show_default=False,
    ),
]


def _remember_config(value: str | None) -> str | None:
    remember_config(value)
    return value


ApiConfigOption = Annotated[
    str | None,
    typer.Option(
        "-c",
        "--config",
        help="A gateway configuration: its listen.api is the URL when --url and "
        "$WARDGATE_URL are not set.",
        callback=_remember_config,
        show_default=False,
    ),
]
ReviewId = Annotated[str, typer.Argument(help="The review id (r_...).")]
ReasonOption = Annotated[str, typer.Option("--reason", help="Why; recorded with your vote.")]
SsoFlag = Annotated[
    bool,
    typer.Option(
        "--sso",
        help="Sign in with single sign-on at the gateway's identity provider (no token).",
    ),
]
NoBrowserFlag = Annotated[
    bool,
    typer.Option("--no-browser", help="With --sso: print the sign-in URL, open no browser."),
]


# -- login --------------------------------------------------------------------------


def _read_token(target: str) -> tuple[str, OidcConfig | None]:
    """The token typed or piped in; on a terminal, an empty answer chooses single
    sign-on when the gateway offers it (the provider is returned with it)."""
    if not sys.stdin.isatty():
        return sys.stdin.read(_MAX_TOKEN_INPUT), None
    provider = _provider_or_none(target)
    if provider is None:
        return str(typer.prompt("wardgate token", hide_input=True)), None
    given = str(
        typer.prompt(
            "wardgate token (or press Enter for single sign-on)",
            hide_input=True,
            default="",
            show_default=False,
        )
    )
    return given, provider


def _provider_or_none(target: str) -> OidcConfig | None:
    from wardgate.cli.sso import provider_of

    try:
        return provider_of(target)
    except CliError:  # unreachable: the token check says so
        return None


def _sso_login(target: str, provider: OidcConfig | None, browser: bool) -> None:
    from wardgate.cli.sso import provider_of, sign_in

    provider = provider or provider_of(target)
    if provider is None:
        _fail(
            f"the gateway at {target} has no single sign-on (web.oidc): log in with a token "
            "from `wardgate token create`"
        )
    _warn_if_plaintext(target)
    profile = sign_in(target, provider, browser=browser, say=lambda m: typer.echo(m, err=True))
    save_profile(profile)
    typer.echo(
        f"logged in to {target} as {visible(profile.principal)} (user, single sign-on at "
        f"{visible(provider.issuer)})"
    )


def _saved_url() -> str | None:
    try:
        profile = load_profile()
    except CliError:  # a damaged login is what `login` replaces
        return None
    return profile.url if profile else None


def _warn_if_plaintext(url: str) -> None:
    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if parts.scheme == "http" and not loopback:
        typer.echo(f"warning: the token travels unencrypted to {host}; prefer https", err=True)


def _whoami(api: ApiClient) -> dict[str, Any]:
    me = api.get("whoami")
    if not isinstance(me, dict) or not isinstance(me.get("principal"), str):
        _fail("the API answered /whoami without a principal: is that the wardgate API?")
    return me


@account_app.command("login")
def login(
    url: UrlOption = None,
    config: ApiConfigOption = None,
    sso: SsoFlag = False,
    no_browser: NoBrowserFlag = False,
) -> None:
    """Check a wardgate token with the API and save it for the commands below, or sign
    in with single sign-on (--sso).

    The token (wg_...) is read from stdin, or asked for without echo on a terminal;
    create one with `wardgate token create PRINCIPAL`. With --sso (or an empty answer
    at the prompt when the gateway offers single sign-on) you sign in at the gateway's
    identity provider instead, and the CLI renews that sign-in by itself.
    """
    with _expected_errors():
        target = normal_url(
            url or os.environ.get("WARDGATE_URL", "").strip() or _saved_url() or DEFAULT_URL
        )
        if sso:
            _sso_login(target, None, not no_browser)
            return
        given, provider = _read_token(target)
        if not given.strip() and provider is not None:
            _sso_login(target, provider, not no_browser)
            return
        if not given.strip():
            _fail(
                "no token given: pipe one in (`wardgate login < token-file`) or type it at "
                "the prompt (create one with `wardgate token create PRINCIPAL`), or sign in "
                "with single sign-on: `wardgate login --sso`"
            )
        token = check_token(given)
        _warn_if_plaintext(target)
        with ApiClient(target, token, "given") as api:
            me = _whoami(api)
        save_profile(Profile(target, token, me["principal"]))
    typer.echo(f"logged in to {target} as {visible(me['principal'])} ({visible(me.get('kind'))})")


def _end_session(profile: Profile) -> bool:
    """End a single sign-on session at the gateway; False if it could not be reached
    (an already ended session is fine)."""
    from wardgate.cli.client import SESSION_PREFIX, anonymous_with

    if not profile.token.startswith(SESSION_PREFIX):
        return False
    try:
        anonymous_with(profile.url, profile.token, "POST", "auth/logout")
    except ApiRefusal:
        pass  # already ended or expired
    except CliError as exc:
        typer.echo(f"warning: could not end the session at the gateway: {exc}", err=True)
        return False
    return True


@account_app.command("logout")
def logout() -> None:
    """Forget the saved login (a single sign-on session is ended at the gateway; a
    token stays valid until `wardgate token revoke`)."""
    with _expected_errors():
        path = profile_path()
        try:
            saved = load_profile(path)
        except CliError:  # damaged: removing it is all there is to do
            saved = None
        ended = saved is not None and saved.oidc is not None and _end_session(saved)
        removed = remove_profile(path)
    if removed and ended:
        typer.echo(f"logged out: ended the sign-in session and removed {path}")
    elif removed and saved is not None and saved.oidc is not None:
        typer.echo(
            f"logged out: removed {path} (the sign-in session ends by itself when idle "
            "at the gateway)"
        )
    elif removed:
        typer.echo(
            f"logged out: removed {path} (the token itself stays valid until "
            "`wardgate token revoke`)"
        )
    else:
        typer.echo(f"not logged in (no saved login at {path})")
    if os.environ.get("WARDGATE_TOKEN"):
        typer.echo("note: WARDGATE_TOKEN is still set and is used by the commands", err=True)


@account_app.command("whoami")
def whoami(
    as_json: JsonFlag = False, url: UrlOption = None, config: ApiConfigOption = None
) -> None:
    """Who the API takes you for."""
    with _expected_errors(), ApiClient.connect(url) as api:
        me = _whoami(api)
        where = api.url
    if as_json:
        _print_json(me)
        return
    groups = ", ".join(visible(g) for g in me.get("groups") or []) or "no groups"
    sponsor = f", agent of {visible(me['sponsor'])}" if me.get("sponsor") else ""
    typer.echo(
        f"{visible(me['principal'])} ({visible(me.get('kind'))}{sponsor}) at {where}, "
        f"in {groups}, token {visible(me.get('token_id') or '-')}"
    )


# -- reviews ------------------------------------------------------------------------


@reviews_app.command("list")
def reviews_list(
    status: Annotated[StatusFilter, typer.Option("--status")] = StatusFilter.pending,
    kind: Annotated[ReviewKind | None, typer.Option("--kind")] = None,
    principal: Annotated[str | None, typer.Option("--principal", help="Requested by.")] = None,
    connection: Annotated[str | None, typer.Option("--connection")] = None,
    limit: Annotated[int | None, typer.Option("--limit", min=1)] = None,
    as_json: JsonFlag = False,
    url: UrlOption = None,
    config: ApiConfigOption = None,
) -> None:
    """Reviews, newest first: pending ones unless --status says otherwise."""
    query = {
        "status": None if status is StatusFilter.all else status.value,
        "kind": kind.value if kind else None,
        "principal": principal,
        "connection": connection,
        "limit": limit,
    }
    with _expected_errors(), ApiClient.connect(url) as api:
        reviews = view.reviews(api.get("reviews", query), "reviews")
    if as_json:
        _print_json(reviews)
        return
    if not reviews:
        typer.echo("no reviews" if status is StatusFilter.all else f"no {status.value} reviews")
        return
    print_table(view.table(reviews, Console().width))


@reviews_app.command("show")
def reviews_show(
    review_id: ReviewId,
    as_json: JsonFlag = False,
    url: UrlOption = None,
    config: ApiConfigOption = None,
) -> None:
    """Everything a reviewer needs to decide: statement, requester, rule, preview, votes."""
    with _expected_errors(), ApiClient.connect(url) as api:
        review = view.review(api.get(f"reviews/{path_part(review_id)}"))
    if as_json:
        _print_json(review)
        return
    view.show(review)


def _decide(review_id: str, action: str, body: dict[str, Any] | None, url: str | None) -> None:
    with _expected_errors(), ApiClient.connect(url) as api:
        review = view.review(api.post(f"reviews/{path_part(review_id)}/{action}", body))
    typer.echo(view.outcome(review))


@reviews_app.command("approve")
def reviews_approve(
    review_id: ReviewId,
    reason: ReasonOption = "",
    url: UrlOption = None,
    config: ApiConfigOption = None,
) -> None:
    """Approve a review (with its other approvers, if it needs several)."""
    _decide(review_id, "approve", {"reason": reason}, url)


@reviews_app.command("deny")
def reviews_deny(
    review_id: ReviewId,
    reason: ReasonOption = "",
    url: UrlOption = None,
    config: ApiConfigOption = None,
) -> None:
    """Deny a review: one deny ends it."""
    _decide(review_id, "deny", {"reason": reason}, url)


@reviews_app.command("cancel")
def reviews_cancel(
    review_id: ReviewId, url: UrlOption = None, config: ApiConfigOption = None
) -> None:
    """Withdraw a review you requested."""
    _decide(review_id, "cancel", None, url)


# -- grants -------------------------------------------------------------------------


@grants_app.command("request")
def grants_request(
    connection: Annotated[str, typer.Option("--connection", help="The connection.")],
    role: Annotated[str, typer.Option("--role", help="A grantable role of it.")],
    duration: Annotated[str, typer.Option("--for", help="How long, e.g. 30m or 2h.")],
    reason: Annotated[str, typer.Option("--reason", help="Why, for the approvers.")],
    as_json: JsonFlag = False,
    url: UrlOption = None,
    config: ApiConfigOption = None,
) -> None:
    """Ask for a role on a connection for a while; approvers decide."""
    from wardgate.config import parse_duration

    with _expected_errors():
        try:
            seconds = parse_duration(duration)
        except ValueError:
            seconds = 0.0
        if seconds <= 0:
            _fail(f"--for takes a duration such as 30m, 2h or 1d, got {visible(duration)!r}")
        if not reason.strip():
            _fail("--reason must say why, for the approvers")
        body = {
            "connection": connection,
            "role": role,
            "duration": duration.strip(),
            "reason": reason,
        }
        with ApiClient.connect(url) as api:
            review = view.review(api.post("grants", body))
    if as_json:
        _print_json(review)
        return
    asked = f"{view.grant_what(review)} for {view.duration(view.detail(review).get('duration'))}"
    typer.echo(f"requested {asked}: {view.outcome(review)}")
    if review.get("url"):
        typer.echo(f"review: {visible(review['url'])}")


@grants_app.command("list")
def grants_list(
    show_all: Annotated[bool, typer.Option("--all", help="Also ended and pending ones.")] = False,
    as_json: JsonFlag = False,
    url: UrlOption = None,
    config: ApiConfigOption = None,
) -> None:
    """Active grants (all grant requests with --all)."""
    with _expected_errors(), ApiClient.connect(url) as api:
        # The API lists active grants unless told otherwise.
        grants = view.reviews(api.get("grants", {"active": str(not show_all).lower()}), "grants")
    if as_json:
        _print_json(grants)
        return
    if not grants:
        typer.echo("no grants" if show_all else "no active grants")
        return
    columns = ("id", "status", "principal", "connection", "role", "for", "until", "reason")
    table = view.plain_table(columns, [visible(g["id"]) for g in grants])
    for g in grants:
        detail = view.detail(g)
        until = g.get("approved_until") if g.get("status") == "approved" else None
        cells = (
            visible(g["id"]),
            visible(g.get("status")),
            view.requester(g),
            visible(g.get("connection")),
            visible(detail.get("role", "?")),
            view.duration(detail.get("duration")),
            _when(until) if isinstance(until, int | float) else "-",
            view.one_line(g.get("justification"), 40),
        )
        table.add_row(*(Text(c) for c in cells))
    print_table(table)


@grants_app.command("revoke")
def grants_revoke(
    review_id: ReviewId,
    reason: ReasonOption = "",
    url: UrlOption = None,
    config: ApiConfigOption = None,
) -> None:
    """End a grant now."""
    with _expected_errors(), ApiClient.connect(url) as api:
        review = view.review(api.post(f"grants/{path_part(review_id)}/revoke", {"reason": reason}))
    typer.echo(view.outcome(review))


# -- proposals ----------------------------------------------------------------------


def _split_file(file: Path) -> list[str]:
    from wardgate.policy.sql import classify

    name = "stdin" if str(file) == "-" else str(file)
    text = sys.stdin.read() if name == "stdin" else file.read_text(encoding="utf-8")
    infos = classify(text)
    for info in infos:
        if info.error:
            _fail(f"{name} does not parse as SQL: {visible(info.error)}")
    statements = [info.text.strip() for info in infos]
    if len(statements) == 1 and not statements[0]:
        # classify may hand a lone statement back without its text (a cached shape);
        # it is then the whole file, given like the parser gives it: no final ';'.
        statements = [text.strip().rstrip(";").rstrip()]
    statements = [s for s in statements if s]
    if not statements:
        _fail(f"{name} holds no SQL statement")
    return statements


@proposals_app.command("submit")
def proposals_submit(
    connection: Annotated[str, typer.Option("--connection", help="Where it would run.")],
    justification: Annotated[str, typer.Option("--justification", help="Why, for approvers.")],
    statement: Annotated[
        list[str] | None,
        typer.Option("--statement", "-s", help="One statement; repeat for several."),
    ] = None,
    file: Annotated[
        Path | None,
        typer.Option("--file", "-f", help="A .sql file of statements ('-' for stdin)."),
    ] = None,
    as_json: JsonFlag = False,
    url: UrlOption = None,
    config: ApiConfigOption = None,
) -> None:
    """Propose statements to run once approved, from --statement or a --file."""
    with _expected_errors():
        if bool(statement) == (file is not None):
            _fail("give the statements with --statement (repeatable) or with --file, one of them")
        statements = _split_file(file) if file is not None else [s for s in statement or [] if s]
        if not justification.strip():
            _fail("--justification must say why, for the approvers")
        body = {
            "connection": connection,
            "statements": statements,
            "justification": justification,
        }
        with ApiClient.connect(url) as api:
            review = view.review(api.post("proposals", body))
    if as_json:
        _print_json(review)
        return
    count = len(statements)
    typer.echo(
        f"proposed {count} statement{'s' if count != 1 else ''} on "
        f"{visible(connection)}: {view.outcome(review)}"
    )
    if review.get("url"):
        typer.echo(f"review: {visible(review['url'])}")


@proposals_app.command("show")
def proposals_show(
    review_id: ReviewId,
    as_json: JsonFlag = False,
    url: UrlOption = None,
    config: ApiConfigOption = None,
) -> None:
    """A proposal: its statements, approvals, and result once it ran."""
    with _expected_errors(), ApiClient.connect(url) as api:
        review = view.review(api.get(f"proposals/{path_part(review_id)}"))
    if as_json:
        _print_json(review)
        return
    view.show(review)
