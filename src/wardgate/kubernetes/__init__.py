"""The Kubernetes gateway: an HTTP reverse proxy to an API server (docs/kubernetes.md)."""
