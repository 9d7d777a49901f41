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

import posixpath
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from fnmatch import fnmatchcase
from functools import lru_cache
from typing import Any

import bashlex
import bashlex.errors
import bashlex.heredoc
import bashlex.subst

from wardgate.actions import StatementInfo

SHELL_CLASSES = ("read", "write", "admin", "unknown")
_RANK = {klass: rank for rank, klass in enumerate(SHELL_CLASSES)}


def _set(text: str) -> frozenset[str]:
    """A table written as one string of names (option lists are long)."""
    return frozenset(text.split())


# Texts longer than this are judged unknown unparsed: bashlex needs ~5 µs a character.
MAX_COMMAND_CHARS = 65536
# Texts up to this size are cached by exact text (bounded by entry count).
MAX_CACHED_TEXT = 8192
# `bash -c "sh -c '...'"` nesting deeper than this is judged unknown.
_MAX_DEPTH = 8


def _patch_bashlex() -> None:
    """Two bashlex 0.18 bugs, fixed where they sit (idempotent):

    - here-document lines are compared with the delimiter *before* quote removal, so
      ``cat <<'EOF'`` never ends; bash uses the quote-removed word;
    - a word holding ``${`` with no ``}`` after it (reachable through ``$'${'``) makes
      the word expander start over forever, eating memory; it is a parse error.
    """
    if getattr(bashlex.heredoc.makeheredoc, "_wardgate", False):
        return
    makeheredoc = bashlex.heredoc.makeheredoc
    paramexpand = bashlex.subst._paramexpand

    def fixed_makeheredoc(tokenizer: Any, redirnode: Any, lineno: int, killleading: bool) -> Any:
        word = redirnode.output.word
        redirnode.output.word = "".join(ch for ch in word if ch not in "'\"\\")
        return makeheredoc(tokenizer, redirnode, lineno, killleading)

    def fixed_paramexpand(parserobj: Any, string: str, sindex: int) -> Any:
        if string[sindex + 1 : sindex + 2] == "{" and string.find("}", sindex + 2) < 0:
            raise bashlex.errors.ParsingError("bad substitution: no closing '}'", string, sindex)
        return paramexpand(parserobj, string, sindex)

    fixed_makeheredoc._wardgate = True  # type: ignore[attr-defined]
    bashlex.heredoc.makeheredoc = fixed_makeheredoc
    bashlex.subst._paramexpand = fixed_paramexpand


_patch_bashlex()


# ---------------------------------------------------------------------------- programs
# Programs that only look at things (their redirections are judged separately).
_READ = frozenset(
    {
        "ls", "dir", "vdir", "cat", "tac", "head", "tail", "less", "more", "most", "grep",
        "egrep", "fgrep", "zgrep", "zegrep", "zcat", "zless", "zmore", "bzcat", "xzcat",
        "zstdcat", "rg", "ag", "ack", "stat", "file", "wc", "sort", "uniq", "cut", "tr", "nl",
        "column", "paste", "join", "comm", "diff", "cmp", "fold", "fmt", "expand", "unexpand",
        "rev", "seq", "yes", "basename", "dirname", "realpath", "readlink", "pwd", "strings",
        "od", "hexdump", "xxd", "md5sum", "sha1sum", "sha224sum", "sha256sum", "sha384sum",
        "sha512sum", "b2sum", "cksum", "base64", "base32", "jq", "yq", "ps", "pgrep", "pidof",
        "pstree", "top", "uptime", "free", "df", "du", "vmstat", "iostat", "mpstat",
        "pidstat", "sar", "lsof", "ss", "netstat", "hostname", "uname", "whoami", "id",
        "groups", "who", "w", "last", "lastlog", "users", "date", "cal", "printenv", "echo",
        "printf", "journalctl", "dmesg", "lsblk", "blkid", "findmnt", "lscpu", "lsmem",
        "lspci", "lsusb", "lsmod", "modinfo", "nproc", "arch", "getent", "tree", "dig",
        "nslookup", "host", "whois", "traceroute", "tracepath", "mtr", "ping", "ping6",
        "which", "whereis", "type", "sleep", "true", "false", "test", "[", ":", "mount",
        "swapon", "locale", "tty", "getconf", "lsattr", "getfacl", "namei", "lslocks", "lsns",
        "ipcs", "sestatus", "getenforce", "getcap", "runlevel", "dumpe2fs", "dpkg-query",
        "apt-cache", "iptables-save", "ip6tables-save", "route", "ifconfig", "expr",
        "numfmt", "tsort", "look", "cd", "pushd", "popd", "dirs", "set", "unset", "shift",
        "exit", "return", "wait", "read", "hash", "ulimit", "umask", "alias", "unalias",
        "history", "jobs", "times", "getopts", "let", "help", "disown", "break", "continue",
        "export", "declare", "typeset", "local", "readonly", "trap", "kill", "crontab", "tar",
        "curl", "wget", "sysctl", "hostnamectl", "timedatectl", "localectl", "systemctl",
        "service", "git", "kubectl", "helm", "docker", "podman", "nerdctl", "nc", "passwd",
        "chage", "visudo", "fdisk", "sfdisk", "parted", "modprobe", "ip", "tc", "nft",
        "ufw", "firewall-cmd", "iptables", "ip6tables", "ebtables", "arptables", "tee",
        "sed", "awk", "gawk", "mawk", "nawk", "find", "apt", "apt-get", "aptitude", "dpkg",
        "yum", "dnf", "rpm", "zypper", "pacman", "apk", "snap", "flatpak", "pip", "pipx",
        "npm", "yarn", "pnpm", "gem", "brew", "conda", "python", "perl", "ruby", "node", "php",
        "lua",
    }
)  # fmt: skip
# Subcommand-dependent programs above start at read; their handler raises the class.

# Programs that change files, services or processes.
_WRITE = frozenset(
    {
        "rm", "mv", "cp", "mkdir", "rmdir", "touch", "chmod", "chown", "chgrp", "ln",
        "truncate", "dd", "shred", "unlink", "install", "rsync", "scp", "mkfifo", "chattr",
        "setfacl", "pkill", "killall", "skill", "killall5", "vi", "vim", "nvim", "nano",
        "emacs", "ed", "sudoedit", "socat",
        "unzip", "zip", "gzip", "gunzip", "bzip2", "xz", "patch", "renice", "ifup", "ifdown",
    }
)  # fmt: skip

