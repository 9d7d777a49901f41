"""Which PostgreSQL servers the gateway dials: the versions its judgement is checked against."""

from __future__ import annotations

# PostgreSQL versions whose grammar and catalogue the classifier is checked against
# (policy/pg_functions.txt, pg_settings.txt; tests/integration/pg_versions.py).
SUPPORTED_MAJORS = range(14, 18)


def unsupported_version(server_version: str) -> str | None:
    """Why a server reporting ``server_version`` is not supported, or None."""
    head = server_version.split()[0] if server_version.split() else ""
    major = head.split(".")[0]
    if major.isdigit() and int(major) in SUPPORTED_MAJORS:
        return None
    return (
        f"it runs PostgreSQL {server_version!r}, and wardgate judges statements with the "
        f"grammar and catalogue of PostgreSQL {SUPPORTED_MAJORS[0]} to "
        f"{SUPPORTED_MAJORS[-1]} only (set upstream.allow_unsupported_version: true to "
        "dial it anyway, knowing that newer syntax may be judged wrongly)"
    )
