"""exec / attach / port-forward requests as the gate reads them, and the channel
protocol's messages (pure: no sockets)."""

from __future__ import annotations

import json

import pytest

from wardgate.kubernetes.channels import (
    ChannelError,
    exit_frame,
    exit_status,
    failure_frame,
    parse_frame,
    resize_of,
)
from wardgate.policy.kubernetes import RequestInfoError, classify_kubernetes, resolve
from wardgate.policy.kubernetes.sessions import query_values, stream_request

EXEC = "/api/v1/namespaces/default/pods/web/exec"


@pytest.mark.parametrize(
    ("query", "command", "tty", "stdin"),
    [
        ("command=ls", ("ls",), False, False),
        ("command=sh&command=-c&command=echo+a%26b", ("sh", "-c", "echo a&b"), False, False),
        ("command=ls&tty=true&stdin=1", ("ls",), True, True),
        # the API server's bool reading: anything but 0/false is true, even empty
        ("command=ls&tty=", ("ls",), True, False),
        ("command=ls&tty=FALSE&tty=true", ("ls",), False, False),
        ("command=ls&tty=0", ("ls",), False, False),
        ("command=&command=x", ("", "x"), False, False),
    ],
)
def test_exec_options_are_read_as_the_api_server_reads_them(
    query: str, command: tuple[str, ...], tty: bool, stdin: bool
) -> None:
    stream = stream_request(resolve("GET", EXEC, query), query)
    assert stream is not None
    assert (stream.kind, stream.command, stream.tty, stream.stdin) == ("exec", command, tty, stdin)


def test_shell_line_keeps_the_argv() -> None:
    query = "command=sh&command=-c&command=touch+%22a+b%22%3B+rm+x"
    stream = stream_request(resolve("GET", EXEC, query), query)
    assert stream is not None
    assert stream.shell_line == "sh -c 'touch \"a b\"; rm x'"
    kinds = [s.kinds for s in classify_kubernetes(f"GET {EXEC}?{query}")]
    assert any("touch" in k for k in kinds) and any("rm" in k for k in kinds)


@pytest.mark.parametrize("query", ["command=ls%zz", "command=ls%4", "command=ls;x", "command=%ff"])
def test_ambiguous_queries_are_refused(query: str) -> None:
    with pytest.raises((RequestInfoError, UnicodeDecodeError)):
        query_values(query)
    (stmt,) = classify_kubernetes(f"GET {EXEC}?{query}")
    assert stmt.klass == "unknown"


def test_other_requests_open_no_session() -> None:
    assert stream_request(resolve("GET", "/api/v1/namespaces/a/pods/p/log", ""), "") is None
    assert stream_request(resolve("GET", "/api/v1/namespaces/a/pods/p", ""), "") is None
    pf = stream_request(
        resolve("POST", "/api/v1/namespaces/a/pods/p/portforward", ""), "ports=80,8080"
    )
    assert pf is not None and pf.kind == "portforward" and pf.ports == (80, 8080)
    (stmt,) = classify_kubernetes("POST /api/v1/namespaces/a/pods/p/portforward?ports=80")
    assert stmt.klass == "forwarding" and "portforward" in stmt.kinds


def test_channel_messages() -> None:
    assert parse_frame(b"\x01hello").channel == 1
    with pytest.raises(ChannelError):
        parse_frame(b"")
    with pytest.raises(ChannelError):
        parse_frame(b"\x09x")
    assert resize_of(b'{"Width": 100, "Height": 40}') == (100, 40)
    assert resize_of(b"{}") is None
    assert exit_status(exit_frame(0)[1:]) == 0
    assert exit_status(exit_frame(126, "blocked")[1:]) == 126
    assert json.loads(exit_frame(77, "pending")[1:])["message"] == "pending"
    assert exit_status(failure_frame("nope")[1:]) is None
    assert exit_status(b"not json") is None


def _exec(*argv: str, extra: str = "") -> tuple[tuple[str, tuple[str, ...]], ...]:
    from urllib.parse import quote

    query = "&".join("command=" + quote(a, safe="") for a in argv) + extra
    return tuple((s.klass, s.kinds) for s in classify_kubernetes(f"POST {EXEC}?{query}"))


