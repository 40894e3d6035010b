"""Gateway TLS and mTLS (issue 14 item 6) with the development CA of `make certs`, and the
Prometheus metrics of Envoy and the servers.

- tls: the SDK and grpcurl call through Envoy trusting the CA; a plaintext client is refused;
- mtls: with the client certificate both work; without one, or with a certificate from
  another CA, the handshake is refused;
- Envoy's metrics listener serves /stats/prometheus and nothing else of the admin; each
  server's /metrics counts calls by method and code, with latency and queue metrics."""
from __future__ import annotations

import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest

from gateway_envoy.stack import GatewayTls, temporary_stack
from medseg import addresses
from medseg.client import Client, ClientTls, RetryPolicy
from medseg.labels import Label
from medseg.volumes import Volume
from tests import tools
from tests.integration.conftest import TOOLS, tool

pytestmark = pytest.mark.integration
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
from dev_certs import make_certs  # noqa: E402

NO_RETRY = RetryPolicy(attempts=1)


def _mask() -> Volume:
    array = np.zeros((12, 12, 12), np.uint8)
    array[3:9, 3:9, 3:9] = Label.KIDNEY
    return Volume(array, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    missing = [name for name in TOOLS if tool(name) is None]
    if missing:
        tools.missing(f"integration tools {missing} (run `make setup`)")
    if tool("openssl") is None:
        tools.missing("openssl (Debian package openssl)")
    root = tmp_path_factory.mktemp("certs")
    return make_certs(root / "dev"), make_certs(root / "rogue", "some other CA")


def _tls(mode: str, dev: Path) -> GatewayTls:
    return GatewayTls(mode, dev / "gateway.pem", dev / "gateway.key", dev / "ca.pem",
                      dev / "client.pem", dev / "client.key")


def _measure(gateway: str, tls: ClientTls | None) -> str:
    try:
        with Client(gateway, timeout=10, retry=NO_RETRY, tls=tls) as client:
            assert client.measure(_mask()).result.labels[0].voxel_count == 216
        return "OK"
    except grpc.RpcError as exc:
        return exc.code().name


def _plaintext(gateway: str) -> str:
    try:
        with grpc.insecure_channel(gateway) as channel:
            grpc.channel_ready_future(channel).result(timeout=3)
            from grpc_health.v1 import health_pb2, health_pb2_grpc

            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=3)
        return "OK"
    except grpc.FutureTimeoutError:
        return "refused"
    except grpc.RpcError as exc:
        return exc.code().name


def _grpcurl(gateway: str, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run([tool("grpcurl"), *flags, "-max-time", "10", "-H", "x-medseg-service: postprocess",
                           "-d", '{"service": "medseg.postprocess.v1.PostprocessService"}', gateway,
                           "grpc.health.v1.Health/Check"], capture_output=True, text=True, timeout=30)


def _get(url: str) -> tuple[int, str]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=5) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""


def test_tls_mode(certs, capsys):
    dev, _ = certs
    with temporary_stack(["postprocess"], tls=_tls("tls", dev), say=lambda line: None,
                         extra_env={"MEDSEG_GRACE_SECONDS": "2", "OMP_NUM_THREADS": "1"}) as stack:
        assert _measure(stack.gateway, ClientTls(dev / "ca.pem")) == "OK"
        plain = _plaintext(stack.gateway)
        assert plain != "OK"
        ok = _grpcurl(stack.gateway, "-cacert", str(dev / "ca.pem"))
        assert ok.returncode == 0 and '"SERVING"' in ok.stdout, ok.stdout + ok.stderr
        refused = _grpcurl(stack.gateway, "-plaintext")
        assert refused.returncode != 0
        with capsys.disabled():
            print(f"\n  tls: SDK with the CA OK, grpcurl -cacert OK; plaintext client {plain}, grpcurl "
                  f"-plaintext: {refused.stderr.strip()[:100]}")


def test_mtls_mode_and_metrics(certs, capsys):
    dev, rogue = certs
    with temporary_stack(["postprocess"], tls=_tls("mtls", dev), say=lambda line: None,
                         extra_env={"MEDSEG_GRACE_SECONDS": "2", "OMP_NUM_THREADS": "1"}) as stack:
        gateway = stack.gateway
        assert _measure(gateway, ClientTls(dev / "ca.pem", dev / "client.pem", dev / "client.key")) == "OK"
        no_cert = _measure(gateway, ClientTls(dev / "ca.pem"))
        other_ca = _measure(gateway, ClientTls(dev / "ca.pem", rogue / "client.pem", rogue / "client.key"))
        assert no_cert == "UNAVAILABLE" and other_ca == "UNAVAILABLE", (no_cert, other_ca)
        ok = _grpcurl(gateway, "-cacert", str(dev / "ca.pem"), "-cert", str(dev / "client.pem"),
                      "-key", str(dev / "client.key"))
        assert ok.returncode == 0 and '"SERVING"' in ok.stdout, ok.stdout + ok.stderr
        refused = _grpcurl(gateway, "-cacert", str(dev / "ca.pem"))
        assert refused.returncode != 0
        with capsys.disabled():
            print(f"\n  mtls: SDK with client cert OK, grpcurl -cert OK; without a cert {no_cert}, with another "
                  f"CA's cert {other_ca}; grpcurl without a cert: {refused.stderr.strip()[:120]}")

        # --- metrics ------------------------------------------------------------------
        status, text = _get(f"http://127.0.0.1:{stack.ports['metrics']}/stats/prometheus")
        assert status == 200 and "envoy_cluster_upstream_rq" in text
        assert _get(f"http://127.0.0.1:{stack.ports['metrics']}/clusters")[0] == 404  # admin stays private
        port = addresses.metrics_port("postprocess", stack.ports["postprocess"])
        status, text = _get(f"http://127.0.0.1:{port}/metrics")
        assert status == 200, f"no server metrics on {port}"
        lines = [line for line in text.splitlines() if line.startswith("medseg_requests_total{")]
        ok_measure = [line for line in lines if 'method="Measure"' in line and 'code="OK"' in line]
        assert ok_measure and float(ok_measure[0].split()[-1]) >= 1, lines
        for name in ("medseg_request_seconds_bucket", "medseg_compute_seconds_count", "medseg_queue_depth",
                     "medseg_queue_capacity"):
            assert name in text, name