# Programs that change the host itself: disks, firewall, kernel, users, boot, power.
_ADMIN = frozenset(
    {
        "shutdown", "reboot", "poweroff", "halt", "init", "telinit", "mkfs", "gdisk",
        "sgdisk", "cfdisk", "wipefs", "blkdiscard", "umount", "swapoff", "chroot", "nsenter",
        "unshare", "pivot_root", "switch_root", "kexec", "useradd", "userdel", "usermod",
        "groupadd", "groupdel", "groupmod", "chpasswd", "gpasswd", "newusers", "adduser",
        "deluser", "addgroup", "delgroup", "vipw", "vigr", "chsh", "chfn", "insmod", "rmmod",
        "depmod", "setenforce", "setcap", "setsebool", "semanage", "lvcreate", "lvremove",
        "lvextend", "lvresize", "lvreduce", "vgcreate", "vgremove", "vgextend", "vgreduce",
        "pvcreate", "pvremove", "pvmove", "mdadm", "cryptsetup", "losetup", "fsck", "e2fsck",
        "xfs_repair", "tune2fs", "resize2fs", "xfs_growfs", "hdparm", "update-grub",
        "grub-install", "grub2-install", "grub-mkconfig", "efibootmgr", "update-initramfs",
        "dracut", "ldconfig", "update-ca-certificates", "hwclock", "iptables-restore",
        "ip6tables-restore", "netplan",
    }
)  # fmt: skip

# Names that are another program's alias or version; mapped to one kind.
_ALIASES = {
    "netcat": "nc", "ncat": "nc", "nc.openbsd": "nc", "nc.traditional": "nc", "mke2fs": "mkfs",
    "mkswap": "mkfs", "mkdosfs": "mkfs", "mkntfs": "mkfs", "iptables-legacy": "iptables",
    "iptables-nft": "iptables", "ip6tables-legacy": "ip6tables", "ip6tables-nft": "ip6tables",
    "nodejs": "node", "microdnf": "dnf", "view": "less", "pip3": "pip", ".": "source",
}  # fmt: skip
_VERSIONED = re.compile(r"(python|pip|perl|php|ruby|lua|node)[0-9][0-9.]*")

# Shells run a script given inline (-c), from a file, or from stdin.
_SHELLS = frozenset({"sh", "bash", "zsh", "dash", "ksh", "mksh", "ash", "csh", "tcsh", "fish"})
_SHELL_VALUE_OPTIONS = frozenset({"-o", "+o", "-O", "+O", "--rcfile", "--init-file"})


@dataclass(frozen=True, slots=True)
class _Interpreter:
    code: frozenset[str]  # options whose value is the program text
    values: frozenset[str] = frozenset()  # other options taking a value
    module: frozenset[str] = frozenset()  # options naming a module or server to run


_INTERPRETERS = {
    "python": _Interpreter(frozenset({"-c"}), frozenset({"-W", "-X", "-Q"}), frozenset({"-m"})),
    "perl": _Interpreter(frozenset({"-e", "-E"}), frozenset({"-I", "-M", "-m", "-x"})),
    "ruby": _Interpreter(frozenset({"-e"}), frozenset({"-I", "-r", "-C", "-E"})),
    "node": _Interpreter(
        frozenset({"-e", "--eval", "-p", "--print"}), frozenset({"-r", "--require", "--import"})
    ),
    "php": _Interpreter(
        frozenset({"-r"}), frozenset({"-c", "-d", "-t", "-z"}), frozenset({"-S", "-f"})
    ),
    "lua": _Interpreter(frozenset({"-e"}), frozenset({"-l"})),
}
_VERSION_FLAGS = frozenset({"-V", "--version", "-v", "-h", "--help"})

# Programs whose output fed into a shell hides what the shell runs.
_DOWNLOADERS = frozenset({"curl", "wget", "fetch", "http", "https", "ftp", "tftp", "aria2c", "nc", "socat"})  # fmt: skip
_DECODERS = frozenset(
    {"echo", "printf", "base64", "base32", "basenc", "xxd", "openssl", "rev", "tr", "gzip",
     "gunzip", "zcat", "bzip2", "xz", "uudecode", "od"}
)  # fmt: skip

# Variables that change which program runs, or what a "read" program executes.
_HIJACK_VARS = frozenset(
    {
        "PATH", "LD_PRELOAD", "LD_LIBRARY_PATH", "LD_AUDIT", "BASH_ENV", "ENV", "IFS",
        "PROMPT_COMMAND", "PS4", "SHELLOPTS", "BASHOPTS", "GCONV_PATH", "PYTHONPATH",
        "PYTHONSTARTUP", "PERL5OPT", "PERL5LIB", "NODE_OPTIONS", "RUBYOPT", "GIT_SSH_COMMAND",
        "GIT_EXTERNAL_DIFF", "GIT_PAGER", "PAGER", "EDITOR", "VISUAL", "LESSOPEN",
        "LESSCLOSE", "MANPAGER", "SYSTEMD_PAGER", "GIT_CONFIG_PARAMETERS",
    }
)  # fmt: skip

# Only these directories hold the programs the tables mean; /tmp/ls is not ls.
_SYSTEM_DIRS = frozenset(
    {"/bin", "/sbin", "/usr/bin", "/usr/sbin", "/usr/local/bin", "/usr/local/sbin"}
)
_SINKS = frozenset({"/dev/null", "/dev/stdout", "/dev/stderr"})
_NOT_DEVICES = ("/dev/null", "/dev/stdout", "/dev/stderr", "/dev/tty", "/dev/fd/", "/dev/pts/", "/dev/shm/", "/dev/tcp/", "/dev/udp/", "/dev/stdin", "/dev/zero", "/dev/random", "/dev/urandom")  # fmt: skip
_BROAD_DIRS = frozenset(
    {"/etc", "/usr", "/var", "/home", "/boot", "/bin", "/lib", "/lib64", "/opt", "/root",
     "/srv", "/sbin", "/dev", "/proc", "/sys", "/run"}
)  # fmt: skip
_LOOPBACK = ("127.", "localhost", "::1", "[::1]", "ip6-localhost")

_RISK_KINDS = frozenset(
    {
        "sudo", "rm_rf_broad", "mkfs", "dd_to_device", "shutdown", "firewall_flush",
        "firewall_open_world", "listen_all_interfaces", "pipe_to_shell",
        "chmod_world_writable", "write_etc", "obfuscated", "redirect_write",
        "unknown_program", "parse_error", "write_device", "write_kernel", "dev_tcp",
        "env_override", "interactive", "source", "eval", "assignment", "find_delete",
        "find_exec", "package_change", "privileged_container", "remote_shell",
    }
)  # fmt: skip


# ------------------------------------------------------------------------ argument parsing
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


# -------------------------------------------------------------------------- paths
def _clean(path: str) -> str:
    """An absolute path normalised (//etc/./x/.. -> /etc); others as given."""
    if not path.startswith("/"):
        return path
    return "/" + posixpath.normpath(path).lstrip("/")


def _under(path: str, root: str) -> bool:
    """Whether ``path`` is ``root`` or inside it; a glob component may match it too."""
    parts = [p for p in _clean(path).split("/") if p]
    want = [p for p in root.split("/") if p]
    if not path.startswith("/") or len(parts) < len(want):
        return False
    # "/e?c" may be /etc; a bare "*" (everything) is rm_rf_broad's business, not this.
    return all(p != "*" and fnmatchcase(w, p) for p, w in zip(parts, want, strict=False))


