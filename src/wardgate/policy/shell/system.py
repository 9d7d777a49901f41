"""Handlers for system diagnostics that read by default and change the host when asked."""

from __future__ import annotations

from wardgate.policy.shell.judge import _Call, _handles
from wardgate.policy.shell.tables import _set

_JOURNAL_CHANGES = _set("--vacuum-size --vacuum-time --vacuum-files --rotate --flush --sync --relinquish-var --smart-relinquish-var --setup-keys --update-catalog")  # fmt: skip
_DMESG_CHANGES = _set("-c -C --clear --read-clear -n --console-level -D --console-off -E --console-on")  # fmt: skip
_MOUNT_LISTING = _set("-l --show-labels -t --types -v --verbose -h --help -V --version")
_SWAPON_LISTING = _set("-s --summary --show --noheadings --bytes --raw")
_MODPROBE_DRY = _set("-n --dry-run -c --showconfig -D --show-depends -R --resolve-alias")
_PARTITION_LISTING = _set("-l --list -d --dump -J --json -s --show-size -V --verify")


@_handles("journalctl")
def _journalctl(c: _Call) -> None:
    if c.opts.has(*_JOURNAL_CHANGES):
        c.at_least("write")


@_handles("dmesg")
def _dmesg(c: _Call) -> None:
    if c.opts.has(*_DMESG_CHANGES):
        c.at_least("write")


@_handles("mount", values="-t --types -O --test-opts")
def _mount(c: _Call) -> None:
    if c.opts.operands or not set(c.opts.flags) <= _MOUNT_LISTING:
        c.at_least("admin")


@_handles("swapon")
def _swapon(c: _Call) -> None:
    if c.opts.operands or not set(c.opts.flags) <= _SWAPON_LISTING:
        c.at_least("admin")


@_handles("hostname", values="-F --file")
def _hostname(c: _Call) -> None:
    if c.opts.operands or c.opts.has("-F", "--file", "-b", "--boot"):
        c.at_least("admin")


@_handles("date", values="-d --date -f --file -r --reference -I --iso-8601 --rfc-3339")
def _date(c: _Call) -> None:
    if c.opts.has("-s", "--set") or any(not op.startswith("+") for op in c.opts.operands):
        c.at_least("admin")  # sets the clock


@_handles("ping", "ping6", values="-c -i -w -W -s -t -I -p -Q -l -M -m")
def _ping(c: _Call) -> None:
    if c.opts.has("-f") or not c.opts.has("-c", "-w"):
        c.at_least("write")  # floods, or never ends


@_handles("passwd", "chage")
def _passwd(c: _Call) -> None:
    # passwd -S shows an account's status; chage -l its ageing (passwd -l locks it).
    shows = c.opts.has("-S", "--status") if c.name == "passwd" else c.opts.has("-l", "--list")
    if not shows:
        c.at_least("admin")


@_handles("visudo")
def _visudo(c: _Call) -> None:
    if not c.opts.has("-c", "--check"):
        c.at_least("admin")


@_handles("modprobe")
def _modprobe(c: _Call) -> None:
    if not c.opts.has(*_MODPROBE_DRY):
        c.at_least("admin")


@_handles("fdisk", "sfdisk", "parted")
def _partitions(c: _Call) -> None:
    listing = c.opts.has(*_PARTITION_LISTING)
    if c.name == "parted":
        listing = c.opts.has("-l", "--list") or c.opts.operands[1:2] == ["print"]
    if not listing:
        c.at_least("admin")


@_handles("shutdown", "reboot", "poweroff", "halt")
def _shutdown(c: _Call) -> None:
    if not c.opts.has("-c", "--help"):
        c.at_least("admin", "shutdown")


@_handles("init", "telinit")
def _init(c: _Call) -> None:
    if c.opts.operands[:1] in (["0"], ["6"]):
        c.at_least("admin", "shutdown")


@_handles("sysctl", values="-p --load")
def _sysctl(c: _Call) -> None:
    changes = any("=" in op for op in c.opts.operands)
    if changes or c.opts.has("-w", "--write", "-p", "--load", "--system"):
        c.at_least("admin")


@_handles("route")
def _route(c: _Call) -> None:
    if c.opts.operands[:1] in (["add"], ["del"], ["flush"]):
        c.at_least("admin")


@_handles("ifconfig")
def _ifconfig(c: _Call) -> None:
    if len(c.opts.operands) > 1:
        c.at_least("admin")


_IP_READ = ("show", "list", "lst", "ls", "get", "monitor", "help")


@_handles("ip", values="-n -netns -f -family -b -batch -rc -rcvbuf -l -loops")
def _ip(c: _Call) -> None:
    operands = c.opts.operands
    if c.opts.has("-b", "-batch", "-force"):
        c.at_least("admin")
        return
    if not operands or operands[0] in ("help", "monitor"):
        return
    command = operands[1] if len(operands) > 1 else "show"
    if not any(word.startswith(command) for word in _IP_READ):
        c.at_least("admin")  # add, del, set, change, replace, flush, exec ...


@_handles("tc")
def _tc(c: _Call) -> None:
    if not any(op in ("show", "ls", "list") for op in c.opts.operands):
        c.at_least("admin")