@pytest.mark.parametrize(
    "argv",
    [
        ("cat", "/var/run/secrets/kubernetes.io/serviceaccount/token"),
        ("od", "-c", "/run/secrets/kubernetes.io/serviceaccount/token"),
        ("cat", "/proc/self/root/var/run/secrets/kubernetes.io/serviceaccount/token"),
        ("cat", "/var/run/../run/secrets/x"),
        ("cat", "var/run/secrets/kubernetes.io/serviceaccount/token"),  # from /
        ("cat", "/run/secrets/*/*/token"),
        ("sh", "-c", "cd /var/run/secrets/kubernetes.io/serviceaccount && cat token"),
        ("cat", "/proc/1/environ"),
        ("env",),
        ("printenv", "HOME"),
        ("ps", "eww"),
        ("sh", "-c", "echo $DB_PASSWORD"),
        ("grep", "-r", "x", "/"),
        ("xargs", "cat"),
        ("cat", "/etc/tls/tls.key"),
        ("jq", "-n", "env"),
        ("jq", "-n", "$ENV.DB_PASSWORD"),
        ("jq", "-n", "-f", "/dev/stdin"),
        ("yq", "-n", "strenv(DB_PASSWORD)"),
    ],
)
def test_an_exec_that_may_read_a_credential_is_admin(argv: tuple[str, ...]) -> None:
    """Its output reaches the client unredacted, and a service-account token is a
    credential for the cluster that no longer goes through the gateway."""
    got = _exec(*argv)
    assert any(klass == "admin" and "secret_read" in kinds for klass, kinds in got), got
    assert all(klass != "read" for klass, _ in got), got


@pytest.mark.parametrize(
    "argv",
    [
        ("cat", "motd"),
        ("ls", "/var/run/secrets"),
        ("ps", "aux"),
        ("sh", "-c", "echo hi"),
        ("jq", ".items", "pods.json"),
    ],
)
def test_an_exec_reading_no_credential_stays_a_read(argv: tuple[str, ...]) -> None:
    assert {klass for klass, _ in _exec(*argv)} == {"read"}


def test_an_unknown_exec_reading_a_credential_keeps_its_class_and_gets_an_admin_twin() -> None:
    got = _exec("sh", "-c", 'eval "$x"')
    assert [k for k, _ in got] == ["unknown", "admin"] and "secret_read" in got[1][1]


@pytest.mark.parametrize(
    "argv",
    [
        ("sh", "/proc/self/fd/0"),
        ("sh", "dev/stdin"),
        ("sh", "//dev//stdin"),
        ("bash", "/dev/fd/../fd/0"),
        ("python3", "/dev/stdin"),
        ("perl", "/proc/self/fd/0"),
    ],
)
def test_a_program_reading_its_script_from_stdin_by_any_name_is_a_shell(
    argv: tuple[str, ...],
) -> None:
    """``kubectl exec -i pod -- sh /proc/self/fd/0`` runs what the client pipes in:
    commands no one judged (the shell engine knew /dev/stdin and /dev/fd/0 only)."""
    got = _exec(*argv, extra="&stdin=true")
    assert got[0][0] == "shell" and "interactive" in got[0][1], got


def test_command_parameters_are_one_argv_in_order_wherever_they_stand() -> None:
    """The API server takes every ``command`` value in order, other parameters between
    them or not: so does the gate (``sh -c 'touch x'`` is a write however it is spread)."""
    query = "stdout=true&command=sh&tty=0&command=-c&container=c&command=touch+x"
    stream = stream_request(resolve("GET", EXEC, query), query)
    assert stream is not None and stream.command == ("sh", "-c", "touch x")
    got = classify_kubernetes(f"POST {EXEC}?{query}")
    assert [s.klass for s in got] == ["write"] and "touch" in got[0].kinds


def test_where_a_pod_mounts_secrets_is_a_credential_path() -> None:
    """The gateway reads the pod of an exec and passes where it mounts Secrets and
    tokens (kubernetes/proxy.py): a read there is admin, whatever the file's name."""
    from wardgate.policy.kubernetes.sessions import secret_mounts

    pod = {
        "spec": {
            "volumes": [
                {"name": "creds", "secret": {"secretName": "db"}},
                {"name": "token", "projected": {"sources": [{"serviceAccountToken": {}}]}},
                {"name": "data", "emptyDir": {}},
            ],
            "initContainers": [{"volumeMounts": [{"name": "token", "mountPath": "/t"}]}],
            "containers": [
                {"volumeMounts": [{"name": "creds", "mountPath": "/etc/app/creds"}]},
                {"volumeMounts": [{"name": "data", "mountPath": "/data"}, "junk"]},
            ],
        }
    }
    mounts = secret_mounts(pod)
    assert mounts == ("/t", "/etc/app/creds") and secret_mounts({"spec": []}) == ()
    query = "command=cat&command=etc/app/creds/password"
    text = f"POST {EXEC}?{query}"
    assert [s.klass for s in classify_kubernetes(text)] == ["read"]
    got = classify_kubernetes(text, secret_mounts=mounts)
    assert [(s.klass, "secret_read" in s.kinds) for s in got] == [("admin", True)]
    # a pod the gateway could not read: "/" is mounted, every file may be a Secret
    motd = classify_kubernetes(f"POST {EXEC}?command=cat&command=motd", secret_mounts=("/",))
    assert [s.klass for s in motd] == ["admin"]
