"""The differential oracle of the shell classifier: command lines judged ``read`` are run
in a throwaway sandbox under strace, and what they did is compared with the judgement.

- :func:`command_lines`: a Hypothesis grammar of bash constructs (expansions, builtins,
  redirections, here-documents, nesting through ``bash -c``, ``env``, ``sudo``,
  ``xargs``, ``find -exec``), mixing reads with writes in disguise.
- :func:`run_in_sandbox`: one private mount, PID and network namespace (``unshare``),
  an overlay of ``/`` with a tmpfs upper layer (so a write *succeeds*, and is seen, but
  never reaches the host), ``chroot`` into it; each line runs as the SSH gateway runs it
  (``env -i`` with the fixed PATH, ``bash -c``, in the home) under
  ``strace -f -e trace=execve,%file,...``.
- :func:`violations`: from a trace, every write that succeeded (an open for writing or
  creating, unlink, rename, mkdir, chmod, utimensat, mount, sethostname, a signal to a
  process outside the command ...) and every program executed that is not on the read
  allow-list.

Used by tests/integration/test_shell_oracle.py (a bounded sample in CI) and
bench/shell_oracle.py (the full count in docs/ssh.md). Needs root, unshare and strace.
"""

from __future__ import annotations

import os
import posixpath
import re
import shlex
import shutil
import subprocess
import tempfile
import textwrap
from dataclasses import dataclass
from pathlib import Path

from hypothesis import strategies as st

from wardgate.policy.shell import SHELL_CLASSES, classify_command
from wardgate.policy.shell.readonly import READ_ONLY, READ_PREFIXES
from wardgate.ssh.session import FIXED_PATH

# Programs a read may execute: the list, its prefixes, the shells of `bash -c`, and the
# `env -i` the gateway puts in front.
ALLOWED_PROGRAMS = frozenset(READ_ONLY) | frozenset(READ_PREFIXES) | {"bash", "sh", "dash"}

# What each line's trace records: programs run, every file call, and the calls that
# change a process, the clock, the host name, mounts or modules.
TRACED = (
    "execve,execveat,%file,fchmod,fchown,ftruncate,fallocate,fsetxattr,fremovexattr,"
    "kill,tkill,tgkill,sethostname,setdomainname,settimeofday,clock_settime,reboot,"
    "init_module,finit_module,delete_module,setns,unshare,acct"
)
_CHANGES = frozenset(
    "unlink unlinkat rename renameat renameat2 mkdir mkdirat rmdir link linkat symlink "
    "symlinkat chmod fchmod fchmodat chown fchown lchown fchownat truncate ftruncate "
    "fallocate utime utimes utimensat futimesat mknod mknodat setxattr lsetxattr fsetxattr "
    "removexattr lremovexattr fremovexattr mount umount2 swapon swapoff chroot pivot_root "
    "sethostname setdomainname settimeofday clock_settime reboot init_module finit_module "
    "delete_module setns unshare acct".split()
)
_OPENS = frozenset({"open", "openat", "openat2", "creat"})
_WRITE_FLAGS = ("O_WRONLY", "O_RDWR", "O_CREAT", "O_TRUNC", "O_APPEND")
# Writing to these is writing to the terminal, a pipe or nothing.
_HARMLESS = ("/dev/null", "/dev/tty", "/dev/pts/", "/dev/fd/", "/dev/stdout", "/dev/stderr", "/proc/self/fd/")  # fmt: skip
_LINE = re.compile(r"^(\d+)\s+(.*)$")
_CALL = re.compile(r"^(\w+)\((.*)\)\s+=\s+(-?\d+|\?)")
_RESUMED = re.compile(r"^<\.\.\. (\w+) resumed>(.*)$")


@dataclass(frozen=True, slots=True)
class Outcome:
    command: str
    violations: tuple[str, ...]
    programs: tuple[str, ...]


def judged_read(command: str) -> bool:
    infos = classify_command(command)
    return bool(infos) and all(i.klass == "read" for i in infos)


def worst(command: str) -> str:
    return max((i.klass for i in classify_command(command)), key=SHELL_CLASSES.index)


