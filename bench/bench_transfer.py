"""Inline volume upload throughput: through the Envoy gateway vs straight to the server.

    .venv/bin/python bench/bench_transfer.py [--mib 128] [--reps 3]

Starts its own stack (Envoy + postprocess) on free ports through gateway_envoy/stack.py,
sends the same mostly-empty uint8 mask inline (~1 MiB chunks) to PostprocessService/Measure
over both paths, interleaved, and prints the medians and the gateway/direct ratio:
  * wall: client's first byte to result (includes Measure's small compute, same both ways)
  * receive: the server's own 'receive' stage (stream start to last chunk assembled and
    hashed), i.e. the transfer itself
plus peak resident memory of Envoy, the server and this client. Stops the stack at the end.
"""
from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

import grpc
import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from gateway_envoy.stack import temporary_stack  # noqa: E402
from medseg import codec  # noqa: E402
from medseg.client import CHANNEL_OPTIONS  # noqa: E402
from medseg.labels import Label  # noqa: E402
from medseg.postprocess.v1 import postprocess_pb2 as pp  # noqa: E402
from medseg.postprocess.v1 import postprocess_pb2_grpc  # noqa: E402
from medseg.volumes import Volume  # noqa: E402
from procstat import status_mb  # noqa: E402  (bench/, the script's folder)
from ratios import record  # noqa: E402

MIB = 1 << 20


def build_requests(mib: int, encoding: str = "raw") -> tuple[list[pp.MeasureRequest], int]:
    """One Measure request stream: a 512 x 512 x z uint8 mask of about `mib` MiB, a small
    kidney box in it (Measure then computes little), cut into ~1 MiB chunks once."""
    z = max(1, mib * MIB // (512 * 512))
    array = np.zeros((z, 512, 512), np.uint8)
    array[z // 2: z // 2 + 8, 200:240, 200:260] = Label.KIDNEY
    volume = Volume(array, (0.8, 0.8, 1.0), (0.0, 0.0, 0.0))
    requests = [pp.MeasureRequest(params=pp.MeasureParams())]
    requests += [pp.MeasureRequest(chunk=chunk) for chunk in codec.volume_chunks(volume, "mask", encoding=encoding)]
    return requests, array.nbytes


def measure_once(target: str, requests) -> tuple[float, float]:
    """(wall seconds, server receive-stage seconds) of one Measure call."""
    with grpc.insecure_channel(target, options=CHANNEL_OPTIONS) as channel:
        stub = postprocess_pb2_grpc.PostprocessServiceStub(channel)
        grpc.channel_ready_future(channel).result(timeout=10)
        start = time.perf_counter()
        result = None
        for response in stub.Measure(iter(requests), timeout=600):
            if response.WhichOneof("payload") == "result":
                result = response.result
        wall = time.perf_counter() - start
    if result is None:
        raise RuntimeError("Measure returned no result")
    receive = next(t.seconds for t in result.info.timings if t.stage == "receive")
    return wall, receive


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=128, help="volume size per call (MiB)")
    parser.add_argument("--reps", type=int, default=5, help="calls per path")
    parser.add_argument("--encoding", default="auto", choices=codec.ENCODINGS,
                        help="how the mask travels (default auto: what the SDK sends, gzip+packed)")
    parser.add_argument("--no-phantom", dest="phantom", action="store_false",
                        help="skip the wire bytes of a 512 x 512 x 300 phantom mask per encoding")
    args = parser.parse_args()

    if args.phantom:
        from medseg.phantom import make_phantom
        mask = make_phantom((512, 512, 300), seed=0).labels
        for encoding in ("raw", "gzip", "gzip+packed"):
            start = time.perf_counter()
            chunks = list(codec.volume_chunks(mask, "mask", encoding=encoding))
            encoded = time.perf_counter() - start
            wire = sum(c.ByteSize() for c in chunks)
            assembler = codec.VolumeAssembler()
            start = time.perf_counter()
            for chunk in chunks:
                assembler.add(chunk)
            decoded = time.perf_counter() - start
            if encoding == "gzip+packed":
                record("transfer", "512x512x300 phantom mask: raw / wire bytes (gzip+packed)",
                       mask.array.nbytes / wire, note="SDK default for masks")
            print(f"phantom 512x512x300 mask as {encoding:<12} wire {wire / MIB:7.2f} MiB = "
                  f"1/{mask.array.nbytes / wire:6.1f} of raw; encode {encoded:.2f} s, receive {decoded:.2f} s")
        del mask, chunks, assembler

    requests, nbytes = build_requests(args.mib, args.encoding)
    wire = sum(r.ByteSize() for r in requests)
    size_mib = nbytes / MIB
    print(f"payload: {size_mib:.0f} MiB uint8 mask per call as {args.encoding} in {len(requests) - 2} "
          f"chunks, {wire / MIB:.2f} MiB on the wire; {args.reps} call(s) per path, interleaved")
    with temporary_stack(("postprocess",), say=lambda line: None) as stack:
        paths = {"direct": stack.direct("postprocess"), "gateway": stack.gateway}
        print(f"stack: gateway {stack.gateway} -> postprocess {paths['direct']}")
        for target in paths.values():  # warm-up: connections, imports, first allocation
            measure_once(target, requests)
        walls = {name: [] for name in paths}
        receives = {name: [] for name in paths}
        for rep in range(args.reps):
            for name, target in paths.items():
                wall, receive = measure_once(target, requests)
                walls[name].append(wall)
                receives[name].append(receive)
                print(f"  rep {rep + 1} {name:<8} wall {wall:6.3f} s ({size_mib / wall:7.1f} MiB/s)   "
                      f"receive {receive:6.3f} s ({size_mib / receive:7.1f} MiB/s)")
        envoy_rss = status_mb("VmHWM", stack.pid("envoy"))
        server_rss = status_mb("VmHWM", stack.pid("postprocess"))

    print()
    rates = {}
    for name in paths:
        wall, receive = statistics.median(walls[name]), statistics.median(receives[name])
        rates[name] = (size_mib / wall, size_mib / receive)
        print(f"{name:<8} median wall {wall:6.3f} s = {rates[name][0]:7.1f} MiB/s   "
              f"median receive {receive:6.3f} s = {rates[name][1]:7.1f} MiB/s")
    record("transfer", f"inline Measure {size_mib:.0f} MiB ({args.encoding}): gateway / direct throughput",
           rates["gateway"][0] / rates["direct"][0], note=f"median wall of {args.reps} interleaved calls each")
    print(f"ratio gateway/direct: wall {rates['gateway'][0] / rates['direct'][0]:.2f}   "
          f"receive {rates['gateway'][1] / rates['direct'][1]:.2f}")
    client_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS: envoy {envoy_rss:.0f} MiB, postprocess server {server_rss:.0f} MiB, "
          f"this client {client_rss:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
