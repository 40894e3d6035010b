"""Load and soak through the gateway: N concurrent clients, mixed cheap operations, bounded.

    .venv/bin/python scripts/soak.py [--seconds 600] [--clients 32] [--services postprocess,smoothing]
    .venv/bin/python scripts/soak.py --running          # against the stack `make up` started
    make soak                                          # SOAK_SECONDS=600 SOAK_CLIENTS=32 by default

Each client is a thread with its own channel (a local subchannel pool, so its own HTTP/2
connection to Envoy), calling in a weighted mix: health checks (x-medseg-service header),
ListLabels, Measure inline and by reference, MeshMask inline on a small mask. Traffic goes
to the gateway on 127.0.0.1 only. A run stops by itself at its time limit or call limit.

Printed: calls and failures by status code per operation, p50/p99 latency per operation,
each server's resident memory (VmRSS of its pid) at the start, after warm-up and at the
end, and the flatness verdict: the median RSS over the last third of the run must not
exceed the median over the first third after warm-up by more than the margin (see
RSS_MARGIN_*). The only failure allowed is RESOURCE_EXHAUSTED (a full work queue).
Exit status 0 when both hold, 1 otherwise. tests/integration/test_load.py runs the same
code for ~60 s.
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import grpc
import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402

from medseg import addresses  # noqa: E402
from medseg.client import CHANNEL_OPTIONS, Client, Ref  # noqa: E402
from medseg.labels import Label  # noqa: E402
from medseg.nnunet.v1 import nnunet_pb2_grpc  # noqa: E402
from medseg.postprocess.v1 import postprocess_pb2_grpc  # noqa: E402
from medseg.smoothing.v1 import smoothing_pb2_grpc  # noqa: E402
from medseg.volumes import Volume, write_volume  # noqa: E402

# Operation -> (weight, service it needs). Cheap operations only: the point is many calls.
MIX = {
    "health": (30, None),
    "list_labels": (15, "postprocess"),
    "measure_inline": (20, "postprocess"),
    "measure_ref": (20, "postprocess"),
    "mesh_inline": (15, "smoothing"),
}
ALLOWED = {"RESOURCE_EXHAUSTED"}  # a full work queue; everything else is a failure
CALL_TIMEOUT = 30.0
# RSS flatness: last-third median <= first-third median (after warm-up) + the larger of
# RSS_MARGIN_MIB and RSS_MARGIN_FRACTION of it. A Python gRPC server's RSS moves in steps
# of a few MiB that are not leaks: glibc gives each of its ~18 RPC/worker threads its own
# malloc arena when that thread first allocates, NumPy/SimpleITK buffers are returned to
# the arenas rather than the OS, and gRPC grows its per-connection buffers under bursts.
# Measured on this stack (2 cores): 0.1-1.5 MiB between the thirds after a 10 s warm-up,
# which itself adds ~10 MiB. A one-minute run makes ~8k calls, ~4k per server, and the two
# thirds' medians are ~2/3 of the run apart: the margin flags a leak of about 3 KiB per call
# or more there; the 10-minute soak (~80k calls) flags about 0.3 KiB per call.
RSS_MARGIN_MIB = 8.0
RSS_MARGIN_FRACTION = 0.05


def small_mask() -> Volume:
    """16 x 16 x 16 mm kidney with a tumor ball: Measure and MeshMask take milliseconds."""
    array = np.zeros((16, 16, 16), np.uint8)
    array[3:13, 4:12, 3:13] = Label.KIDNEY
    z, y, x = np.ogrid[:16, :16, :16]
    array[(x - 9) ** 2 + (y - 8) ** 2 + (z - 8) ** 2 <= 6] = Label.TUMOR
    return Volume(array, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0))


class OwnConnectionClient(Client):
    """The SDK's Client on a channel of its own (local subchannel pool): one HTTP/2
    connection per client, as 32 separate processes would have."""

    def __init__(self, target: str, timeout: float):
        super().__init__(target, timeout)
        self.channel.close()
        self.channel = grpc.insecure_channel(
            target, options=CHANNEL_OPTIONS + [("grpc.use_local_subchannel_pool", 1)])
        self.nnunet = nnunet_pb2_grpc.NnUNetServiceStub(self.channel)
        self.smoothing = smoothing_pb2_grpc.SmoothingServiceStub(self.channel)
        self.postprocess = postprocess_pb2_grpc.PostprocessServiceStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)


def rss_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


@dataclass
class Report:
    seconds: float = 0.0
    clients: int = 0
    warmup: float = 0.0
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    codes: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    messages: dict[tuple[str, str], str] = field(default_factory=dict)  # first message per (op, code)
    rss: dict[str, list[tuple[float, int]]] = field(default_factory=lambda: defaultdict(list))  # (t, KiB)
    restarts: dict[str, list[int]] = field(default_factory=dict)  # program -> pids seen

    @property
    def calls(self) -> int:
        return sum(sum(c.values()) for c in self.codes.values())

    def failures(self, allowed: set[str] = ALLOWED) -> Counter:
        out: Counter = Counter()
        for counter in self.codes.values():
            for code, n in counter.items():
                if code != "OK" and code not in allowed:
                    out[code] += n
        return out

    def percentiles(self, op: str) -> tuple[float, float]:
        values = self.latencies.get(op) or [float("nan")]
        p50, p99 = np.percentile(np.asarray(values) * 1000.0, [50, 99])
        return float(p50), float(p99)

    def rss_trend(self, program: str) -> dict[str, float]:
        """MiB: start (first sample), first/last third medians after warm-up, end, limit."""
        samples = self.rss[program]
        after = [kib for t, kib in samples if t >= self.warmup] or [kib for _, kib in samples]
        third = max(1, len(after) // 3)
        first, last = statistics.median(after[:third]) / 1024, statistics.median(after[-third:]) / 1024
        limit = first + max(RSS_MARGIN_MIB, RSS_MARGIN_FRACTION * first)
        return {"start": samples[0][1] / 1024, "warm": after[0] / 1024, "first_third": first,
                "last_third": last, "end": samples[-1][1] / 1024, "limit": limit,
                "peak": max(kib for _, kib in samples) / 1024, "samples": len(samples)}

    def rss_flat(self, program: str) -> bool:
        trend = self.rss_trend(program)
        return trend["last_third"] <= trend["limit"]

    def format(self) -> str:
        lines = [f"{self.clients} clients, {self.seconds:.1f} s, {self.calls} calls "
                 f"({self.calls / max(self.seconds, 1e-9):.0f}/s)"]
        lines.append(f"  {'operation':<15} {'calls':>7} {'p50 ms':>8} {'p99 ms':>8}  codes")
        for op in MIX:
            if op not in self.codes:
                continue
            p50, p99 = self.percentiles(op)
            codes = ", ".join(f"{c} {n}" for c, n in sorted(self.codes[op].items()))
            lines.append(f"  {op:<15} {sum(self.codes[op].values()):>7} {p50:8.1f} {p99:8.1f}  {codes}")
        failures = self.failures()
        lines.append("  failures by code: " + (", ".join(f"{c} {n}" for c, n in failures.items()) or "none")
                     + f" (allowed: {', '.join(sorted(ALLOWED))} "
                     f"{sum(n for c in self.codes.values() for k, n in c.items() if k in ALLOWED)})")
        for (op, code), message in sorted(self.messages.items()):
            if code not in ALLOWED:
                lines.append(f"    {op} {code}: {message[:200]}")
        lines.append(f"  RSS MiB (VmRSS; warm-up {self.warmup:.0f} s; flat = last-third median <= "
                     f"first-third median + max({RSS_MARGIN_MIB:.0f} MiB, {RSS_MARGIN_FRACTION:.0%}))")
        lines.append(f"  {'program':<12} {'start':>7} {'warm':>7} {'1st 3rd':>8} {'last 3rd':>8} "
                     f"{'end':>7} {'peak':>7} {'limit':>7}  verdict")
        for program in self.rss:
            t = self.rss_trend(program)
            verdict = "flat" if self.rss_flat(program) else "GROWING"
            if len(self.restarts.get(program, [])) > 1:
                verdict += f" (restarted: pids {self.restarts[program]})"
            lines.append(f"  {program:<12} {t['start']:7.1f} {t['warm']:7.1f} {t['first_third']:8.1f} "
                         f"{t['last_third']:8.1f} {t['end']:7.1f} {t['peak']:7.1f} {t['limit']:7.1f}  {verdict}")
        return "\n".join(lines)


def run_load(gateway: str, pids: Callable[[], dict[str, int]], data_root: Path, services: tuple[str, ...],
             clients: int = 32, seconds: float = 60.0, max_calls: int = 1_000_000,
             warmup: float | None = None, sample_every: float = 0.5,
             say: Callable[[str], None] = print) -> Report:
    """Run the mix for `seconds` (or until `max_calls` calls) and return the figures.
    pids(): program -> pid of each process whose RSS is sampled (re-read when one dies)."""
    ops = {op: w for op, (w, needs) in MIX.items() if needs is None or needs in services}
    health_targets = list(services)
    mask = small_mask()
    ref = Ref("load/mask.nii.gz")
    write_volume(mask, Path(data_root) / ref.path)
    report = Report(clients=clients, warmup=min(10.0, seconds / 6) if warmup is None else warmup)
    lock = threading.Lock()
    stop = threading.Event()
    started = threading.Barrier(clients + 1)
    count = [0]
    t0 = [0.0]

    def one_call(client: OwnConnectionClient, op: str) -> None:
        if op == "health":
            service = random.choice(health_targets)
            reply = client.health.Check(health_pb2.HealthCheckRequest(service=addresses.SERVICE_NAMES[service]),
                                        timeout=CALL_TIMEOUT,
                                        metadata=[(addresses.HEALTH_ROUTE_HEADER, service)])
            assert reply.status == health_pb2.HealthCheckResponse.SERVING, reply
        elif op == "list_labels":
            assert len(client.list_labels()) == 7
        elif op == "measure_inline":
            assert client.measure(mask).result.labels[0].voxel_count > 0
        elif op == "measure_ref":
            assert client.measure(ref).result.labels[0].voxel_count > 0
        elif op == "mesh_inline":
            assert client.mesh(mask, inline=True).files
        else:  # pragma: no cover
            raise ValueError(op)

    def worker(index: int) -> None:
        rng = random.Random(index)
        names, weights = list(ops), list(ops.values())
        with OwnConnectionClient(gateway, timeout=CALL_TIMEOUT) as client:
            started.wait()
            while not stop.is_set():
                with lock:
                    if count[0] >= max_calls:
                        break
                    count[0] += 1
                op = rng.choices(names, weights)[0]
                begin = time.monotonic()
                try:
                    one_call(client, op)
                    code, message = "OK", ""
                except grpc.RpcError as exc:
                    code, message = exc.code().name, exc.details() or ""
                except Exception as exc:  # a wrong answer is a failure too
                    code, message = "CLIENT_" + type(exc).__name__, str(exc)
                elapsed = time.monotonic() - begin
                with lock:
                    report.codes[op][code] += 1
                    if code == "OK":
                        report.latencies[op].append(elapsed)
                    if code != "OK":
                        report.messages.setdefault((op, code), message)
                if code in ALLOWED:
                    time.sleep(rng.uniform(0.01, 0.05))  # a polite client backs off a little

    def sampler() -> None:
        current = dict(pids())
        for program, pid in current.items():
            report.restarts[program] = [pid]
        while True:
            now = time.monotonic() - t0[0]
            for program, pid in list(current.items()):
                kib = rss_kib(pid)
                if kib is None:  # gone: restarted by supervisord?
                    fresh = pids().get(program)
                    if fresh and fresh != pid:
                        current[program] = fresh
                        report.restarts[program].append(fresh)
                    continue
                report.rss[program].append((now, kib))
            if stop.wait(sample_every):
                break

    threads = [threading.Thread(target=worker, args=(i,), name=f"load-{i}", daemon=True)
               for i in range(clients)]
    for thread in threads:
        thread.start()
    started.wait()
    t0[0] = time.monotonic()
    sampling = threading.Thread(target=sampler, name="rss", daemon=True)
    sampling.start()
    next_line = 10.0
    while True:
        elapsed = time.monotonic() - t0[0]
        if elapsed >= seconds or count[0] >= max_calls:
            break
        if elapsed >= next_line:
            with lock:
                say(f"  {elapsed:5.0f} s  {count[0]} calls, failures {dict(report.failures())}")
            next_line += 10.0 if seconds <= 120 else 60.0
        time.sleep(0.2)
    stop.set()
    for thread in threads:
        thread.join(CALL_TIMEOUT + 5)
    report.seconds = time.monotonic() - t0[0]
    sampling.join(5)
    return report


def main(argv: list[str] | None = None) -> int:
    from gateway_envoy.stack import Stack, temporary_stack

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=float(os.environ.get("SOAK_SECONDS", 600)))
    parser.add_argument("--clients", type=int, default=int(os.environ.get("SOAK_CLIENTS", 32)))
    parser.add_argument("--max-calls", type=int, default=10_000_000, help="stop after this many calls")
    parser.add_argument("--services", default=os.environ.get("SOAK_SERVICES", "postprocess,smoothing"),
                        help="servers of the temporary stack (default postprocess,smoothing)")
    parser.add_argument("--running", action="store_true",
                        help="use the stack `make up` started (MEDSEG_RUN_DIR) instead of a temporary one")
    args = parser.parse_args(argv)

    def go(stack: Stack) -> int:
        services = tuple(s for s in stack.services
                         if stack.processes().get(s, {}).get("statename") == "RUNNING")
        print(f"soak: {args.clients} clients for {args.seconds:.0f} s through {stack.gateway} "
              f"(services {', '.join(services)})", flush=True)
        report = run_load(stack.gateway, lambda: {p: stack.pid(p) for p in ("envoy",) + services},
                          stack.data_root, services, clients=args.clients, seconds=args.seconds,
                          max_calls=args.max_calls, say=lambda line: print(line, flush=True))
        print(report.format())
        ok = not report.failures() and all(report.rss_flat(p) for p in report.rss)
        print("soak: " + ("PASS" if ok else "FAIL"))
        return 0 if ok else 1

    if args.running:
        stack = Stack()
        if not stack.running():
            print(f"soak: no stack running in {stack.run_dir} (make up)", file=sys.stderr)
            return 2
        return go(stack)
    extra_env = {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "MEDSEG_GRACE_SECONDS": "5"}
    with temporary_stack([s.strip() for s in args.services.split(",") if s.strip()],
                         extra_env=extra_env) as stack:
        return go(stack)


if __name__ == "__main__":
    sys.exit(main())