# ------------------------------------------------------------------------ grammar
_FILES = ["/etc/hostname", "/etc/passwd", "notes.txt", "~/notes.txt", "$HOME/notes.txt",
          "/srv/app/config.yml", "/var/log/oracle.log", "*", "*.txt", "/srv/app/*",
          "'*'", "/nonexistent", "-", "data.csv"]  # fmt: skip
_TARGETS = ["/tmp/oracle-w", "~/oracle-w", "/etc/oracle-w", "/srv/app/oracle-w", "out"]
_WORDS = ["hi", "$HOME", "~", "~root", "\"$HOME\"", "'$(touch T)'", "{a,b}", "*", "'*'",
          "$x", "\"$@\"", "-o", "-v", "--", "x=1", "a'b'c", "\"a b\"", "\\$x", "'\"'"]  # fmt: skip
_RISKY_WORDS = ["\"$(touch T)\"", "$(touch T)", "`touch T`", "~$(touch T)",
                "${x:-$(touch T)}", "${x:-ok}", "$((1+1))", "${a[$(touch T)]}", "$'x'",
                "<(touch T)", "${!x}", "$[1]"]  # fmt: skip
_READS = [
    "ls", "ls -la F", "ls -R /srv", "ls -1 F", "cat F", "head -n 3 F", "tail -n 2 F",
    "wc -l F", "grep -c root F", "grep -r x /srv/app", "grep -v x F", "sort F", "sort -u F",
    "sort -k2 -t, F", "uniq F", "cut -d: -f1 F", "tr a-z A-Z", "nl F", "od -c F", "base64 F",
    "md5sum F", "sha256sum F", "stat F", "du -s F", "df -h", "file F", "hexdump F", "rev F",
    "find /srv -name '*.yml'", "find /srv -type f", "find /srv -type f -exec cat {} +",
    "find /srv -type f -exec grep -l x {} ;", "find /srv -execdir ls {} ;",
    "sed -n 1p F", "sed -e s/a/b/g F", "sed -n '/x/p' F", "awk '{print $1}' F",
    "awk -F: '{print $1}' F", "awk 'END {print NR}' F", "ps aux", "ps -ef", "ss -tln",
    "ss -s", "ip addr show", "ip route", "ip -br link", "hostname", "hostname -s",
    "date +%s", "date", "id", "uname -a", "whoami", "echo W", "echo W W", "printf '%s\\n' W",
    "printf W", "true", "false", ":", "test -f F", "[ -d /etc ]", "[ W = W ]", "sleep 0",
    "seq 3", "journalctl -n 1", "sysctl -n kernel.ostype", "crontab -l",
    "mount", "jq . /etc/hostname", "pwd", "cd /srv", "cd", "which ls", "type ls",
    "getent passwd root", "env", "printenv HOME", "free -m", "uptime", "lsblk", "findmnt",
    "nproc", "basename F", "dirname F", "realpath F", "readlink -f F", "cmp F F",
    "diff F F", "comm F F", "paste F F", "join F F", "fold -w 5 F", "column -t F",
    "expand F", "strings F", "hexdump -C F", "tree /srv", "lscpu", "w", "who", "last -n 1",
    "cksum F", "expr 1 + 1", "exit 0", "x=1", "x=W", "f=F",
]  # fmt: skip
_RISKY = [
    "sort -o T F", "sort -ro T F", "sort --output=T F", "sort --out=T F", "uniq F T",
    "xxd F T", "xxd -ps F T", "file -C -m T", "find /srv -delete", "find /srv -fprint T",
    "find /srv -exec touch {} ;", "find /srv -exec sh -c 'echo > T' ;", "find /srv -ok ls ;",
    "sed -i s/a/b/ F", "sed 's/a/b/w T' F", "sed '1e touch T' F", "sed 's/x/touch T/e' F",
    "awk 'BEGIN{system(\"touch T\")}'", "awk '{print > \"T\"}' F", "gawk -o T '{print}' F",
    "ss -K dst 127.0.0.1", "ip link set lo down", "ip -b T", "hostname evil",
    "date -s 2000-01-01", "printf -v PS4 '$(touch T)'", "set -x", "hash -p /bin/sh ls",
    "hash -p /usr/bin/touch ls", "alias ls='touch T'", "shopt -s expand_aliases",
    "trap 'touch T' EXIT", "export PS4='$(touch T)'", "PATH=/tmp", "IFS=/", "read x",
    "declare x=1", "eval 'touch T'", "source F", ". F", "touch T", "rm -f T", "mkdir -p T",
    "cp F T", "tee T", "dd if=F of=T", "mv T T", "ln -s F T", "chmod 600 F", "kill -0 1",
    "test -v 'a[$(touch T)]'", "tree -o T /srv", "lsof -D b", "sysctl -w kernel.hostname=x",
    "crontab -r", "dmesg -C", "tac F", "top -b -n 1", "zsh -c 'touch T'", "nohup ls", "timeout 1 touch T",
    "f() { touch T; }; f", "for PATH in /tmp; do ls; done", "ls {fd}>T", "echo W > T",
    "sudo ls", "sudo touch T", "command ls", "builtin echo W", "exec ls", "let x=1",
    "x[$(touch T)]=1", "((x=1))", "[[ -v x ]]", "cat <<EOF\n$(touch T)\nEOF",
]  # fmt: skip
_PREFIXES = ["", "env ", "env TZ=UTC ", "env LANG=C ", "env LC_ALL=C ", "timeout 2 ", "nice ",
             "stdbuf -o0 ", "xargs ", "x=1 ", "LC_ALL=C ", "env -u HOME "]  # fmt: skip
