"""The ``wardgate`` command.

Every expected failure (bad config, unknown principal, missing secret, unreachable store)
is printed as a short message on stderr with exit status 2, never as a traceback.
``audit verify`` exits 1 when the chain is broken. Secret values are never printed.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from wardgate.config import Config, ConfigError, load_config

app = typer.Typer(
    help="wardgate: segregation of duties for AI agents, at the protocol level.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
config_app = typer.Typer(help="Validate the configuration.", no_args_is_help=True)
token_app = typer.Typer(help="Create, list and revoke wardgate tokens.", no_args_is_help=True)
secret_app = typer.Typer(help="Upstream credentials in the encrypted vault.", no_args_is_help=True)
audit_app = typer.Typer(help="The tamper-evident audit log.", no_args_is_help=True)
sessions_app = typer.Typer(help="Recorded sessions and their actions.", no_args_is_help=True)


def _print_version(value: bool) -> None:
    if value:
        from wardgate import __version__

        typer.echo(f"wardgate {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_print_version,
            is_eager=True,
            help="Print the installed version and exit.",
        ),
    ] = False,
) -> None:
    """wardgate: segregation of duties for AI agents, at the protocol level."""


app.add_typer(config_app, name="config")
app.add_typer(token_app, name="token")
app.add_typer(secret_app, name="secret")
app.add_typer(audit_app, name="audit")
app.add_typer(sessions_app, name="sessions")

ConfigPath = Annotated[
    str,
    typer.Option(
        "-c",
        "--config",
        envvar="WARDGATE_CONFIG",
        help="The configuration file (default: $WARDGATE_CONFIG, else wardgate.yaml).",
    ),
]
JsonFlag = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
DEFAULT_CONFIG = "wardgate.yaml"
_SECRET_NAME = re.compile(r"^[A-Za-z0-9_.\-/]+$")


class CliError(Exception):
    """An expected failure, already phrased for the user."""


def _fail(message: str) -> NoReturn:
    raise CliError(message)


@contextmanager
def _expected_errors() -> Iterator[None]:
    from wardgate.audit.checkpoint import CheckpointError
    from wardgate.store.db import StoreError
    from wardgate.vault.keyring import KeyringError
    from wardgate.vault.keys import MasterKeyError
    from wardgate.vault.secrets import SecretError

    try:
        yield
    except ConfigError as exc:
        for line in exc.problems:
            typer.echo(line, err=True)
        raise typer.Exit(2) from None
    except (
        CliError,
        StoreError,
        SecretError,
        MasterKeyError,
        KeyringError,
        CheckpointError,
    ) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        typer.echo(f"error: {exc.strerror or exc}{where}", err=True)
        raise typer.Exit(2) from None


def _config(path: str) -> Config:
    return load_config(path)


@contextmanager
def _opened(path: str) -> Iterator[tuple[Config, Any]]:
    """The config and its migrated store, disposed afterwards."""
    from wardgate.store.db import Store

    config = _config(path)
    store = Store.open(config.store_url)
    try:
        yield config, store
    finally:
        store.dispose()


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def print_table(table: Table) -> None:
    """A table at its natural width when the terminal (or a pipe's default 80 columns)
    is narrower: long lines wrap in the terminal, but no id, name or hash that people
    copy is ever cut or ellipsized."""
    out = Console()
    natural = out.measure(table, options=out.options.update_width(100_000)).maximum
    if natural > out.width:
        out = Console(width=natural)
    out.print(table)


def _print_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2, ensure_ascii=False, default=str))


# -- serve / config -----------------------------------------------------------------


@app.command()
def serve(config: ConfigPath = DEFAULT_CONFIG) -> None:
    """Run the gateway."""
    with _expected_errors():
        from wardgate.serve import run

        try:
            run(config)
        except KeyboardInterrupt:
            raise typer.Exit(130) from None


@config_app.command("check")
def config_check(config: ConfigPath = DEFAULT_CONFIG) -> None:
    """Validate the configuration file."""
    with _expected_errors():
        cfg = _config(config)
        if not cfg.model_fields_set - {"base_dir"}:
            # Empty (or only comments): every default, no connection, no principal. It
            # would "validate", but it is never what the user meant to check.
            _fail(
                f"{config}: the configuration is empty (no keys); start from "
                "examples/quickstart.yaml (docs/configuration.md)"
            )
        typer.echo(f"ok: {len(cfg.connections)} connections, {len(cfg.principals)} principals")


# -- tokens -------------------------------------------------------------------------


def _token_service(config: Config, store: Any) -> Any:
    from wardgate.identity.tokens import TokenService
    from wardgate.vault.keyring import Keyring
    from wardgate.vault.keys import load_master_key

    return TokenService(store, Keyring(store, load_master_key(config)).token_pepper())


@token_app.command("create")
def token_create(
    principal: Annotated[str, typer.Argument(help="A principal from the configuration.")],
    name: Annotated[str, typer.Option("--name", help="A label, e.g. where it is used.")] = "",
    config: ConfigPath = DEFAULT_CONFIG,
) -> None:
    """Create a token for PRINCIPAL. It is printed once, alone on the last line."""
    with _expected_errors():
        cfg = _config(config)
        if cfg.principal(principal) is None:
            known = ", ".join(sorted(cfg.principals)) or "none defined"
            _fail(f"unknown principal {principal!r} (principals in {config}: {known})")
        with _opened(config) as (cfg, store):
            issued = _token_service(cfg, store).create(principal, name)
        label = f", name {name!r}" if name else ""
        typer.echo(f"Created token {issued.id} for {principal}{label}.")
        typer.echo("Use it as the password of that principal; it is shown only this once:")
        typer.echo(issued.token)


@token_app.command("list")
def token_list(
    principal: Annotated[str | None, typer.Option("--principal", help="Only this one.")] = None,
    as_json: JsonFlag = False,
    config: ConfigPath = DEFAULT_CONFIG,
) -> None:
    """List tokens (never their values)."""
    with _expected_errors(), _opened(config) as (cfg, store):
        tokens = _token_service(cfg, store).list(principal)
        if as_json:
            _print_json(
                [
                    {
                        "id": t.id,
                        "principal": t.principal,
                        "name": t.name,
                        "created_at": t.created_at,
                        "revoked_at": t.revoked_at,
                        "last_used_at": t.last_used_at,
                        "active": t.active,
                    }
                    for t in tokens
                ]
            )
            return
        table = Table("id", "principal", "name", "created", "last used", "status")
        for t in tokens:
            status = "active" if t.active else f"revoked {_when(t.revoked_at)}"
            table.add_row(
                t.id, t.principal, t.name, _when(t.created_at), _when(t.last_used_at), status
            )
        print_table(table)


@token_app.command("revoke")
def token_revoke(
    token_id: Annotated[str, typer.Argument(help="The token id (tok_...).")],
    config: ConfigPath = DEFAULT_CONFIG,
) -> None:
    """Revoke a token; new logins with it fail at once."""
    with _expected_errors(), _opened(config) as (cfg, store):
        if not _token_service(cfg, store).revoke(token_id):
            _fail(f"no active token {token_id!r} (see `wardgate token list`)")
        typer.echo(f"revoked {token_id}")


# -- secrets ------------------------------------------------------------------------


def _vault(config: Config, store: Any) -> Any:
    from wardgate.vault.keys import load_master_key
    from wardgate.vault.secrets import Vault

    return Vault(store, load_master_key(config))


def _read_secret_value(from_env: str | None) -> str:
    if from_env:
        value = os.environ.get(from_env)
        if value is None:
            _fail(f"environment variable {from_env} is not set")
        return value
    if not sys.stdin.isatty():
        value = sys.stdin.read()
        # One trailing newline is how `echo` and files end; it is not part of a password.
        return value[:-1] if value.endswith("\n") else value
    value = typer.prompt("Value", hide_input=True, confirmation_prompt=True)
    return str(value)


@secret_app.command("set")
def secret_set(
    name: Annotated[str, typer.Argument(help="Referenced in the config as secret:NAME.")],
    from_env: Annotated[
        str | None, typer.Option("--from-env", help="Take the value from this variable.")
    ] = None,
    config: ConfigPath = DEFAULT_CONFIG,
) -> None:
    """Store a secret (value from stdin when piped, else a hidden prompt)."""
    with _expected_errors():
        if not _SECRET_NAME.match(name):
            _fail("secret names use letters, digits and . _ - / only")
        value = _read_secret_value(from_env)
        if not value:
            _fail("refusing to store an empty secret")
        with _opened(config) as (cfg, store):
            _vault(cfg, store).set(name, value)
        typer.echo(f"stored secret {name} (use it as secret:{name})")


@secret_app.command("list")
def secret_list(config: ConfigPath = DEFAULT_CONFIG) -> None:
    """List secret names (never values)."""
    with _expected_errors(), _opened(config) as (cfg, store):
        for name in _vault(cfg, store).names():
            typer.echo(name)


@secret_app.command("delete")
def secret_delete(
    name: Annotated[str, typer.Argument()],
    config: ConfigPath = DEFAULT_CONFIG,
) -> None:
    """Delete a secret."""
    with _expected_errors(), _opened(config) as (cfg, store):
        if not _vault(cfg, store).delete(name):
            _fail(f"no secret named {name!r}")
        typer.echo(f"deleted secret {name}")


# -- audit and sessions -------------------------------------------------------------


@audit_app.command("verify")
def audit_verify(
    checkpoint: Annotated[
        str | None,
        typer.Option(
            "--checkpoint",
            help="A signed checkpoint (`wardgate audit checkpoint`) kept outside the store: "
            "also detects a rewrite-and-rehash of every event up to it.",
        ),
    ] = None,
    public_key: Annotated[
        str | None,
        typer.Option(
            "--public-key",
            help="The checkpoint key's public half (PEM file). Alone: checks the retention "
            "sweeps against the checkpoints kept in the store (default: the configured "
            "audit.checkpoint.key).",
        ),
    ] = None,
    sink: Annotated[
        str | None,
        typer.Option(
            "--sink",
            help="The JSON-lines copy of the chain (audit.sink.file): also name every "
            "stored event that differs from its copy.",
        ),
    ] = None,
    config: ConfigPath = DEFAULT_CONFIG,
) -> None:
    """Check the hash chain of the audit log (exit 1 if it is broken). Deletions that
    retention sweeps name must be covered by a later signed checkpoint: with a key (the
    configured audit.checkpoint.key, or --public-key) an uncovered sweep fails; without
    one, the result is ok with an UNVERIFIED warning."""
    from wardgate.audit.chain import verify_chain
    from wardgate.audit.checkpoint import load_public_key

    with _expected_errors():
        if checkpoint is not None and public_key is None:
            _fail("--checkpoint needs --public-key (the key checks the signature)")
        signed = None
        key = load_public_key(_read_text(public_key)) if public_key is not None else None
        if checkpoint is not None and key is not None:
            from wardgate.audit.checkpoint import Checkpoint

            try:
                data = json.loads(_read_text(checkpoint))
            except json.JSONDecodeError as exc:
                _fail(
                    f"{checkpoint} is not JSON ({exc}); export one with `wardgate audit checkpoint`"
                )
            signed = (Checkpoint.from_json(data), key)
        with _opened(config) as (cfg, store):
            if signed is None:
                from wardgate.audit.checkpoint import check_sweeps

                if key is None and cfg.audit.checkpoint is not None:
                    from wardgate.audit.checkpoint import CheckpointError
                    from wardgate.serve import checkpoint_key
                    from wardgate.vault.secrets import SecretError

                    try:
                        private = checkpoint_key(cfg, _vault(cfg, store))
                    except (CheckpointError, SecretError) as exc:
                        typer.echo(
                            f"note: audit.checkpoint.key is not usable here ({exc}); pass "
                            "--public-key to check the retention sweeps",
                            err=True,
                        )
                        private = None
                    key = private.public_key() if private is not None else None
                result = check_sweeps(store, verify_chain(store), key)
            else:
                from wardgate.audit.checkpoint import verify_with_checkpoint

                result = verify_with_checkpoint(store, *signed)
            differences: list[str] = []
            if sink is not None:
                from pathlib import Path

                from wardgate.audit.sink import compare_with_store

                differences = compare_with_store(store, Path(sink))
    for line in differences:
        typer.echo(f"DIFFERS from the sink: {line}")
    if result.ok and differences:
        typer.echo(f"BROKEN: {len(differences)} stored events differ from {sink}")
        raise typer.Exit(1)
    if result.ok:
        typer.echo(f"ok: {result.checked} events, {result.reason}")
        if result.warning:
            typer.echo(f"WARNING: {result.warning}")
            typer.echo(f"WARNING: {result.warning}", err=True)
        return
    where = f"event {result.first_broken_id}" if result.first_broken_id is not None else "head"
    typer.echo(f"BROKEN at {where}: {result.reason} ({result.checked} events verified before)")
    raise typer.Exit(1)


def _read_text(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


@audit_app.command("checkpoint")
def audit_checkpoint(
    now: Annotated[
        bool,
        typer.Option("--now", help="Sign the current head first (needs audit.checkpoint.key)."),
    ] = False,
    output: Annotated[
        str | None, typer.Option("-o", "--output", help="Write to this file (default: stdout).")
    ] = None,
    config: ConfigPath = DEFAULT_CONFIG,
) -> None:
    """Export the latest signed checkpoint of the chain head as JSON; keep it outside
    the gateway (it is what `audit verify --checkpoint` trusts)."""
    from wardgate.audit.checkpoint import dumps, latest_checkpoint, sign_head

    with _expected_errors(), _opened(config) as (cfg, store):
        if now:
            if cfg.audit.checkpoint is None:
                _fail("audit.checkpoint.key is not set in the configuration; see docs/audit.md")
            from wardgate.serve import checkpoint_key

            key = checkpoint_key(cfg, _vault(cfg, store))
            assert key is not None
            sign_head(store, key, vouch_sweeps=True)  # the operator's decision
        found = latest_checkpoint(store)
        if found is None:
            _fail(
                "no signed checkpoint in the store yet: set audit.checkpoint.key and run "
                "`wardgate serve`, or run `wardgate audit checkpoint --now`"
            )
        text = dumps(found)
        if output is None:
            typer.echo(text, nl=False)
            return
        with open(output, "w", encoding="utf-8") as f:
            f.write(text)
        typer.echo(f"checkpoint at event {found.seq} written to {output}", err=True)


@audit_app.command("sweep")
def audit_sweep(
    days: Annotated[
        float | None,
        typer.Option(
            "--days",
            min=0,
            help="Sweep every connection's records older than this many days (default: "
            "each connection's retention_days; 0: everything before now).",
        ),
    ] = None,
    config: ConfigPath = DEFAULT_CONFIG,
) -> None:
    """Delete records past their retention now (`wardgate serve` does it hourly); each
    sweep is recorded in the chain, so `audit verify` still passes."""
    from wardgate.audit.retention import sweep, sweep_connection

    with _expected_errors(), _opened(config) as (cfg, store):
        from wardgate.serve import checkpoint_key

        # Signs the head after sweeping: verify --checkpoint trusts a sweep of events an
        # earlier checkpoint covers only when a later signed checkpoint covers the sweep.
        key = checkpoint_key(cfg, _vault(cfg, store)) if cfg.audit.checkpoint else None
        if days is None:
            done = sweep(store, cfg, key=key)
            if not done:
                typer.echo("no connection has retention_days set; nothing to sweep")
                return
        else:
            done = {name: sweep_connection(store, name, days, key=key) for name in cfg.connections}
    for name, count in done.items():
        typer.echo(f"{name}: {count} events swept")


@audit_app.command("keygen")
def audit_keygen(
    out: Annotated[
        str,
        typer.Option(
            "--out",
            help="The private key file to create (mode 0600); the public key goes to OUT.pub.",
        ),
    ],
) -> None:
    """Create an Ed25519 key for signing audit checkpoints. Keep the private key off the
    store's host if you can; give auditors the .pub file."""
    from wardgate.audit.checkpoint import generate_key, key_id, load_public_key

    with _expected_errors():
        private, public = generate_key()
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(private)
        with open(out + ".pub", "x", encoding="utf-8") as f:
            f.write(public)
        kid = key_id(load_public_key(public))
    typer.echo(f"created {out} (private) and {out}.pub (public), key id {kid}")
    typer.echo(f"configure it as audit.checkpoint.key: file:{out}")


@sessions_app.command("list")
def sessions_list(
    principal: Annotated[str | None, typer.Option("--principal")] = None,
    connection: Annotated[str | None, typer.Option("--connection")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1)] = 50,
    as_json: JsonFlag = False,
    config: ConfigPath = DEFAULT_CONFIG,
) -> None:
    """Recent sessions, newest first."""
    from wardgate.audit.query import list_sessions

    with _expected_errors(), _opened(config) as (_cfg, store):
        rows = list_sessions(store, limit=limit, principal=principal, connection=connection)
    if as_json:
        _print_json(rows)
        return
    table = Table("session", "started", "principal", "connection", "client", "actions", "blocked")
    table.add_column("status")
    for r in rows:
        who = r["principal"] + (f" (for {r['sponsor']})" if r["sponsor"] else "")
        table.add_row(
            r["id"],
            _when(r["started_at"]),
            who,
            r["connection"],
            r["client_addr"],
            str(r["action_count"]),
            str(r["blocked_count"]),
            r["status"] + (f": {r['error']}" if r["error"] else ""),
        )
    print_table(table)


