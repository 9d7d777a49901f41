"""Commands for running a gateway: ``wardgate healthcheck`` (a container's HEALTHCHECK) and
``wardgate secret rotate-master-key`` (docs/operations.md)."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Annotated

import typer

from wardgate.cli.main import (
    DEFAULT_CONFIG,
    ConfigPath,
    _config,
    _expected_errors,
    _fail,
    _opened,
)

HEALTHCHECK_TIMEOUT = 5.0


def healthcheck(
    live: Annotated[
        bool, typer.Option("--live", help="Only ask whether the process answers (/healthz).")
    ] = False,
    config: ConfigPath = DEFAULT_CONFIG,
) -> None:
    """Exit 0 when this machine's gateway is ready for clients (/readyz on its API port),
    1 with the reasons when it is not."""
    with _expected_errors():
        addr = _config(config).listen_address("api")
        if addr is None:
            _fail("the API listener is off (listen.api): there is nothing to probe")
    host, port = addr
    # A wildcard listener is probed on loopback, the address every container has.
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}/{'healthz' if live else 'readyz'}"
    try:
        with urllib.request.urlopen(url, timeout=HEALTHCHECK_TIMEOUT):
            typer.echo(f"ok: {url}")
            return
    except urllib.error.HTTPError as exc:
        try:
            problems = json.loads(exc.read()).get("problems") or [f"HTTP {exc.code}"]
        except ValueError:
            problems = [f"HTTP {exc.code}"]
    except (OSError, ValueError) as exc:
        problems = [f"no answer from {url}: {getattr(exc, 'reason', exc)}"]
    for problem in problems:
        typer.echo(f"not ready: {problem}", err=True)
    raise typer.Exit(1)


def rotate_master_key(
    new_key_file: Annotated[
        Path,
        typer.Option(
            "--new-key-file",
            help="The new master key (base64 of 32 bytes), e.g. a mounted Kubernetes Secret.",
        ),
    ],
    generate: Annotated[
        bool,
        typer.Option("--generate", help="Write a new random key to --new-key-file first."),
    ] = False,
    config: ConfigPath = DEFAULT_CONFIG,
) -> None:
    """Re-encrypt every stored secret under a new master key, in one transaction.

    The current key comes from where the gateway takes it (WARDGATE_MASTER_KEY, the
    config's master_key, or data_dir/master.key). Token lookups and pseudonyms do not
    change. Afterwards restart every gateway with the new key."""
    from wardgate.vault.keyring import KeyringError
    from wardgate.vault.keyring import rotate_master_key as rotate
    from wardgate.vault.keys import ENV_VAR, KEY_FILE, decode_key, load_master_key

    with _expected_errors():
        if generate:
            _write_new_key(new_key_file)
        try:
            new = decode_key(new_key_file.read_bytes(), str(new_key_file))
        except OSError as exc:
            _fail(f"cannot read the new master key {new_key_file}: {exc.strerror}")
        with _opened(config) as (cfg, store):
            current = load_master_key(cfg)
            try:
                done = rotate(store, current, new)
            except KeyringError as exc:
                _fail(str(exc))
            embedded = not os.environ.get(ENV_VAR) and not cfg.master_key
            key_path = cfg.data_path / KEY_FILE
        typer.echo(
            f"re-encrypted {done.secrets} secrets under the new master key; "
            f"carried {', '.join(done.carried)} (tokens and pseudonyms are unchanged)"
        )
        if embedded:
            # The gateway reads its key from data_dir: put the new one there now.
            _replace_key_file(key_path, new_key_file.read_bytes())
            typer.echo(f"installed the new key as {key_path}; restart the gateway")
        else:
            typer.echo(
                "now give every gateway the new key (WARDGATE_MASTER_KEY or master_key) and "
                "restart them; until then, secret: references fail on gateways still "
                "running with the old key. Destroy the old key once all run with the new one."
            )


def _write_new_key(path: Path) -> None:
    from wardgate.vault.keys import generate_key_text

    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        _fail(f"{path} exists: --generate writes a new key only to a new file")
    with os.fdopen(fd, "w") as out:
        out.write(generate_key_text() + "\n")


def _replace_key_file(path: Path, data: bytes) -> None:
    partial = path.with_name(f".{path.name}.new")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.replace(partial, path)


__all__ = ["DEFAULT_CONFIG", "healthcheck", "rotate_master_key"]
