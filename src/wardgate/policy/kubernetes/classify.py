"""The class (read / write / admin) and kinds of one Kubernetes API request.

An Action of kind ``kubernetes`` carries the request as text: ``METHOD /path?query`` on
the first line and, on the lines after it, any impersonation header (they change who the
request runs as, so they are judged and bound by approvals like the path). The body, when
there is one, is the action's first parameter and its content type is in its context.
"""

from __future__ import annotations

from wardgate.actions import StatementInfo
from wardgate.policy.kubernetes.objects import OBJECT_KINDS, BodyError, object_kinds, parse_body
from wardgate.policy.kubernetes.requestinfo import RequestInfo, RequestInfoError, resolve
from wardgate.policy.kubernetes.sessions import classify_stream, stream_request

# shell: an interactive exec or attach (the role's `shell: allow`); forwarding: a
# port-forward (`forwarding: allow`). An exec's commands have the shell engine's classes.
KUBERNETES_CLASSES = ("read", "write", "admin", "shell", "forwarding")
READ_VERBS = frozenset({"get", "list", "watch"})
WRITE_VERBS = frozenset({"create", "update", "patch", "delete", "deletecollection"})
# Subresources that run something in a pod or reach into it: a shell, not a read.
SESSION_SUBRESOURCES = frozenset({"exec", "attach", "portforward", "proxy"})
# Writing these changes who may do what (or mints a credential).
ADMIN_RESOURCES = frozenset(
    {
        "roles.rbac.authorization.k8s.io",
        "rolebindings.rbac.authorization.k8s.io",
        "clusterroles.rbac.authorization.k8s.io",
        "clusterrolebindings.rbac.authorization.k8s.io",
        "serviceaccounts/token",
        "certificatesigningrequests.certificates.k8s.io/approval",
        "mutatingwebhookconfigurations.admissionregistration.k8s.io",
        "validatingwebhookconfigurations.admissionregistration.k8s.io",
        "validatingadmissionpolicies.admissionregistration.k8s.io",
        "validatingadmissionpolicybindings.admissionregistration.k8s.io",
        "mutatingadmissionpolicies.admissionregistration.k8s.io",
        "mutatingadmissionpolicybindings.admissionregistration.k8s.io",
        # Routes a whole API group-version to a Service (the aggregator): changing one
        # (`v1.apps` too) hands that API's requests, and who made them, to its pods.
        "apiservices.apiregistration.k8s.io",
    }
)
# Non-resource paths kubectl reads to find its way: discovery, version, OpenAPI, health.
DISCOVERY_PREFIXES = ("/api", "/apis", "/version", "/openapi", "/healthz", "/livez", "/readyz")
# The namespaces of a request across all of them (see _namespaces).
ALL_NAMESPACES = "*"
# Resources of the built-in groups that belong to no namespace (by group). A resource
# not named here (a custom one) counts as namespaced: a list of it may reach them all.
CLUSTER_SCOPED: dict[str, frozenset[str]] = {
    "": frozenset({"namespaces", "nodes", "persistentvolumes", "componentstatuses"}),
    "rbac.authorization.k8s.io": frozenset({"clusterroles", "clusterrolebindings"}),
    "storage.k8s.io": frozenset(
        {"storageclasses", "csidrivers", "csinodes", "volumeattachments", "volumeattributesclasses"}
    ),
    "apiextensions.k8s.io": frozenset({"customresourcedefinitions"}),
    "apiregistration.k8s.io": frozenset({"apiservices"}),
    "admissionregistration.k8s.io": frozenset(
        {
            "mutatingwebhookconfigurations",
            "validatingwebhookconfigurations",
            "validatingadmissionpolicies",
            "validatingadmissionpolicybindings",
            "mutatingadmissionpolicies",
            "mutatingadmissionpolicybindings",
        }
    ),
    "certificates.k8s.io": frozenset({"certificatesigningrequests", "clustertrustbundles"}),
    "scheduling.k8s.io": frozenset({"priorityclasses"}),
    "node.k8s.io": frozenset({"runtimeclasses"}),
    "networking.k8s.io": frozenset({"ingressclasses", "ipaddresses", "servicecidrs"}),
    "flowcontrol.apiserver.k8s.io": frozenset({"flowschemas", "prioritylevelconfigurations"}),
}
IMPERSONATE_HEADERS = ("impersonate-user", "impersonate-group", "impersonate-uid")

KUBERNETES_KINDS = frozenset(
    {
        *READ_VERBS,
        *WRITE_VERBS,
        "proxy",
        "exec",
        "attach",
        "portforward",
        "log",
        "eviction",
        "impersonate",
        "discovery",
        "secret_read",
        "delete_namespace",
        "rbac_write",
        "nonresource",
        "command",
        "interactive",
        *OBJECT_KINDS,
    }
)


