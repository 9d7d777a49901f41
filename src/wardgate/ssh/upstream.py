"""Dialling an SSH target with the credential the gateway holds, and the gateway's own
SSH host key.

The target's host key is pinned in the configuration: any other key is refused
(``HostKeyNotVerifiable``), never accepted on first use. The credential is resolved
here, handed to asyncssh, and dropped.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
from pathlib import Path
from typing import Any

from wardgate.config import Config
from wardgate.metrics import timed_dial
from wardgate.sshlib import HOST_KEY_ALGS, SIGNATURE_ALGS, asyncssh
from wardgate.vault.secrets import SecretError, Vault, resolve_secret

log = logging.getLogger("wardgate.ssh")


class TargetUnavailable(Exception):
    """The target could not be reached or refused us; ``reason`` is safe to show."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def gateway_host_key(config: Config) -> asyncssh.SSHKey:
    """The gateway's SSH host key (``data_dir/ssh_host_ed25519_key``), generated once."""
    directory = config.data_path
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = directory / "ssh_host_ed25519_key"
    # Workers start at once: one generates under the lock, the others then read it.
    with open(directory / ".ssh-key.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not path.exists():
            key = asyncssh.generate_private_key("ssh-ed25519")
            key.write_private_key(str(path))
            path.chmod(0o600)
            log.info("generated the gateway's SSH host key at %s", path)
        return asyncssh.read_private_key(str(path))


@timed_dial("ssh")
async def dial_target(config: Config, vault: Vault, name: str) -> asyncssh.SSHClientConnection:
    conn = config.connections[name]
    target = conn.ssh
    try:
        key_text, password = await asyncio.to_thread(_credentials, config, vault, name)
    except SecretError as exc:
        log.error("connection %r: %s", name, exc)
        raise TargetUnavailable("the gateway cannot read its credential for it") from None
    options: dict[str, Any] = {
        "username": target.user,
        "known_hosts": ([asyncssh.import_public_key(target.host_key)], [], []),
        "server_host_key_algs": list(HOST_KEY_ALGS),
        "signature_algs": list(SIGNATURE_ALGS),
        "client_keys": [asyncssh.import_private_key(key_text)] if key_text else [],
        "password": password,
        "agent_path": None,  # never the gateway host's own agent
        "config": [],  # nor its ~/.ssh/config
        "connect_timeout": config.limits.connect_timeout,
        "preferred_auth": "publickey,password" if key_text else "password",
    }
    try:
        return await asyncssh.connect(target.host, target.port, **options)
    except asyncssh.HostKeyNotVerifiable:
        log.error(
            "connection %r: the target %s:%d presented a host key other than the pinned one",
            name,
            target.host,
            target.port,
        )
        raise TargetUnavailable(
            "its host key does not match the one pinned in the gateway's configuration; "
            "refusing to connect (an administrator must check the host and update host_key)"
        ) from None
    except asyncssh.PermissionDenied:
        raise TargetUnavailable("it rejected the gateway's stored credential") from None
    except (OSError, asyncssh.Error, TimeoutError) as exc:
        log.warning("connection %r: cannot reach %s:%d: %s", name, target.host, target.port, exc)
        raise TargetUnavailable("it is not reachable") from None
    finally:
        del key_text, password


def _credentials(config: Config, vault: Vault, name: str) -> tuple[str | None, str | None]:
    target = config.connections[name].ssh
    base = Path(config.base_dir)
    key = resolve_secret(target.private_key, vault, base_dir=base) if target.private_key else None
    password = resolve_secret(target.password, vault, base_dir=base) if target.password else None
    return key, password