@sessions_app.command("show")
def sessions_show(
    session_id: Annotated[str, typer.Argument()],
    as_json: JsonFlag = False,
    config: ConfigPath = DEFAULT_CONFIG,
) -> None:
    """One session: its summary and every action."""
    from wardgate.audit.query import get_session

    with _expected_errors(), _opened(config) as (_cfg, store):
        found = get_session(store, session_id)
        if found is None:
            _fail(f"no session {session_id!r} (see `wardgate sessions list`)")
    if as_json:
        _print_json(found)
        return
    out = Console(highlight=False, soft_wrap=True)
    s = found
    sponsor = f" (agent of {s['sponsor']})" if s["sponsor"] else ""
    out.print(f"session     {s['id']}  [{s['protocol']}]", markup=False)
    out.print(f"principal   {s['principal']} ({s['principal_kind']}){sponsor}", markup=False)
    out.print(f"connection  {s['connection']}", markup=False)
    tls = "TLS" if s["tls"] else "no TLS"
    app_name = f", {s['application_name']}" if s["application_name"] else ""
    out.print(f"client      {s['client_addr']} ({tls}{app_name})", markup=False)
    out.print(f"started     {_when(s['started_at'])}", markup=False)
    error = f": {s['error']}" if s["error"] else ""
    out.print(f"ended       {_when(s['ended_at'])} ({s['status']}{error})", markup=False)
    out.print(f"actions     {s['action_count']} ({s['blocked_count']} blocked)", markup=False)
    for a in s["actions"]:
        verdict = a.get("verdict") or {}
        rows = f", {a['rows']} rows" if a.get("rows") is not None else ""
        duration = a.get("duration_ms")
        took = f", {duration:.1f} ms" if isinstance(duration, int | float) else ""
        out.print("", markup=False)
        out.print(
            f"#{a.get('seq')}  {_when(a.get('ts'))}  {verdict.get('decision')} "
            f"by {verdict.get('rule')}  {a.get('status')}{rows}{took}",
            markup=False,
        )
        if verdict.get("decision") != "allow" and verdict.get("reason"):
            out.print(f"    reason: {verdict['reason']}", markup=False)
        if a.get("error"):
            state = f" [{a['sqlstate']}]" if a.get("sqlstate") else ""
            out.print(f"    error{state}: {a['error']}", markup=False)
        out.print("    " + str(a.get("text", "")).replace("\n", "\n    "), markup=False)
        if a.get("params"):
            out.print(f"    params: {json.dumps(a['params'], ensure_ascii=False)}", markup=False)
        if isinstance(a.get("result"), dict):
            for line in _result_lines(a["result"], a.get("rows")):
                out.print(line, markup=False)
        if a.get("trace_id"):
            out.print(f"    trace: {a['trace_id']}", markup=False)
    if s.get("reviews"):
        out.print("", markup=False)
        out.print("reviews filed from this session:", markup=False)
        for r in s["reviews"]:
            out.print(
                f"  {_when(r.get('ts'))}  {r.get('review')}  {r.get('type')} by {r.get('by')}",
                markup=False,
            )


