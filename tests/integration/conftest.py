"""Integration fixtures: the real stack (Envoy + servers under supervisord) on free ports.

The stack is started through gateway_envoy/stack.py, the same code `make up` runs, with a
temporary data root and run folder, and is always stopped at the end of the session.

Which servers start: env MEDSEG_TEST_SERVICES (comma list, or "all"); default
all three (nnunet loads its demo models at start-up: slower, but every operation is covered).
Envoy routes all three either way; a service that is not started answers UNAVAILABLE.
"""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

from gateway_envoy.stack import SERVICES, Stack, temporary_stack
from tests import tools

DEFAULT_TEST_SERVICES = SERVICES
TOOLS = ("envoy", "supervisord", "grpcurl")


def tool(name: str) -> str | None:
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else shutil.which(name)


def wanted_services() -> tuple[str, ...]:
    listed = os.environ.get("MEDSEG_TEST_SERVICES", "").strip()
    if listed == "all":
        names = SERVICES
    elif listed:
        names = tuple(s.strip() for s in listed.split(",") if s.strip())
    else:
        names = DEFAULT_TEST_SERVICES
    return tuple(s for s in SERVICES if s in names)


@pytest.fixture(scope="session")
def stack(tmp_path_factory) -> Stack:
    missing = [name for name in TOOLS if tool(name) is None]
    if missing:
        tools.missing(f"integration tools {missing} (run `make setup`)")
    services = wanted_services()
    if not services:
        pytest.skip(f"MEDSEG_TEST_SERVICES names no known service ({list(SERVICES)})")
    data_root = tmp_path_factory.mktemp("data")
    # The servers' default drain (6 s) stays: it must outlast Envoy's longest health-check
    # interval (no_traffic_interval 5 s + jitter) for the drain to be seen. A short grace
    # keeps the session's shutdown quick.
    extra_env = {"MEDSEG_GRACE_SECONDS": "5",
                 "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    with temporary_stack(services, data_root=data_root, extra_env=extra_env) as running:
        yield running


@pytest.fixture(scope="session")
def data_root(stack) -> Path:
    return stack.data_root