_RISKY_PREFIXES = ["env PATH=/tmp ", "env BASH_ENV=T ", "env -S 'touch T' ", "sudo ",
                   "nohup ", "exec ", "command ", "time ", "PS4='$(touch T)' ", "IFS=/ ",
                   "xargs -p ", "xargs -I{} "]  # fmt: skip
_REDIRECTS = ["", " > /dev/null", " 2>&1", " 2>/dev/null", " < F", " <<< W", " &> /dev/null",
              " >&2"]  # fmt: skip
_RISKY_REDIRECTS = [" > T", " >> T", " 2> T", " > $x", " <> T", " <<'EOF'\nhi\nEOF\n",
                    " > /dev/tcp/127.0.0.1/9", " <<EOF\n$(touch T)\nEOF\n", " >| T"]  # fmt: skip
_JOINS = ["; ", " && ", " || ", "\n", " | "]


def _pick(draw: st.DrawFn, safe: list[str], risky: list[str]) -> str:
    """Mostly a safe choice: the oracle is about lines judged read."""
    return draw(st.sampled_from(risky if draw(st.integers(0, 11)) == 7 else safe))


def _fill(template: str, draw: st.DrawFn) -> str:
    def pick(options: list[str]) -> str:
        return draw(st.sampled_from(options))

    out = template
    while re.search(r"\bW\b", out):
        word = _pick(draw, _WORDS, _RISKY_WORDS)
        out = re.sub(r"\bW\b", lambda _, w=word: w, out, count=1)
    out = re.sub(r"\bF\b", lambda _: pick(_FILES), out)
    return re.sub(r"\bT\b", lambda _: pick(_TARGETS), out)


@st.composite
def _simple(draw: st.DrawFn) -> str:
    body = _pick(draw, _READS, _RISKY)
    prefix = "" if draw(st.booleans()) else _pick(draw, _PREFIXES, _RISKY_PREFIXES)
    redirect = "" if draw(st.booleans()) else _pick(draw, _REDIRECTS, _RISKY_REDIRECTS)
    return _fill(prefix + body + redirect, draw)