_LEADING_VAR = re.compile(r"\$(\{[^}]*\}|[A-Za-z_][A-Za-z0-9_]*)")


def _trim(path: str) -> str:
    """The directory a removal empties: "/etc/*" and "/etc/." delete what "/etc" holds."""
    while len(path) > 1 and path.endswith(("/", "/*", "/.")):
        path = (path[:-1] if path.endswith("/") else path[:-2]) or "/"
    return path


def _is_broad(path: str) -> bool:
    """A target whose recursive removal takes out a system tree, a home or the cwd."""
    if not path:
        return False  # rm -rf "" removes nothing
    trimmed = _trim(path)
    if trimmed in ("/", ".", "..", "*", ".*", "$HOME", "${HOME}"):
        return True
    if trimmed.startswith("~"):
        return "/" not in trimmed  # ~ or ~user
    var = _LEADING_VAR.match(path)
    if var:
        # An empty variable turns "$DIR/*" into "/*" (the Steam installer bug).
        rest = _trim(path[var.end() :])
        return rest.startswith("/") and (rest == "/" or _clean(rest) in _BROAD_DIRS)
    if trimmed.startswith("/"):
        parts = [p for p in _clean(trimmed).split("/") if p]
        return len(parts) <= 1 or any(ch in parts[0] for ch in "*?[")
    return all(p in ("", ".", "..") for p in posixpath.normpath(trimmed).split("/"))


def _is_device(path: str) -> bool:
    clean = _clean(path)
    return clean.startswith("/dev/") and not clean.startswith(_NOT_DEVICES)


def _is_loopback(address: str) -> bool:
    return address.lower().startswith(_LOOPBACK)


# ----------------------------------------------------------------------- judgement
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

    def at_least(self, klass: str, *kinds: str) -> None:
        if _RANK[klass] > _RANK[self.klass]:
            self.klass = klass
        self.kinds.extend(k for k in kinds if k not in self.kinds)

    def info(self) -> StatementInfo:
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


# --------------------------------------------------------------- files and processes
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
            c.at_least("write", "find_exec")
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


# ------------------------------------------------------------------- system diagnostics
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


# ----------------------------------------------------------------- services and tools
# Programs whose first operand says what they do: the subcommands that only look.
# Two-word subcommands are joined by "_" ("config_view"). Any other subcommand is write
# (admin for the programs in _SUBCOMMAND_DEFAULT_ADMIN); no subcommand lists or helps.
_SUBCOMMAND_READS = {
    "systemctl": "status show is-active is-enabled is-failed list-units list-unit-files list-timers list-sockets list-dependencies list-jobs list-machines list-automounts list-paths cat help get-default show-environment is-system-running",
    "kubectl": "get describe logs top explain api-resources api-versions version cluster-info config_view config_get-contexts config_current-context config_get-clusters auth_can-i auth_whoami events diff rollout_status rollout_history wait completion plugin_list",
    "helm": "list ls status get history show template search repo_list version env lint verify",
    "docker": "ps logs inspect images top port diff history version info search events stats container_ls container_ps container_list container_inspect container_logs container_top container_port container_diff container_stats image_ls image_list image_inspect image_history network_ls network_inspect volume_ls volume_inspect system_df system_info system_events compose_ps compose_logs compose_config compose_ls compose_images compose_top compose_version context_ls context_show",
    "hostnamectl": "status show",
    "timedatectl": "status show list-timezones timesync-status show-timesync",
    "localectl": "status list-locales list-keymaps list-x11-keymap-models list-x11-keymap-layouts",
    "netplan": "get status info",
    # Package managers: anything else installs, removes or upgrades (package_change).
    "apt": "list search show policy depends rdepends changelog help showsrc madison",
    "apt-get": "changelog check help",
    "aptitude": "show search why why-not versions changelog",
    "yum": "list info search provides whatprovides repolist check-update deplist history repoquery help updateinfo",
    "zypper": "search se info if list-updates lu patches repos lr packages pa products pd patterns what-provides wp",
    "apk": "info search list policy stats version dot",
    "snap": "list info find search changes services connections interfaces version known logs warnings aliases",
    "flatpak": "list info search remotes remote-ls history",
    "pip": "list show freeze check search help config_list config_get debug inspect index cache_list cache_info hash",
    "pipx": "list environment",
    "npm": "ls list ll la view info show v outdated search s find audit help root prefix bin config_get config_list doctor explain why fund ping whoami query",
    "yarn": "list info why outdated audit versions config_get config_list help",
    "pnpm": "list ls outdated audit why view info",
    "gem": "list search info contents environment help query specification which outdated dependency",
    "brew": "list ls info search outdated deps uses config doctor leaves desc options commands",
    "conda": "list info search env_list",
}  # fmt: skip
_SUBCOMMAND_READS["dnf"] = _SUBCOMMAND_READS["yum"]
_SUBCOMMAND_READS["podman"] = _SUBCOMMAND_READS["nerdctl"] = _SUBCOMMAND_READS["docker"]
_SUBCOMMAND_ADMINS = {
    "systemctl": "poweroff reboot halt kexec soft-reboot suspend hibernate hybrid-sleep suspend-then-hibernate emergency rescue isolate set-default switch-root default",
    "kubectl": "drain cordon uncordon taint certificate",
}  # fmt: skip
_SUBCOMMAND_DEFAULT_ADMIN = frozenset({"hostnamectl", "timedatectl", "localectl", "netplan"})
_PACKAGE_MANAGERS = _set("apt apt-get aptitude yum dnf zypper apk snap flatpak pip pipx npm yarn pnpm gem brew conda")  # fmt: skip


def _words(text: str) -> frozenset[str]:
    return frozenset(w.replace("_", " ") for w in text.split())


_SUBCOMMAND_READ = {name: _words(text) for name, text in _SUBCOMMAND_READS.items()}
_SUBCOMMAND_ADMIN = {name: _words(text) for name, text in _SUBCOMMAND_ADMINS.items()}
_values("systemctl", "-t --type -p --property -H --host -M --machine -n --lines -o --output --state -s --signal --root --kill-whom --kill-value --job-mode --what --timestamp")  # fmt: skip
_values("kubectl", "-n --namespace --context --kubeconfig -l --selector -o --output -c --container --cluster --user -f --filename -s --server --field-selector --sort-by --since --tail --template -L --label-columns --as --as-group --token --request-timeout --address --timeout --type")  # fmt: skip
_values("helm", "-n --namespace --kube-context --kubeconfig -o --output -f --values --set --version --repo")  # fmt: skip
_values("docker podman nerdctl", "-H --host --context -c --config -l --log-level -v --volume --mount -e --env -p --publish --name -w --workdir -u --user --network --net --pid --cap-add --cap-drop --entrypoint -h --hostname --label --env-file -m --memory --cpus --restart --log-driver --log-opt --device --ipc --uts --userns --security-opt --tmpfs --ulimit --add-host --dns --platform -a --attach --gpus --shm-size --runtime --format -f --filter -n --tail --since --until -t --tag --file --build-arg --target")  # fmt: skip
_values("apt apt-get aptitude yum dnf zypper", "-o --option -c --config-file -t --target-release --enablerepo --disablerepo --installroot --releasever -R --root")  # fmt: skip
_values("pip", "-r --requirement -c --constraint -e --editable -t --target -i --index-url --extra-index-url --prefix --root --python")  # fmt: skip
_values("npm yarn pnpm", "--prefix -w --workspace --registry")


