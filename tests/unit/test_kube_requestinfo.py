"""The request-info resolver against the cases of the API server's own resolver
(k8s.io/apiserver pkg/endpoints/request/requestinfo_test.go: TestGetAPIRequestInfo,
TestGetNonAPIRequestInfo, TestSelectorParsing), plus the requests wardgate refuses to read."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wardgate.policy.kubernetes import RequestInfoError, resolve

# method, url, verb, prefix, group, version, namespace, resource, subresource, name, parts
UPSTREAM_CASES = [
    ("GET", "/api/v1/namespaces", "list", "api", "", "v1", "", "namespaces", "", "", ["namespaces"]),
    ("GET", "/api/v1/namespaces/other", "get", "api", "", "v1", "other", "namespaces", "", "other", ["namespaces", "other"]),
    ("GET", "/api/v1/namespaces/other/pods", "list", "api", "", "v1", "other", "pods", "", "", ["pods"]),
    ("GET", "/api/v1/namespaces/other/pods/foo", "get", "api", "", "v1", "other", "pods", "", "foo", ["pods", "foo"]),
    ("HEAD", "/api/v1/namespaces/other/pods/foo", "get", "api", "", "v1", "other", "pods", "", "foo", ["pods", "foo"]),
    ("GET", "/api/v1/pods", "list", "api", "", "v1", "", "pods", "", "", ["pods"]),
    ("HEAD", "/api/v1/pods", "list", "api", "", "v1", "", "pods", "", "", ["pods"]),
    ("GET", "/api/v1/proxy/namespaces/other/pods/foo", "proxy", "api", "", "v1", "other", "pods", "", "foo", ["pods", "foo"]),
    ("GET", "/api/v1/proxy/namespaces/other/pods/foo/subpath/not/a/subresource", "proxy", "api", "", "v1", "other", "pods", "", "foo", ["pods", "foo", "subpath", "not", "a", "subresource"]),
    ("GET", "/api/v1/watch/pods", "watch", "api", "", "v1", "", "pods", "", "", ["pods"]),
    ("GET", "/api/v1/pods?watch=true", "watch", "api", "", "v1", "", "pods", "", "", ["pods"]),
    ("GET", "/api/v1/pods?watch=false", "list", "api", "", "v1", "", "pods", "", "", ["pods"]),
    ("GET", "/api/v1/watch/namespaces/other/pods", "watch", "api", "", "v1", "other", "pods", "", "", ["pods"]),
    ("GET", "/api/v1/namespaces/other/pods?watch=1", "watch", "api", "", "v1", "other", "pods", "", "", ["pods"]),
    ("GET", "/api/v1/namespaces/other/pods?watch=0", "list", "api", "", "v1", "other", "pods", "", "", ["pods"]),
    ("GET", "/api/v1/namespaces/other/pods/foo/status", "get", "api", "", "v1", "other", "pods", "status", "foo", ["pods", "foo", "status"]),
    ("GET", "/api/v1/namespaces/other/pods/foo/proxy/subpath", "get", "api", "", "v1", "other", "pods", "proxy", "foo", ["pods", "foo", "proxy", "subpath"]),
    ("PUT", "/api/v1/namespaces/other/finalize", "update", "api", "", "v1", "other", "namespaces", "finalize", "other", ["namespaces", "other", "finalize"]),
    ("PUT", "/api/v1/namespaces/other/status", "update", "api", "", "v1", "other", "namespaces", "status", "other", ["namespaces", "other", "status"]),
    ("PATCH", "/api/v1/namespaces/other/pods/foo", "patch", "api", "", "v1", "other", "pods", "", "foo", ["pods", "foo"]),
    ("DELETE", "/api/v1/namespaces/other/pods/foo", "delete", "api", "", "v1", "other", "pods", "", "foo", ["pods", "foo"]),
    ("POST", "/api/v1/namespaces/other/pods", "create", "api", "", "v1", "other", "pods", "", "", ["pods"]),
    ("DELETE", "/api/v1/nodes", "deletecollection", "api", "", "v1", "", "nodes", "", "", ["nodes"]),
    ("DELETE", "/api/v1/namespaces", "deletecollection", "api", "", "v1", "", "namespaces", "", "", ["namespaces"]),
    ("DELETE", "/api/v1/namespaces/other/pods", "deletecollection", "api", "", "v1", "other", "pods", "", "", ["pods"]),
    ("DELETE", "/apis/extensions/v1/namespaces/other/pods", "deletecollection", "apis", "extensions", "v1", "other", "pods", "", "", ["pods"]),
    ("POST", "/apis/extensions/v1/namespaces/other/pods", "create", "apis", "extensions", "v1", "other", "pods", "", "", ["pods"]),
    ("POST", "/apis/extensions/v1beta3/namespaces/other/pods", "create", "apis", "extensions", "v1beta3", "other", "pods", "", "", ["pods"]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("method", "url", "verb", "prefix", "group", "version", "ns", "res", "sub", "name", "parts"),
    UPSTREAM_CASES,
)
def test_upstream_cases(
    method: str, url: str, verb: str, prefix: str, group: str, version: str,
    ns: str, res: str, sub: str, name: str, parts: list[str],
) -> None:  # fmt: skip
    path, _, query = url.partition("?")
    info = resolve(method, path, query)
    assert info.is_resource_request
    # The upstream table lists "api" as the prefix of /apis paths (it does not check it).
    assert (info.verb, info.api_group, info.api_version) == (verb, group, version)
    assert (info.namespace, info.resource, info.subresource, info.name) == (ns, res, sub, name)
    assert list(info.parts) == parts
    assert info.api_prefix == url.split("/")[1]


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("/api/version/resource", True),
        ("/apis/group/version/resource/name/subresource", True),
        ("/api/version/resource/name/subresource", True),
        ("/apis/batch/v1/job", True),
        ("/apis/batch/v1/job/foo", True),
        ("/apis/batch/v1/job/foo/scale", True),
        ("/not-api/version/resource", False),
        ("/apis/extensions/v1beta1", False),
        ("/apis/extensions/v1beta1/", False),
        ("/api/version", False),
        ("/api", False),
        ("/", False),
        ("", False),
        ("/api/version/", False),
        ("/apis/group/version/", False),
        ("/badprefix/version/resource", False),
        ("/apis/version/resource", False),
    ],
)
def test_resource_or_not(url: str, expected: bool) -> None:
    assert resolve("GET", url).is_resource_request is expected


@pytest.mark.parametrize(
    ("method", "url", "name", "verb", "fs", "ls"),
    [
        ("GET", "/apis/group/version/resource", "", "list", "", ""),
        ("GET", "/apis/group/version/resource?fieldSelector=metadata.name=name1", "name1", "list", "metadata.name=name1", ""),
        ("GET", "/apis/group/version/resource?watch=true&fieldSelector=metadata.name=name1", "name1", "watch", "metadata.name=name1", ""),
        ("GET", "/apis/group/version/resource?fieldSelector=foo=bar&labelSelector=baz=qux", "", "list", "foo=bar", "baz=qux"),
        ("GET", "/apis/group/version/resource?fieldSelector=metadata.name=name1,foo", "", "list", "metadata.name=name1,foo", ""),
        ("GET", "/apis/group/version/resource?fieldSelector=metadata.name=name1,foo&watch=true", "", "watch", "metadata.name=name1,foo", ""),
        ("GET", "/apis/group/version/resource?fieldSelector=metadata.name=name1,foo&watch=false", "", "list", "metadata.name=name1,foo", ""),
        ("DELETE", "/apis/group/version/resource?fieldSelector=foo=bar&labelSelector=baz=qux", "", "deletecollection", "foo=bar", "baz=qux"),
        ("GET", "/apis/group/version/resource?fieldSelector=metadata.name=foo&fieldSelector=metadata.name=bar&labelSelector=foo=bar&labelSelector=foo=baz", "foo", "list", "metadata.name=foo", "foo=bar"),
        ("GET", "/apis/group/version/resource/name?fieldSelector=foo=bar&labelSelector=foo=bar", "name", "get", "", ""),
        ("GET", "/apis/group/version/watch/resource?fieldSelector=metadata.name=foo&labelSelector=foo=bar", "", "watch", "", ""),
        ("GET", "/apis/group/version/watch/resource/name?fieldSelector=metadata.name=foo&labelSelector=foo=bar", "name", "watch", "", ""),
    ],
)  # fmt: skip
def test_selectors(method: str, url: str, name: str, verb: str, fs: str, ls: str) -> None:
    path, _, query = url.partition("?")
    info = resolve(method, path, query)
    assert (info.name, info.verb, info.field_selector, info.label_selector) == (name, verb, fs, ls)


def test_watch_path_verb_needs_a_resource() -> None:
    with pytest.raises(RequestInfoError):
        resolve("GET", "/api/v1/watch")


@pytest.mark.parametrize(
    ("path", "query"),
    [
        ("/api/v1/namespaces/default/secrets%2Ffoo", ""),  # Go decodes %2F: another path
        ("/api/v1/namespaces/default//secrets", ""),
        ("/api/v1/namespaces/default/../kube-system/secrets", ""),
        ("/api/v1/namespaces/./pods", ""),
        # An HTTP client reads "//api" as a host: "/v1/..." or "/api/v1/..." is sent.
        ("//api/api/v1/namespaces/kube-system/secrets", ""),
        ("//api/v1/pods", ""),
        ("/api/v1/pods", "watch=1;watch=0"),
    ],
)
def test_ambiguous_requests_are_refused(path: str, query: str) -> None:
    with pytest.raises(RequestInfoError):
        resolve("GET", path, query)


def test_resource_key_names_group_and_subresource() -> None:
    assert resolve("GET", "/apis/apps/v1/namespaces/a/deployments/web/scale").resource_key == (
        "deployments.apps/scale"
    )
    assert resolve("POST", "/api/v1/namespaces/a/pods/p/exec").resource_key == "pods/exec"


@given(
    st.text(max_size=80),
    st.text(max_size=40),
    st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "X"]),
)
def test_garbage_raises_only_request_info_error(path: str, query: str, method: str) -> None:
    try:
        resolve(method, "/" + path, query)
    except RequestInfoError:
        pass
