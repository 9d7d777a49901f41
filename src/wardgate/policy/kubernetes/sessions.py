"""exec, attach and port-forward: the requests that open a session in a pod.

``kubectl exec POD -- CMD`` sends its command as repeated ``command=`` query parameters,
one per argument; the container runtime runs that argv directly (no shell). The gate
judges it with the shell engine (policy/shell), as the SSH gateway judges a command:
the argv is quoted into one shell line whose words are exactly those arguments, so
``sh -c 'touch x'`` is judged as the script it runs. A terminal (``tty``), an attach and
a command that reads further commands from its input (``sh``, ``python``...) are
interactive: they are class ``shell`` as well (a role needs ``shell: allow``). A
port-forward is class ``forwarding`` (a role needs ``forwarding: allow``).

Query parameters are read the way the API server decodes PodExecOptions: every
``command`` value in order; a boolean is true unless its first value is ``0`` or
``false`` (any case), so ``tty=`` is a terminal. A ``%`` escape Go would reject is
refused (the server would drop the pair; the gateway would not).

Pure: strings in, frozen values out.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, replace
from urllib.parse import unquote_plus

from wardgate.actions import StatementInfo
from wardgate.policy.kubernetes.requestinfo import RequestInfo, RequestInfoError
from wardgate.policy.shell import classify_command
from wardgate.policy.shell.sensitive import sensitive_word, start_dirs

STREAM_SUBRESOURCES = frozenset({"exec", "attach", "portforward"})
# Where a container keeps credentials: the service-account token (and any Secret
# mounted under /var/run/secrets, /run/secrets by convention), the environment of its
# processes (Secret values given as env), a node's own credentials through a hostPath,
# and key files by name (a TLS Secret mounts tls.key). Reading one is class admin.
CREDENTIAL_PATHS = (
    "/var/run/secrets/*", "/run/secrets/*", "/proc/*/environ", "/var/lib/kubelet/*",
    "/etc/kubernetes/*", "~/.kube/config", "*.key", "*.pem", "*.p12", "*.pfx", "*.jks",
    "*.keystore", "/etc/shadow",
)  # fmt: skip
# Programs that print the environment (Secret values given as env vars).
ENV_PRINTERS = frozenset({"env", "printenv", "set", "export", "declare", "typeset", "compgen"})
# JSON/YAML processors whose programs read the environment (jq's env and $ENV, yq's
# env() and strenv()); a program from a file may too.
_ENV_QUERIES = frozenset({"jq", "gojq", "jaq", "yq"})
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")


@dataclass(frozen=True, slots=True)
class StreamRequest:
    """What an exec, attach or port-forward request asks for."""

    kind: str  # exec | attach | portforward
    command: tuple[str, ...] = ()
    container: str = ""
    stdin: bool = False
    tty: bool = False
    ports: tuple[int, ...] = ()

    @property
    def shell_line(self) -> str:
        """The command as one shell line with exactly its argv as words."""
        return " ".join(shlex.quote(word) for word in self.command)


def query_values(query: str) -> dict[str, list[str]]:
    """Every value of every parameter, in order, as Go's ``url.ParseQuery`` gives them."""
    if ";" in query:
        raise RequestInfoError("';' in the query string (servers disagree on what it separates)")
    if _BAD_ESCAPE.search(query):
        raise RequestInfoError("a malformed %-escape in the query string")
    out: dict[str, list[str]] = {}
    for pair in query.split("&"):
        if not pair:
            continue
        key, _, value = pair.partition("=")
        out.setdefault(unquote_plus(key, errors="strict"), []).append(
            unquote_plus(value, errors="strict")
        )
    return out


def parse_port(text: str) -> int:
    """A pod port as the kubelet reads it (decimal, 1-65535), or RequestInfoError."""
    if not text.isascii() or not text.isdigit() or not 0 < int(text) < 65536:
        raise RequestInfoError(f"{text[:20]!r} is not a port number")
    return int(text)


def port_in(port: int, ranges: list[str]) -> bool:
    """Whether ``port`` is one of ``ranges`` ("8080", "8000-8099": config's PortRange)."""
    for item in ranges:
        low, _, high = item.partition("-")
        if int(low) <= port <= int(high or low):
            return True
    return False


def _flag(values: dict[str, list[str]], name: str) -> bool:
    found = values.get(name)
    if not found:
        return False
    return found[0] != "0" and found[0].lower() != "false"


def stream_request(info: RequestInfo, query: str) -> StreamRequest | None:
    """The session a request opens, or None for any other request."""
    if (
        not info.is_resource_request
        or info.api_group
        or info.resource != "pods"
        or info.subresource not in STREAM_SUBRESOURCES
    ):
        return None
    try:
        values = query_values(query)
    except UnicodeDecodeError:
        raise RequestInfoError("a query string that is not UTF-8") from None
    container = (values.get("container") or [""])[0]
    if info.subresource == "portforward":
        ports = tuple(parse_port(p) for v in values.get("ports", []) for p in v.split(",") if p)
        return StreamRequest("portforward", container=container, ports=ports)
    return StreamRequest(
        info.subresource,
        tuple(values.get("command", [])) if info.subresource == "exec" else (),
        container,
        _flag(values, "stdin"),
        _flag(values, "tty"),
    )


