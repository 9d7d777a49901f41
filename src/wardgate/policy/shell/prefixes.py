"""Prefix programs that run the command in their arguments (sudo, env, timeout, xargs...)."""

from __future__ import annotations

from dataclasses import dataclass

from wardgate.policy.shell.args import _Args
from wardgate.policy.shell.tables import _set


@dataclass(frozen=True, slots=True)
class _Prefix:
    """A program that runs the command in its arguments (``sudo rm x`` runs ``rm x``)."""

    kind: str
    values: frozenset[str] = frozenset()
    skip: int = 0  # operands before the command: timeout's duration
    assignments: bool = False  # NAME=value words before the command set its environment
    script: frozenset[str] = frozenset()  # options whose value is a command line to run
    outputs: frozenset[str] = frozenset()  # options whose value is a file it writes
    alone: str = "read"  # the class when given no command (chrt -p, strace -p act on a pid)


_XARGS_VALUES = _set("-a -d -E -I -L -n -P -s --arg-file --delimiter --eof --replace --max-lines --max-args --max-procs --max-chars --process-slot-var")  # fmt: skip
_SUDO_VALUES = _set("-u -g -h -p -C -D -r -t -U -T -R --user --group --host --prompt --close-from --chdir --role --type --other-user --command-timeout --chroot")  # fmt: skip
_FLOCK_VALUES = _set("-w --wait --timeout -E --conflict-exit-code -c --command")
_STRACE_VALUES = _set("-e -o -p -s -u -E -a -b -I -P -O -S -X")
_SYSTEMD_RUN_VALUES = _set("-u --unit -p --property -d --description --slice -H --host -M --machine --uid --gid --nice -E --setenv --working-directory --on-active --on-boot --on-startup --on-unit-active --on-unit-inactive --on-calendar --timer-property --path-property --socket-property --service-type")  # fmt: skip
_PREFIXES = {
    "sudo": _Prefix("sudo", _SUDO_VALUES, assignments=True),
    "doas": _Prefix("sudo", _set("-u -C")),
    "pkexec": _Prefix("sudo", _set("--user"), alone="unknown"),  # alone, it runs a root shell
    "env": _Prefix(
        "env",
        _set("-u --unset -C --chdir -S --split-string"),
        assignments=True,
        script=_set("-S --split-string"),
    ),
    "nohup": _Prefix("nohup"),
    "timeout": _Prefix("timeout", _set("-s --signal -k --kill-after"), skip=1),
    "nice": _Prefix("nice", _set("-n --adjustment")),
    "ionice": _Prefix("ionice", _set("-c --class -n --classdata -p --pid -P --pgid -u --uid")),
    "stdbuf": _Prefix("stdbuf", _set("-i -o -e --input --output --error")),
    "setsid": _Prefix("setsid"),
    "xargs": _Prefix("xargs", _XARGS_VALUES),
    "time": _Prefix("time", _set("-f --format -o --output"), outputs=_set("-o --output")),
    "command": _Prefix("command"),
    "builtin": _Prefix("builtin"),
    "exec": _Prefix("exec", _set("-a")),
    "watch": _Prefix("watch", _set("-n --interval -q --equexit")),
    "unbuffer": _Prefix("unbuffer"),
    "busybox": _Prefix("busybox"),
    "flock": _Prefix("flock", _FLOCK_VALUES, skip=1, script=_set("-c --command")),
    "chrt": _Prefix("chrt", _set("-T -P -D"), skip=1, alone="write"),
    "taskset": _Prefix("taskset", skip=1, alone="write"),
    "strace": _Prefix("strace", _STRACE_VALUES, alone="write", outputs=_set("-o")),
    "ltrace": _Prefix("ltrace", _STRACE_VALUES, alone="write", outputs=_set("-o")),
    "systemd-run": _Prefix("systemd-run", _SYSTEMD_RUN_VALUES),
}
_SU_VALUES = _set("-c --command -s --shell -g --group -G --supp-group -w --whitelist-environment")


def _prefix_alone(prefix: _Prefix, opts: _Args) -> str:
    """The class of a prefix given no command (``sudo -l``, ``env``, ``sudo -i``)."""
    if prefix.kind == "sudo":
        if opts.has("-i", "--login", "-s", "--shell"):
            return "unknown"  # a root shell the client feeds
        if opts.has("-e", "--edit"):
            return "write"
    if prefix.kind == "ionice" and opts.has("-p", "--pid", "-P", "--pgid", "-u", "--uid"):
        return "write"
    return prefix.alone