def request_text(method: str, path: str, query: str, headers: list[tuple[str, str]]) -> str:
    """The judged text of a request: its line, then impersonation headers in order."""
    line = f"{method.upper()} {path}" + (f"?{query}" if query else "")
    extra = [
        f"{k.lower()}: {v}"
        for k, v in headers
        if k.lower() in IMPERSONATE_HEADERS or k.lower().startswith("impersonate-extra-")
    ]
    return "\n".join([line, *extra])


def _unknown(text: str, error: str) -> StatementInfo:
    return StatementInfo("unknown", (), text, error)


def classify_kubernetes(
    text: str, body: str | None = None, content_type: str = "", secret_mounts: tuple[str, ...] = ()
) -> tuple[StatementInfo, ...]:
    """Every statement of a request: one, or for exec/attach/port-forward the session
    and (exec) the commands it runs (policy/kubernetes/sessions.py); ``secret_mounts``:
    where the pod mounts Secrets (an exec reading there reads a credential)."""
    request = classify_request(text, body, content_type)
    if request.klass == "unknown" or not {"exec", "attach", "portforward"} & set(request.kinds):
        return (request,)
    method, _, target = text.split("\n", 1)[0].partition(" ")
    path, _, query = target.partition("?")
    try:
        info = resolve(method, path, query)
        stream = stream_request(info, query)
    except RequestInfoError as exc:
        return (_unknown(text, str(exc)),)
    if stream is None:
        return (request,)
    if request.klass == "admin" and "impersonate" in request.kinds:
        # Impersonating while opening a session: admin, whatever the session.
        return (request, *classify_stream(info, stream, text, request, secret_mounts))
    return classify_stream(info, stream, text, request, secret_mounts)


def classify_request(text: str, body: str | None = None, content_type: str = "") -> StatementInfo:
    line, *extra = text.split("\n")
    method, _, target = line.partition(" ")
    path, _, query = target.partition("?")
    try:
        info = resolve(method, path, query)
    except RequestInfoError as exc:
        return _unknown(text, str(exc))
    kinds: list[str] = []
    klass = _class_of(info, kinds)
    if klass is None:
        return _unknown(text, f"{method} is not a Kubernetes API verb for {path}")
    if extra:
        kinds.append("impersonate")
        klass = "admin"
    if body:
        try:  # a JSON Patch the gateway cannot judge is found while reading its kinds
            data = parse_body(body, content_type)
            kinds.extend(object_kinds(data, info.resource, content_type))
        except BodyError as exc:
            return _unknown(text, str(exc))
    return StatementInfo(
        klass,
        tuple(dict.fromkeys(kinds)),
        text,
        resources=(info.resource_key,) if info.is_resource_request else (),
        namespaces=_namespaces(info),
        verbs=(info.verb,),
    )


def _namespaces(info: RequestInfo) -> tuple[str, ...]:
    """The namespaces a request reaches: the one in its path; every one (``*``, which
    every ``namespaces`` glob of a guardrail matches) for a list, watch or collection
    delete of a resource not known to be cluster-scoped without one in its path: it
    answers with the objects of every namespace."""
    if info.namespace:
        return (info.namespace,)
    if (
        info.is_resource_request
        and info.verb in ("list", "watch", "deletecollection")
        and info.resource not in CLUSTER_SCOPED.get(info.api_group, ())
    ):
        return (ALL_NAMESPACES,)
    return ()


def _class_of(info: RequestInfo, kinds: list[str]) -> str | None:
    if not info.is_resource_request:
        kinds.append("nonresource")
        if info.verb in ("get", "head") and (
            info.path in ("", "/")
            or any(info.path == p or info.path.startswith(p + "/") for p in DISCOVERY_PREFIXES)
        ):
            kinds.append("discovery")
            return "read"
        return None
    kinds.append(info.verb)
    key = info.resource_key
    if info.verb == "proxy" or info.subresource in SESSION_SUBRESOURCES:
        kinds.append(info.subresource or "proxy")
        return "admin"
    if info.verb in READ_VERBS:
        if info.resource == "secrets" and not info.api_group:
            kinds.append("secret_read")
        if info.subresource == "log":
            kinds.append("log")
        return "read"
    if info.verb not in WRITE_VERBS:
        return None
    if info.resource == "pods" and info.subresource == "eviction":
        kinds.append("eviction")
    if info.resource == "namespaces" and not info.api_group and info.verb == "delete":
        kinds.append("delete_namespace")
    if key in ADMIN_RESOURCES or key.partition("/")[0] in ADMIN_RESOURCES:
        if info.api_group == "rbac.authorization.k8s.io":
            kinds.append("rbac_write")
        return "admin"
    return "write"
