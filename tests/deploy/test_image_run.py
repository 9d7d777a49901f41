"""The image's run, outside a container runtime (CI has none): the Dockerfile's USER,
ENV, ENTRYPOINT and CMD, and the image's own config file, in a private mount namespace
where the root file system is read-only, only the state volume and /tmp are writable,
and the master key is a file under /run/secrets. The real gateway process, as uid 10001.

What this cannot show (the image's own files, its base, Docker's volume handling) is
checked on a real runtime by deploy/docker/verify-with-podman.sh (docs/deployment.md).
"""

from __future__ import annotations

import base64
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import missing, stop_process
from tests.deploy.test_dockerfile import ROOT, stages
from tests.integration.conftest import free_port

UID = 10001
VENV_BIN = Path(sys.executable).parent


def image_facts() -> tuple[str, dict[str, str], list[str], list[str]]:
    """USER, ENV, ENTRYPOINT + CMD and the HEALTHCHECK command of the final stage."""
    import json

    env: dict[str, str] = {}
    user, command, health = "", [], []
    for line in stages()[-1]:
        kind, _, rest = line.partition(" ")
        if kind == "USER":
            user = rest
        elif kind == "ENV":
            for item in shlex.split(rest):
                name, _, value = item.partition("=")
                env[name] = value
        elif kind in ("ENTRYPOINT", "CMD"):
            command += json.loads(rest)
        elif kind == "HEALTHCHECK":
            health = json.loads(rest.split("CMD ", 1)[1])
    return user, env, command, health


SANDBOX = r"""
set -eu
S="$1"; KEEP="$2"; shift 2
# /etc, /var and /run writable in this namespace only, so the image's paths can exist.
for d in etc var run; do
    mkdir -p "$S/$d-up" "$S/$d-work"
    mount -t overlay overlay -o "lowerdir=/$d,upperdir=$S/$d-up,workdir=$S/$d-work" "/$d"
done
mkdir -p /etc/wardgate /var/lib/wardgate /run/secrets
cp "$S/wardgate.yaml" /etc/wardgate/wardgate.yaml
mount --bind "$S/state" /var/lib/wardgate              # the volume
if [ -f "$S/master.key" ]; then cp "$S/master.key" /run/secrets/wardgate_master_key; fi
chown -R {uid}:{uid} /run/secrets; chmod 0400 /run/secrets/* 2>/dev/null || true
# The interpreter lives under /root (mode 0700 here): keep only it reachable.
if [ -d /root/.pyenv ]; then
    mkdir -p "$S/pyenv"; mount --bind /root/.pyenv "$S/pyenv"
    mount -t tmpfs -o mode=0755 tmpfs /root; mkdir /root/.pyenv
    mount --bind "$S/pyenv" /root/.pyenv
fi
for m in /etc /var /run; do mount -o remount,ro "$m"; done   # read-only again; the
# A checkout (and its venv) under /tmp would vanish under the empty tmpfs: the old /tmp
# stays reachable at /mnt just long enough to bind those folders back.
if [ -n "$KEEP" ]; then mount --bind /tmp /mnt; fi
mount -t tmpfs -o mode=1777 tmpfs /tmp                  # volume stays writable; --tmpfs /tmp
for d in $KEEP; do mkdir -p "$d"; mount --bind "/mnt/${d#/tmp/}" "$d"; done
if [ -n "$KEEP" ]; then umount /mnt; fi
mount -o remount,bind,ro /                              # --read-only
exec setpriv --reuid={uid} --regid={uid} --clear-groups --no-new-privs \
    --inh-caps=-all --bounding-set=-all "$@"
"""


def _under_tmp() -> str:
    """The checkout and the venv, when they live under /tmp (a clone made there)."""
    dirs = {str(p) for p in (ROOT, Path(sys.prefix)) if p.is_relative_to("/tmp")}
    return " ".join(sorted(dirs))