def _subcommands(c: _Call) -> None:
    operands = c.opts.operands
    if not operands:
        return  # the bare command lists or prints help
    keys = (" ".join(operands[:2]), operands[0])
    if any(key in _SUBCOMMAND_READ[c.name] for key in keys):
        return
    admin = any(key in _SUBCOMMAND_ADMIN.get(c.name, ()) for key in keys)
    klass = "admin" if admin or c.name in _SUBCOMMAND_DEFAULT_ADMIN else "write"
    c.at_least(klass, *(("package_change",) if c.name in _PACKAGE_MANAGERS else ()))


for _name in _SUBCOMMAND_READ:
    _HANDLERS[_name] = _subcommands


def _handles_more(*names: str) -> Callable[[_Handler], _Handler]:
    """A second handler run after the subcommand table's."""

    def register(extra: _Handler) -> _Handler:
        for name in names:
            first = _HANDLERS[name]

            def both(c: _Call, first: _Handler = first) -> None:
                first(c)
                extra(c)

            _HANDLERS[name] = both
        return extra

    return register


_SYSTEMCTL_POWER = _set("poweroff reboot halt kexec soft-reboot")


@_handles_more("systemctl")
def _systemctl(c: _Call) -> None:
    if c.opts.operands[:1] and c.opts.operands[0] in _SYSTEMCTL_POWER:
        c.at_least("admin", "shutdown")


_PRIVILEGED_MOUNTS = ("/", "/etc", "/root", "/boot", "/dev", "/proc", "/sys", "/var/run/docker.sock", "/run/docker.sock", "/var/lib/docker")  # fmt: skip


@_handles_more("docker", "podman", "nerdctl")
def _docker(c: _Call) -> None:
    opts = c.opts
    if opts.operands[:1] == ["stats"] and not opts.has("--no-stream"):
        c.at_least("write")  # streams until killed (as the brief asks: only --no-stream reads)
    sub = opts.operands[1:2] if opts.operands[:1] == ["container"] else opts.operands[:1]
    if sub not in (["run"], ["create"]):
        return
    mounts = [v.split(":")[0] for v in opts.get("-v", "--volume")]
    for spec in opts.get("--mount"):
        mounts += [
            p.partition("=")[2] for p in spec.split(",") if p.startswith(("source=", "src="))
        ]
    host = opts.get("--pid", "--ipc", "--userns", "--uts")
    caps = {v.upper() for v in opts.get("--cap-add")}
    if (
        opts.has("--privileged")
        or "host" in host
        or caps & {"ALL", "SYS_ADMIN", "SYS_MODULE", "SYS_PTRACE"}
        or any(_clean(m) in _PRIVILEGED_MOUNTS for m in mounts if m.startswith("/"))
    ):
        c.at_least("admin", "privileged_container")  # root on the host


@_handles_more("kubectl")
def _kubectl(c: _Call) -> None:
    if c.opts.operands[:1] == ["port-forward"] and any(
        not _is_loopback(a) for v in c.opts.get("--address") for a in v.split(",")
    ):
        c.at_least("write", "listen_all_interfaces")


@_handles("service")
def _service(c: _Call) -> None:
    operands = c.opts.operands
    if c.opts.has("--status-all") or operands[1:2] == ["status"]:
        return
    c.at_least("write")


_GIT_READ = _words("status log diff show blame grep ls-files ls-tree ls-remote rev-parse rev-list describe shortlog cat-file whatchanged name-rev merge-base show-ref for-each-ref count-objects fsck help version var check-ignore check-attr cherry range-diff diff-tree diff-files diff-index annotate show-branch verify-commit verify-tag")  # fmt: skip
_GIT_READ_BARE = {
    # Read when given no further operand and only these options: listing, not changing.
    "branch": _set("--list -l -a --all -r --remotes -v --verbose --show-current --contains --merged --no-merged --format --sort --color --no-color --column"),
    "tag": _set("-l --list -n --contains --merged --no-merged --sort --format --points-at"),
    "remote": _set("-v --verbose"),
    "stash": frozenset(), "worktree": frozenset(), "submodule": frozenset(), "reflog": frozenset(),
}  # fmt: skip
_GIT_GLOBAL = _set("-C -c --git-dir --work-tree --no-pager -P --paginate")
_GIT_READ_SECOND = {"remote": {"show", "get-url"}, "stash": {"list", "show"}, "worktree": {"list"}, "submodule": {"status", "summary"}, "reflog": {"show"}, "config": set()}  # fmt: skip


@_handles("git", values="-C -c --git-dir --work-tree --namespace --output -n --max-count --since --until --author --grep --format --pretty -S -G -L")  # fmt: skip
def _git(c: _Call) -> None:
    opts = c.opts
    if opts.has("-c", "--config-env", "--output", "--exec-path"):
        c.at_least("write")  # -c core.pager=... makes any subcommand run a program
    operands = opts.operands
    if not operands:
        return
    sub, rest = operands[0], operands[1:]
    if sub in _GIT_READ:
        return
    if sub == "config":
        if opts.has("--get", "--get-all", "--get-regexp", "--list", "-l") or len(rest) == 1:
            return
    elif sub in _GIT_READ_BARE:
        listing = _GIT_READ_BARE[sub] | _GIT_GLOBAL
        if not rest and set(opts.flags) <= listing:
            return
        if rest[:1] and rest[0] in _GIT_READ_SECOND.get(sub, set()):
            return
    c.at_least("write")


_DPKG_QUERIES = _set("-l --list -L --listfiles -s --status -S --search -p --print-avail --get-selections --print-architecture --print-foreign-architectures --audit -C --verify -V --compare-versions --version --help -c --contents -I --info")  # fmt: skip
_RPM_QUERIES = ("-q", "-V", "--query", "--verify", "--querytags", "--showrc", "--version", "-h", "--help")  # fmt: skip


@_handles("dpkg")
def _dpkg(c: _Call) -> None:
    if not set(c.opts.flags) & _DPKG_QUERIES:
        c.at_least("write", "package_change")


