"""The text an exec request sends: the command, whole, run by bash under a fixed
environment, whatever the login shell (dash here) and its environment hold."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from wardgate.ssh.session import FIXED_PATH, fixed_environment

COMMANDS = [
    "echo 'single' \"double\" $'\\x41' `echo back` $((6*7))",
    "printf '%s\\n' 'it'\\''s' \"a'b\"",
    "echo line1\necho line2",
    "echo ${BASH_VERSION:+bash}",
]


@pytest.mark.parametrize("command", COMMANDS)
def test_the_command_reaches_bash_whole(command: str, tmp_path: Path) -> None:
    expected = subprocess.run(["bash", "-c", command], capture_output=True, text=True).stdout
    sent = fixed_environment(command, "xterm-256color")
    got = subprocess.run(
        ["dash", "-c", sent], capture_output=True, text=True, env={"HOME": str(tmp_path)}
    )
    assert got.stdout == expected, got.stderr


def test_the_login_environment_does_not_reach_the_command(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    rc = tmp_path / "rc.sh"
    rc.write_text(f"touch {marker}\n")
    hostile = {
        "HOME": str(tmp_path), "BASH_ENV": str(rc), "ENV": str(rc), "PS4": "$(id)",
        "PATH": str(tmp_path), "LD_PRELOAD": "/nonexistent.so", "IFS": "/",
    }  # fmt: skip
    sent = fixed_environment("env; bash -c true", "bad term; id")
    out = subprocess.run(["/bin/dash", "-c", sent], capture_output=True, text=True, env=hostile)
    env = dict(line.partition("=")[::2] for line in out.stdout.splitlines())
    assert env["PATH"] == FIXED_PATH and env["HOME"] == str(tmp_path)
    assert not {"BASH_ENV", "ENV", "PS4", "LD_PRELOAD", "IFS", "TERM"} & env.keys()
    assert env["PAGER"] == env["SYSTEMD_PAGER"] == "cat"
    assert not marker.exists()
