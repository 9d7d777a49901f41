"""``wardgate principal add-key|keys|remove-key`` and ``wardgate sessions replay``: the
SSH side of identities and recordings."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

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
    print_table,
)

principal_app = typer.Typer(help="Principals' SSH public keys.", no_args_is_help=True)


@principal_app.command("add-key")
def add_key(
    principal: Annotated[str, typer.Argument(help="A principal from the configuration.")],
    key_file: Annotated[
        str, typer.Argument(help="The public key file (id_ed25519.pub), or - for stdin.")
    ],
    config: ConfigPath = DEFAULT_CONFIG,
) -> None:
    """Register an SSH public key: PRINCIPAL then logs in to the SSH gateway with it."""
    from wardgate.identity.ssh_keys import KeyError_, SshKeys

    with _expected_errors():
        cfg = _config(config)
        if cfg.principal(principal) is None:
            _fail(
                f"unknown principal {principal!r} (principals in {config}: {', '.join(sorted(cfg.principals))})"
            )
        try:
            text = sys.stdin.read() if key_file == "-" else Path(key_file).read_text()
        except OSError as exc:
            _fail(f"cannot read {key_file}: {exc.strerror}")
        with _opened(config) as (cfg, store):
            try:
                info = SshKeys(store).add(principal, text)
            except KeyError_ as exc:
                _fail(str(exc))
        typer.echo(f"added {info.fingerprint} for {principal}")


@principal_app.command("keys")
def list_keys(
    principal: Annotated[str | None, typer.Option("--principal", help="Only this one.")] = None,
    as_json: JsonFlag = False,
    config: ConfigPath = DEFAULT_CONFIG,
) -> None:
    """List registered SSH keys."""
    from wardgate.identity.ssh_keys import SshKeys

    with _expected_errors(), _opened(config) as (_cfg, store):
        keys = SshKeys(store).list(principal)
    if as_json:
        _print_json(
            [
                {
                    "fingerprint": k.fingerprint,
                    "principal": k.principal,
                    "comment": k.comment,
                    "created_at": k.created_at,
                }
                for k in keys
            ]
        )
        return
    table = Table("fingerprint", "principal", "comment", "added")
    for k in keys:
        table.add_row(k.fingerprint, k.principal, k.comment, _when(k.created_at))
    print_table(table)


@principal_app.command("remove-key")
def remove_key(
    fingerprint: Annotated[str, typer.Argument(help="SHA256:... as `principal keys` shows it.")],
    config: ConfigPath = DEFAULT_CONFIG,
) -> None:
    """Remove an SSH key; new logins with it fail at once."""
    from wardgate.identity.ssh_keys import SshKeys

    with _expected_errors(), _opened(config) as (_cfg, store):
        if not SshKeys(store).remove(fingerprint):
            _fail(f"no key {fingerprint!r} (see `wardgate principal keys`)")
    typer.echo(f"removed {fingerprint}")


def replay(
    session_id: Annotated[str, typer.Argument()],
    realtime: Annotated[bool, typer.Option("--realtime", help="Keep the recorded timing.")] = False,
    cast: Annotated[
        bool, typer.Option("--cast", help="Print the asciicast v2 file itself.")
    ] = False,
    config: ConfigPath = DEFAULT_CONFIG,
) -> None:
    """Replay a terminal session's recording (interactive SSH shells) to this terminal,
    or print it as asciicast v2 for asciinema (`--cast > s.cast; asciinema play s.cast`)."""
    import hashlib
    import json

    from sqlalchemy import select

    from wardgate.store.models import Recording

    with _expected_errors(), _opened(config) as (_cfg, store):
        with store.session(write=False) as session:
            rows = session.scalars(
                select(Recording).where(Recording.session_id == session_id).order_by(Recording.seq)
            ).all()
            recordings = [(r.cast, r.sha256) for r in rows]
    if not recordings:
        _fail(
            f"session {session_id!r} has no terminal recording (only interactive shells are recorded)"
        )
    for text, digest in recordings:
        if hashlib.sha256(text.encode("utf-8")).hexdigest() != digest:
            _fail("the recording does not match its hash: it was changed after it was written")
        if cast:
            sys.stdout.write(text)
            continue
        last = 0.0
        for line in text.splitlines()[1:]:
            at, code, data = json.loads(line)
            if code != "o":
                continue
            if realtime:
                time.sleep(min(max(0.0, at - last), 2.0))
                last = at
            sys.stdout.write(data)
        sys.stdout.flush()


__all__ = ["principal_app", "replay"]
