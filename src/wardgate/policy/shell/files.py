"""Handlers for programs that work on files and processes."""

from __future__ import annotations

import re

from wardgate.policy.shell.args import _is_assignment, _parse_args
from wardgate.policy.shell.judge import _VALUES, _Call, _handles
from wardgate.policy.shell.paths import _is_broad, _is_device
from wardgate.policy.shell.tables import _HIJACK_VARS, _SINKS, _set


@_handles("rm")
def _rm(c: _Call) -> None:
    if c.opts.has("-r", "-R", "--recursive") and (
        c.opts.has("--no-preserve-root") or any(_is_broad(p) for p in c.opts.operands)
    ):
        c.at_least("write", "rm_rf_broad")


def _world_writable(mode: str) -> bool:
    if mode.isdigit():
        return all(ch in "01234567" for ch in mode) and bool(int(mode, 8) & 0o002)
    for clause in mode.split(","):
        who = clause[: len(clause) - len(clause.lstrip("ugoa"))]
        if not ("a" in who or "o" in who):
            continue  # no "who": the umask keeps others out
        for op, perms in re.findall(r"([-+=])([rwxXst]*)", clause[len(who) :]):
            if op in "+=" and "w" in perms:
                return True
    return False


@_handles("chmod")
def _chmod(c: _Call) -> None:
    operands = c.opts.operands
    if c.opts.has("--reference"):
        c.write(operands)
        return
    c.write(operands[1:])
    if operands and _world_writable(operands[0]):
        c.at_least("write", "chmod_world_writable")


@_handles("dd")
def _dd(c: _Call) -> None:
    for arg in c.args:
        key, eq, value = arg.partition("=")
        if key == "of" and eq:
            c.write([value])
            if _is_device(value):
                c.at_least("admin", "dd_to_device")
        elif key == "if" and eq:
            c.read([value])


@_handles("tee")
def _tee(c: _Call) -> None:
    if any(p not in _SINKS for p in c.opts.operands):
        c.at_least("write")
        c.write(c.opts.operands)


@_handles("sort", values="-o --output -k --key -t --field-separator -S --buffer-size -T --temporary-directory --parallel --batch-size --files0-from --compress-program")  # fmt: skip
def _sort(c: _Call) -> None:
    outputs = c.opts.get("-o", "--output")
    if outputs or c.opts.has("--compress-program"):
        c.at_least("write")
        c.write(outputs)


@_handles("uniq", "xxd")
def _second_operand_is_output(c: _Call) -> None:
    operands = c.opts.operands
    c.read(operands[:1])
    if len(operands) > 1:
        c.at_least("write")
        c.write(operands[1:2])


@_handles("yq", values="-i --inplace -I --indent -o --output-format -p --input-format")
def _yq(c: _Call) -> None:
    if c.opts.has("-i", "--inplace"):
        c.at_least("write")
        c.write(c.opts.operands[1:])
    else:
        c.read(c.opts.operands[1:])


def _skip_delimited(text: str, i: int, delim: str) -> int:
    """Index after the next unescaped ``delim`` from ``i``, or -1."""
    while i < len(text):
        if text[i] == "\\":
            i += 2
            continue
        if text[i] == delim:
            return i + 1
        i += 1
    return -1


def _sed_acts(script: str) -> bool:
    """Whether a sed script writes files (w, W, s///w) or runs commands (e, s///e).
    A script this scan cannot follow counts as acting (fail closed)."""
    i = 0
    while i < len(script):
        ch = script[i]
        if ch in " \t\n;{}!,$~+IM" or ch.isdigit():
            i += 1
        elif ch in "/\\":
            if ch == "\\":
                i += 1
            if i >= len(script):
                return True
            i = _skip_delimited(script, i + 1, script[i])
        elif ch in "sy":
            if i + 1 >= len(script) or script[i + 1] in "\n\\":
                return True
            delim = script[i + 1]
            i = _skip_delimited(script, i + 2, delim)
            i = -1 if i < 0 else _skip_delimited(script, i, delim)
            if i < 0:
                return True
            while ch == "s" and i < len(script) and script[i] not in ";\n}":
                if script[i] in "we":
                    return True
                i += 1
        elif ch in "wWe":
            return True
        elif ch in "aicrR#":  # text or file name up to the end of the line
            end = script.find("\n", i)
            i = len(script) if end < 0 else end
        elif ch in "btT:v":  # label up to ; or the end of the line
            while i < len(script) and script[i] not in ";\n":
                i += 1
        elif ch in "qQlLzFhHgGxnNpPdD=":
            i += 1
        else:
            return True
        if i < 0:
            return True
    return False


@_handles("sed", values="-e -f -l -i --expression --file --line-length --in-place")
def _sed(c: _Call) -> None:
    opts = _parse_args(c.args, _VALUES["sed"], optional=frozenset({"-i", "--in-place"}))
    c.opts = opts
    scripts = opts.get("-e", "--expression")
    files = opts.operands
    from_file = opts.has("-f", "--file")
    if not scripts and not from_file and files:
        scripts, files = files[:1], files[1:]
    if opts.has("-i", "--in-place"):
        c.at_least("write")
        c.write(files)
    else:
        c.read(files)
    if from_file or any(_sed_acts(s) for s in scripts):
        c.at_least("write")