def _wrap(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    lists = st.lists(inner, min_size=1, max_size=3).flatmap(
        lambda parts: st.lists(st.sampled_from(_JOINS), min_size=len(parts) - 1, max_size=len(parts) - 1).map(
            lambda joins: parts[0] + "".join(j + p for j, p in zip(joins, parts[1:], strict=True))
        )
    )  # fmt: skip
    return st.one_of(
        lists,
        lists.map(lambda s: f"( {s} )"),
        lists.map(lambda s: "{ " + s + "; }"),
        lists.map(lambda s: f"if true; then {s}; fi"),
        lists.map(lambda s: f"for f in a b; do {s}; done"),
        lists.map(lambda s: f"bash -c {shlex.quote(s)}"),
        lists.map(lambda s: f"sh -c {shlex.quote(s)}"),
        lists.map(lambda s: f"echo /etc/hostname | xargs {s}"),
        lists.map(lambda s: f"find /srv -type f -exec bash -c {shlex.quote(s)} \\;"),
    )


def command_lines() -> st.SearchStrategy[str]:
    """Bash command lines from the grammar above, nested up to twice."""
    return st.recursive(_simple(), _wrap, max_leaves=4)


# ------------------------------------------------------------------------ sandbox
# One traced bash reads the lines (NUL-separated) and runs each as the gateway would;
# a stat of /oracle-mark/N in the trace starts line N's part (one strace for the batch:
# starting strace per line would cost more than most lines).
_DRIVER = textwrap.dedent(
    """\
    i=0
    while IFS= read -r -d '' line; do
        [ -e "/oracle-mark/$i" ]
        timeout -s KILL "$ORACLE_TIMEOUT" env -i $ORACLE_VARS /bin/bash -c "$line" \\
            </dev/null >/dev/null 2>&1
        i=$((i+1))
    done < /oracle/commands.bin
    [ -e /oracle-mark/end ]
    exit 0
    """
)
_MARK = re.compile(r'"/oracle-mark/(\d+|end)"')
_SEED = {
    "root/notes.txt": "alpha\nbeta\nroot x\n",
    "root/data.csv": "b,2\na,1\n",
    "root/-oout": "a file named like an option: `sort *` would write ./out\n",
    "srv/app/config.yml": "name: app\nx: 1\n",
    "srv/app/run.sh": "echo hi\n",
    "var/log/oracle.log": "x\ny\n",
}


def sandbox_available() -> str | None:
    """Why the sandbox cannot run here, or None."""
    if os.geteuid() != 0:
        return "the oracle's sandbox needs root (unshare, overlay mounts, chroot)"
    for tool in ("unshare", "strace", "chroot"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install strace util-linux)"
    probe = subprocess.run(
        ["unshare", "--mount", "--pid", "--net", "--fork", "true"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    if probe.returncode != 0:
        return f"unshare cannot make namespaces here ({probe.stderr.strip()}): needs CAP_SYS_ADMIN"
    return None


def run_in_sandbox(commands: list[str], timeout: float = 3.0) -> list[Outcome]:
    """Run each command in one throwaway sandbox; what each one did, from its trace."""
    if not commands:
        return []
    with tempfile.TemporaryDirectory(prefix="wardgate-oracle-") as tmp:
        work = Path(tmp)
        log = work / "log"
        log.mkdir()
        (log / "commands.bin").write_bytes(b"".join(c.encode() + b"\0" for c in commands))
        (log / "driver.sh").write_text(_DRIVER)
        variables = [f"PATH={FIXED_PATH}", "HOME=/root", "USER=root", "LOGNAME=root",
                     "LANG=C.UTF-8", "PAGER=cat", "SYSTEMD_PAGER=cat", "GIT_PAGER=cat",
                     "LESSSECURE=1"]  # fmt: skip
        run = (
            f"cd /root && ORACLE_TIMEOUT={timeout:g} ORACLE_VARS='{' '.join(variables)}' "
            f"strace -f -qq --seccomp-bpf -s 256 -e trace={TRACED} -o /oracle/batch.trace "
            "/bin/bash /oracle/driver.sh"
        )
        for relative, text in _SEED.items():
            (log / "seed" / relative).parent.mkdir(parents=True, exist_ok=True)
            (log / "seed" / relative).write_text(text)
        setup = f"""
            set -e
            mount --make-rprivate /
            mount -t tmpfs -o size=256m tmpfs {work}/ovl 2>/dev/null || {{
                mkdir -p {work}/ovl; mount -t tmpfs -o size=256m tmpfs {work}/ovl; }}
            mkdir -p {work}/ovl/upper {work}/ovl/work {work}/ovl/root
            R={work}/ovl/root
            mount -t overlay overlay -o lowerdir=/,upperdir={work}/ovl/upper,workdir={work}/ovl/work $R
            mount -t proc proc $R/proc
            mount --rbind /dev $R/dev
            mount -t tmpfs tmpfs $R/tmp
            mkdir -p $R/oracle
            mount --bind {log} $R/oracle
            cp -a {log}/seed/. $R/
            exec chroot $R /bin/sh -c {shlex.quote(run)}
        """
        (work / "ovl").mkdir()
        subprocess.run(
            ["unshare", "--mount", "--pid", "--net", "--uts", "--ipc", "--fork", "--kill-child",
             "sh", "-c", setup],
            check=True, timeout=60 + timeout * 2 * len(commands),
            stdin=subprocess.DEVNULL, capture_output=True,
        )  # fmt: skip
        trace = log / "batch.trace"
        parts = _split(trace.read_text(errors="replace") if trace.exists() else "")
        pids = {pid for calls in parts.values() for pid, *_ in calls}
        outcomes = []
        for i, command in enumerate(commands):
            found, programs = _judge_calls(parts.get(i, []), pids)
            if i not in parts:
                found = ["no trace was written for this line"]
            outcomes.append(Outcome(command, tuple(found), tuple(programs)))
        return outcomes


_Call = tuple[int, str, str, str]  # pid, syscall, arguments, result


def _split(trace: str) -> dict[int, list[_Call]]:
    """The batch trace's calls per line, cut at the driver's marks (a call belongs to
    the line during which it started), without the driver's own calls."""
    parts: dict[int, list[_Call]] = {}
    pending: dict[int, tuple[str, list[_Call] | None]] = {}
    driver = None
    current: list[_Call] | None = None
    for raw in trace.splitlines():
        line = _LINE.match(raw)
        if line is None:
            continue
        pid, rest = int(line.group(1)), line.group(2)
        mark = _MARK.search(rest)
        if mark is not None:
            driver = pid
            index = mark.group(1)
            current = None if index == "end" else parts.setdefault(int(index), [])
            continue
        if pid == driver:
            continue
        if rest.endswith("<unfinished ...>"):
            pending[pid] = (rest[: -len("<unfinished ...>")].rstrip(), current)
            continue
        target = current
        resumed = _RESUMED.match(rest)
        if resumed is not None:
            start, target = pending.pop(pid, (resumed.group(1) + "(", current))
            rest = start + resumed.group(2)
        call = _CALL.match(rest)
        if call is not None and target is not None:
            target.append((pid, call.group(1), call.group(2), call.group(3)))
    return parts


def _calls(trace: str) -> list[_Call]:
    """(pid, syscall, arguments, result) per finished call of one trace."""
    return _split('0 stat("/oracle-mark/0") = -1 ENOENT\n' + trace).get(0, [])


def violations(trace: str) -> tuple[list[str], list[str]]:
    """What one trace did: the writes that succeeded and the programs run off the
    allow-list; and the programs run."""
    calls = _calls(trace)
    return _judge_calls(calls, {pid for pid, *_ in calls})


def _judge_calls(calls: list[_Call], pids: set[int]) -> tuple[list[str], list[str]]:
    found: list[str] = []
    programs: list[str] = []
    for _pid, name, args, result in calls:
        ok = result != "?" and int(result) >= 0
        if not ok:
            continue
        first = re.search(r'"((?:[^"\\]|\\.)*)"', args)
        path = first.group(1) if first else ""
        if name in ("execve", "execveat"):
            program = posixpath.basename(path)
            programs.append(program)
            if program not in ALLOWED_PROGRAMS:
                found.append(f"executed {path} (not on the read allow-list)")
        elif name in _OPENS:
            writes = name == "creat" or any(flag in args for flag in _WRITE_FLAGS)
            if writes and not path.startswith(_HARMLESS):
                found.append(f"{name} {path!r} for writing succeeded")
        elif name in ("kill", "tkill", "tgkill"):
            numbers = [int(n) for n in re.findall(r"-?\d+", args.split(",")[0])]
            signal_zero = args.rstrip().endswith(", 0")
            # 0 and -pgid are the command's own process group (timeout ends its child)
            own = not numbers or numbers[0] <= 0 or numbers[0] in pids
            if not own and not signal_zero:
                found.append(f"{name}({args}) succeeded")
        elif name in _CHANGES:
            found.append(f"{name}({args[:80]}) succeeded")
    return found, programs