def _result_lines(result: dict[str, Any], rows: Any) -> list[str]:
    """An action's recorded response, under its statement: the rows as JSON arrays
    (NULL is null), and how much of the result they are."""
    from wardgate.visible import visible

    if result.get("format") == "text/1":  # SSH exec output, MCP tool results
        size, kept = result.get("stream_bytes", 0), result.get("recorded_bytes", 0)
        extent = "all recorded" if result.get("complete") else f"first {kept} recorded"
        head = f"    response: {size} bytes ({extent}), sha256 {result.get('sha256')}"
        text = str(result.get("text", "")).rstrip("\n")
        return [head, *("      " + visible(line) for line in text.split("\n"))]
    recorded = result.get("recorded_rows", 0)
    total = rows if isinstance(rows, int) else "?"
    if result.get("complete"):
        extent = f"{recorded} rows, all recorded"
    else:
        extent = f"{total} rows, first {recorded} recorded (budget reached)"
    size = result.get("stream_bytes", 0)
    lines = [f"    result: {extent}; {size} bytes sent, sha256 {result.get('sha256')}"]
    for row in result.get("rows") or []:
        # visible(): a value must not move the cursor or reorder what an auditor reads.
        lines.append("      " + visible(json.dumps(row, ensure_ascii=False)))
    return lines


