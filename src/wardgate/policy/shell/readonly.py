"""The read-only allow-list: the only programs and builtins a ``read`` command may run.

Being on ``_READ`` (tables.py) only says a program is known; a command is ``read`` when
every program and builtin bash will run is listed here *and* passes its check. Anything
else is judged ``write`` (kind ``unproven_read``): a deny-list of dangerous shapes cannot
keep up with bash, so this list is the proof. Each entry says in one line why the
program cannot change the host with the options it is allowed.

A program whose rule checks options (``forbid``) or arguments (``check``) must get only
literal arguments: an expansion or a glob could become a forbidden option at run time
(``sort *`` with a file named ``-o x``). ``xargs`` and ``find -exec`` add arguments at
run time, so they may only run programs whose rule checks nothing.

To extend it: add the program with its ``why``, forbid every option that writes a file,
runs a program, changes the system or enters another namespace (long options match by
abbreviation, short ones anywhere in a cluster), and add a case to
tests/unit/test_shell_classify.py and, when installed here, a line to the oracle's
grammar (tests/integration/test_shell_oracle.py).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from wardgate.policy.shell.args import _is_assignment, _parse_args
from wardgate.policy.shell.files import _sed_acts
from wardgate.policy.shell.services import _SUBCOMMAND_READ
from wardgate.policy.shell.system import _MOUNT_LISTING, _SWAPON_LISTING
from wardgate.policy.shell.tables import _set

_Check = Callable[[list[str]], str | None]


@dataclass(frozen=True, slots=True)
class ReadRule:
    why: str
    forbid: frozenset[str] = frozenset()  # options that write, run or change something
    check: _Check | None = None  # further conditions on the arguments; a reason if not met

    @property
    def checked(self) -> bool:
        return bool(self.forbid) or self.check is not None


def _r(why: str, forbid: str = "", check: _Check | None = None) -> ReadRule:
    return ReadRule(why, _set(forbid), check)


def _forbidden(args: Sequence[str], forbid: frozenset[str]) -> str | None:
    """The first argument that is (or abbreviates, or holds in a cluster) a forbidden option."""
    longs = [f for f in forbid if f.startswith("--")]
    for arg in args:
        if arg.startswith("--") and len(arg) > 2:
            name = arg.partition("=")[0]
            if any(f.startswith(name) for f in longs):  # getopt_long takes abbreviations
                return arg
        elif arg.startswith("-") and len(arg) > 1:
            if any("-" + ch in forbid for ch in arg[1:]):
                return arg
    return None


# ----------------------------------------------------------------- argument checks
def _at_most_operands(count: int, values: str = "") -> _Check:
    """Programs whose extra operand is an output file (uniq IN OUT, xxd IN OUT)."""
    takes = _set(values)

    def check(args: list[str]) -> str | None:
        if len(_parse_args(args, takes).operands) > count:
            return f"more than {count} operand: the next one is a file it writes"
        return None

    return check


def _no_operands(args: list[str]) -> str | None:
    return "an operand here changes the system" if _parse_args(args).operands else None


def _flags_within(allowed: frozenset[str], values: str = "", operands: bool = False) -> _Check:
    takes = _set(values)

    def check(args: list[str]) -> str | None:
        opts = _parse_args(args, takes)
        extra = set(opts.flags) - allowed
        if extra:
            return f"option {sorted(extra)[0]} is not one that only lists"
        if opts.operands and not operands:
            return "an operand here changes the system"
        return None

    return check


def _test(args: list[str]) -> str | None:
    # test -v 'a[$(id)]' evaluates the subscript: it runs the substitution.
    return "test -v/-R evaluate an array subscript" if {"-v", "-R"} & set(args) else None


def _date(args: list[str]) -> str | None:
    opts = _parse_args(args, _set("-d --date -f --file -r --reference -I --iso-8601"))
    if any(not op.startswith("+") for op in opts.operands):
        return "date with an operand sets the clock"
    return None


def _ping(args: list[str]) -> str | None:
    opts = _parse_args(args, _set("-c -i -w -W -s -t -I -p -Q -l -M -m"))
    if not opts.has("-c", "-w"):
        return "ping without -c or -w never ends"
    return None


_SED_FLAGS = _set("-n -E -r -s -u -z -e -l --quiet --silent --regexp-extended --separate --unbuffered --null-data --posix --debug --sandbox --expression --line-length")  # fmt: skip


def _sed(args: list[str]) -> str | None:
    opts = _parse_args(args, _set("-e -l --expression --line-length"))
    extra = set(opts.flags) - _SED_FLAGS
    if extra:
        return f"sed option {sorted(extra)[0]} edits files or reads a script file"
    scripts = opts.get("-e", "--expression") or opts.operands[:1]
    if any(_sed_acts(s) for s in scripts):
        return "the sed script writes a file (w, W, s///w) or runs a command (e, s///e)"
    return None


# ARGV/ARGC: a program that sets them reads files no word names (masking.paths).
_AWK_ACTS = re.compile(r"[|<>@]|system|getline|close|fflush|ENVIRON|PROCINFO|ARGV|ARGC")


def _awk(args: list[str]) -> str | None:
    i = 0
    while i < len(args) and args[i].startswith("-") and args[i] != "-":
        arg = args[i]
        if arg == "--":
            i += 1
            break
        if arg in ("-F", "-v"):
            i += 2
        elif arg[:2] in ("-F", "-v"):
            i += 1
        else:
            return f"awk option {arg} runs a file, loads code or writes a profile"
    if i >= len(args):
        return "awk without a program text reads it from a file"
    if _AWK_ACTS.search(args[i]):
        return "the awk program redirects, pipes, runs commands or reads files it names"
    return None


def _jq(args: list[str]) -> str | None:
    # A module or data file (import "x" as $d, include, -L DIR) is read from a path no
    # word names, so the masking.paths check could not see it.
    if _forbidden(args, _set("-L --library-path")) or any(
        "import" in a or "include" in a for a in args
    ):
        return "jq modules (-L, import, include) read files no word names"
    return None


def _find(args: list[str]) -> str | None:
    for arg in args:
        if arg in ("-delete", "-ok", "-okdir", "-fls") or arg.startswith("-fprint"):
            return f"find {arg} deletes, writes a file or asks on the terminal"
    return None  # -exec/-execdir: the command they run is judged on its own


_IP_READ = ("show", "list", "lst", "ls", "get", "help")


def _ip(args: list[str]) -> str | None:
    for arg in args:
        if arg.startswith("-") and len(arg) > 1:
            for option in ("-batch", "-netns", "-all", "-force"):
                if option.startswith(arg):
                    return f"ip {arg} runs a batch, enters a namespace or forces changes"
    opts = _parse_args(args, _set("-f -family -rc -rcvbuf -l -loops"), single_dash_long=True)
    operands = opts.operands
    if not operands or operands[0] in ("help", "monitor"):
        return None
    command = operands[1] if len(operands) > 1 else "show"
    if command not in _IP_READ:  # whole words: "s" is "set" for some objects
        return f"ip {operands[0]} {command} is not a listing"
    return None


# The options a listing may take, per program: (flags, options taking a value). Any other
# option fails closed: `systemctl --message status reboot` reboots, because --message
# takes "status" as its value; a parser that does not know an option's value cannot
# tell which word is the verb.
_SYSTEMD_COMMON = "-h --help --version --no-pager --no-legend --no-ask-password -q --quiet"
_SUBCOMMAND_OPTIONS = {
    "systemctl": (
        f"{_SYSTEMD_COMMON} -a --all -r --recursive --reverse --after --before --with-dependencies -l --full --value --show-types --failed --plain --user --system",
        "-t --type -p -P --property --state -n --lines -o --output --timestamp",
    ),
    "hostnamectl": (f"{_SYSTEMD_COMMON} --transient --static --pretty", "--json"),
    "timedatectl": (f"{_SYSTEMD_COMMON} -a --all --value", "-p -P --property --json"),
    "localectl": (_SYSTEMD_COMMON, "--json"),
}  # fmt: skip


def _subcommand(program: str) -> _Check:
    reads = _SUBCOMMAND_READ[program]
    flags, values = (_set(text) for text in _SUBCOMMAND_OPTIONS[program])

    def check(args: list[str]) -> str | None:
        opts = _parse_args(args, values)
        extra = set(opts.flags) - flags - values
        if extra:  # -H/-M reach another host; others may take the verb as their value
            return f"{program} option {sorted(extra)[0]} is not one a listing takes"
        operands = opts.operands
        if operands[:1] == ["help"]:
            return f"{program} help runs man and a pager"
        if operands and " ".join(operands[:2]) not in reads and operands[0] not in reads:
            return f"{program} {operands[0]} is not a listing"
        return None

    return check


def _sysctl(args: list[str]) -> str | None:
    if any("=" in a for a in args if not a.startswith("-")):
        return "sysctl NAME=VALUE sets a kernel parameter"
    return None


_PRINTF_FIRST = re.compile(r"-[^-]|--.")


def _printf(args: list[str]) -> str | None:
    if args and _PRINTF_FIRST.match(args[0]):
        return "printf options (-v) assign a variable the shell may evaluate later"
    return None


# ---------------------------------------------------------------------- the list
_ANY = "it has no option that writes, runs a program or changes the system"
READ_ONLY: dict[str, ReadRule] = {
    # files and text, to standard output
    "cat": _r(f"prints files; {_ANY}"),
    "head": _r(f"prints the start of files; {_ANY}"),
    "tail": _r(f"prints the end of files, -f follows them; {_ANY}"),
    "grep": _r(f"searches files; {_ANY}"),
    "egrep": _r("grep -E (a script that runs grep)"),
    "fgrep": _r("grep -F (a script that runs grep)"),
    "wc": _r(f"counts; {_ANY}"),
    "cut": _r(f"selects fields; {_ANY}"),
    "tr": _r(f"translates characters from stdin; {_ANY}"),
    "nl": _r(f"numbers lines; {_ANY}"),
    "paste": _r(f"merges lines; {_ANY}"),
    "join": _r(f"joins files on a field; {_ANY}"),
    "comm": _r(f"compares sorted files; {_ANY}"),
    "diff": _r("compares files (GNU diff has no output-file option); -l runs pr", "-l --paginate"),
    "cmp": _r(f"compares bytes; {_ANY}"),
    "fold": _r(f"wraps lines; {_ANY}"),
    "fmt": _r(f"reformats text; {_ANY}"),
    "expand": _r(f"tabs to spaces; {_ANY}"),
    "unexpand": _r(f"spaces to tabs; {_ANY}"),
    "rev": _r(f"reverses lines; {_ANY}"),
    "seq": _r(f"prints numbers; {_ANY}"),
    "column": _r(f"formats columns; {_ANY}"),
    "strings": _r(f"prints printable strings; {_ANY}"),
    "od": _r(f"dumps bytes; {_ANY}"),
    "hexdump": _r(f"dumps bytes; {_ANY}"),
    "base64": _r(f"encodes or decodes to stdout; {_ANY}"),
    "base32": _r(f"encodes or decodes to stdout; {_ANY}"),
    "md5sum": _r(f"hashes files, --check reads a list; {_ANY}"),
    "sha1sum": _r(f"hashes files; {_ANY}"),
    "sha224sum": _r(f"hashes files; {_ANY}"),
    "sha256sum": _r(f"hashes files; {_ANY}"),
    "sha384sum": _r(f"hashes files; {_ANY}"),
    "sha512sum": _r(f"hashes files; {_ANY}"),
    "b2sum": _r(f"hashes files; {_ANY}"),
    "cksum": _r(f"checksums files; {_ANY}"),
    "jq": _r("filters JSON (no file output, no program execution); -L, import and include read modules", check=_jq),  # fmt: skip
    "sort": _r("sorts to stdout; -o writes a file, --compress-program runs one, -T picks where it writes temporary files", "-o --output --compress-program -T --temporary-directory"),  # fmt: skip
    "uniq": _r("filters repeated lines; a second operand is the file it writes", check=_at_most_operands(1, "-f -s -w --skip-fields --skip-chars --check-chars")),  # fmt: skip
    "sed": _r("edits a stream to stdout; only options that keep it so (no -i, no -f) and a script without w/W/e", check=_sed),  # fmt: skip
    "awk": _r("only -F and -v, and a program with no redirection, pipe, getline, system() or @ call", check=_awk),  # fmt: skip
    "gawk": _r("as awk; gawk's -o/-p/-d write profile files, -f/-i/-l load code", check=_awk),
    "mawk": _r("as awk; mawk's -W options run files", check=_awk),
    "nawk": _r("as awk", check=_awk),
    "find": _r("lists files; -delete, -fprint*, -fls write and -ok asks the terminal (the command of -exec is judged on its own)", check=_find),  # fmt: skip
    "file": _r("guesses file types; -C compiles a magic file (writes it)", "-C --compile"),
    # files and directories, metadata
    "ls": _r(f"lists directories; {_ANY}"),
    "dir": _r(f"ls -C; {_ANY}"),
    "vdir": _r(f"ls -l; {_ANY}"),
    "stat": _r(f"prints file status; {_ANY}"),
    "du": _r(f"sums disk usage; {_ANY}"),
    "df": _r(f"prints free space; {_ANY}"),
    "basename": _r(f"strips a path; {_ANY}"),
    "dirname": _r(f"strips a file name; {_ANY}"),
    "realpath": _r(f"resolves a path; {_ANY}"),
    "readlink": _r(f"prints a link's target; {_ANY}"),
    "namei": _r(f"follows a path; {_ANY}"),
    "lsattr": _r(f"prints file attributes (chattr changes them); {_ANY}"),
    "getfacl": _r(f"prints ACLs (setfacl changes them); {_ANY}"),
    "getcap": _r(f"prints file capabilities (setcap changes them); {_ANY}"),
    "tree": _r("lists a tree; -o writes its output to a file, -R with -H writes 00Tree.html files", "-o -R"),  # fmt: skip
    # processes, memory, disks, kernel
    "ps": _r(f"lists processes; {_ANY}"),
    "pgrep": _r(f"finds processes (pkill signals them); {_ANY}"),
    "pidof": _r(f"finds processes; {_ANY}"),
    "pstree": _r(f"draws processes; {_ANY}"),
    "free": _r(f"prints memory; {_ANY}"),
    "uptime": _r(f"prints load; {_ANY}"),
    "vmstat": _r(f"prints VM statistics; {_ANY}"),
    "iostat": _r(f"prints I/O statistics; {_ANY}"),
    "mpstat": _r(f"prints CPU statistics; {_ANY}"),
    "pidstat": _r("prints process statistics; -e runs a program", "-e"),
    "sar": _r("prints activity; -o writes a data file", "-o"),
    "lsof": _r("lists open files; -D builds or writes its device cache", "-D"),
    "lsblk": _r(f"lists block devices; {_ANY}"),
    "findmnt": _r(f"lists mounts; {_ANY}"),
    "lscpu": _r(f"prints CPU details; {_ANY}"),
    "lsmem": _r(f"prints memory ranges; {_ANY}"),
    "lspci": _r(f"lists PCI devices; {_ANY}"),
    "lsusb": _r(f"lists USB devices; {_ANY}"),
    "lsmod": _r(f"lists kernel modules; {_ANY}"),
    "modinfo": _r(f"describes a module (modprobe loads one); {_ANY}"),
    "lslocks": _r(f"lists file locks; {_ANY}"),
    "lsns": _r(f"lists namespaces; {_ANY}"),
    "ipcs": _r(f"lists IPC objects (ipcrm removes them); {_ANY}"),
    "nproc": _r(f"counts CPUs; {_ANY}"),
    "arch": _r(f"prints the machine type; {_ANY}"),
    "uname": _r(f"prints system names; {_ANY}"),
    "getconf": _r(f"prints configuration values; {_ANY}"),
    "locale": _r(f"prints locale settings; {_ANY}"),
    "runlevel": _r(f"prints the runlevel; {_ANY}"),
    "sestatus": _r(f"prints SELinux status; {_ANY}"),
    "getenforce": _r(f"prints SELinux mode (setenforce changes it); {_ANY}"),
    "dmesg": _r("prints the kernel log; -c/-C clear it, -n/-D/-E change the console", "-c -C -n -D -E --clear --read-clear --console-level --console-off --console-on"),  # fmt: skip
    "journalctl": _r("prints the journal (the gateway sets SYSTEMD_PAGER=cat); the forbidden options rotate, vacuum, flush or write files", "--vacuum-size --vacuum-time --vacuum-files --rotate --flush --sync --relinquish-var --smart-relinquish-var --setup-keys --update-catalog --cursor-file --image"),  # fmt: skip
    "sysctl": _r("prints kernel parameters; -w/-p/--system and NAME=VALUE set them", "-w --write -p --load -f --system", _sysctl),  # fmt: skip
    "mount": _r("with no operand and listing options only, lists mounts", check=_flags_within(_MOUNT_LISTING, "-t --types")),  # fmt: skip
    "swapon": _r("--show/-s only list swap", check=_flags_within(_SWAPON_LISTING)),
    "systemctl": _r("listing subcommands only (status, show, is-*, list-*, cat); -H/-M reach another host", check=_subcommand("systemctl")),  # fmt: skip
    "hostnamectl": _r("status/show only", check=_subcommand("hostnamectl")),
    "timedatectl": _r("status/show/list-timezones only", check=_subcommand("timedatectl")),
    "localectl": _r("status and list-* only", check=_subcommand("localectl")),
    # users and sessions
    "id": _r(f"prints user ids; {_ANY}"),
    "whoami": _r(f"prints the user; {_ANY}"),
    "groups": _r(f"prints groups; {_ANY}"),
    "who": _r(f"lists sessions; {_ANY}"),
    "w": _r(f"lists sessions and what they run; {_ANY}"),
    "users": _r(f"lists users; {_ANY}"),
    "last": _r(f"lists logins; {_ANY}"),
    "lastlog": _r("lists last logins; -C clears and -S sets a record", "-C --clear -S --set"),
    "getent": _r(f"looks up name-service entries; {_ANY}"),
    "crontab": _r("-l lists a crontab; anything else edits or removes it", check=_flags_within(_set("-l -u"), "-u")),  # fmt: skip
    # network
    "ss": _r("lists sockets; -K kills them, -D writes a dump file, -N enters a namespace", "-K --kill -D --diag -N --net"),  # fmt: skip
    "netstat": _r(f"lists sockets; {_ANY}"),
    "ip": _r("show/list/get only; -batch, -netns, -all and -force run or change", check=_ip),
    "ifconfig": _r("with at most an interface name only prints", check=_at_most_operands(1)),
    "route": _r("with no operand only prints the table", check=_no_operands),
    "hostname": _r("prints names; an operand, -F or -b sets the hostname", "-F --file -b --boot", _no_operands),  # fmt: skip
    "dig": _r(f"asks DNS; {_ANY}"),
    "host": _r(f"asks DNS; {_ANY}"),
    "whois": _r(f"asks whois servers; {_ANY}"),
    "ping": _r("sends echo requests; needs -c or -w (it ends), -f floods", "-f", _ping),
    "traceroute": _r(f"traces a route; {_ANY}"),
    "tracepath": _r(f"traces a route; {_ANY}"),
    # shell words
    "echo": _r(f"prints its arguments; {_ANY}"),
    "printf": _r("prints a format; -v assigns a variable, so the first argument must be a literal format", check=_printf),  # fmt: skip
    "printenv": _r(f"prints the environment; {_ANY}"),
    "env": _r("alone, prints the environment (as a prefix it is judged with its options)"),
    "date": _r("prints the time; -s and an operand that is not +FORMAT set the clock", "-s --set", _date),  # fmt: skip
    "cal": _r(f"prints a calendar; {_ANY}"),
    "sleep": _r(f"waits; {_ANY}"),
    "true": _r(f"does nothing; {_ANY}"),
    "false": _r(f"does nothing; {_ANY}"),
    ":": _r(f"does nothing; {_ANY}"),
    "test": _r("tests files and strings; -v/-R evaluate an array subscript, which can run code", check=_test),  # fmt: skip
    "[": _r("test", check=_test),
    "expr": _r(f"evaluates an expression (the program, not shell arithmetic); {_ANY}"),
    "numfmt": _r(f"formats numbers; {_ANY}"),
    "tsort": _r(f"sorts topologically; {_ANY}"),
    "look": _r(f"prints lines with a prefix; {_ANY}"),
    "pwd": _r(f"prints the directory; {_ANY}"),
    "cd": _r("changes the shell's directory, which only changes where later reads look"),
    "which": _r(f"finds a program (a shell script, runs nothing); {_ANY}"),
    "whereis": _r(f"finds a program's files; {_ANY}"),
    "type": _r(f"says what a name is; {_ANY}"),
    "tty": _r(f"prints the terminal; {_ANY}"),
    "exit": _r("ends the shell"),
    "dpkg-query": _r(f"queries the package database; {_ANY}"),
}  # fmt: skip


# Prefixes a read may run under, with the options that keep the command what it says.
READ_PREFIXES: dict[str, tuple[str, frozenset[str]]] = {
    "env": (
        "runs the command with safe variables added; -i and -u would drop the gateway's PAGER=cat and LESSSECURE=1 (systemctl status on a terminal then runs less, whose !cmd runs a shell)",
        _set("-C --chdir"),
    ),  # fmt: skip
    "timeout": (
        "ends the command after a while",
        _set("-s --signal -k --kill-after --preserve-status --foreground -v --verbose"),
    ),  # fmt: skip
    "nice": ("lowers the command's priority", _set("-n --adjustment")),
    "stdbuf": ("changes the command's buffering", _set("-i -o -e --input --output --error")),
    "xargs": (
        "runs the command with arguments from stdin (only a command whose options are not checked)",
        _set(
            "-0 --null -r --no-run-if-empty -n --max-args -L --max-lines -d --delimiter -E -I --replace -s --max-chars -t --verbose -x --exit -P --max-procs -a --arg-file"
        ),
    ),  # fmt: skip
}

# Variables a read may set: locale, time zone and layout, and lower-case names, which no
# shell or program of the list gives a meaning to. PATH, IFS, PS4, BASH_ENV, ENV,
# PROMPT_COMMAND, LD_*, SHELLOPTS ... change what runs or what bash evaluates.
_SAFE_VARIABLE = re.compile(r"[a-z_][a-z0-9_]*|LC_[A-Z]+|LANG|LANGUAGE|TZ|COLUMNS|LINES|NO_COLOR")


def variable_problem(assignment: str) -> str | None:
    """Why assigning ``NAME=value`` is not part of a read, or None."""
    name = assignment.partition("=")[0].rstrip("+")
    if _SAFE_VARIABLE.fullmatch(name):
        return None
    return f"assigning {name} may change what a later command runs or what bash evaluates"


def prefix_problem(name: str, flags: Sequence[str], assignments: Sequence[str]) -> str | None:
    """Why running a command under prefix ``name`` is not a read, or None."""
    entry = READ_PREFIXES.get(name)
    if entry is None:
        return f"{name} is not a prefix a read may run under"
    extra = set(flags) - entry[1]
    if extra:
        return f"{name} option {sorted(extra)[0]} is not on the read allow-list"
    for text in assignments:
        if _is_assignment(text) and (problem := variable_problem(text)):
            return problem
    return None


def program_problem(
    name: str | None, args: list[str], fixed: Sequence[bool], appended: bool
) -> str | None:
    """Why running program ``name`` with ``args`` is not a read, or None.

    ``fixed``: per argument, whether it is known now (no expansion, no glob).
    ``appended``: xargs or find -exec add arguments at run time.
    """
    literal = all(fixed)
    if name is None:
        return "a program wardgate does not know"
    rule = READ_ONLY.get(name)
    if rule is None:
        return f"{name} is not on the read-only allow-list"
    if rule.checked and appended:
        return f"{name}'s options are checked, and xargs or find -exec add arguments at run time"
    if name == "printf":  # only its first argument can be an option
        if args and not fixed[0]:
            return "printf's first argument is only known at run time (it could be -v)"
        return _printf(args)
    if rule.checked and not literal:
        return f"{name}'s options are checked, and an argument is only known at run time"
    bad = _forbidden(args, rule.forbid) if rule.forbid else None
    if bad is not None:
        return f"{name} {bad}: {rule.why}"
    return rule.check(args) if rule.check is not None else None
