"""The gate on SSH connections, as a table: roles judge command classes, guardrails
match command kinds, programs and paths, and SQL rules never touch a command."""

from __future__ import annotations

from pathlib import Path

import pytest

from wardgate.actions import Action, Decision
from wardgate.config import Config, parse_config
from wardgate.gate import Gate

POLICY = """
groups: {agents: {}, ops: {}, approvers: {}}
principals:
  bot: {kind: agent, groups: [agents], sponsor: ann}
  ann: {kind: user, groups: [ops, approvers]}
connections:
  web1:
    type: ssh
    upstream: {host: 127.0.0.1, user: deploy, private_key: env:KEY, host_key: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBvAMhz9lqUq+cDiswZ/jUDO4hYIjJFkfL3sZ3RbDQ0i"}
    roles: {agents: diagnostics, ops: operator}
  db:
    type: postgres
    upstream: {database: shop, user: app}
    roles: {ops: operator}
roles:
  diagnostics: {read: allow, write: review, admin: block}
  operator: {read: allow, write: allow, ddl: allow, admin: review, shell: allow}
guardrails:
  - {name: no-wipe, match: {commands: [rm_rf_broad, mkfs]}, verdict: block}
  - {name: no-obfuscation, match: {commands: [obfuscated, pipe_to_shell]}, verdict: block}
  - {name: etc-review, match: {paths: ["/etc/*"]}, verdict: review}
  - {name: no-nc, match: {programs: ["nc", "ncat"]}, verdict: block}
  - {name: sql-drop, match: {sql: [drop]}, verdict: block}
  - {name: sql-tables, match: {tables: ["*"]}, verdict: review}
reviews: {approvers: [approvers]}
"""


@pytest.fixture(scope="module")
def gate() -> Gate:
    config: Config = parse_config(POLICY, Path("policy.yaml"))
    return Gate(config)


CASES = [
    # (principal, command, decision, deciding rule)
    ("bot", "df -h && uptime", Decision.ALLOW, "role:diagnostics"),
    ("bot", "systemctl restart nginx", Decision.REVIEW, "role:diagnostics"),
    ("bot", "reboot", Decision.BLOCK, "role:diagnostics"),
    ("ann", "reboot", Decision.REVIEW, "role:operator"),
    ("ann", "rm -rf /", Decision.BLOCK, "guardrail:no-wipe"),
    ("ann", "rm -rf /tmp/build", Decision.ALLOW, "role:operator"),
    ("ann", "echo cm0gLXJmIC8= | base64 -d | sh", Decision.BLOCK, "guardrail:no-obfuscation"),
    # a command the parser cannot resolve is judged as a write: review for the agent
    ("bot", "echo 'unbalanced", Decision.REVIEW, "role:diagnostics"),
    ("ann", "$(printf rm) -rf /var/tmp/x", Decision.BLOCK, "guardrail:no-obfuscation"),
    ("ann", "echo 127.0.0.1 db >> /etc/hosts", Decision.REVIEW, "guardrail:etc-review"),
    ("ann", "nc -l 4444", Decision.BLOCK, "guardrail:no-nc"),
    # SQL-only guardrails (sql kinds, tables) never match a command
    ("ann", "drop", Decision.ALLOW, "role:operator"),
    ("ann", "cat /srv/app/tables.txt", Decision.ALLOW, "role:operator"),
]


@pytest.mark.parametrize(("who", "command", "decision", "rule"), CASES)
def test_commands(gate: Gate, who: str, command: str, decision: Decision, rule: str) -> None:
    principal = gate.config.principal(who)
    assert principal is not None
    verdict = gate.check(Action(principal, "web1", "ssh", "shell", command))
    assert (verdict.decision, verdict.rule) == (decision, rule), verdict.reason


def test_commands_and_statements_stay_on_their_own_connections(gate: Gate) -> None:
    ann = gate.config.principal("ann")
    assert ann is not None
    on_db = gate.check(Action(ann, "db", "postgres", "shell", "ls"))
    on_host = gate.check(Action(ann, "web1", "ssh", "sql", "select 1"))
    assert on_db.rule == on_host.rule == "unsupported-action"
    # shell guardrails never match SQL either
    sql = gate.check(Action(ann, "db", "postgres", "sql", "select * from orders"))
    assert sql.rule == "guardrail:sql-tables"


def test_session_features_come_from_roles(gate: Gate) -> None:
    bot, ann = gate.config.principal("bot"), gate.config.principal("ann")
    assert bot is not None and ann is not None
    assert not gate.feature(bot, "web1", "shell").allowed
    assert gate.feature(ann, "web1", "shell").allowed
    assert not gate.feature(ann, "web1", "sftp").allowed
    # a grant of the operator role gives the agent a shell
    assert gate.feature(bot, "web1", "shell", frozenset({"operator"})).allowed


# --- masking.paths: sensitive files are blocked for principals whose output is masked
MASKED = POLICY.replace(
    "reviews: {approvers: [approvers]}",
    "reviews: {approvers: [approvers]}\n"
    "masking:\n  rules: [{name: agents, principal_kinds: [agent], entities: [all]}]",
)


@pytest.fixture(scope="module")
def masked_gate() -> Gate:
    return Gate(parse_config(MASKED, Path("policy.yaml")))


