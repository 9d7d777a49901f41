"""What a shell command line *does*, from a real shell parser (bashlex), never from regexes.

An SSH ``exec`` request carries one command line. :func:`classify_command` gives one
:class:`StatementInfo` per simple command that would run: each stage of a pipeline,
each member of an ``&&``/``||``/``;`` list, the bodies of sub-shells, groups, loops and
functions, the commands inside ``$(...)``, `` `...` `` and ``<(...)``, and the scripts of
``bash -c '...'``, ``su -c '...'``, ``watch '...'``, ``trap '...'`` and ``find -exec``,
parsed again. Prefixes (sudo, env, nohup, timeout, nice, xargs, exec ...) are stripped
and noted. Anything the parser cannot read, or whose program is only known at run time,
is ``unknown``: the gate fails closed on it.

StatementInfo was made for SQL; for a shell command its fields mean:

- ``klass``: read | write | admin | unknown (:data:`SHELL_CLASSES`). read = looks at
  things; write = changes files, packages, services or processes (and any program this
  module does not know); admin = changes the host itself (disks, firewall, kernel,
  users, power); unknown = cannot tell what runs.
- ``kinds``: the prefixes it ran under ("sudo", "nohup", "bash" ...), the program's own
  kind when it is one listed here ("rm", "systemctl" ...) and risk kinds
  ("rm_rf_broad", "pipe_to_shell" ...). Every kind is in :data:`SHELL_KINDS`.
- ``text``: the simple command's own text (inside the inner script for ``bash -c``).
- ``error``: the parser's message when the command could not be parsed.
- ``functions``: the programs run, prefixes first; lower-case basename, preceded by the
  full path when one was given (``("/usr/bin/rm", "rm")``).
- ``tables_written``: paths written, as written: redirect targets (not /dev/null,
  /dev/stdout, /dev/stderr) and the targets of rm, mv, cp, tee, touch, mkdir, chmod,
  chown, ln, truncate, sed -i, dd of= ...
- ``tables_read``: paths read where obvious: file arguments of cat, head, grep ...,
  ``<`` redirects, ``dd if=``.
- ``columns``: the flags given to the program, lower-case, short clusters split
  (``-rf`` gives ``-r``, ``-f``), long options without their ``=value``.
"""

from __future__ import annotations

from functools import lru_cache

from wardgate.actions import StatementInfo
from wardgate.policy.shell.programs import SHELL_KINDS
from wardgate.policy.shell.tables import MAX_CACHED_TEXT, MAX_COMMAND_CHARS, SHELL_CLASSES
from wardgate.policy.shell.walk import _Scope, _Walker

__all__ = [
    "MAX_CACHED_TEXT",
    "MAX_COMMAND_CHARS",
    "SHELL_CLASSES",
    "SHELL_KINDS",
    "classify_command",
]


def classify_command(command: str) -> tuple[StatementInfo, ...]:
    """One StatementInfo per simple command ``command`` would run, in order.

    An empty or blank command gives an empty tuple. This never raises: text the parser
    rejects, or anything else that goes wrong, gives one ``unknown`` StatementInfo with
    the kind ``parse_error`` and the message.
    """
    if len(command) > MAX_CACHED_TEXT:
        return _classify(command)
    return _classify_cached(command)


@lru_cache(maxsize=4096)
def _classify_cached(command: str) -> tuple[StatementInfo, ...]:
    return _classify(command)


def _classify(command: str) -> tuple[StatementInfo, ...]:
    if not command.strip():
        return ()
    if len(command) > MAX_COMMAND_CHARS:
        error = f"command longer than {MAX_COMMAND_CHARS} characters"
        return (StatementInfo("unknown", ("parse_error",), command, error),)
    walker = _Walker()
    try:
        walker.script(command, _Scope())
    except Exception as exc:  # noqa: BLE001 - a classifier bug must fail closed, never open
        return (StatementInfo("unknown", ("parse_error",), command, repr(exc)),)
    if not walker.out:
        return (StatementInfo("unknown", ("parse_error",), command, "no command found"),)
    return tuple(walker.out)