# -- policy: its own module, built on the helpers above ------------------------------

from wardgate.cli.policy import policy_app  # noqa: E402

app.add_typer(policy_app, name="policy")

from wardgate.cli.ssh import principal_app, replay  # noqa: E402

app.add_typer(principal_app, name="principal")
sessions_app.command("replay")(replay)

from wardgate.cli.users import user_app  # noqa: E402

app.add_typer(user_app, name="user")

from wardgate.cli.kubernetes import kubeconfig  # noqa: E402
from wardgate.cli.masking import masking_app  # noqa: E402

app.command("kubeconfig")(kubeconfig)

from wardgate.cli.operations import healthcheck, rotate_master_key  # noqa: E402

app.add_typer(masking_app, name="masking")

app.command("healthcheck")(healthcheck)
secret_app.command("rotate-master-key")(rotate_master_key)

# -- the approver's commands: they talk to the API (cli/reviews.py) -------------------

from wardgate.cli.reviews import (  # noqa: E402
    account_app,
    grants_app,
    proposals_app,
    reviews_app,
)

app.add_typer(account_app)  # login, logout, whoami: top-level commands
app.add_typer(reviews_app, name="reviews")
app.add_typer(grants_app, name="grants")
app.add_typer(proposals_app, name="proposals")


def main() -> None:  # pragma: no cover - `python -m wardgate.cli.main`
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
