"""Kubernetes API requests as the gate sees them: request info (requestinfo), body
conditions (objects) and the class a request belongs to (classify)."""

from wardgate.policy.kubernetes.classify import (
    ALL_NAMESPACES,
    KUBERNETES_CLASSES,
    KUBERNETES_KINDS,
    classify_kubernetes,
    classify_request,
    request_text,
)
from wardgate.policy.kubernetes.requestinfo import RequestInfo, RequestInfoError, resolve

__all__ = [
    "ALL_NAMESPACES",
    "KUBERNETES_CLASSES",
    "KUBERNETES_KINDS",
    "RequestInfo",
    "RequestInfoError",
    "classify_kubernetes",
    "classify_request",
    "request_text",
    "resolve",
]
