"""Handlers for services and tools whose subcommand says what they do: systemctl,
kubectl, helm, docker, git, package managers."""

from __future__ import annotations

from collections.abc import Callable

from wardgate.policy.shell.judge import _HANDLERS, _Call, _Handler, _handles, _values
from wardgate.policy.shell.paths import _clean, _is_loopback
from wardgate.policy.shell.tables import _set

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
