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


# Programs and prefixes that change the directory later words are relative to.
_MOVES = frozenset({"cd", "pushd", "popd", "env"})  # env -C DIR
_GREPS = frozenset({"grep", "egrep", "fgrep", "zgrep", "rgrep"})  # -d recurse


def reads_recursively(functions: tuple[str, ...], columns: tuple[str, ...]) -> bool:
    """Whether a command reads whole directory trees (``grep -d recurse`` too)."""
    return bool(
        RECURSIVE_PROGRAMS.intersection(functions)
        or RECURSIVE_FLAGS.intersection(columns)
        or (_GREPS.intersection(functions) and {"-d", "--directories"} & set(columns))
    )


# Words that print a sensitive file under another name: getent shadow is /etc/shadow.
ALIASES = {("getent", "shadow"): "/etc/shadow", ("getent", "gshadow"): "/etc/gshadow"}


def aliased(words: tuple[str, ...]) -> tuple[str, ...]:
    """The files a command's words stand for besides themselves."""
    return tuple(
        path for (program, word), path in ALIASES.items() if program in words and word in words
    )


def names_from_data(functions: tuple[str, ...], columns: tuple[str, ...]) -> bool:
    """Whether a command takes the names of the files it reads from data, where no word
    shows them: ``xargs cat``, ``sort --files0-from=-``, ``find -files0-from``."""
    return "xargs" in functions or bool({"--files0-from", "-files0-from"} & set(columns))


def start_dirs(commands: list[tuple[tuple[str, ...], tuple[str, ...]]]) -> tuple[str, ...] | None:
    """Directories a line's ``cd`` commands change to, given each command's (functions,
    words); None when one is only known at run time (``cd $d``, ``cd -``, ``pushd``)."""
    dirs: list[str] = []
    for functions, words in commands:
        if not _MOVES.intersection(functions):
            continue
        if "env" in functions:
            if any(w.startswith(("-C", "--ch")) or (w[:1] == "-" and "C" in w) for w in words):
                return None  # env -C DIR
            continue
        if functions[-1:] != ("cd",):
            return None  # pushd/popd keep a stack
        operands = [w for w in words[1:] if not w.startswith("-") or w == "-"]
        if not operands:
            continue  # cd alone goes home
        if len(operands) > 1 or not operands[0].startswith("/"):
            return None  # a relative or computed target, cd - (the last directory)
        if any(ch in operands[0] for ch in "*?[" + EXPANSION):
            return None
        dirs.append(operands[0])
    return tuple(dirs)


def sensitive_word(
    functions: tuple[str, ...],
    columns: tuple[str, ...],
    words: tuple[str, ...],
    patterns: tuple[str, ...],
    dirs: tuple[str, ...] | None = (),
) -> tuple[str, str] | None:
    """The first word of one command (its ``functions``, flags ``columns`` and word
    shapes ``words``, as StatementInfo carries them) that may name a file of
    ``patterns``, with that pattern; None when none may. A program that takes file names
    from its input (``xargs cat``) may name any file."""
    recursive = reads_recursively(functions, columns)
    candidates = (*words, *aliased(words))
    if names_from_data(functions, columns):
        candidates = (*candidates, EXPANSION)  # it reads files its input names
    for word in candidates:
        pattern = may_name(word, patterns, recursive, dirs)
        if pattern is not None:
            return word, pattern
    return None


def may_name(
    shape: str,
    patterns: tuple[str, ...],
    recursive: bool = False,
    dirs: tuple[str, ...] | None = (),
) -> str | None:
    """The first pattern a word of this shape may name a file of, or None.

    ``dirs``: directories the line may change to besides the home (``cd /etc``), so
    relative words are read from there too; None when one is not known (``cd $d``,
    ``cd -``, ``pushd``, ``env -C``): a relative word may then be below any directory."""
    for candidate in _candidates(shape, dirs):
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


