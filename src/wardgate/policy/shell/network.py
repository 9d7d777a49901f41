"""Handlers for network clients and servers, firewalls and script interpreters."""

from __future__ import annotations

from wardgate.policy.shell.args import _interpreter_mode, _parse_args
from wardgate.policy.shell.judge import _Call, _handles
from wardgate.policy.shell.paths import _is_loopback
from wardgate.policy.shell.tables import _INTERPRETERS, _set

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
