"""Load (issue 15 item 3): 32 concurrent clients through Envoy on loopback for a bounded
~60 s (env MEDSEG_LOAD_SECONDS; at most 200,000 calls), a mix of cheap operations: health
checks, ListLabels, Measure inline and by reference, MeshMask inline on a 16^3 mask.

Each client is a thread with its own channel (its own HTTP/2 connection to Envoy). Passes
when no call failed except with RESOURCE_EXHAUSTED (a full work queue), every operation
succeeded many times, and each server's resident memory stayed flat (scripts/soak.py:
RSS_MARGIN_* says the margin and why). Prints calls, codes and p50/p99 per operation, and
RSS start/end per server. `make soak` runs the same code for longer."""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SOAK_PATH = Path(__file__).resolve().parents[2] / "scripts" / "soak.py"


def _soak():
    spec = importlib.util.spec_from_file_location("medseg_soak", SOAK_PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_32_clients_mixed_operations_through_the_gateway(stack, capsys):
    soak = _soak()
    services = tuple(s for s in stack.services if stack.processes()[s]["statename"] == "RUNNING")
    seconds = float(os.environ.get("MEDSEG_LOAD_SECONDS", 60))
    lines: list[str] = []
    report = soak.run_load(stack.gateway, lambda: {p: stack.pid(p) for p in ("envoy",) + services},
                           stack.data_root, services, clients=32, seconds=seconds,
                           max_calls=200_000, say=lines.append)
    text = report.format()
    with capsys.disabled():
        print("\n" + text)

    assert report.seconds < seconds + soak.CALL_TIMEOUT + 10
    assert not report.failures(), text
    expected = {op for op, (_, needs) in soak.MIX.items() if needs is None or needs in services}
    assert set(report.codes) == expected, text
    for op in expected:
        assert report.codes[op]["OK"] >= 20, f"{op}: too few successful calls\n{text}"
    for program in report.rss:
        assert len(report.restarts[program]) == 1, f"{program} restarted during the run\n{text}"
        assert report.rss_flat(program), f"{program}'s resident memory grew\n{text}"