# Brace expansion ({a,b}, {1..3}) becomes one of its parts: any of them (fail closed).
_BRACES = re.compile(r"\{[^{}]*(,|\.\.)[^{}]*\}")
# ~+ and ~- are $PWD and $OLDPWD, ~N and ~+N entries of the directory stack.
_DIR_TILDE = re.compile(r"~[+-]?[0-9]*(?=/|$)")
# Links the kernel follows to another root or directory: /proc/self/root/etc/shadow.
_PROC_ROOT = re.compile(r"/proc/[^/]+/root(?=/|$)")
_PROC_DIR = re.compile(r"/(proc/[^/]+/(cwd|fd/[^/]+|map_files/[^/]+)|dev/fd/[^/]+)(?=/|$)")
# Paths inside a script text (sed '1r /etc/shadow', awk '... "/etc/shadow"'): after a
# character that cannot be in a path, or after a sed r/R/w/W command letter.
_INNER_PATH = re.compile(
    r"(?:(?<=[^A-Za-z0-9._~/-])|(?<=^[rRwW])|(?<=[^A-Za-z._-][rRwW]))[/~][^\s'\";)}]*"
)


def _normal(word: str) -> str:
    """The path a word stands for after the kernel resolves it: ``//`` and ``/./``
    dropped; what comes before a ``..`` may be any directory (a symlink's parent is
    not the parent of its name)."""
    word = _BRACES.sub(EXPANSION, word)
    if (tilde := _DIR_TILDE.match(word)) and word[:2] != "~/" and word != "~":
        word = EXPANSION + word[tilde.end() :]
    if root := _PROC_ROOT.match(word):
        word = word[root.end() :] or "/"
    elif proc := _PROC_DIR.match(word):
        word = EXPANSION + word[proc.end() :]
    parts: list[str] = []
    for part in word.split("/"):
        if part in ("", "."):
            continue
        if part != "..":
            parts.append(part)
        elif not parts and word.startswith("/"):
            continue  # /.. is /
        else:
            # The parent of a named directory is any directory: the name may be a
            # symlink (/srv/link/../.ssh/id_rsa reads /root/.ssh/id_rsa when link
            # points into /root), and the kernel follows it before the "..".
            parts = [EXPANSION]
    lead = "/" if word.startswith("/") else ""
    return lead + "/".join(parts) or lead or "~"


@lru_cache(maxsize=4096)
def _candidates(shape: str, dirs: tuple[str, ...] | None = ()) -> tuple[str, ...]:
    """What the word may stand for, with home directories written ``~``: the word, each
    value glued after an option letter or an ``=``, and each path inside it; a relative
    one below the home (where an exec starts) and each directory of ``dirs``."""
    words = [shape]
    if shape.startswith("-"):  # -f/etc/shadow, -o~/x, --key=a.key
        glued = re.search(r"[/~]|=(?=.)", shape)
        if glued:
            words.append(shape[glued.start() + (glued.group() == "=") :])
    elif "=" in shape.rstrip("="):  # dd if=/etc/shadow, NAME=~/.ssh/id_rsa
        words.append(shape.partition("=")[2])
    words.extend(m.group() for m in _INNER_PATH.finditer(shape))
    placed = []
    for word in words:
        if word.startswith(("/", "~", EXPANSION)):
            placed.append(word)
            continue
        placed.append("~/" + word)
        starts = (EXPANSION,) if dirs is None else dirs
        placed.extend(d.rstrip("/") + "/" + word for d in starts)
    out = []
    for word in map(_normal, placed):
        home = _HOMES.match(word)
        out.append("~" + word[home.end() :] if home else word)
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
        elif ch == "[" and (end := _bracket_end(glob, i)) > 0:
            body = glob[i + 1 : end]
            out.append(("c", body, False, False) if len(body) == 1 else ("?", "", fresh, word))
            i = end
        else:
            out.append(("c", ch, False, False))
        i += 1
    return tuple(out)


def _bracket_end(glob: str, i: int) -> int:
    """Index of the ``]`` closing the bracket expression at ``i``, classes such as
    ``[[:alpha:]]`` included, or -1."""
    j = i + 1
    if glob[j : j + 1] in ("!", "^"):
        j += 1
    if glob[j : j + 1] == "]":
        j += 1  # a "]" first is a member
    while j < len(glob):
        if glob[j : j + 2] in ("[:", "[=", "[."):
            close = glob.find(glob[j + 1] + "]", j + 2)
            if close < 0:
                return -1
            j = close + 2
            continue
        if glob[j] == "]":
            return j
        j += 1
    return -1


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
        elif ty[0] == "?" or tx[1].casefold() == ty[1].casefold():  # KEY.PEM is *.pem
            stack.append((i + 1, j + 1, False))
    return False