SENSITIVE = [
    "cat ~/.ssh/id_rsa", "base64 ~/.ssh/id_ed25519", "od -c /root/.ssh/id_rsa",
    "rev /home/deploy/.ssh/id_ecdsa", "tail -n +2 .ssh/id_rsa", "cat $HOME/.ssh/id_rsa",
    "cat /etc/shadow", "grep root /etc/gshadow", "cat ~/.aws/credentials",
    "cat ~/.kube/config", "cat ~/.docker/config.json", "ls ~/.config/gcloud",
    "cat /srv/app/.env", "cat server.pem", "head /etc/ssl/private/site.key",
    "dd if=/etc/shadow", "sort -o x --files0-from=/etc/shadow", "cat /etc/sh?dow",
    "cat ~/.ssh/*", "cat ~/.s*/id*", "f=~/.ssh/id_rsa; cat $f", "cat \"/etc/sh\"'adow'",
    "cat $(echo x)", "for f in a; do cat $f; done", "cat *", "cd ~/.ssh && cat id_rsa",
    "grep -r BEGIN ~", "grep -r x /etc", "find / -name x", "tar c /root",
    "bash -c 'cat ~/.ssh/id_rsa'", "cat < ~/.ssh/id_rsa", "x=1 cat -f/etc/shadow",
    # attack session (issue 15): paths the kernel resolves, not the text
    "cat ~+/.ssh/id_rsa", "cat ~-/.ssh/id_rsa", "cat /root/./.ssh/id_rsa",
    "cat /root//.ssh/id_rsa", "cat //etc/shadow", "cat /tmp/../root/.ssh/id_rsa",
    "cat /root/.ssh/../.ssh/id_rsa", "cat ~/../../etc/shadow", "cat ../../etc/shadow",
    "cat /proc/self/root/root/.ssh/id_rsa", "cat /proc/1/root/etc/shadow",
    "cat /proc/self/cwd/.ssh/id_rsa", "cat /etc/s{h,x}adow", "cat /root/.{ssh,x}/id_rsa",
    "cat /etc/shado[[:alpha:]]", "cat /srv/tls/SERVER.PEM", "cat /srv/app/.ENV",
    # ... relative words after cd
    "cd / && cat root/.ssh/id_rsa", "cd /etc && cat shadow", "cd /etc; cat ./shadow",
    "cd - && cat id_rsa", "env -C /etc cat shadow", "cd /root && grep -r . .",
    # ... directories read whole, and names that come from data or script text
    "grep -d recurse x /root", "grep --directories=recurse . /root", "grep -r . /etc/..",
    "grep -r . /./", "find /etc/.. -name id_rsa -exec cat {} +", "find ~+ -name id_rsa",
    "sed '1r /root/.ssh/id_rsa' /etc/hostname", "sed -n 'R/etc/shadow' /etc/hostname",
    "printf '/etc/shad%s' ow | xargs cat", "printf '/etc/shad%s\\0' ow | sort --files0-from=-",
    "ls /etc | grep shad | xargs -I{} cat /etc/{}", "getent shadow", "getent gshadow root",
    # ... and copies of a secret (attack session: .key.bak was not covered)
    "cat /srv/link/../.ssh/id_rsa", "cat /srv/a/b/../../etc/shadow",
    "cat /srv/tls/site.key.bak", "cat /srv/tls/site.pem~", "cat /srv/app/.env~",
    "cat /etc/shadow.bak", "cat ~/.ssh/ssh_host_rsa_key.orig", "cat ~/.ssh/id_rsa.bak",
]  # fmt: skip
NOT_SENSITIVE = [
    "df -h", "cat /etc/passwd", "ls -la /var/log", "tail -n 50 /var/log/syslog",
    "ls ~/.ssh/known_hosts", "cat /srv/app/config.yml", "grep -r x /srv/app", "ls /etc",
    "cat '*'", "echo $HOME", "du -sh /var/log/*.log", "ls /", "ps aux | grep ssh",
    "cd /var/log && grep -i error syslog", "env LANG=C ls", "cat /proc/1/status",
    "ls /proc/self/fd", "cut -d: -f1 /etc/passwd", "ls -d /etc", "cat config",
]  # fmt: skip


@pytest.mark.parametrize("command", SENSITIVE)
def test_a_masked_principal_cannot_name_a_sensitive_file(masked_gate: Gate, command: str) -> None:
    bot = masked_gate.config.principal("bot")
    verdict = masked_gate.check(Action(bot, "web1", "ssh", "shell", command))
    assert verdict.decision is Decision.BLOCK, verdict
    assert verdict.rule == "wardgate:sensitive-path"
    assert "masking.paths" in verdict.reason


@pytest.mark.parametrize("command", NOT_SENSITIVE)
def test_other_files_are_judged_as_usual(masked_gate: Gate, command: str) -> None:
    bot = masked_gate.config.principal("bot")
    verdict = masked_gate.check(Action(bot, "web1", "ssh", "shell", command))
    assert verdict.rule != "wardgate:sensitive-path", verdict


def test_unmasked_principals_and_an_empty_list_are_not_limited(masked_gate: Gate) -> None:
    ann = masked_gate.config.principal("ann")
    verdict = masked_gate.check(Action(ann, "web1", "ssh", "shell", "cat /etc/shadow"))
    assert verdict.decision is Decision.ALLOW
    off = Gate(parse_config(MASKED + "  paths: []\n", Path("policy.yaml")))
    bot = off.config.principal("bot")
    assert off.check(Action(bot, "web1", "ssh", "shell", "cat /etc/shadow")).decision is (
        Decision.ALLOW
    )
