"""Reading a program's arguments: options and operands, prefix options, and where a
shell or script interpreter takes the program it runs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from wardgate.policy.shell.tables import _INTERPRETERS, _SHELL_VALUE_OPTIONS, _VERSION_FLAGS


@dataclass(slots=True)
class _Args:
    """Options and operands of one program, GNU style (options may follow operands)."""

    flags: list[str]  # as given, short clusters split ("-r", "-f"), long ones without =value
    values: dict[str, list[str]]
    operands: list[str]
    positions: list[int]  # index in the argument list of each operand

    def has(self, *names: str) -> bool:
        return any(name in self.flags for name in names)

    def get(self, *names: str) -> list[str]:
        return [v for name in names for v in self.values.get(name, [])]


def _parse_args(
    args: Sequence[str],
    takes_value: frozenset[str] = frozenset(),
    *,
    optional: frozenset[str] = frozenset(),
    single_dash_long: bool = False,
) -> _Args:
    """Split ``args``; ``takes_value`` options consume the rest of their cluster or the
    next argument, ``optional`` ones only the rest of their cluster (``sed -i.bak``)."""
    parsed = _Args([], {}, [], [])
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg == "--":
            parsed.operands.extend(args[i:])
            parsed.positions.extend(range(i, len(args)))
            break
        if arg.startswith("--") or (single_dash_long and arg.startswith("-") and len(arg) > 1):
            name, eq, value = arg.partition("=")
            parsed.flags.append(name)
            if eq:
                parsed.values.setdefault(name, []).append(value)
            elif name in takes_value and name not in optional and i < len(args):
                parsed.values.setdefault(name, []).append(args[i])
                i += 1
            continue
        if arg.startswith("-") and len(arg) > 1:
            for j in range(1, len(arg)):
                flag = "-" + arg[j]
                parsed.flags.append(flag)
                if flag in takes_value:
                    rest = arg[j + 1 :]
                    if not rest and flag not in optional and i < len(args):
                        rest = args[i]
                        i += 1
                    parsed.values.setdefault(flag, []).append(rest)
                    break
            continue
        parsed.operands.append(arg)
        parsed.positions.append(i - 1)
    return parsed


def _scan_prefix(
    args: Sequence[str], takes_value: frozenset[str], skip: int = 0, assignments: bool = False
) -> tuple[_Args, int | None]:
    """Options of a prefix command, then the index where the command it runs begins
    (options stop at the first operand: ``sudo -u x rm -rf`` runs ``rm -rf``)."""
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            i += 1
            break
        if not arg.startswith("-") or arg == "-":
            if skip:
                skip -= 1
            elif not (assignments and _is_assignment(arg)):
                break
            i += 1
            continue
        i += 1
        if arg.startswith("--"):
            if "=" not in arg and arg in takes_value:
                i += 1
        elif any("-" + ch in takes_value for ch in arg[1:]):
            letter = next(j for j, ch in enumerate(arg[1:], 1) if "-" + ch in takes_value)
            if letter == len(arg) - 1:
                i += 1
    while skip and i < len(args):
        skip -= 1
        i += 1
    opts = _parse_args(args[:i], takes_value)
    return opts, (i if i < len(args) else None)


def _is_assignment(text: str) -> bool:
    name, eq, _ = text.partition("=")
    return bool(eq) and name.rstrip("+").replace("_", "a").isalnum() and not name[:1].isdigit()


def _shell_script(args: Sequence[str]) -> tuple[str, int | None]:
    """Where a shell takes its script: ("inline", index of the -c text), ("file", index),
    or ("stdin", None)."""
    inline = from_stdin = False
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in ("-", "--"):  # a lone "-" is "--" to bash
            i += 1
            break
        if arg[:1] not in "-+" or len(arg) == 1:
            break
        if arg in _SHELL_VALUE_OPTIONS:
            i += 2
            continue
        if not arg.startswith("--"):
            inline |= "c" in arg[1:]
            from_stdin |= "s" in arg[1:] or "i" in arg[1:]
        i += 1
    if inline:
        return "inline", (i if i < len(args) else None)
    if from_stdin or i >= len(args):
        return "stdin", None
    return "file", i


def _interpreter_mode(name: str | None, args: Sequence[str]) -> str:
    """Where a script interpreter takes its program: "code" (inline, module or server),
    "file", "stdin", or "version" (it only prints its version); "" for other programs."""
    interpreter = _INTERPRETERS.get(name or "")
    if interpreter is None:
        return ""
    only_version = bool(args)
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "-":
            return "stdin"
        if arg == "--":
            return "file" if i + 1 < len(args) else "stdin"
        if not arg.startswith("-"):
            return "file"
        name = arg.partition("=")[0] if arg.startswith("--") else arg[:2]
        if name in interpreter.code or name in interpreter.module:
            return "code"
        only_version = only_version and arg in _VERSION_FLAGS
        i += 2 if arg in interpreter.values else 1
    return "version" if only_version else "stdin"
