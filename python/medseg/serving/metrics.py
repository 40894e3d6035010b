"""Prometheus metrics of one server process, served over HTTP on its metrics port
(`ServerConfig.metrics_port`: MEDSEG_<SERVICE>_METRICS_PORT, default the gRPC port + 1000).

    medseg_requests_total{service, method, code}      calls answered, by status code
    medseg_request_seconds{service, method}           call latency (receive + queue + compute + send)
    medseg_compute_seconds{service, stage}            time in the work queue's worker (nnunet: stage predict = inference)
    medseg_queue_depth{service}                       work queued or running now
    medseg_queue_capacity{service}                    beyond it: RESOURCE_EXHAUSTED
    medseg_model_ready{task}                          nnunet: 1 once the task's predictors are warm
    medseg_model_load_error / medseg_model_reload_error   nnunet: 1 while the (re)load failed

The RPC decorators of medseg.serving.errors record the first three for every method.
"""
from __future__ import annotations

import logging
from typing import Callable, Iterable

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily

log = logging.getLogger("medseg.serving")

# Cheap calls take milliseconds, a whole-body segmentation on CPU minutes.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)

REQUESTS = Counter("medseg_requests", "gRPC calls answered, by method and status code",
                   ["service", "method", "code"])
LATENCY = Histogram("medseg_request_seconds", "gRPC call latency, by method", ["service", "method"],
                    buckets=BUCKETS)
COMPUTE = Histogram("medseg_compute_seconds", "seconds in the work queue's worker (nnunet: inference)",
                    ["service", "stage"], buckets=BUCKETS)
QUEUE_DEPTH = Gauge("medseg_queue_depth", "work queued or running", ["service"])
QUEUE_CAPACITY = Gauge("medseg_queue_capacity", "queued + running before RESOURCE_EXHAUSTED", ["service"])


def watch_queue(service: str, depth: Callable[[], int], capacity: int) -> None:
    """Report a work queue's depth (read at scrape time) and capacity."""
    QUEUE_DEPTH.labels(service).set_function(depth)
    QUEUE_CAPACITY.labels(service).set(capacity)


class ModelStateCollector:
    """nnunet's model state, read from its live registry at scrape time."""

    def __init__(self, live) -> None:
        self.live = live

    def collect(self) -> Iterable[GaugeMetricFamily]:
        ready = GaugeMetricFamily("medseg_model_ready", "1 once the task's predictors are loaded and warm",
                                  labels=["task"])
        current = self.live.current
        for task in self.live.listed():
            predictor = current.predictors.get(task)
            ready.add_metric([task], 1.0 if predictor is not None and predictor.ready else 0.0)
        yield ready
        yield GaugeMetricFamily("medseg_model_load_error", "1 while nothing serves because loading failed",
                                value=1.0 if self.live.load_error else 0.0)
        yield GaugeMetricFamily("medseg_model_reload_error", "1 while the last registry reload failed",
                                value=1.0 if self.live.reload_error else 0.0)


def watch_models(live) -> None:
    REGISTRY.register(ModelStateCollector(live))


def serve(host: str, port: int) -> int | None:
    """Start the metrics HTTP server (a daemon thread); None when the port cannot be bound
    (the gRPC server runs on without metrics: they must never take a service down)."""
    if port <= 0:
        return None
    try:
        server, _ = start_http_server(port, addr=host)
    except OSError as exc:
        log.warning("metrics not served: cannot bind %s:%d (%s)", host, port, exc.strerror)
        return None
    log.info("metrics on http://%s:%d/metrics", host, port)
    return server.server_port
