"""Replicas behind Envoy and no failed calls while the fleet changes (issue 14 items 3-4).

A stack of Envoy + two postprocess replicas (MEDSEG_POSTPROCESS_REPLICAS=2's code path) under
steady load through the gateway: Measure calls by reference from clients with the SDK's
retries, and from raw clients (RetryPolicy(attempts=1)) that show what the fleet change does
to calls without help.

- one replica SIGKILLed: raw calls in flight on it (or sent before Envoy's health check takes
  it out) fail UNAVAILABLE, only inside the window; the SDK's clients see no failure at all
  (idempotent by-reference calls retried with backoff and jitter); after the window nothing
  fails; supervisord restarts the replica and Envoy balances over both again;
- a rolling restart of both replicas (SIGTERM: NOT_SERVING, drain, grace; then start, wait
  until Envoy reports it healthy; then the next): zero failed calls, raw clients included."""
from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter

import grpc
import numpy as np
import pytest

from gateway_envoy.stack import temporary_stack
from medseg.client import Client, Ref, RetryPolicy
from medseg.labels import Label
from medseg.volumes import Volume, write_volume
from tests import tools
from tests.integration.conftest import TOOLS, tool

pytestmark = pytest.mark.integration

# Envoy's active health check: every 2 s (+0.5 s jitter), 3 failures (timeouts or refused
# connections) to take a host out; an explicit NOT_SERVING takes it out at once.
WINDOW_S = 10.0
RETRYING_CLIENTS, RAW_CLIENTS = 4, 2


class Load:
    """Client threads calling Measure by reference until stopped; every call recorded."""

    def __init__(self, gateway: str):
        self.gateway = gateway
        self.stop = threading.Event()
        self.calls: list[tuple[str, float, float, str]] = []  # kind, start, end, code
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, args=(kind,), daemon=True)
                        for kind in ["sdk"] * RETRYING_CLIENTS + ["raw"] * RAW_CLIENTS]
        self.retries = 0
        self.details: list[str] = []

    def _run(self, kind: str) -> None:
        retry = RetryPolicy() if kind == "sdk" else RetryPolicy(attempts=1)
        with Client(self.gateway, timeout=30, retry=retry) as client:
            while not self.stop.is_set():
                start = time.monotonic()
                try:
                    assert client.measure(Ref("mask.nii.gz")).result.labels[0].voxel_count == 216
                    code = "OK"
                except grpc.RpcError as exc:
                    code = exc.code().name
                    with self.lock:
                        self.details.append(f"{kind} {code}: {exc.details()}")
                with self.lock:
                    self.calls.append((kind, start, time.monotonic(), code))
            with self.lock:
                self.retries += client.retries

    def __enter__(self) -> "Load":
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(60)

    def summary(self, since: float = 0.0) -> dict[str, Counter]:
        with self.lock:
            out: dict[str, Counter] = {"sdk": Counter(), "raw": Counter()}
            for kind, start, _, code in self.calls:
                if start >= since:
                    out[kind][code] += 1
            return out


@pytest.fixture(scope="module")
def replicated(tmp_path_factory):
    missing = [name for name in TOOLS if tool(name) is None]
    if missing:
        tools.missing(f"integration tools {missing} (run `make setup`)")
    data_root = tmp_path_factory.mktemp("replicas")
    array = np.zeros((12, 12, 12), np.uint8)
    array[3:9, 3:9, 3:9] = Label.KIDNEY
    write_volume(Volume(array, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0)), data_root / "mask.nii.gz")
    # Default drain (6 s): longer than Envoy's health-check interval + jitter.
    with temporary_stack(["postprocess"], data_root=data_root, replicas={"postprocess": 2},
                         extra_env={"MEDSEG_GRACE_SECONDS": "5", "OMP_NUM_THREADS": "1"},
                         say=lambda line: None) as stack:
        yield stack


def _hosts(stack) -> dict[str, str]:
    return stack.host_health().get("postprocess", {})


def _successes(stack) -> dict[str, int]:
    """Envoy's rq_success per postprocess host (admin /clusters)."""
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"{stack.admin_url}/clusters", timeout=5) as reply:
        lines = reply.read().decode().splitlines()
    return {p[1]: int(p[3]) for p in (line.split("::") for line in lines)
            if len(p) == 4 and p[0] == "postprocess" and p[2] == "rq_success"}


