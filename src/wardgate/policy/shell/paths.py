"""What a path argument means: system trees, broad removal targets, devices, loopback."""

from __future__ import annotations

import posixpath
import re
from fnmatch import fnmatchcase

from wardgate.policy.shell.tables import _BROAD_DIRS, _LOOPBACK, _NOT_DEVICES


def _clean(path: str) -> str:
    """An absolute path normalised (//etc/./x/.. -> /etc); others as given."""
    if not path.startswith("/"):
        return path
    return "/" + posixpath.normpath(path).lstrip("/")


def _under(path: str, root: str) -> bool:
    """Whether ``path`` is ``root`` or inside it; a glob component may match it too."""
    parts = [p for p in _clean(path).split("/") if p]
    want = [p for p in root.split("/") if p]
    if not path.startswith("/") or len(parts) < len(want):
        return False
    # "/e?c" may be /etc; a bare "*" (everything) is rm_rf_broad's business, not this.
    return all(p != "*" and fnmatchcase(w, p) for p, w in zip(parts, want, strict=False))


_LEADING_VAR = re.compile(r"\$(\{[^}]*\}|[A-Za-z_][A-Za-z0-9_]*)")


def _trim(path: str) -> str:
    """The directory a removal empties: "/etc/*" and "/etc/." delete what "/etc" holds."""
    while len(path) > 1 and path.endswith(("/", "/*", "/.")):
        path = (path[:-1] if path.endswith("/") else path[:-2]) or "/"
    return path


def _is_broad(path: str) -> bool:
    """A target whose recursive removal takes out a system tree, a home or the cwd."""
    if not path:
        return False  # rm -rf "" removes nothing
    trimmed = _trim(path)
    if trimmed in ("/", ".", "..", "*", ".*", "$HOME", "${HOME}"):
        return True
    if trimmed.startswith("~"):
        return "/" not in trimmed  # ~ or ~user
    var = _LEADING_VAR.match(path)
    if var:
        # An empty variable turns "$DIR/*" into "/*" (the Steam installer bug).
        rest = _trim(path[var.end() :])
        return rest.startswith("/") and (rest == "/" or _clean(rest) in _BROAD_DIRS)
    if trimmed.startswith("/"):
        parts = [p for p in _clean(trimmed).split("/") if p]
        return len(parts) <= 1 or any(ch in parts[0] for ch in "*?[")
    return all(p in ("", ".", "..") for p in posixpath.normpath(trimmed).split("/"))


def _is_device(path: str) -> bool:
    clean = _clean(path)
    return clean.startswith("/dev/") and not clean.startswith(_NOT_DEVICES)


def _is_loopback(address: str) -> bool:
    return address.lower().startswith(_LOOPBACK)


def _names_stdin(path: str) -> bool:
    """Whether a script path may be the process's standard input: ``/dev/stdin``,
    ``/dev/fd/0``, ``/proc/self/fd/0`` (any process, any task), also spelled with ``//``
    or ``/./``, relative (``dev/stdin`` from ``/``, ``fd/0`` from ``/proc/self``), or with
    a ``..`` (which may lead anywhere)."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    return ".." in parts or parts[-1:] == ["stdin"] or parts[-2:] == ["fd", "0"]
