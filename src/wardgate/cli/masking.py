"""``wardgate masking discover CONNECTION``: sample a connection's columns, propose column
masking rules with their evidence (docs/masking.md, "Discovery")."""

from __future__ import annotations

import asyncio
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from wardgate.cli.main import DEFAULT_CONFIG, ConfigPath, _expected_errors, _fail, _opened, _vault
from wardgate.config import Config, parse_config

masking_app = typer.Typer(help="Masking: discover sensitive columns.", no_args_is_help=True)


@dataclass(frozen=True)
class _Credentials:
    """What dialling a connection needs (postgres.internal.HasCredentials)."""

    config: Config
    vault: Any


@masking_app.command("discover")
def discover(
    connection: Annotated[str, typer.Argument(help="A postgres connection of the configuration.")],
    rows: Annotated[
        int, typer.Option("--rows", min=1, max=10_000, help="Rows sampled per table.")
    ] = 200,
    timeout: Annotated[
        float, typer.Option("--statement-timeout", min=0.1, help="Seconds per statement.")
    ] = 5.0,
    min_share: Annotated[
        float,
        typer.Option("--min-share", min=0.0, max=1.0, help="Share of values to propose a column."),
    ] = 0.2,
    strategy: Annotated[
        str, typer.Option("--strategy", help="Strategy of the proposed rule.")
    ] = "partial",
    out: Annotated[
        str | None, typer.Option("--out", help="Write the proposal to this file.")
    ] = None,
    apply: Annotated[
        bool, typer.Option("--apply", help="Add the proposed rule to the configuration file.")
    ] = False,
    config: ConfigPath = DEFAULT_CONFIG,
) -> None:
    """Sample every user column of CONNECTION (read-only, bounded rows, statement timeout),
    run the detectors, and print proposed column rules with their evidence as YAML."""
    from wardgate.masking.discovery import ApplyError, apply_to_config, propose, render, score
    from wardgate.postgres.discover import DiscoveryFailed, sample_columns

    if strategy not in ("redact", "partial", "hash", "pseudonym"):
        raise typer.BadParameter("redact, partial, hash or pseudonym", param_hint="--strategy")
    with _expected_errors():
        with _opened(config) as (cfg, store):
            if connection not in cfg.connections:
                _fail(f"unknown connection {connection!r}")
            creds = _Credentials(cfg, _vault(cfg, store))
            try:
                samples, skipped = asyncio.run(
                    sample_columns(creds, connection, rows=rows, statement_timeout=timeout)
                )
            except DiscoveryFailed as exc:
                _fail(f"discovery on {connection!r} failed: {exc}")
        sensitive = [c for r in cfg.masking.rules if r.sensitive for c in r.columns]
        silenced = [c for r in cfg.masking.rules if not r.sensitive for c in r.columns]
        proposal = propose(
            connection,
            [score(s) for s in samples],
            rows_per_column=rows,
            sensitive_globs=sensitive,
            silenced_globs=silenced,
            min_share=min_share,
        )
        text = render(proposal, strategy)
        if skipped:  # said in the proposal and on stderr: its columns were not looked at
            first, _, rest = text.partition("\n")
            said = [f"not sampled: {table}: {why}" for table, why in skipped]
            text = "\n".join([first, *(f"# {line}" for line in said), rest])
            for line in said:
                typer.echo(line, err=True)
        if out:
            Path(out).write_text(text, encoding="utf-8")
        else:
            typer.echo(text, nl=False)
        if apply:
            path = Path(config)
            try:
                new = apply_to_config(path.read_text(encoding="utf-8"), proposal, strategy)
            except ApplyError as exc:
                _fail(f"not applied: {exc}")
            if new is not None:
                parse_config(new, path)  # never write a configuration that does not load
                _write_atomically(path, new)
                typer.echo(
                    f"applied: {len(proposal.proposed)} columns in rule"
                    f" discovered-{connection} of {path}",
                    err=True,
                )


def _write_atomically(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, path.stat().st_mode & 0o777)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