@_handles("rpm")
def _rpm(c: _Call) -> None:
    first = next((a for a in c.args if a.startswith("-")), "")
    if not first.startswith(_RPM_QUERIES):
        c.at_least("write", "package_change")


@_handles("pacman")
def _pacman(c: _Call) -> None:
    first = next((a for a in c.args if a.startswith("-")), "")
    if first.startswith(("-Q", "-F", "-T", "--query", "--files", "--version", "-V", "-h")):
        return
    if first.startswith("-S") and set(first[2:]) <= set("silgqv"):
        return
    c.at_least("write", "package_change")


# ---------------------------------------------------------------------------- network
# Options that upload or run a config file, and options naming a file curl writes.
_CURL_SENDS = _set("-T --upload-file -d --data --data-ascii --data-binary --data-raw --data-urlencode -F --form --form-string --json -K --config -Q --quote")  # fmt: skip
_CURL_FILES = _set("-o --output -c --cookie-jar -D --dump-header --trace --trace-ascii --libcurl --etag-save --hsts --alt-svc")  # fmt: skip
_WGET_SENDS = _set("--post-data --post-file --body-data --body-file -e --execute --config")


@_handles("curl", values="-o --output -T --upload-file -d --data --data-ascii --data-binary --data-raw --data-urlencode -F --form --form-string --json -X --request -H --header -u --user -A --user-agent -e --referer -b --cookie -c --cookie-jar -D --dump-header -K --config -m --max-time -r --range -w --write-out -x --proxy -E --cert --cacert --key -C --continue-at -Y -y -z -U --proxy-user -t --telnet-option -Q --quote -P --ftp-port --connect-timeout --retry --retry-delay --retry-max-time --resolve --connect-to --interface --limit-rate --max-filesize --output-dir --trace --trace-ascii --libcurl --url --oauth2-bearer --unix-socket --etag-save --etag-compare --hsts --alt-svc --cert-type --key-type --ciphers --dns-servers --noproxy --proto --proto-redir --local-port --variable")  # fmt: skip
def _curl(c: _Call) -> None:
    opts = c.opts
    files = [v for v in opts.get(*_CURL_FILES) if v != "-"]
    methods = {m.upper() for m in opts.get("-X", "--request")}
    if (
        opts.has(*_CURL_SENDS, "-O", "--remote-name", "--remote-name-all")
        or files
        or methods - {"GET", "HEAD"}
    ):
        c.at_least("write")
        c.write(files)


@_handles("wget", values="-O --output-document -o --output-file -a --append-output -P --directory-prefix -e --execute -i --input-file -t --tries -T --timeout -w --wait -U --user-agent --header --post-data --post-file --body-data --body-file --method -l --level -A -R -D -I -X --user --password -Q --quota -B --base --limit-rate --load-cookies --save-cookies --referer --bind-address --ca-certificate --certificate --private-key --config")  # fmt: skip
def _wget(c: _Call) -> None:
    opts = c.opts
    documents = opts.get("-O", "--output-document")
    logs = opts.get("-o", "--output-file", "-a", "--append-output", "--save-cookies")
    files = [v for v in [*documents, *logs] if v != "-"]
    methods = {m.upper() for m in opts.get("--method")}
    to_stdout = documents and all(d == "-" for d in documents)
    sends = opts.has(*_WGET_SENDS)
    if sends or files or methods - {"GET", "HEAD"} or not (to_stdout or opts.has("--spider")):
        c.at_least("write")  # by default wget saves what it fetches
        c.write(files)


@_handles("nc", values="-p -s -w -i -q -e -c -x -X -T -I -O -m --exec --sh-exec --lua-exec --source --source-port --proxy --wait")  # fmt: skip
def _nc(c: _Call) -> None:
    opts = c.opts
    if opts.has("-e", "-c", "--exec", "--sh-exec", "--lua-exec"):
        c.at_least("write", "remote_shell")
    if opts.has("-l", "--listen"):
        bound = opts.get("-s", "--source") + opts.operands
        if not any(_is_loopback(b) for b in bound):
            c.at_least("write", "listen_all_interfaces")
    if not opts.has("-z") or opts.has("-l", "--listen"):
        c.at_least("write")


_SOCAT_LISTEN = ("tcp-listen", "tcp4-listen", "tcp6-listen", "udp-listen", "udp4-listen", "udp6-listen", "udp-recv", "sctp-listen", "openssl-listen", "ssl-l", "tcp-l", "tcp4-l", "tcp6-l", "udp-l")  # fmt: skip


@_handles("socat")
def _socat(c: _Call) -> None:
    for address in c.opts.operands:
        lowered = address.lower()
        kind, _, options = lowered.partition(":")
        if kind in ("exec", "system"):
            c.at_least("write", "remote_shell")
        if kind in _SOCAT_LISTEN:
            binds = [o.partition("=")[2] for o in options.split(",") if "=" in o]
            if not any(_is_loopback(b) for b in binds):
                c.at_least("write", "listen_all_interfaces")


def _interpreter_listens(name: str, args: list[str]) -> bool:
    """python -m http.server, php -S, ruby -run -e httpd: serve files on every interface
    unless bound to loopback."""
    if name == "python":
        opts = _parse_args(args, frozenset({"-m", "-b", "--bind", "-d", "--directory"}))
        if not set(opts.get("-m")) & {"http.server", "SimpleHTTPServer"}:
            return False
        return not any(_is_loopback(b) for b in opts.get("-b", "--bind"))
    if name == "php":
        servers = _parse_args(args, frozenset({"-S", "-t"})).get("-S")
        return bool(servers) and not any(_is_loopback(s) for s in servers)
    if name == "ruby":
        if "-run" not in args or "httpd" not in args:
            return False
        binds = [a.partition("=")[2] for a in args if a.startswith("--bind-address=")]
        return not any(_is_loopback(b) for b in binds)
    return False


# ---------------------------------------------------------------------------- firewall
_WORLD = frozenset({"0.0.0.0/0", "0/0", "::/0", "0.0.0.0", "any", "::", "anywhere"})


