"""Whether a script's text holds only inert expansions, read as bash reads its quoting.

A command line can be ``read`` only when nothing in it makes bash run or evaluate code
beyond the programs it names. This scan is independent of bashlex (it reads the raw
text the way bash quotes it: '...', "...", $'...', backslashes, comments) and refuses,
anywhere outside single quotes:

- command substitution ``$(...)`` and backquotes, arithmetic ``$((...))``/``$[...]``,
  ``((...))`` and ``[[ ... ]]`` (bash evaluates a variable's value as an arithmetic
  expression there, and an array subscript in it runs ``$(...)``);
- parameter expansion other than a plain ``$name``/``${name}``/``$1``/``$@``: operators
  (``${x:-$(id)}``, ``${x@P}``, ``${!x}``, ``${a[i]}``) expand or evaluate more text;
- process substitution ``<(...)``/``>(...)``;
- here-documents (their bodies expand, and a body confuses any scanner that does not
  track them: refusing them keeps this scan exact);
- ``{name}>file`` redirections, which assign a variable.

It answers with the first construct found, or None when the text is inert.
"""

from __future__ import annotations

import re

_PLAIN_BRACED = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*|[0-9]+|[@*#?$!-])\}")
_VAR_REDIRECT = re.compile(r"\{[A-Za-z_][A-Za-z0-9_]*\}[<>]")
_BREAKS = " \t\n;&|()<>"


def active_expansion(text: str) -> str | None:
    """The first construct in ``text`` that runs or evaluates code, or None."""
    i, n = 0, len(text)
    in_double = False
    word_start = True
    while i < n:
        ch = text[i]
        if in_double:
            if ch == "\\":
                i += 2
            elif ch == '"':
                in_double = False
                i += 1
            elif ch == "`":
                return "a backquoted command substitution"
            elif ch == "$":
                problem, i = _dollar(text, i)
                if problem:
                    return problem
            else:
                i += 1
            continue
        if ch == "\\":
            i += 2
        elif ch == "'":
            end = text.find("'", i + 1)
            if end < 0:
                return "an unterminated quote"
            i = end + 1
        elif ch == '"':
            in_double = True
            i += 1
        elif ch == "`":
            return "a backquoted command substitution"
        elif ch == "$" and text[i + 1 : i + 2] == "'":
            i = _ansi_c_end(text, i + 2)
            if i < 0:
                return "an unterminated $'...' quote"
        elif ch == "$" and text[i + 1 : i + 2] == '"':
            in_double = True
            i += 2
        elif ch == "$":
            problem, i = _dollar(text, i)
            if problem:
                return problem
        elif ch == "#" and word_start:
            end = text.find("\n", i)
            i = n if end < 0 else end
        elif ch in "<>" and text[i + 1 : i + 2] == "(":
            return "a process substitution"
        elif text.startswith("<<", i) and not text.startswith("<<<", i):
            return "a here-document"
        elif text.startswith("((", i):
            return "an arithmetic command (( ))"
        elif word_start and text.startswith("[[", i):
            return "a [[ ]] test (it evaluates arithmetic)"
        elif word_start and ch == "{" and _VAR_REDIRECT.match(text, i):
            return "a {name} redirection (it assigns a variable)"
        else:
            word_start = ch in _BREAKS
            i += 1
            continue
        word_start = False
    if in_double:
        return "an unterminated quote"
    return None


def _dollar(text: str, i: int) -> tuple[str | None, int]:
    """Judge the expansion starting at ``text[i] == "$"``; return the index after it."""
    following = text[i + 1 : i + 2]
    if following == "(":
        return "a command substitution $(...) or arithmetic $((...))", i
    if following == "[":
        return "an arithmetic expansion $[...]", i
    if following == "{":
        plain = _PLAIN_BRACED.match(text, i)
        if plain is None:
            return "a parameter expansion with an operator ${...}", i
        return None, plain.end()
    return None, i + 1


def _ansi_c_end(text: str, i: int) -> int:
    """Index after the closing quote of a $'...' body starting at ``i``; -1 if none."""
    while i < len(text):
        if text[i] == "\\":
            i += 2
            continue
        if text[i] == "'":
            return i + 1
        i += 1
    return -1


def expands(raw: str) -> bool:
    """Whether a word's raw text holds an unquoted glob or brace (it may become several
    words, or a word the gateway never saw: a file named ``-o``)."""
    i, quote = 0, ""
    while i < len(raw):
        ch = raw[i]
        if ch == "\\" and quote != "'":
            i += 2
            continue
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch in "*?[":
            return True
        elif ch == "{":
            close = raw.find("}", i)
            if close > 0 and ("," in raw[i:close] or ".." in raw[i:close]):
                return True  # {a,b} and {1..3} are brace expansions; {} is a word
        i += 1
    return False


_HOME = re.compile(r"\$(HOME\b|\{HOME\})")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|[0-9@*#?$!-]")


# In a shape, an expansion: it may become anything, a leading dot and "/" included.
EXPANSION = "\x01"


def shape(raw: str) -> str:
    """A word as an fnmatch pattern of what it may become: quoted text literal (``*``
    written ``[*]``), unquoted globs kept, every expansion :data:`EXPANSION`, a leading
    ``$HOME`` ``~``. What a word with ``$x`` or ``$(...)`` names is known only at run
    time; it may name anything, and the sensitive-path check treats it so."""
    out: list[str] = []
    i, n, quote = 0, len(raw), ""
    while i < n:
        ch = raw[i]
        if quote == "'":
            if ch == "'":
                quote = ""
            else:
                out.append(_literal(ch))
            i += 1
        elif ch == "\\":
            out.append(_literal(raw[i + 1 : i + 2]))
            i += 2
        elif ch in "'\"" and (not quote or ch == quote):
            quote = "" if quote else ch
            i += 1
        elif ch == "$" and i == 0 and (home := _HOME.match(raw)):
            out.append("~")
            i = home.end()
        elif ch == "$" and raw[i + 1 : i + 2] == "'" and not quote:
            out.append(EXPANSION)
            end = _ansi_c_end(raw, i + 2)
            i = n if end < 0 else end
        elif ch == "$" and raw[i + 1 : i + 2] in ("(", "{", "["):
            out.append(EXPANSION)
            i = _closing(raw, i + 1)
        elif ch == "$" and (name := _NAME.match(raw, i + 1)):
            out.append(EXPANSION)
            i = name.end()
        elif ch == "`":
            out.append(EXPANSION)
            end = raw.find("`", i + 1)
            i = n if end < 0 else end + 1
        elif ch in "*?[" and not quote:
            out.append(ch)
            i += 1
        else:
            out.append(_literal(ch))
            i += 1
    return "".join(out)


def _literal(ch: str) -> str:
    return f"[{ch}]" if ch in "*?[" else ch


def _closing(raw: str, i: int) -> int:
    """Index after the bracket closing the one at ``raw[i]`` (nesting counted); the end
    of the word when it does not close."""
    pairs = {"(": ")", "{": "}", "[": "]"}
    stack = [pairs[raw[i]]]
    i += 1
    while i < len(raw) and stack:
        ch = raw[i]
        if ch == "\\":
            i += 1
        elif ch in pairs:
            stack.append(pairs[ch])
        elif ch == stack[-1]:
            stack.pop()
        i += 1
    return i


def unquote(raw: str) -> str:
    """A word's text after bash's quote removal, expansions left as written.

    bashlex gets concatenated quotes wrong (``'a'"'"'b'`` stays ``a'"'"'b``; bash reads
    ``a'b``), which would hand ``bash -c`` a different script from the one bash runs:
    the walker reads every word's text from its raw source here instead. Text inside
    ``$(...)`` in double quotes may come out wrong; such a word is never part of a read
    (:func:`active_expansion`)."""
    out: list[str] = []
    i, n = 0, len(raw)
    while i < n:
        ch = raw[i]
        if ch == "\\":
            if raw[i + 1 : i + 2] != "\n":
                out.append(raw[i + 1 : i + 2])
            i += 2
        elif ch == "'":
            end = raw.find("'", i + 1)
            end = n if end < 0 else end
            out.append(raw[i + 1 : end])
            i = end + 1
        elif ch == "$" and raw[i + 1 : i + 2] == "'":
            end = _ansi_c_end(raw, i + 2)
            out.append(raw[i + 2 : (n if end < 0 else end - 1)])
            i = n if end < 0 else end
        elif ch == "$" and raw[i + 1 : i + 2] == '"':
            i += 1  # $"..." is "..." translated: the same text here
        elif ch == '"':
            i += 1
            while i < n and raw[i] != '"':
                if raw[i] == "\\" and raw[i + 1 : i + 2] in ("$", "`", '"', "\\", "\n"):
                    if raw[i + 1] != "\n":
                        out.append(raw[i + 1])
                    i += 2
                    continue
                out.append(raw[i])
                i += 1
            i += 1
        else:
            out.append(ch)
            i += 1
    return "".join(out)
