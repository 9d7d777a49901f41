#!/usr/bin/env python3
"""The dependency locks: requirements/runtime.txt, runtime-otel.txt and dev.txt.

    scripts/lock            re-resolve every lock from pyproject.toml (needs PyPI)
    scripts/lock --check    exit 1 if pyproject.toml and the locks disagree (offline)

Each lock pins every transitive package with the sha256 of every file PyPI has for
that version (one universal resolution, valid on Linux, macOS and Windows for
Python >= 3.11), made by ``uv pip compile --universal --generate-hashes``. Standard
pip installs it (``pip install --require-hashes --no-deps -r ...``), so a machine
that installs wardgate needs no uv; only refreshing the lock does.

A lock's first line records the sha256 of the requirements it was made from
(pyproject's build requirements, dependencies and, for dev, the extras below), so
any edit to those sections shows up as a stale lock; ``check`` also proves every
requirement is met by its pin.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOCKS = {
    # scripts/serve and the container image: what running the gateway needs (a
    # PostgreSQL store included), plus the build backend for the project's own
    # (--no-build-isolation) install.
    "runtime": ("postgres-store",),
    # The image built with --build-arg WARDGATE_LOCK=runtime-otel: OpenTelemetry too.
    "runtime-otel": ("postgres-store", "otel"),
    # scripts/test and CI: everything else a developer uses.
    "dev": ("test", "dev", "postgres-store", "autogen", "otel"),
}
PIN = re.compile(
    r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;\\]+)\s*(?:;\s*([^\\]+?))?\s*\\?$"
)


def lock_path(name: str) -> Path:
    return ROOT / "requirements" / f"{name}.txt"


def lock_inputs(name: str, pyproject: Path = ROOT / "pyproject.toml") -> list[str]:
    """The requirement lines a lock is made from, in a stable order."""
    data = tomllib.loads(pyproject.read_text())
    lines = list(data["build-system"]["requires"]) + list(data["project"]["dependencies"])
    for extra in LOCKS[name]:
        lines += data["project"]["optional-dependencies"][extra]
    return lines


def input_digest(lines: list[str]) -> str:
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def stamp(name: str, lines: list[str]) -> str:
    return f"# wardgate lock of {name} extras=[{','.join(LOCKS[name])}] input-sha256={input_digest(lines)}"


def pins(text: str) -> dict[str, list[tuple[str, str | None]]]:
    """Canonical name -> [(version, marker or None)] of a lock's pinned lines."""
    found: dict[str, list[tuple[str, str | None]]] = {}
    for line in text.splitlines():
        match = PIN.match(line.strip())
        if match:
            found.setdefault(canonical(match[1]), []).append((match[2], match[3]))
    return found


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def problems(name: str) -> list[str]:
    """Why the lock ``name`` disagrees with pyproject.toml (empty when it agrees)."""
    from packaging.requirements import Requirement

    path = lock_path(name)
    if not path.exists():
        return [f"{path.relative_to(ROOT)} is missing"]
    text = path.read_text()
    lines = lock_inputs(name)
    out: list[str] = []
    if text.splitlines()[0] != stamp(name, lines):
        out.append(
            f"{path.relative_to(ROOT)} was made from other requirements than pyproject.toml's"
        )
    locked = pins(text)
    for line in lines:
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue  # not for this platform: the universal lock carries it with its marker
        versions = locked.get(canonical(req.name))
        if not versions:
            out.append(f"{req.name} (from {line!r}) is not in {path.name}")
        elif not any(req.specifier.contains(v, prereleases=True) for v, _ in versions):
            got = ", ".join(v for v, _ in versions)
            out.append(f"{req.name}=={got} in {path.name} does not satisfy {line!r}")
    for pinned in locked:
        if not _entry_lines(text, pinned):
            out.append(f"{pinned} in {path.name} has no hash")
    return out


def _entry_lines(text: str, package: str) -> list[str]:
    lines = text.splitlines()
    for i, line in enumerate(lines):
        match = PIN.match(line.strip())
        if match and canonical(match[1]) == package:
            out = []
            for follow in lines[i + 1 :]:
                follow = follow.strip()
                if not follow.startswith("--hash="):
                    break
                out.append(follow)
            return out
    return []


def compile_lock(name: str) -> None:
    lines = lock_inputs(name)
    uv = Path(sys.executable).with_name("uv")
    with tempfile.NamedTemporaryFile("w", suffix=".in") as source:
        source.write("\n".join(lines) + "\n")
        source.flush()
        result = subprocess.run(
            [
                str(uv), "pip", "compile", source.name,
                "--universal", "--python-version", "3.11", "--generate-hashes",
                "--no-header", "--annotation-style", "line", "--quiet",
                "--index-url", "https://pypi.org/simple",
            ],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
    body = result.stdout.replace(source.name, "pyproject.toml")
    header = (
        f"{stamp(name, lines)}\n"
        "# Made by scripts/lock (uv pip compile --universal --generate-hashes); do not edit.\n"
        "# Install: pip install --require-hashes --no-deps -r " + f"requirements/{name}.txt\n"
    )
    lock_path(name).parent.mkdir(exist_ok=True)
    lock_path(name).write_text(header + body)
    print(f"wrote {lock_path(name).relative_to(ROOT)} ({len(pins(body))} packages)")


def main(argv: list[str]) -> int:
    if argv[1:] == ["--check"]:
        found = [p for name in LOCKS for p in problems(name)]
        for problem in found:
            print(f"lock: {problem}", file=sys.stderr)
        if found:
            print("lock: run scripts/lock to refresh requirements/", file=sys.stderr)
        return 1 if found else 0
    if argv[1:]:
        print(__doc__, file=sys.stderr)
        return 2
    for name in LOCKS:
        compile_lock(name)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