@_handles("iptables", "ip6tables", "ebtables", "arptables", values="-t --table -A --append -I --insert -D --delete -R --replace -N --new-chain -P --policy -E --rename-chain -s --source --src -d --destination --dst -p --protocol -i --in-interface -o --out-interface -j --jump -g --goto -m --match --dport --sport --dports --sports --destination-port --source-port --state --ctstate --to-destination --to-source --to-ports --comment --log-prefix --icmp-type --src-range --dst-range --limit --limit-burst --uid-owner --reject-with --mac-source --to --set-mark")  # fmt: skip
def _iptables(c: _Call) -> None:
    opts = c.opts
    changes = ("-A", "--append", "-I", "--insert", "-D", "--delete", "-R", "--replace", "-F", "--flush", "-X", "--delete-chain", "-Z", "--zero", "-N", "--new-chain", "-P", "--policy", "-E", "--rename-chain")  # fmt: skip
    if not opts.has(*changes):
        return
    c.at_least("admin")
    if opts.has("-F", "--flush", "-X", "--delete-chain"):
        c.at_least("admin", "firewall_flush")
    chains = opts.get("-A", "--append", "-I", "--insert")
    accepts = opts.get("-j", "--jump") == ["ACCEPT"]
    sources = opts.get("-s", "--source", "--src")
    states = ",".join(opts.get("--state", "--ctstate")).upper()
    inbound = any(ch.upper() not in ("OUTPUT", "POSTROUTING") for ch in chains)
    if (
        accepts
        and inbound
        and all(s in _WORLD for s in sources)
        and "lo" not in opts.get("-i", "--in-interface")
        and (not states or "NEW" in states)
    ):
        c.at_least("admin", "firewall_open_world")
    if opts.get("-P", "--policy") and "ACCEPT" in opts.operands:
        c.at_least("admin", "firewall_open_world")


@_handles("iptables-restore", "ip6tables-restore")
def _iptables_restore(c: _Call) -> None:
    if not c.opts.has("-n", "--noflush", "-t", "--test"):
        c.at_least("admin", "firewall_flush")


@_handles("nft", values="-f --file -I --includepath")
def _nft(c: _Call) -> None:
    words = " ".join(c.opts.operands).replace(";", " ").split()
    if c.opts.has("-f", "--file"):
        c.at_least("admin")
    if not words or words[0] in ("list", "describe", "monitor", "-h", "help"):
        return
    c.at_least("admin")
    if words[:2] == ["flush", "ruleset"]:
        c.at_least("admin", "firewall_flush")
    if words[0] in ("add", "insert") and "accept" in words:
        if not any(w in ("saddr", "iif", "iifname", "established") for w in words):
            c.at_least("admin", "firewall_open_world")


_UFW_READ = _set("status show version app help")


@_handles("ufw")
def _ufw(c: _Call) -> None:
    words = c.opts.operands
    if c.opts.has("--dry-run") or not words or words[0] in _UFW_READ:
        return
    c.at_least("admin")
    if words[0] in ("disable", "reset"):
        c.at_least("admin", "firewall_flush")
    rule = words[2:] if words[0] in ("insert", "prepend") else words
    rule = rule[1:] if rule[:1] == ["route"] else rule
    if rule[:1] in (["allow"], ["limit"]):
        source = rule[rule.index("from") + 1] if "from" in rule[:-1] else "any"
        if source in _WORLD:
            c.at_least("admin", "firewall_open_world")
    if words[:2] == ["default", "allow"] and words[2:3] in ([], ["incoming"], ["routed"]):
        c.at_least("admin", "firewall_open_world")


@_handles("firewall-cmd")
def _firewall_cmd(c: _Call) -> None:
    changes = ("--add-", "--remove-", "--set-", "--new-", "--delete-", "--change-", "--reload", "--complete-reload", "--runtime-to-permanent", "--panic-", "--lockdown-", "--load-", "--reset-", "--direct", "--policy")  # fmt: skip
    if not any(f.startswith(changes) for f in c.opts.flags):
        return
    c.at_least("admin")
    opens = ("--add-port", "--add-service", "--add-forward-port")
    rich = [v for v in c.opts.get("--add-rich-rule") if "accept" in v and "source" not in v]
    world = [v for v in c.opts.get("--add-source") if v in _WORLD]
    if c.opts.has(*opens) or rich or world or c.opts.get("--set-default-zone") == ["trusted"]:
        c.at_least("admin", "firewall_open_world")


@_handles(*_INTERPRETERS)
def _interpreter(c: _Call) -> None:
    if _interpreter_mode(c.name, c.args) != "version":
        c.at_least("write")  # runs code we do not read
    if _interpreter_listens(c.name, c.args):
        c.at_least("write", "listen_all_interfaces")


# ------------------------------------------------------------------------- prefixes
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

_KNOWN = frozenset(
    {*_READ, *_WRITE, *_ADMIN, *_HANDLERS, *_SHELLS, *_INTERPRETERS, *_PREFIXES}
    | {"su", "runuser", "eval", "source"}
)
SHELL_KINDS: frozenset[str] = _KNOWN | _RISK_KINDS | {p.kind for p in _PREFIXES.values()}


def _canonical(name: str) -> str | None:
    if name in _KNOWN:
        return name
    if name in _ALIASES:
        return _ALIASES[name]
    if name.startswith("mkfs."):
        return "mkfs"
    versioned = _VERSIONED.fullmatch(name)
    return versioned.group(1) if versioned else None


def _resolve(text: str) -> tuple[str | None, list[str]]:
    """The program's kind (None: unknown) and the names to record for it."""
    if "/" not in text:
        return _canonical(text), [text.lower()]
    directory, base = posixpath.split(text)
    trusted = directory.startswith("/") and _clean(directory) in _SYSTEM_DIRS
    return (_canonical(base) if trusted else None), [text.lower(), base.lower()]


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


def _su_target(name: str, words: Sequence[_Word]) -> tuple[str, int | _Word] | None:
    """What su/runuser runs: ("script", word), ("command", index), or None: a login shell."""
    texts = [w.text for w in words]
    if name == "runuser" and any(t in ("-u", "--user") or t.startswith("--user=") for t in texts):
        _, start = _scan_prefix(texts, _SU_VALUES | {"-u", "--user"})
        return None if start is None else ("command", start)
    for i, text in enumerate(texts):
        if text == "--":
            break
        if text.startswith("--command="):
            word = words[i]
            return "script", _Word(text.partition("=")[2], word.dynamic, word.hidden)
        if text == "--command" or (
            text.startswith("-") and not text.startswith("--") and "c" in text
        ):
            letters = text[1:] if text != "--command" else "c"
            rest = letters[letters.index("c") + 1 :]
            before_c = letters[: letters.index("c")]
            if not any("-" + ch in _SU_VALUES for ch in before_c):  # not "-s c"-like values
                if rest:
                    return "script", _Word(rest, words[i].dynamic, words[i].hidden)
                return ("script", words[i + 1]) if i + 1 < len(words) else None
    return None


# --------------------------------------------------------------------------- walking
@dataclass(frozen=True, slots=True)
class _Word:
    text: str  # after quote removal; expansions stay as written ($X, $(...))
    dynamic: bool = False  # an expansion decides (part of) it at run time
    hidden: bool = False  # bashlex could not read it: $'...', $(...) inside ${...}
    runs: frozenset[str] = frozenset()  # programs its substitutions run


@dataclass(frozen=True, slots=True)
class _Redirect:
    op: str
    fd: int | None  # the descriptor redirected; None: the operator's default
    target: _Word | None = None  # the file; None for 2>&1, >&- and here-documents
    hidden: bool = False