def _wait_all_healthy(stack, timeout: float = 60.0) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        hosts = _hosts(stack)
        if len(hosts) == 2 and all(flags == "healthy" for flags in hosts.values()):
            return time.monotonic() - start
        time.sleep(0.2)
    raise AssertionError(f"replicas not healthy in Envoy after {timeout:.0f} s: {_hosts(stack)}")


def test_two_replicas_are_both_in_rotation(replicated):
    assert replicated.replicas("postprocess") == ["postprocess", "postprocess-1"]
    _wait_all_healthy(replicated)
    before = _successes(replicated)
    start = time.monotonic()
    # Envoy's workers take both hosts into their round robin a few seconds after the admin
    # reports them healthy; within 20 s every replica must be serving calls.
    with Client(replicated.gateway, timeout=30) as client:
        while time.monotonic() - start < 20:
            client.measure(Ref("mask.nii.gz"))
            after = _successes(replicated)
            if len(after) == 2 and all(after[h] > before.get(h, 0) for h in after):
                break
    assert len(after) == 2 and all(after[h] > before.get(h, 0) for h in after), (before, after)


def test_sigkilled_replica_no_failed_calls_after_the_window(replicated, capsys):
    _wait_all_healthy(replicated)
    with Load(replicated.gateway) as load:
        time.sleep(3)
        pid = replicated.pid("postprocess-1")
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        while replicated.pid("postprocess-1") in (pid, 0) and time.monotonic() - killed < 30:
            time.sleep(0.1)  # supervisord restarts it
        back = _wait_all_healthy(replicated) + (time.monotonic() - killed)  # Envoy takes it back
        time.sleep(max(0.0, WINDOW_S + 8 - (time.monotonic() - killed)))
        before_after = _successes(replicated)
        time.sleep(4)
        after = _successes(replicated)
    total = load.summary()
    after_window = load.summary(since=killed + WINDOW_S)
    raw_failures = [(start - killed, code) for kind, start, _, code in load.calls if kind == "raw" and code != "OK"]
    with capsys.disabled():
        print(f"\n  SIGKILL of 1 of 2 replicas under load: sdk {dict(total['sdk'])} ({load.retries} retries), "
              f"raw {dict(total['raw'])}; raw failures at +s {[(round(t, 2), c) for t, c in raw_failures]}; "
              f"after the {WINDOW_S:.0f} s window: sdk {dict(after_window['sdk'])} raw {dict(after_window['raw'])}; "
              f"replica healthy in Envoy again +{back:.1f} s; failure details {sorted(set(load.details))}")
    assert set(total["sdk"]) == {"OK"}, total  # the SDK's retries hide the kill entirely
    assert set(after_window["sdk"]) == {"OK"} and set(after_window["raw"]) == {"OK"}, after_window
    # In flight on the killed replica: UNAVAILABLE, or INTERNAL when its stream was reset
    # after the response began (RST_STREAM); both only inside the window.
    assert all(d.startswith("raw UNAVAILABLE") or (d.startswith("raw INTERNAL") and "RST_STREAM" in d)
               for d in load.details), load.details
    assert all(start < WINDOW_S for start, _ in raw_failures), raw_failures
    assert after_window["raw"]["OK"] > 10 and after_window["sdk"]["OK"] > 10
    assert replicated.pid("postprocess-1") != pid
    assert all(after[h] > before_after.get(h, 0) for h in after), (before_after, after)  # both serve again


def test_rolling_restart_zero_failed_calls(replicated, capsys):
    _wait_all_healthy(replicated)
    timings = []
    with Load(replicated.gateway) as load:
        time.sleep(2)
        for program in replicated.replicas("postprocess"):
            start = time.monotonic()
            old = replicated.pid(program)
            replicated.stop_program(program)  # NOT_SERVING, drain, grace, exit
            stopped = time.monotonic() - start
            replicated.start_program(program)
            healthy = _wait_all_healthy(replicated)
            assert replicated.pid(program) != old
            timings.append((program, stopped, healthy))
            time.sleep(1)
    total = load.summary()
    with capsys.disabled():
        print(f"\n  rolling restart of 2 replicas under load: sdk {dict(total['sdk'])} ({load.retries} retries), "
              f"raw {dict(total['raw'])}; " + "; ".join(f"{p}: stopped in {s:.1f} s, healthy again +{h:.1f} s"
                                                      for p, s, h in timings))
    assert set(total["sdk"]) == {"OK"} and set(total["raw"]) == {"OK"}, total
    assert total["raw"]["OK"] > 20
