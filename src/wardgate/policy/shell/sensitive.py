"""Whether a word of a command may name a sensitive file (``masking.paths``).

Masking an output stream cannot stop ``base64``, ``od -c``, ``rev`` or ``tail -n +2`` of
a private key: for principals whose output is masked, the gate blocks any command whose
words may name such a file, whatever the program. A word is compared as the glob of
what it may become (:func:`wardgate.policy.shell.inert.shape`): ``$f`` may become
anything, an unquoted ``*`` anything but a dot file. Patterns:

- with a ``/``: a path; ``~/`` is any home directory (``/root/``, ``/home/NAME/``,
  ``~NAME/`` and, for a relative word, the directory an exec starts in: the home);
  naming a directory between the home and such a file (``~/.ssh``) matches too, and so
  does any directory above one (``~``, ``/``, ``/etc``) for a program that reads
  directories recursively (``grep -r``, ``find``, ``tar``, ``cp -r`` ...);
- without one: a file name anywhere (``*.pem``, ``.env``).

A value glued to an option (``-f/etc/shadow``, ``--key=a.key``) is read from its first
``/``, ``~`` or ``=``.
"""

from __future__ import annotations

import re
from functools import lru_cache

from wardgate.policy.shell.inert import EXPANSION

_HOMES = re.compile(r"(/root|/home/[^/]+|~[A-Za-z0-9._-]*)(?=/|$)")
# Programs and flags that read whole directory trees.
RECURSIVE_PROGRAMS = frozenset({"find", "tar", "rsync", "zip", "cpio", "scp", "rg", "ag", "ack", "du"})  # fmt: skip
RECURSIVE_FLAGS = frozenset({"-r", "-R", "--recursive", "--dereference-recursive", "-a", "--archive"})  # fmt: skip


def may_name(shape: str, patterns: tuple[str, ...], recursive: bool = False) -> str | None:
    """The first pattern a word of this shape may name a file of, or None."""
    for candidate in _candidates(shape):
        base = candidate.rpartition("/")[2]
        for pattern in patterns:
            if "/" not in pattern:
                if _intersects(base, pattern):
                    return pattern
                continue
            near, far = _parents(pattern)
            if any(_intersects(candidate, p) for p in (pattern, *near)):
                return pattern
            if recursive and any(_intersects(candidate.rstrip("/") or "/", p) for p in far):
                return pattern
    return None


@lru_cache(maxsize=4096)
def _candidates(shape: str) -> tuple[str, ...]:
    """What the word may stand for, with home directories written ``~``: the word, and
    each value glued after an option letter or an ``=``."""
    words = [shape]
    if shape.startswith("-"):  # -f/etc/shadow, -o~/x, --key=a.key
        glued = re.search(r"[/~]|=(?=.)", shape)
        if glued:
            words.append(shape[glued.start() + (glued.group() == "=") :])
    elif "=" in shape.rstrip("="):  # dd if=/etc/shadow, NAME=~/.ssh/id_rsa
        words.append(shape.partition("=")[2])
    out = []
    for word in words:
        home = _HOMES.match(word)
        if home:
            word = "~" + word[home.end() :]
        elif not word.startswith(("/", "~", EXPANSION)):
            word = "~/" + word  # an exec starts in the account's home
        out.append(word)
    return tuple(out)


@lru_cache(maxsize=256)
def _parents(pattern: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Directories holding the pattern's files: those below the home (``~/.ssh``), which
    any program may list or read, and those above (``~``, ``/``, ``/etc``), which only
    a recursive reader reaches."""
    parts = pattern.rstrip("/").split("/")
    ancestors = ["/".join(parts[:i]) or "/" for i in range(1, len(parts))]
    if parts[0] == "~":
        return tuple(ancestors[1:]), ("~", "/", "/home", "/root")
    return (), tuple(ancestors)


_Token = tuple[str, str, bool, bool]  # kind ("*", "?", "c"), char, at a name's start, bash glob


@lru_cache(maxsize=4096)
def _tokens(glob: str, word: bool) -> tuple[_Token, ...]:
    """``word``: a shape, whose ``*``/``?``/``[`` are bash's (no "/", no leading dot);
    else a pattern, fnmatch's (anything)."""
    out: list[_Token] = []
    i = 0
    while i < len(glob):
        ch = glob[i]
        fresh = word and (not out or out[-1][:2] == ("c", "/"))
        if ch in ("*", EXPANSION):
            out.append(("*", "", fresh, word and ch == "*"))
        elif ch == "?":
            out.append(("?", "", fresh, word))
        elif ch == "[" and (end := glob.find("]", i + 2)) > 0:
            body = glob[i + 1 : end]
            out.append(("c", body, False, False) if len(body) == 1 else ("?", "", fresh, word))
            i = end
        else:
            out.append(("c", ch, False, False))
        i += 1
    return tuple(out)


def _takes(token: _Token, started: bool, other: _Token) -> bool:
    """Whether a shape's wildcard ``token`` may stand for the character ``other`` gives."""
    if not token[3] or other[0] != "c":
        return True
    if other[1] == "/":
        return False  # bash globs stay within one name
    return not (other[1] == "." and token[2] and not started)  # nor start a dot file


@lru_cache(maxsize=65536)
def _intersects(a: str, b: str) -> bool:
    """Whether some path matches both shape ``a`` and pattern ``b``."""
    x, y = _tokens(a, True), _tokens(b, False)
    seen: set[tuple[int, int, bool]] = set()
    stack = [(0, 0, False)]  # started: x's star at i has taken a character
    while stack:
        state = stack.pop()
        if state in seen:
            continue
        seen.add(state)
        i, j, started = state
        if i == len(x) and j == len(y):
            return True
        tx = x[i] if i < len(x) else None
        ty = y[j] if j < len(y) else None
        if tx is not None and tx[0] == "*":
            stack.append((i + 1, j, False))  # x's star ends
            if ty is not None and ty[0] == "*":
                stack.append((i, j + 1, started))  # y's star ends, empty
                stack.append((i, j + 1, True))  # y's star gave letters x's star took
            elif ty is not None and _takes(tx, started, ty):
                stack.append((i, j + 1, True))
            continue
        if ty is not None and ty[0] == "*":
            stack.append((i, j + 1, False))
            if tx is not None:
                stack.append((i + 1, j, False))  # y's star takes x's next character
            continue
        if tx is None or ty is None:
            continue
        if tx[0] == "?":
            if _takes(tx, False, ty):
                stack.append((i + 1, j + 1, False))
        elif ty[0] == "?" or tx[1] == ty[1]:
            stack.append((i + 1, j + 1, False))
    return False
