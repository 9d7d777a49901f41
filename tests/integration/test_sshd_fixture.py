"""The real-sshd fixture works with both the OpenSSH client and asyncssh."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.integration.sshd import SshTarget, other_host_key_line, ssh_target  # noqa: F401
from wardgate.sshlib import asyncssh

pytestmark = pytest.mark.integration


def _known_hosts(host_key_line: str) -> tuple[list[asyncssh.SSHKey], list[Any], list[Any]]:
    return ([asyncssh.import_public_key(host_key_line)], [], [])


async def _run(
    target: SshTarget, command: str, *, client_keys: Any = None, host_key_line: str | None = None
) -> str:
    async with asyncssh.connect(
        target.host,
        target.port,
        username=target.user,
        client_keys=client_keys if client_keys is not None else [str(target.client_key_path)],
        known_hosts=_known_hosts(host_key_line or target.host_key_line),
        agent_path=None,
        config=[],
        connect_timeout=10,
    ) as conn:
        result = await conn.run(command, check=True, timeout=30)
        return str(result.stdout)


def test_openssh_client_runs_a_command(ssh_target: SshTarget) -> None:  # noqa: F811
    result = ssh_target.run("echo hello", check=True)
    assert result.stdout.strip() == "hello"


def test_openssh_client_can_use_home(ssh_target: SshTarget) -> None:  # noqa: F811
    path = ssh_target.home / "from-ssh.txt"
    ssh_target.run(f"printf 'written remotely' > {path}", check=True)
    assert path.read_text() == "written remotely"


def test_asyncssh_runs_a_command(ssh_target: SshTarget) -> None:  # noqa: F811
    assert asyncio.run(_run(ssh_target, "uname -s")).strip() == "Linux"


def test_asyncssh_rejects_a_wrong_host_key(ssh_target: SshTarget) -> None:  # noqa: F811
    wrong = other_host_key_line()
    assert wrong != ssh_target.host_key_line
    with pytest.raises(asyncssh.HostKeyNotVerifiable):
        asyncio.run(_run(ssh_target, "true", host_key_line=wrong))


def test_sshd_refuses_a_wrong_client_key(ssh_target: SshTarget) -> None:  # noqa: F811
    stranger = asyncssh.generate_private_key("ssh-ed25519")
    with pytest.raises(asyncssh.PermissionDenied):
        asyncio.run(_run(ssh_target, "true", client_keys=[stranger]))
