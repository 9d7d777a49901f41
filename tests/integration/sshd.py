"""A real OpenSSH server (Debian's ``/usr/sbin/sshd``) on a loopback port, for tests of
the SSH gateway.

Everything lives in a session temp dir: a fresh ed25519 host key, a private
``authorized_keys`` holding a fresh ed25519 client key for the current OS user (root
under CI), a minimal ``sshd_config`` that listens on 127.0.0.1 only, the pid file and
the server log. The system's own sshd configuration and ``~/.ssh`` are never read or
written (``StrictModes no`` lets sshd accept the temp dir's ownership and modes).

``ssh_target`` (session-scoped) yields an :class:`SshTarget`; its :meth:`SshTarget.run`
runs a command over the OpenSSH client directly to the server (pinned host key, batch
mode) for test setup. :func:`other_host_key_line` gives a different host key for
host-key-mismatch tests.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import missing, stop_process

SSHD = "/usr/sbin/sshd"
PRIVSEP_DIR = Path("/run/sshd")
START_TIMEOUT = 10.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        missing(f"{name} is not installed (apt-get install openssh-client)")
    assert path is not None
    return path


def ssh_keygen(private_key: Path, comment: str = "wardgate-test") -> str:
    """Generate an unencrypted ed25519 key pair at ``private_key`` (+ ``.pub``); return
    the public key line ``ssh-ed25519 AAAA... comment``."""
    private_key.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            _tool("ssh-keygen"),
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            comment,
            "-f",
            str(private_key),
        ],
        check=True,
        capture_output=True,
        stdin=subprocess.DEVNULL,
        timeout=30,
    )
    return private_key.with_name(private_key.name + ".pub").read_text().strip()


def key_line(public_key: str) -> str:
    """``type base64`` of a public key line, without its comment."""
    kind, blob = public_key.split()[:2]
    return f"{kind} {blob}"


def other_host_key_line() -> str:
    """A freshly generated ed25519 public key line (``ssh-ed25519 AAAA...``) that is
    not the test server's host key."""
    with tempfile.TemporaryDirectory(prefix="wardgate-otherkey-") as tmp:
        return key_line(ssh_keygen(Path(tmp) / "other_host_key", "other-host"))


@dataclass
class SshTarget:
    """A running test sshd and what a test needs to reach it."""

    host: str
    port: int
    user: str
    client_key_path: Path
    client_public_key: str
    host_key_line: str
    home: Path
    known_hosts_path: Path
    log_path: Path

    @property
    def log(self) -> str:
        """The server's log so far (LogLevel VERBOSE)."""
        return self.log_path.read_text(errors="replace")

    def ssh_args(self) -> list[str]:
        """An OpenSSH client command line up to (not including) the remote command:
        no user/system config, no agent, the client key only, the pinned host key."""
        return [
            _tool("ssh"),
            "-F",
            "/dev/null",
            "-p",
            str(self.port),
            "-i",
            str(self.client_key_path),
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "IdentityAgent=none",
            "-o",
            f"UserKnownHostsFile={self.known_hosts_path}",
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "ConnectTimeout=10",
            "-o",
            "LogLevel=ERROR",
            "-l",
            self.user,
            self.host,
        ]

    def run(
        self,
        command: str,
        *,
        check: bool = False,
        input: str | None = None,
        timeout: float = 60,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``command`` on the target over OpenSSH ``ssh`` (text mode, output captured).
        ``check=True`` raises AssertionError with the output on a non-zero exit."""
        result = subprocess.run(
            [*self.ssh_args(), command],
            capture_output=True,
            text=True,
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"ssh {command!r} failed ({result.returncode}):\n"
                f"{result.stdout}\n{result.stderr}\n--- sshd log ---\n{self.log}"
            )
        return result


def _sshd_config(workdir: Path, port: int, host_key: Path, authorized_keys: Path) -> str:
    return textwrap.dedent(
        f"""\
        ListenAddress 127.0.0.1
        Port {port}
        HostKey {host_key}
        PidFile {workdir / "sshd.pid"}
        AuthorizedKeysFile {authorized_keys}
        PubkeyAuthentication yes
        PasswordAuthentication no
        KbdInteractiveAuthentication no
        PermitRootLogin prohibit-password
        StrictModes no
        UsePAM no
        UseDNS no
        PrintMotd no
        X11Forwarding no
        AllowTcpForwarding yes
        MaxStartups 100
        MaxSessions 50
        Subsystem sftp internal-sftp
        AcceptEnv LANG LC_* BASH_ENV ENV PS4 PROMPT_COMMAND PATH
        LogLevel VERBOSE
        """
    )


def _wait_listening(proc: subprocess.Popen[bytes], port: int, log_path: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(
                f"sshd exited with {proc.returncode}:\n{log_path.read_text(errors='replace')}"
            )
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
                s.settimeout(2)
                if s.recv(4).startswith(b"SSH-"):  # the server banner, not just a socket
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError(
        f"sshd did not accept connections on 127.0.0.1:{port} within {START_TIMEOUT:.0f} s:\n"
        f"{log_path.read_text(errors='replace')}"
    )


@pytest.fixture(scope="session")
def ssh_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshTarget]:
    """A real sshd on 127.0.0.1:<free port> for the whole test session."""
    if not os.path.exists(SSHD):
        missing(f"{SSHD} is not installed (apt-get install openssh-server)")
    _tool("ssh")

    workdir = tmp_path_factory.mktemp("sshd")
    home = workdir / "home"
    home.mkdir()
    host_key = workdir / "ssh_host_ed25519_key"
    host_key_line = key_line(ssh_keygen(host_key, "wardgate-test-host"))
    client_key = workdir / "client_ed25519"
    client_public_key = ssh_keygen(client_key, "wardgate-test-client")
    authorized_keys = workdir / "authorized_keys"
    authorized_keys.write_text(client_public_key + "\n")

    port = free_port()
    known_hosts = workdir / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{port} {host_key_line}\n")
    config = workdir / "sshd_config"
    config.write_text(_sshd_config(workdir, port, host_key, authorized_keys))

    # sshd refuses to start without its privilege separation directory (only root
    # can create it; a non-root sshd does not need it).
    if os.geteuid() == 0:
        PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)

    log_path = workdir / "sshd.log"
    log = open(log_path, "ab")  # noqa: SIM115 - owned by the process
    try:
        proc = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )
    finally:
        log.close()
    try:
        _wait_listening(proc, port, log_path)
        yield SshTarget(
            host="127.0.0.1",
            port=port,
            user=pwd.getpwuid(os.getuid()).pw_name,
            client_key_path=client_key,
            client_public_key=client_public_key,
            host_key_line=host_key_line,
            home=home,
            known_hosts_path=known_hosts,
            log_path=log_path,
        )
    finally:
        stop_process(proc)
