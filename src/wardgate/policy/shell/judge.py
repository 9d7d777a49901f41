"""Judging one program: the facts a simple command builds up, the per-program handler
registry (filled by the ``files``, ``system``, ``services`` and ``network`` modules) and
the tables of plain file programs whose operands are read or written."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from wardgate.actions import StatementInfo
from wardgate.policy.shell.args import _Args, _parse_args
from wardgate.policy.shell.paths import _is_device, _under
from wardgate.policy.shell.tables import _ADMIN, _RANK, _SINKS, _WRITE


@dataclass(slots=True)
class _Facts:
    """What one simple command does, built up while reading it."""

    text: str
    klass: str = "read"
    kinds: list[str] = field(default_factory=list)
    functions: list[str] = field(default_factory=list)
    written: list[str] = field(default_factory=list)
    read: list[str] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)
    error: str | None = None
    unproven: list[str] = field(default_factory=list)  # why it is not provably a read
    words: list[str] = field(default_factory=list)  # shapes of every word it gets

    def not_read(self, reason: str) -> None:
        """Record that this command is not provably a read (see readonly.py)."""
        self.unproven.append(reason)

    def floor(self) -> str:
        """The class commands run by this one start at: not read once it is unproven."""
        return "write" if self.unproven and self.klass == "read" else self.klass

    def settle(self) -> None:
        """A command judged read that is not provably read is judged a write."""
        if self.unproven and self.klass == "read":
            self.at_least("write", "unproven_read")
            if self.error is None:
                self.error = f"not provably a read: {self.unproven[0]}"

    def at_least(self, klass: str, *kinds: str) -> None:
        if _RANK[klass] > _RANK[self.klass]:
            self.klass = klass
        self.kinds.extend(k for k in kinds if k not in self.kinds)

    def info(self) -> StatementInfo:
        self.settle()
        for path in self.written:
            if _under(path, "/etc"):
                self.at_least(self.klass, "write_etc")
            if _is_device(path):
                self.at_least("admin", "write_device")
            if _under(path, "/proc") or _under(path, "/sys"):
                self.at_least("admin", "write_kernel")
        return StatementInfo(
            klass=self.klass,
            kinds=tuple(dict.fromkeys(self.kinds)),
            text=self.text,
            error=self.error,
            tables_read=_unique(self.read),
            tables_written=_unique(self.written),
            functions=_unique(self.functions),
            columns=_unique(f.lower() for f in self.flags),
            words=_unique(self.words),
        )


def _unique(items: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(i for i in items if i))


@dataclass(slots=True)
class _Call:
    """One program with its arguments, handed to its handler."""

    name: str
    args: list[str]
    opts: _Args
    facts: _Facts
    runs: list[tuple[int, int]] = field(default_factory=list)  # argument ranges it executes
    scripts: list[int] = field(default_factory=list)  # arguments it runs as shell scripts

    def at_least(self, klass: str, *kinds: str) -> None:
        self.facts.at_least(klass, *kinds)

    def write(self, paths: Iterable[str]) -> None:
        self.facts.written.extend(p for p in paths if p not in _SINKS and p != "-")

    def read(self, paths: Iterable[str]) -> None:
        self.facts.read.extend(p for p in paths if p != "-")


_Handler = Callable[[_Call], None]
_HANDLERS: dict[str, _Handler] = {}
# Options taking a value, per program, so that values are not read as operands.
_VALUES: dict[str, frozenset[str]] = {}
_SINGLE_DASH_LONG = frozenset({"find", "ip", "tc"})


def _handles(*names: str, values: str = "") -> Callable[[_Handler], _Handler]:
    def register(handler: _Handler) -> _Handler:
        for name in names:
            _HANDLERS[name] = handler
            if values:
                _VALUES[name] = frozenset(values.split())
        return handler

    return register


def _values(names: str, values: str) -> None:
    for name in names.split():
        _VALUES[name] = frozenset(values.split())


# What the arguments of plain file programs are.
_WRITES_OPERANDS = frozenset(
    {"rm", "rmdir", "touch", "mkdir", "shred", "unlink", "truncate", "mkfifo", "mv", "vi",
     "vim", "nvim", "nano", "emacs", "sudoedit", "setfacl", "mkfs", "wipefs", "blkdiscard"}
)  # fmt: skip
_WRITES_LAST = frozenset({"cp", "install", "ln", "rsync", "scp"})
_WRITES_AFTER_FIRST = frozenset({"chown", "chgrp"})
_READS_OPERANDS = frozenset(
    {"cat", "tac", "head", "tail", "less", "more", "most", "nl", "wc", "sort", "cut",
     "md5sum", "sha1sum", "sha224sum", "sha256sum", "sha384sum", "sha512sum", "b2sum",
     "cksum", "strings", "od", "hexdump", "base64", "base32", "zcat", "zless", "zmore",
     "bzcat", "xzcat", "zstdcat", "diff", "cmp", "comm", "stat", "file"}
)  # fmt: skip
_READS_AFTER_FIRST = frozenset({"grep", "egrep", "fgrep", "zgrep", "zegrep", "rg", "ag", "ack", "jq"})  # fmt: skip
_EDITORS = frozenset({"vi", "vim", "nvim", "nano", "emacs", "less", "more", "most"})

_values("head tail", "-n -c --lines --bytes --pid -s --sleep-interval")
_values("grep egrep fgrep zgrep zegrep", "-e -f -m -A -B -C -d -D --regexp --file --max-count --after-context --before-context --context --include --exclude --exclude-dir --label --color --colour")  # fmt: skip
_values("cp install ln", "-t --target-directory -S --suffix -m --mode -o --owner -g --group")
_values("rsync", "-e --rsh --exclude --include --filter -f --files-from --port --password-file --log-file --backup-dir --chmod --chown --rsync-path -B --timeout --bwlimit -T --temp-dir --compare-dest --link-dest")  # fmt: skip
_values("scp", "-P -i -o -F -c -l -S -J")
_values("touch", "-d --date -r --reference -t")
_values("mkdir", "-m --mode --context")
_values("truncate", "-s --size -r --reference")
_values("chown chgrp chmod", "--reference --from")
_values("jq", "--arg --argjson --slurpfile --rawfile --indent -L --args")
_values("cut", "-d -f -b -c --delimiter --fields --bytes --characters --output-delimiter")
_values("wc du df ls", "--files0-from -B --block-size -t --type -x --exclude-type -d --max-depth --exclude -I --ignore -w --width --time-style --sort --format --color -T --tabsize --hide --indicator-style --quoting-style")  # fmt: skip
_values("xxd", "-c -g -l -o -s -n -cols -len -seek")
_values("mkfs", "-t --type -L -b -N -m -O -E -I -i -T -U -l -C -G -g -j -J -n")
_values("setfacl", "-m -x -M -X --modify --remove --set --set-file")


def _judge(name: str | None, args: list[str], facts: _Facts) -> _Call:
    """The class, kinds and paths of program ``name`` (None: not one we know)."""
    values = _VALUES.get(name or "", frozenset())
    opts = _parse_args(args, values, single_dash_long=name in _SINGLE_DASH_LONG)
    call = _Call(name or "", args, opts, facts)
    if name is None:
        call.at_least("write", "unknown_program")  # it may do anything
        return call
    call.at_least("read", name)
    if name in _WRITE:
        call.at_least("write")
    elif name in _ADMIN:
        call.at_least("admin")
    handler = _HANDLERS.get(name)
    if handler is not None:
        handler(call)
    operands = call.opts.operands
    if name in _WRITES_OPERANDS:
        call.write(operands)
    elif name in _WRITES_LAST:
        targets = call.opts.get("-t", "--target-directory")
        call.write(targets or operands[-1:])
    elif name in _WRITES_AFTER_FIRST:
        call.write(operands if call.opts.has("--reference") else operands[1:])
    if name in _READS_OPERANDS:
        call.read(operands)
    elif name in _READS_AFTER_FIRST:
        patterns_given = call.opts.has("-e", "-f", "--regexp", "--file")
        call.read(operands if patterns_given else operands[1:])
    if name in _EDITORS:
        call.at_least(call.facts.klass, "interactive")  # a pager or editor can start a shell
    return call