class Sandbox:
    def __init__(self, tmp: Path, with_key: bool = True) -> None:
        if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("setpriv"):
            missing("the image-run test needs root, unshare and setpriv (util-linux)")
        self.dir = tmp
        (tmp / "state").mkdir(mode=0o700)
        os.chown(tmp / "state", UID, UID)
        shutil.copy(ROOT / "deploy" / "docker" / "wardgate.yaml", tmp / "wardgate.yaml")
        if with_key:
            (tmp / "master.key").write_text(base64.b64encode(os.urandom(32)).decode() + "\n")
        self.api, self.pg = free_port(), free_port()
        user, image_env, self.command, self.health = image_facts()
        assert user == f"{UID}:{UID}"
        self.env = {
            **image_env,
            # The image's venv is /opt/wardgate; here it is the test's own.
            "PATH": image_env["PATH"]
            .replace("/opt/wardgate/bin", str(VENV_BIN))
            .replace("$PATH", "/usr/bin:/bin"),
            "HOME": "/var/lib/wardgate",
            "WARDGATE_LISTEN_API": f"127.0.0.1:{self.api}",
            "WARDGATE_LISTEN_POSTGRES": f"127.0.0.1:{self.pg}",
        }

    def argv(self, command: list[str]) -> list[str]:
        env = [f"{k}={v}" for k, v in self.env.items()]
        script = SANDBOX.replace("{uid}", str(UID))
        return [
            "unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sandbox",
            str(self.dir), _under_tmp(), "env", "-i", *env, *command,
        ]  # fmt: skip

    def enter(self, pid: int, command: list[str]) -> subprocess.CompletedProcess[str]:
        """Run ``command`` in the running gateway's namespace, as its user."""
        env = [f"{k}={v}" for k, v in self.env.items()]
        return subprocess.run(
            ["nsenter", f"--target={pid}", "--mount", "setpriv", f"--reuid={UID}",
             f"--regid={UID}", "--clear-groups", "env", "-i", *env, *command],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[Sandbox]:
    tmp_path.chmod(0o755)
    yield Sandbox(tmp_path)


def test_the_image_entrypoint_runs_non_root_on_a_read_only_root(sandbox: Sandbox) -> None:
    log = open(sandbox.dir / "gateway.log", "wb")  # noqa: SIM115 - owned by the process
    proc = subprocess.Popen(sandbox.argv(sandbox.command), stdout=log, stderr=subprocess.STDOUT)
    log.close()
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (sandbox.dir / "gateway.log").read_text()
            try:
                if (
                    httpx.get(f"http://127.0.0.1:{sandbox.api}/readyz", timeout=2).status_code
                    == 200
                ):
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, (sandbox.dir / "gateway.log").read_text()
            time.sleep(0.2)
        status = Path(f"/proc/{proc.pid}/status").read_text()
        uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
        assert uid_line.split()[1:] == [str(UID)] * 4  # real, effective, saved, fs
        cap_line = next(line for line in status.splitlines() if line.startswith("CapEff:"))
        assert int(cap_line.split()[1], 16) == 0

        # The image's HEALTHCHECK, as the image's user, in the gateway's view of the disk.
        health = sandbox.enter(proc.pid, sandbox.health)
        assert health.returncode == 0, health.stderr
        writes = sandbox.enter(proc.pid, ["sh", "-c", "touch /opt/x || touch /etc/wardgate/x"])
        assert writes.returncode != 0 and "Read-only file system" in writes.stderr
        assert (
            sandbox.enter(proc.pid, ["touch", "/var/lib/wardgate/probe", "/tmp/x"]).returncode == 0
        )
        metrics = httpx.get(f"http://127.0.0.1:{sandbox.api}/metrics", timeout=5)
        assert "wardgate_recorder_queue_depth" in metrics.text

        state = sandbox.dir / "state"
        for name in ("wardgate.db", "tls/server.crt", "wardgate.pid"):
            assert (state / name).stat().st_uid == UID, name
        assert not (state / "master.key").exists()  # the key came from /run/secrets
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        assert "draining" in (sandbox.dir / "gateway.log").read_text()
    finally:
        stop_process(proc)


def test_without_a_master_key_the_image_refuses_to_start(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    box = Sandbox(tmp_path, with_key=False)
    result = subprocess.run(box.argv(box.command), capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    out = result.stdout + result.stderr
    assert "master_key: cannot read /run/secrets/wardgate_master_key" in out, out
    assert "Traceback" not in out
    assert not (tmp_path / "state" / "master.key").exists()  # never generated in the volume
