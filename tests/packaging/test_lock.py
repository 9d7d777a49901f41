"""The dependency locks agree with pyproject.toml; licence and changelog are shipped."""

from __future__ import annotations

import importlib.util
import tomllib
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _lockfile() -> ModuleType:
    spec = importlib.util.spec_from_file_location("lockfile", ROOT / "scripts" / "lockfile.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


lockfile = _lockfile()


@pytest.mark.parametrize("name", sorted(lockfile.LOCKS))
def test_lock_agrees_with_pyproject(name: str) -> None:
    assert lockfile.problems(name) == [], "run scripts/lock to refresh requirements/"


@pytest.mark.parametrize("name", sorted(lockfile.LOCKS))
def test_every_pin_is_exact_and_hashed(name: str) -> None:
    text = lockfile.lock_path(name).read_text()
    pins = lockfile.pins(text)
    assert len(pins) > 40
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith(("#", "--hash=sha256:")):
            continue
        assert "==" in stripped, f"not an exact pin: {line!r}"
    # The packages whose drift broke fresh installs are pinned like the rest.
    for package in ("cryptography", "asyncssh", "pglast", "setuptools"):
        assert package in pins


def test_a_stale_lock_is_detected(tmp_path: Path) -> None:
    """Editing a dependency in pyproject without refreshing the lock is reported."""
    pyproject = tmp_path / "pyproject.toml"
    text = (ROOT / "pyproject.toml").read_text()
    pyproject.write_text(text.replace('"pglast>=7,<8"', '"pglast>=99"'))
    lines = lockfile.lock_inputs("runtime", pyproject)
    assert "pglast>=99" in lines
    assert lockfile.stamp("runtime", lines) != lockfile.stamp(
        "runtime", lockfile.lock_inputs("runtime")
    )


def test_licence_file_matches_pyproject() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0"
    assert project["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text


def test_changelog_names_the_current_version_or_unreleased() -> None:
    text = (ROOT / "CHANGELOG.md").read_text()
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert "## Unreleased" in text or f"## {version}" in text
