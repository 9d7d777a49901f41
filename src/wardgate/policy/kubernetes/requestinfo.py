"""What a Kubernetes API request asks for, read from its method, path and query the way
the API server's ``RequestInfoFactory`` (k8s.io/apiserver, endpoints/request) reads them:
verb (get/list/watch/create/update/patch/delete/deletecollection, or the path verbs
watch/proxy), API group and version, namespace, resource, subresource and name.

Sans-IO and pure: strings in, a frozen RequestInfo out. Where the server and the gateway
could read the same request two ways, the gateway refuses it instead (RequestInfoError):
percent-escapes in the path (Go decodes ``%2F`` into a separator), empty, ``.`` or ``..``
segments, and ``;`` in the query.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qsl

API_PREFIXES = frozenset({"api", "apis"})
GROUPLESS_PREFIXES = frozenset({"api"})
SPECIAL_VERBS = frozenset({"proxy", "watch"})
SPECIAL_VERBS_NO_SUBRESOURCES = frozenset({"proxy"})
NAMESPACE_SUBRESOURCES = frozenset({"status", "finalize"})
_METHOD_VERBS = {
    "POST": "create",
    "GET": "get",
    "HEAD": "get",
    "PUT": "update",
    "PATCH": "patch",
    "DELETE": "delete",
}
MAX_PATH = 8192


class RequestInfoError(ValueError):
    """The request cannot be read unambiguously; the gateway never forwards it."""


@dataclass(frozen=True, slots=True)
class RequestInfo:
    is_resource_request: bool
    path: str
    verb: str
    api_prefix: str = ""
    api_group: str = ""
    api_version: str = ""
    namespace: str = ""
    resource: str = ""
    subresource: str = ""
    name: str = ""
    parts: tuple[str, ...] = ()
    field_selector: str = ""
    label_selector: str = ""

    @property
    def resource_key(self) -> str:
        """``resource[.group][/subresource]``, kubectl's ``deployments.apps`` form."""
        key = self.resource + (f".{self.api_group}" if self.api_group else "")
        return key + (f"/{self.subresource}" if self.subresource else "")


def split_path(path: str) -> list[str]:
    path = path.strip("/")
    return path.split("/") if path else []


def _query(query: str) -> dict[str, str]:
    """First value of each parameter, as Go's ``url.Values.Get`` reads it."""
    if ";" in query:
        raise RequestInfoError("';' in the query string (servers disagree on what it separates)")
    values: dict[str, str] = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        values.setdefault(key, value)
    return values


def _watch(value: str) -> bool:
    # apimachinery's Convert_Slice_string_To_bool: anything but "0"/"false" is true.
    return value != "0" and value.lower() != "false"


def _valid_segment(name: str) -> bool:
    # apimachinery path.IsValidPathSegmentName
    return name not in ("", ".", "..") and "/" not in name and "%" not in name


def _exact_name(selector: str) -> str:
    """``metadata.name`` of a field selector that requires one exact name, else ""."""
    found = ""
    for term in selector.split(","):
        for op in ("==", "!=", "="):
            key, sep, value = term.partition(op)
            if sep:
                break
        else:
            return ""  # not a valid selector: the server ignores the name too
        if not key.strip():
            return ""
        if key.strip() == "metadata.name" and op != "!=":
            found = found or value.strip()
    return found if _valid_segment(found) else ""


def resolve(method: str, path: str, query: str = "") -> RequestInfo:
    method = method.upper()
    if len(path) > MAX_PATH:
        raise RequestInfoError("path too long")
    if "%" in path:
        raise RequestInfoError("percent-escapes in the path are not accepted")
    if "//" in path:
        # An HTTP client reads "//x/..." as a host, and servers clean empty segments
        # away: what is sent would not be what was judged.
        raise RequestInfoError("empty path segments ('//') are not accepted")
    inner = path.strip("/")
    if inner and any(seg in ("", ".", "..") for seg in inner.split("/")):
        raise RequestInfoError("empty, '.' or '..' path segments are not accepted")
    params = _query(query)
    info = RequestInfo(False, path, method.lower())
    parts = split_path(path)
    if len(parts) < 3 or parts[0] not in API_PREFIXES:
        return info
    prefix, parts = parts[0], parts[1:]
    group = ""
    if prefix not in GROUPLESS_PREFIXES:
        if len(parts) < 3:
            return info
        group, parts = parts[0], parts[1:]
    version, parts = parts[0], parts[1:]
    via_path = False
    if parts[0] in SPECIAL_VERBS:
        if len(parts) < 2:
            raise RequestInfoError("unable to determine kind and namespace from the path")
        verb, parts = parts[0], parts[1:]
        via_path = True
    else:
        verb = _METHOD_VERBS.get(method, "")
    namespace = ""
    if parts[0] == "namespaces" and len(parts) > 1:
        namespace = parts[1]
        if len(parts) > 2 and parts[2] not in NAMESPACE_SUBRESOURCES:
            parts = parts[2:]
    resource = parts[0]
    name = parts[1] if len(parts) >= 2 else ""
    subresource = parts[2] if len(parts) >= 3 and verb not in SPECIAL_VERBS_NO_SUBRESOURCES else ""
    field_selector = label_selector = ""
    if not name and verb == "get":
        verb = "watch" if "watch" in params and _watch(params["watch"]) else "list"
        if "fieldSelector" in params:
            name = _exact_name(params["fieldSelector"])
    if not name and verb == "delete":
        verb = "deletecollection"
    if not via_path and verb in ("list", "watch", "deletecollection"):
        field_selector = params.get("fieldSelector", "")
        label_selector = params.get("labelSelector", "")
    return RequestInfo(
        True, path, verb, prefix, group, version, namespace, resource, subresource, name,
        tuple(parts), field_selector, label_selector,
    )  # fmt: skip
