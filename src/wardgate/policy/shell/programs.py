"""Which program a command word names, and every kind the classifier can give."""

from __future__ import annotations

import posixpath

# Imported for their side effect: each registers its handlers in ``_HANDLERS``, which
# ``_KNOWN`` must see complete.
from wardgate.policy.shell import files, network, services, system  # noqa: F401
from wardgate.policy.shell.judge import _HANDLERS
from wardgate.policy.shell.paths import _clean
from wardgate.policy.shell.prefixes import _PREFIXES
from wardgate.policy.shell.tables import (
    _ADMIN,
    _ALIASES,
    _INTERPRETERS,
    _READ,
    _RISK_KINDS,
    _SHELLS,
    _SYSTEM_DIRS,
    _VERSIONED,
    _WRITE,
)

_KNOWN = frozenset(
    {*_READ, *_WRITE, *_ADMIN, *_HANDLERS, *_SHELLS, *_INTERPRETERS, *_PREFIXES}
    | {"su", "runuser", "eval", "source"}
)
SHELL_KINDS: frozenset[str] = _KNOWN | _RISK_KINDS | {p.kind for p in _PREFIXES.values()}


def _canonical(name: str) -> str | None:
    if name in _KNOWN:
        return name
    if name in _ALIASES:
        return _ALIASES[name]
    if name.startswith("mkfs."):
        return "mkfs"
    versioned = _VERSIONED.fullmatch(name)
    return versioned.group(1) if versioned else None


def _resolve(text: str) -> tuple[str | None, list[str]]:
    """The program's kind (None: unknown) and the names to record for it."""
    if "/" not in text:
        return _canonical(text), [text.lower()]
    directory, base = posixpath.split(text)
    trusted = directory.startswith("/") and _clean(directory) in _SYSTEM_DIRS
    return (_canonical(base) if trusted else None), [text.lower(), base.lower()]
