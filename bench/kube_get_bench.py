#!/usr/bin/env python3
"""`kubectl get`-shaped reads per second: directly to an API server and through wardgate.

    .venv/bin/python bench/kube_get_bench.py [--count 2000] [--pods 50]

The upstream is the API server double of the tests (tests/integration/k8s_double.py,
HTTPS, no real kube-apiserver is available here), holding --pods pods. One keep-alive
HTTPS client each way sends GET /api/v1/namespaces/default/pods with kubectl's Table
Accept header, one request at a time, in interleaved rounds of 100. Through the gateway
each request is authenticated (wardgate token), judged, forwarded with the cluster
credential and recorded. Prints requests per second each way and the ratio. The double
shares the machine (and Python) with the gateway: the absolute numbers say little about
a real cluster; the ratio bounds what the gateway adds per request.
"""

from __future__ import annotations

import argparse
import base64
import socket
import ssl
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.integration.conftest import free_port, make_gateway  # noqa: E402
from tests.integration.k8s_double import start_double  # noqa: E402
from tests.integration.test_kubernetes import UPSTREAM_TOKEN, kube_config  # noqa: E402

TABLE = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"
PATH = "/api/v1/namespaces/default/pods?limit=500"
ROUND = 100


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--pods", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kube-bench-") as tmp_dir:
        tmp = Path(tmp_dir)
        double = start_double(tmp / "double", free_port(), UPSTREAM_TOKEN)
        for i in range(args.pods):
            double.cluster.put("", "pods", {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"web-{i}", "namespace": "default"}, "spec": {"containers": [{"name": "c", "image": "nginx"}]}})  # fmt: skip
        gw = make_gateway(tmp / "gw", kube_config(double))
        port = free_port()
        gw.env["IT_KUBE_TOKEN"] = UPSTREAM_TOKEN
        gw.env["WARDGATE_LISTEN_KUBERNETES"] = f"127.0.0.1:{port}"
        gw.env["WARDGATE_LOG_LEVEL"] = "WARNING"
        gw.start()
        try:
            deadline = time.monotonic() + 20
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
            kc = yaml.safe_load(gw.cli("kubeconfig", "cluster", "--principal", "dev").stdout)
            ca = tmp / "gw-ca.pem"
            ca.write_bytes(
                base64.b64decode(kc["clusters"][0]["cluster"]["certificate-authority-data"])
            )
            token = kc["users"][0]["user"]["token"]
            direct = httpx.Client(
                base_url=double.url,
                verify=ssl.create_default_context(cafile=str(double.ca)),
                headers={"Authorization": f"Bearer {UPSTREAM_TOKEN}", "Accept": TABLE},
            )
            gateway = httpx.Client(
                base_url=f"https://127.0.0.1:{port}/k8s/cluster",
                verify=ssl.create_default_context(cafile=str(ca)),
                headers={"Authorization": f"Bearer {token}", "Accept": TABLE},
            )
            spent = {"direct": 0.0, "gateway": 0.0}
            for client in (direct, gateway):  # warm up: connections, discovery caches
                for _ in range(20):
                    client.get(PATH).raise_for_status()
            done = 0
            while done < args.count:
                for name, client in (("direct", direct), ("gateway", gateway)):
                    t0 = time.perf_counter()
                    for _ in range(ROUND):
                        client.get(PATH).raise_for_status()
                    spent[name] += time.perf_counter() - t0
                done += ROUND
            for name in ("direct", "gateway"):
                print(
                    f"{name:8s} {done / spent[name]:8.1f} requests/s  ({1000 * spent[name] / done:.2f} ms each)"
                )
            print(f"gateway/direct time per request: {spent['gateway'] / spent['direct']:.2f}x")
        finally:
            gw.stop()
            double.stop()


if __name__ == "__main__":
    main()