@dataclass(frozen=True, slots=True)
class _Scope:
    """What the enclosing commands impose on the simple commands inside them."""

    depth: int = 0
    floor: str = "read"
    kinds: tuple[str, ...] = ()
    functions: tuple[str, ...] = ()
    redirects: tuple[_Redirect, ...] = ()
    # Kinds a shell gets when it reads its script from this stdin (the SSH client's
    # stdin by default: an interactive shell the gate never sees).
    stdin: tuple[str, ...] = ("interactive",)


_WRITE_REDIRECTS = frozenset({">", ">>", ">|", "&>", "&>>", "<>", ">&"})
_DOCUMENTS = frozenset({"<<", "<<-", "<<<"})


def _apply_redirect(r: _Redirect, facts: _Facts, stdin: tuple[str, ...]) -> tuple[str, ...]:
    """Record what a redirection reads or writes; return the command's stdin."""
    if r.hidden:
        facts.at_least("unknown", "obfuscated")
    if r.op in _DOCUMENTS:
        return ("obfuscated",) if r.fd in (None, 0) else stdin  # literal text fed in
    if r.target is None:
        return stdin
    path = r.target.text
    if path.startswith(("/dev/tcp/", "/dev/udp/")):
        facts.at_least("write", "dev_tcp")  # bash opens a network connection
        return stdin
    if r.op in ("<", "<>"):
        facts.read.append(path)
        stdin = ("source",) if r.fd in (None, 0) else stdin
    if r.op in _WRITE_REDIRECTS and path not in _SINKS:
        facts.at_least("write", "redirect_write")
        facts.written.append(path)
    return stdin


