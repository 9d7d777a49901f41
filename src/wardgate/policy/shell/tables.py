"""The tables the shell classifier judges by: classes, limits, program sets, risk kinds."""

from __future__ import annotations

import re
from dataclasses import dataclass

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
        "unproven_read", "active_expansion",
    }
)  # fmt: skip
