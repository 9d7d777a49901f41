"""``wardgate user add|list|remove``: local users' passwords for the web UI."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from wardgate.cli.main import (
    DEFAULT_CONFIG,
    ConfigPath,
    JsonFlag,
    _config,
    _expected_errors,
    _fail,
    _opened,
    _print_json,
    _when,
)

user_app = typer.Typer(
    help="Local users: humans who sign in to the web UI with a password.", no_args_is_help=True
)


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        line = sys.stdin.readline()
        return line[:-1] if line.endswith("\n") else line
    if not sys.stdin.isatty():
        _fail("no terminal to ask for the password on: pass --password-stdin and pipe it in")
    first: str = typer.prompt("Password", hide_input=True)
    again: str = typer.prompt("Repeat it", hide_input=True)
    if first != again:
        _fail("the two passwords differ; nothing was changed")
    return first


@user_app.command("add")
def user_add(
    principal: Annotated[str, typer.Argument(help="A user principal from the configuration.")],
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from stdin's first line.")
    ] = False,
    config: ConfigPath = DEFAULT_CONFIG,
) -> None:
    """Set (or change) PRINCIPAL's web UI password. Agents cannot have one."""
    from wardgate.core.web_sessions import WebSessions
    from wardgate.identity.passwords import PasswordPolicyError, UserPasswords

    with _expected_errors():
        cfg = _config(config)
        found = cfg.principal(principal)
        if found is None:
            known = ", ".join(sorted(n for n, p in cfg.principals.items() if p.kind == "user"))
            _fail(f"unknown principal {principal!r} (users in {config}: {known or 'none'})")
        if found is not None and found.is_agent:
            _fail(
                f"{principal!r} is an agent: agents never sign in to the web UI; give it a "
                f"token instead (wardgate token create {principal})"
            )
        password = _read_password(password_stdin)
        with _opened(config) as (cfg, store):
            try:
                UserPasswords(store).set(principal, password)
            except PasswordPolicyError as exc:
                _fail(str(exc))
            # A changed password signs the user out everywhere.
            sessions = WebSessions(store, cfg.web.session_idle, cfg.web.session_max)
            ended = sessions.end_all(principal, "password changed")
        note = f"; {ended} open web session(s) signed out" if ended else ""
        typer.echo(f"Password set for {principal}{note}.")


@user_app.command("list")
def user_list(as_json: JsonFlag = False, config: ConfigPath = DEFAULT_CONFIG) -> None:
    """Users with a web UI password."""
    from wardgate.identity.passwords import UserPasswords

    with _expected_errors(), _opened(config) as (cfg, store):
        users = UserPasswords(store).users()
        rows = [
            {"principal": name, "updated_at": at, "in_config": cfg.principal(name) is not None}
            for name, at in users
        ]
        if as_json:
            _print_json(rows)
            return
        if not rows:
            typer.echo("No local users yet: wardgate user add <principal>")
        for name, at in users:
            stale = "" if cfg.principal(name) else "  (not in the configuration: cannot sign in)"
            typer.echo(f"{name}  password set {_when(at)}{stale}")


@user_app.command("remove")
def user_remove(
    principal: Annotated[str, typer.Argument(help="The user.")],
    config: ConfigPath = DEFAULT_CONFIG,
) -> None:
    """Remove PRINCIPAL's password and sign them out of the web UI everywhere."""
    from wardgate.core.web_sessions import WebSessions
    from wardgate.identity.passwords import UserPasswords

    with _expected_errors(), _opened(config) as (cfg, store):
        removed = UserPasswords(store).remove(principal)
        sessions = WebSessions(store, cfg.web.session_idle, cfg.web.session_max)
        ended = sessions.end_all(principal, "password removed")
        if not removed and not ended:
            _fail(f"{principal!r} has no password and no web session")
        typer.echo(f"Removed {principal}'s password; {ended} web session(s) signed out.")