_AWK_ACTS = re.compile(r"\bsystem\s*\(|\bprintf?\b[^;\n{}]*[>|]|\|&?\s*getline\b|@load")


@_handles("awk", "gawk", "mawk", "nawk", values="-f -v -F -i -l -E -e --file --assign --field-separator --include --load --exec --source")  # fmt: skip
def _awk(c: _Call) -> None:
    opts = c.opts
    sources = opts.get("-e", "--source")
    files = opts.operands
    from_file = opts.has("-f", "--file", "-E", "--exec", "-l", "--load")
    if not sources and not from_file and files:
        sources, files = files[:1], files[1:]
    includes = opts.get("-i", "--include")
    if includes:
        c.at_least("write")  # gawk -i inplace rewrites its files; other includes are code
        c.write(files if "inplace" in includes else [])
    else:
        c.read(files)
    if from_file or any(_AWK_ACTS.search(s) for s in sources):
        c.at_least("write")


@_handles("find")
def _find(c: _Call) -> None:
    args = c.args
    i = 0
    while i < len(args) and (args[i] in ("-H", "-L", "-P") or args[i].startswith(("-O", "-D"))):
        i += 2 if args[i] == "-D" else 1
    roots = []
    while i < len(args) and not args[i].startswith(("-", "(", "!", ")")):
        roots.append(args[i])
        i += 1
    flags = []  # find's own primaries, not those of the commands it runs
    while i < len(args):
        arg = args[i]
        if arg.startswith("-"):
            flags.append(arg)
        if arg == "-delete":
            c.at_least("write", "find_delete")
            c.write(roots or ["."])
        elif arg in ("-exec", "-execdir", "-ok", "-okdir"):
            end = next((j for j in range(i + 1, len(args)) if args[j] in (";", "+")), len(args))
            c.runs.append((i + 1, end))
            # The command it runs is judged on its own; -ok asks the terminal first.
            c.at_least("write" if arg.startswith("-ok") else "read", "find_exec")
            i = end
        elif arg in ("-fprint", "-fprint0", "-fls", "-fprintf") and i + 1 < len(args):
            c.at_least("write")
            c.write([args[i + 1]])
        i += 1
    c.opts.flags = flags


_TAR_COMPRESSORS = frozenset({"gzip", "bzip2", "xz", "zstd", "lz4", "pigz", "pbzip2", "lzma", "lzop", "lzip", "pixz", "pzstd"})  # fmt: skip
_TAR_WRITES = _set("-c --create -r --append -u --update -A --catenate --concatenate --delete")
_TAR_RUNS = ("-I", "--use-compress-program", "--to-command", "--checkpoint-action", "-F", "--info-script", "--new-volume-script", "--rsh-command")  # fmt: skip


@_handles("tar", values="-f --file -C --directory -T --files-from -X --exclude-from -I --use-compress-program -F --info-script --new-volume-script -b --blocking-factor -g --listed-incremental -H --format -K -L -N --newer -V --label --exclude --to-command --checkpoint-action --rsh-command --owner --group --mode --transform --strip-components")  # fmt: skip
def _tar(c: _Call) -> None:
    args = c.args
    if args and not args[0].startswith("-"):
        args = ["-" + args[0], *args[1:]]  # old style: "tar xzf a.tgz"
    opts = c.opts = _parse_args(args, _VALUES["tar"])
    archives = opts.get("-f", "--file")
    if opts.has("-x", "--extract", "--get"):
        c.at_least("write")
        c.write(opts.get("-C", "--directory"))
        c.read(archives)
    if opts.has(*_TAR_WRITES):
        c.at_least("write")
        c.write(archives)
    elif opts.has("-t", "--list"):
        c.read(archives)
    for option in _TAR_RUNS:
        for program in opts.get(option):
            # These options name a program tar starts; only plain compressors are seen.
            compressor = option in ("-I", "--use-compress-program")
            if not compressor or program.split(" ")[0] not in _TAR_COMPRESSORS:
                c.at_least("unknown", "obfuscated")


@_handles("kill")
def _kill(c: _Call) -> None:
    if not c.opts.has("-l", "-L", "--list", "--table"):
        c.at_least("write")


@_handles("crontab", values="-u")
def _crontab(c: _Call) -> None:
    if not c.opts.has("-l"):
        c.at_least("write")


@_handles("top")
def _top(c: _Call) -> None:
    if not c.opts.has("-b", "--batch"):
        c.at_least("write", "interactive")  # interactive top can kill and renice


@_handles("trap")
def _trap(c: _Call) -> None:
    operands = c.opts.operands
    if len(operands) > 1 and operands[0] != "-":
        c.scripts.append(c.opts.positions[0])  # the handler runs later, in this shell


@_handles("export", "declare", "typeset", "local", "readonly")
def _export(c: _Call) -> None:
    for arg in c.opts.operands:
        if _is_assignment(arg) and arg.partition("=")[0].rstrip("+") in _HIJACK_VARS:
            c.at_least("write", "env_override")
