"""Secret redaction in every response shape, approval binding of Kubernetes requests,
and the request classifier's fuzzing invariant."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wardgate.actions import Action
from wardgate.identity.principals import Principal, PrincipalKind
from wardgate.kubernetes.proxy import accept_without_protobuf
from wardgate.kubernetes.redact import (
    LAST_APPLIED,
    REDACTED,
    REDACTED_B64,
    RedactError,
    WatchRedactor,
    redact_body,
)
from wardgate.policy.kubernetes import classify_request
from wardgate.reviews.fingerprint import action_fingerprint

PLAIN = "s3cr3t-value"
B64 = base64.b64encode(PLAIN.encode()).decode()


def _secret() -> dict[str, object]:
    return {
        "kind": "Secret",
        "apiVersion": "v1",
        "metadata": {
            "name": "db",
            "annotations": {LAST_APPLIED: json.dumps({"stringData": {"p": PLAIN}})},
        },
        "data": {"password": B64},
        "stringData": {"token": PLAIN},
    }


def _clean(out: bytes) -> None:
    text = out.decode()
    assert PLAIN not in text and B64 not in text


def test_object() -> None:
    out = redact_body(json.dumps(_secret()).encode())
    _clean(out)
    doc = json.loads(out)
    assert doc["data"] == {"password": REDACTED_B64}
    assert doc["stringData"] == {"token": REDACTED}
    assert doc["metadata"]["annotations"][LAST_APPLIED] == REDACTED


def test_list_items_without_kind() -> None:
    item = _secret()
    del item["kind"]
    out = redact_body(json.dumps({"kind": "SecretList", "items": [item, item]}).encode())
    _clean(out)


@pytest.mark.parametrize("include", ["Object", "Metadata"])
def test_table_rows(include: str) -> None:
    obj = (
        _secret()
        if include == "Object"
        else {"kind": "PartialObjectMetadata", "metadata": _secret()["metadata"]}
    )
    table = {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "columnDefinitions": [],
        "rows": [{"cells": ["db"], "object": obj}],
    }
    _clean(redact_body(json.dumps(table).encode()))


def test_watch_stream_split_anywhere() -> None:
    stream = b"".join(
        json.dumps({"type": t, "object": _secret()}).encode() + b"\n" for t in ("ADDED", "MODIFIED")
    )
    for cut in range(1, len(stream), 7):
        w = WatchRedactor(1 << 20)
        out = w.feed(stream[:cut]) + w.feed(stream[cut:]) + w.end()
        _clean(out)
        assert out.count(b"\n") == 2


def test_unknown_shapes_are_refused_not_passed() -> None:
    with pytest.raises(RedactError):
        redact_body(b"\x00protobuf")
    with pytest.raises(RedactError):
        redact_body(json.dumps({"kind": "Pod", "spec": {}}).encode())
    with pytest.raises(RedactError):
        WatchRedactor(1 << 20).feed(b'{"type":"ADDED"}\n')
    with pytest.raises(RedactError):
        WatchRedactor(16).feed(b"x" * 64)


def test_status_passes() -> None:
    status = {"kind": "Status", "status": "Failure", "code": 404}
    assert json.loads(redact_body(json.dumps(status).encode())) == status


def test_accept_loses_protobuf() -> None:
    assert accept_without_protobuf("application/vnd.kubernetes.protobuf") == "application/json"
    assert (
        accept_without_protobuf(
            "application/vnd.kubernetes.protobuf;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1;g=meta.k8s.io,application/json"
        )
        == "application/json;as=Table;v=v1;g=meta.k8s.io, application/json"
    )


def _action(text: str, body: str | None, ctype: str = "application/json") -> Action:
    import hashlib

    who = Principal("bot", PrincipalKind("agent"), frozenset({"agents"}))
    return Action(
        who, "cluster", "kubernetes", "kubernetes", text,
        params=(body,) if body else (),
        binding=hashlib.sha256(body.encode()).hexdigest() if body else "",
        context=(("content-type", ctype),) if body else (),
    )  # fmt: skip


def test_approval_binds_method_path_query_and_body() -> None:
    base = _action(
        "POST /apis/apps/v1/namespaces/a/deployments?fieldManager=kubectl",
        '{"spec":{"replicas":2}}',
    )
    same = _action(
        "POST /apis/apps/v1/namespaces/a/deployments?fieldManager=kubectl",
        '{"spec":{"replicas":2}}',
    )
    assert action_fingerprint(base) == action_fingerprint(same)
    others = [
        _action("PUT /apis/apps/v1/namespaces/a/deployments?fieldManager=kubectl", '{"spec":{"replicas":2}}'),
        _action("POST /apis/apps/v1/namespaces/b/deployments?fieldManager=kubectl", '{"spec":{"replicas":2}}'),
        _action("POST /apis/apps/v1/namespaces/a/deployments?dryRun=All", '{"spec":{"replicas":2}}'),
        _action("POST /apis/apps/v1/namespaces/a/deployments?fieldManager=kubectl", '{"spec":{"replicas":3}}'),
        _action("POST /apis/apps/v1/namespaces/a/deployments?fieldManager=kubectl", '{"spec":{"replicas":2}}', "application/yaml"),
        _action("POST /apis/apps/v1/namespaces/a/deployments?fieldManager=kubectl\nimpersonate-user: x", '{"spec":{"replicas":2}}'),
    ]  # fmt: skip
    prints = {action_fingerprint(a) for a in others}
    assert action_fingerprint(base) not in prints and len(prints) == len(others)


@given(
    st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "X"]),
    st.text(max_size=60),
    st.one_of(st.none(), st.text(max_size=200)),
    st.sampled_from(["application/json", "application/yaml", "application/json-patch+json", "application/apply-patch+yaml", "application/vnd.kubernetes.protobuf", "text/plain", ""]),
)  # fmt: skip
def test_classifier_never_raises(method: str, path: str, body: str | None, ctype: str) -> None:
    stmt = classify_request(f"{method} /{path}", body, ctype)
    assert stmt.klass in ("read", "write", "admin", "unknown")


def test_hostile_bodies_are_unparsed_not_crashes() -> None:
    bomb = "a: &a [x, x]\nb: &b [*a, *a]\nc: &c [*b, *b]\nspec: {privileged: *c}\n"
    assert (
        classify_request("POST /api/v1/namespaces/a/pods", bomb, "application/yaml").klass
        == "unknown"
    )
    deep = "[" * 100000 + "]" * 100000
    assert (
        classify_request("POST /api/v1/namespaces/a/pods", deep, "application/json").klass
        == "unknown"
    )