class _Walker:
    """Visits bashlex trees, appending one StatementInfo per simple command to ``out``."""

    def __init__(self) -> None:
        self.out: list[StatementInfo] = []

    def script(self, source: str, scope: _Scope) -> None:
        if scope.depth > _MAX_DEPTH:
            self.fail(source, scope, "shell scripts nested too deeply")
            return
        try:
            trees = bashlex.parse(source)
        except Exception as exc:  # noqa: BLE001 - whatever bashlex cannot read fails closed
            self.fail(source, scope, str(exc) or type(exc).__name__)
            return
        for tree in trees:
            self.node(tree, source, scope)

    def fail(self, text: str, scope: _Scope, error: str) -> None:
        facts = self.facts(text, scope)
        facts.error = error
        facts.at_least("unknown", "parse_error")
        self.out.append(facts.info())

    @staticmethod
    def facts(text: str, scope: _Scope) -> _Facts:
        return _Facts(text, scope.floor, list(scope.kinds), list(scope.functions))

    def node(self, node: Any, source: str, scope: _Scope) -> None:
        kind = node.kind
        if kind == "command":
            self.command(node, source, scope)
        elif kind == "pipeline":
            self.pipeline(node, source, scope)
        elif kind == "compound":
            own = tuple(self.redirect(r, source, scope) for r in getattr(node, "redirects", ()))
            inner = replace(scope, redirects=scope.redirects + own)
            for part in node.list:
                self.node(part, source, inner)
        elif kind in ("list", "if", "for", "while", "until", "function"):
            for part in node.parts:
                self.node(part, source, scope)
        elif kind == "word":  # a for loop's words, a function's name
            if self.word(node, source, scope).hidden:
                self.fail(node.word, scope, "expansion the parser cannot read")
        elif kind not in ("reservedword", "operator", "pipe"):
            self.fail(source[node.pos[0] : node.pos[1]], scope, f"unsupported construct {kind}")

    def pipeline(self, node: Any, source: str, scope: _Scope) -> None:
        feeds: tuple[str, ...] = ()  # kinds of what earlier stages pour into the next
        first = True
        for part in node.parts:
            if part.kind in ("pipe", "reservedword"):
                continue
            start = len(self.out)
            piped = replace(scope, stdin=("pipe_to_shell", *feeds))
            self.node(part, source, scope if first else piped)
            first = False
            ran = {f for info in self.out[start:] for f in info.functions}
            documents = part.kind == "command" and any(
                p.kind == "redirect" and p.type in _DOCUMENTS for p in part.parts
            )
            if (ran & _DECODERS or documents) and "obfuscated" not in feeds:
                feeds = (*feeds, "obfuscated")  # a literal or decoded text, not a fetched file

    def word(self, node: Any, source: str, scope: _Scope) -> _Word:
        """The word, after classifying the commands its substitutions run."""
        dynamic = hidden = False
        runs: set[str] = set()
        for part in getattr(node, "parts", ()):
            if part.kind in ("commandsubstitution", "processsubstitution"):
                dynamic = True
                start = len(self.out)
                self.node(part.command, source, replace(scope, redirects=()))
                runs.update(f for info in self.out[start:] for f in info.functions)
            elif part.kind == "parameter":
                dynamic = True
                value = getattr(part, "value", None)
                # bashlex leaves $'..' without a value and does not parse $(...) in ${...}.
                hidden = hidden or not value or "$(" in value or "`" in value
        return _Word(node.word, dynamic, hidden, frozenset(runs))

    def redirect(self, node: Any, source: str, scope: _Scope) -> _Redirect:
        fd = node.input if isinstance(node.input, int) else None
        output = node.output
        if node.type in ("<<", "<<-"):
            delimiter = source[output.pos[0] : output.pos[1]]
            body = node.heredoc.value if getattr(node, "heredoc", None) is not None else ""
            # An unquoted delimiter lets the body's $(...) run, unseen by the parser.
            expands = not any(ch in delimiter for ch in "'\"\\")
            return _Redirect(node.type, fd, hidden=expands and ("$(" in body or "`" in body))
        if getattr(output, "kind", None) != "word":
            return _Redirect(node.type, fd)  # 2>&1, >&-
        word = self.word(output, source, scope)
        if node.type == "<<<":
            return _Redirect(node.type, fd, hidden=word.hidden)
        return _Redirect(node.type, fd, word, word.hidden)

    def command(self, node: Any, source: str, scope: _Scope) -> None:
        assigns: list[_Word] = []
        words: list[_Word] = []
        redirects = list(scope.redirects)
        for part in node.parts:
            if part.kind == "assignment":
                assigns.append(self.word(part, source, scope))
            elif part.kind == "word":
                words.append(self.word(part, source, scope))
            elif part.kind == "redirect":
                redirects.append(self.redirect(part, source, scope))
        self.simple(source[node.pos[0] : node.pos[1]], assigns, words, redirects, scope)

    def simple(
        self,
        text: str,
        assigns: Sequence[_Word],
        words: Sequence[_Word],
        redirects: Sequence[_Redirect],
        scope: _Scope,
    ) -> None:
        facts = self.facts(text, scope)
        stdin = scope.stdin
        for r in redirects:
            stdin = _apply_redirect(r, facts, stdin)
        for a in assigns:
            if a.hidden:
                facts.at_least("unknown", "obfuscated")
            if a.text.partition("=")[0].rstrip("+") in _HIJACK_VARS:
                facts.at_least("write", "env_override")
        if any(w.hidden for w in words):
            facts.at_least("unknown", "obfuscated")
        if not words:
            if assigns:
                facts.at_least(facts.klass, "assignment")
            self.out.append(facts.info())
            return
        self.program(list(words), facts, replace(scope, redirects=tuple(redirects), stdin=stdin))

    def program(self, words: list[_Word], facts: _Facts, scope: _Scope) -> None:
        """Strip prefixes, then judge the program that runs."""
        replaces_shell = False
        while True:
            first = words[0]
            globbed = first.text != "[" and any(ch in first.text for ch in "*?[")
            if first.dynamic or first.hidden or globbed:
                # The program is only known at run time: $(echo rm), $CMD, /bin/r?
                facts.functions.append(first.text.lower())
                facts.at_least("unknown", "obfuscated")
                self.out.append(facts.info())
                return
            name, names = _resolve(first.text)
            before = len(facts.functions)
            facts.functions.extend(names)
            rest = words[1:]
            texts = [w.text for w in rest]
            if name in ("su", "runuser"):
                facts.at_least(facts.klass, "sudo")
                target = _su_target(name, rest)
                if target is None:
                    facts.at_least("unknown", "interactive")  # a login shell fed by the client
                elif isinstance(target[1], _Word):
                    self.inline(target[1], facts, scope)
                    return
                else:
                    words = rest[target[1] :]
                    continue
                self.out.append(facts.info())
                return
            prefix = _PREFIXES.get(name or "")
            if prefix is None:
                break
            facts.at_least(facts.klass, prefix.kind)
            opts, start = _scan_prefix(texts, prefix.values, prefix.skip, prefix.assignments)
            for text in texts[: len(texts) if start is None else start]:
                if _is_assignment(text) and text.partition("=")[0] in _HIJACK_VARS:
                    facts.at_least("write", "env_override")
            if name == "command" and opts.has("-v", "-V"):
                start = None  # command -v only says what a name is
            if opts.get(*prefix.outputs):
                facts.at_least("write")
                facts.written.extend(opts.get(*prefix.outputs))
            scripts = opts.get(*prefix.script)
            if scripts:  # env -S 'cmd args', flock /lock -c 'cmd'
                self.inline(_Word(scripts[0], any(w.dynamic for w in rest)), facts, scope)
                return
            if name == "watch" and start is not None and not opts.has("-x", "--exec"):
                joined = rest[start:]  # watch hands its arguments to sh -c
                script = " ".join(w.text for w in joined)
                unseen = any(w.dynamic or w.hidden for w in joined)
                self.inline(_Word(script, unseen), facts, scope)
                return
            if start is None:
                alone = _prefix_alone(prefix, opts)
                facts.at_least(alone, *(("interactive",) if alone == "unknown" else ()))
                self.out.append(facts.info())
                return
            replaces_shell = replaces_shell or name == "exec"
            words = rest[start:]
        self.judge(name, rest, facts, scope, before, replaces_shell)

    def judge(
        self,
        name: str | None,
        rest: list[_Word],
        facts: _Facts,
        scope: _Scope,
        before: int,
        replaces_shell: bool,
    ) -> None:
        texts = [w.text for w in rest]
        # What the program's children inherit: the prefixes, not the program itself.
        inherited = replace(
            scope,
            depth=scope.depth + 1,
            floor=facts.klass,
            kinds=tuple(facts.kinds),
            functions=tuple(facts.functions[:before]),
        )
        if name == "eval":
            facts.at_least("unknown", "eval", "obfuscated")
        elif name == "source":
            facts.at_least("unknown", "source")
            if rest and rest[0].dynamic:
                facts.at_least("unknown", *_fed_kinds(rest[0]))
            elif rest:
                facts.read.append(rest[0].text)
        elif name in _SHELLS:
            self.shell(name, rest, facts, scope)
            return
        elif name is not None and _interpreter_mode(name, texts) == "stdin":
            facts.at_least("unknown", name, *scope.stdin)  # its program comes from stdin
        else:
            call = _judge(name, texts, facts)
            facts.flags.extend(call.opts.flags)
            if replaces_shell and name is None:
                facts.at_least("unknown")  # exec of a program we do not know
            self.out.append(facts.info())
            for start, end in call.runs:
                if end > start:
                    ran = rest[start:end]
                    self.simple(" ".join(w.text for w in ran), [], ran, [], inherited)
            for index in call.scripts:
                self.inline(rest[index], _Facts(rest[index].text), inherited, alone=False)
            return
        self.out.append(facts.info())

    def shell(self, name: str, rest: list[_Word], facts: _Facts, scope: _Scope) -> None:
        facts.at_least(facts.klass, name)
        mode, index = _shell_script([w.text for w in rest])
        if mode == "inline":
            if index is None:
                facts.error = "-c given without a script"
                facts.at_least("unknown", "parse_error")
            else:
                self.inline(rest[index], facts, scope)
                return
        elif mode == "file" and index is not None:
            script = rest[index]
            if script.dynamic:
                facts.at_least("unknown", *_fed_kinds(script))  # bash <(curl ...)
            elif script.text in ("/dev/stdin", "/dev/fd/0"):
                facts.at_least("unknown", *scope.stdin)
            else:
                facts.read.append(script.text)
                facts.at_least("write", "unknown_program")  # a script we cannot see
        else:
            facts.at_least("unknown", *scope.stdin)
            if "dev_tcp" in facts.kinds:
                facts.at_least("unknown", "remote_shell")  # bash -i >& /dev/tcp/host/port
        self.out.append(facts.info())

    def inline(self, script: _Word, facts: _Facts, scope: _Scope, alone: bool = True) -> None:
        """Classify a script given as text (bash -c, su -c, trap, watch)."""
        if script.dynamic or script.hidden:
            facts.at_least("unknown", "obfuscated")  # the script is only known at run time
            self.out.append(facts.info())
            return
        start = len(self.out)
        if script.text.strip():
            nested = replace(
                scope,
                depth=scope.depth + 1,
                floor=facts.klass,
                kinds=tuple(facts.kinds),
                functions=tuple(facts.functions),
            )
            self.script(script.text, nested)
        if alone and len(self.out) == start:
            self.out.append(facts.info())  # an empty script: only the wrapper ran


def _fed_kinds(word: _Word) -> tuple[str, ...]:
    """Kinds for a shell whose script is a process substitution's output."""
    return ("pipe_to_shell",) if word.runs & _DOWNLOADERS else ("pipe_to_shell", "obfuscated")


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


# ------------------------------------------------------------------------------ API
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