def classify_stream(
    info: RequestInfo,
    stream: StreamRequest,
    text: str,
    base: StatementInfo,
    secret_mounts: tuple[str, ...] = (),
) -> tuple[StatementInfo, ...]:
    """The statements of a session request: ``base`` carries its resource, namespace and
    verb; an exec's command adds one statement per simple command it runs, of the shell
    engine's class, with the kinds ``exec`` and ``command``."""

    def session(klass: str, *kinds: str) -> StatementInfo:
        return replace(base, klass=klass, kinds=(*dict.fromkeys((*base.kinds, *kinds)),))

    if stream.kind == "portforward":
        return (replace(session("forwarding", "portforward"), ports=stream.ports),)
    if stream.kind == "attach":
        return (session("shell", "attach", "interactive"),)
    if not stream.command:
        return (StatementInfo("unknown", (), text, "an exec request without a command (command=)"),)
    commands = credential_reads(
        tuple(
            replace(
                stmt,
                kinds=(*stmt.kinds, "exec", "command"),
                resources=base.resources,
                namespaces=base.namespaces,
                verbs=base.verbs,
            )
            for stmt in classify_command(stream.shell_line)
        ),
        secret_mounts,
    )
    if stream.tty or any("interactive" in s.kinds for s in commands):
        # A terminal, or a program that reads commands no one judges: a shell.
        return (session("shell", "exec", "interactive"), *commands)
    return commands


# Volumes that put Secrets (or service-account tokens) in files: a csi volume is
# usually the secrets-store driver; a projected one may hold configMaps only (counted).
SECRET_VOLUMES = ("secret", "projected", "csi")


def secret_mounts(pod: object) -> tuple[str, ...]:
    """Where a Pod object mounts SECRET_VOLUMES, in any of its containers (an exec may
    name any of them)."""
    spec = pod.get("spec") if isinstance(pod, dict) else None
    if not isinstance(spec, dict):
        return ()
    secret = {
        v.get("name")
        for v in spec.get("volumes") or []
        if isinstance(v, dict) and any(k in v for k in SECRET_VOLUMES)
    }
    out: list[str] = []
    for key in ("initContainers", "containers", "ephemeralContainers"):
        for container in spec.get(key) or []:
            for mount in (
                (container.get("volumeMounts") or []) if isinstance(container, dict) else []
            ):
                path = mount.get("mountPath") if isinstance(mount, dict) else None
                if isinstance(path, str) and mount.get("name") in secret:
                    out.append(path)
    return tuple(dict.fromkeys(out))


def mount_patterns(mounts: tuple[str, ...]) -> tuple[str, ...]:
    """Patterns of the files of mounted Secrets: each mount path (a subPath mount is a
    file) and everything below it."""
    return tuple(p for m in mounts if m for p in (m.rstrip("/") or "/", m.rstrip("/") + "/*"))


def credential_reads(
    commands: tuple[StatementInfo, ...], secret_mounts: tuple[str, ...] = ()
) -> tuple[StatementInfo, ...]:
    """The commands of an exec with those that may read a credential (CREDENTIAL_PATHS,
    the environment) raised to class ``admin`` with the kind ``secret_read``: the output
    of a command reaches the client unredacted (masking a stream cannot stop ``base64``
    of a token), and a service-account token read this way is a credential for the
    cluster that no longer goes through the gateway. An ``unknown`` command keeps its
    class and gets an admin twin, so the stricter of the two decides. ``secret_mounts``:
    where the pod mounts Secrets and projected tokens (kubernetes/proxy.py reads the pod
    spec), credentials too.

    The container's working directory is not known to the gateway: a relative word is
    read as below ``/`` (and below any directory a ``cd`` may reach)."""
    found = start_dirs([(stmt.functions, stmt.words) for stmt in commands])
    dirs = None if found is None else ("/", *found)
    patterns = CREDENTIAL_PATHS + mount_patterns(secret_mounts)
    out: list[StatementInfo] = []
    for stmt in commands:
        if not _prints_credentials(stmt, dirs, patterns):
            out.append(stmt)
            continue
        raised = replace(stmt, klass="admin", kinds=(*stmt.kinds, "secret_read"))
        out.extend((stmt, raised) if stmt.klass == "unknown" else (raised,))
    return tuple(out)


def _prints_credentials(
    stmt: StatementInfo, dirs: tuple[str, ...] | None, patterns: tuple[str, ...]
) -> bool:
    program = stmt.functions[-1:]
    if program and program[0] in ENV_PRINTERS:
        return True
    if program == ("ps",) and any(w[:1] != "-" and "e" in w for w in stmt.words[1:]):
        return True  # ps e, ps eww: every process's environment
    if (
        program
        and program[0] in _ENV_QUERIES
        and (
            any("env" in w.lower() for w in stmt.words) or {"-f", "--from-file"} & set(stmt.columns)
        )
    ):
        return True  # jq -n env, jq -n '$ENV.DB_PASSWORD', yq 'strenv(X)', jq -f FILE
    found = sensitive_word(stmt.functions, stmt.columns, stmt.words, patterns, dirs)
    return found is not None
