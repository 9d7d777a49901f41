"""A built wheel is complete: installed (not editable) into a clean venv from the lock,
it reports its version, serves the web UI with the terminal replay player, and
`wardgate serve -c examples/quickstart.yaml` starts without a warning."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest

from tests.conftest import missing, stop_process
from tests.integration.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
PLAYER = "wardgate/web/assets/node_modules/asciinema-player/dist/bundle/asciinema-player.min.js"
# Building the wheel and installing the locked runtime set into a fresh venv take
# minutes on a loaded 2-core machine: more than the suite's per-test default.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not (ROOT / "src" / PLAYER).exists():
        missing("the web UI assets are not installed (scripts/_env.sh: ensure_ui_assets)")
    out = tmp_path_factory.mktemp("wheel")
    build = tmp_path_factory.mktemp("build")
    # A copy of the tree, so that setuptools' build/ never lands in the checkout.
    source = build / "src"
    top = {".venv", ".git", "build", "dist", "tests", "test-output"}
    shutil.copytree(
        ROOT,
        source,
        ignore=lambda folder, names: [
            n for n in names if (Path(folder) == ROOT and n in top) or n.endswith(".egg-info")
        ],
    )
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "-w", str(out), str(source)],
        check=True, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    (found,) = out.glob("wardgate-*.whl")
    return found


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    venv = tmp_path_factory.mktemp("venv") / "v"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "-q", "--disable-pip-version-check"]
    subprocess.run(
        [*pip, "install", "--require-hashes", "--no-deps", "-r", str(ROOT / "requirements/runtime.txt")],
        check=True, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    subprocess.run([*pip, "install", "--no-deps", str(wheel)], check=True, timeout=300)
    return venv


def test_wheel_carries_the_ui_the_player_the_migrations_and_the_licence(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    assert PLAYER in names
    assert "wardgate/web/assets/node_modules/asciinema-player/LICENSE" in names
    assert any(n.startswith("wardgate/web/templates/") for n in names)
    assert any(n.startswith("wardgate/store/migrations/versions/") for n in names)
    assert any(re.fullmatch(r"wardgate-[^/]+\.dist-info/licenses/LICENSE", n) for n in names)


def test_version_from_the_installed_wheel(venv: Path) -> None:
    out = subprocess.run(
        [str(venv / "bin" / "wardgate"), "--version"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert re.fullmatch(r"wardgate \d+\.\d+\.\d+\S*\n", out.stdout)
    assert out.stderr == ""


def test_quickstart_serves_from_the_wheel_without_a_warning(venv: Path, tmp_path: Path) -> None:
    # The example as shipped; its relative store and data_dir land in this folder.
    config = tmp_path / "quickstart.yaml"
    shutil.copy(ROOT / "examples" / "quickstart.yaml", config)
    api, pg = free_port(), free_port()
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "WARDGATE_LISTEN_API": f"127.0.0.1:{api}",
        "WARDGATE_LISTEN_POSTGRES": f"127.0.0.1:{pg}",
    }
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(venv / "bin" / "wardgate"), "serve", "-c", str(config)],
            cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        body = b""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            try:
                url = f"http://127.0.0.1:{api}/ui/static/vendor/asciinema-player/asciinema-player.min.js"
                with urllib.request.urlopen(url, timeout=2) as response:
                    body = response.read()
                break
            except OSError:
                time.sleep(0.2)
        assert len(body) > 100_000, "the replay player is not served from the wheel"
        with urllib.request.urlopen(f"http://127.0.0.1:{api}/ui/login", timeout=5) as response:
            assert b"<form" in response.read()
    finally:
        stop_process(proc, grace=15)
    text = log.read_text()
    assert not re.search(r"\b\w*Warning\b", text), text
    assert "Traceback" not in text, text
