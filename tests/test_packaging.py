"""The SDK stays light: what a client imports pulls no server-only package."""
from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parent.parent / "python" / "pyproject.toml"
# grpc_reflection is left out: grpc's own __init__ imports it whenever it is installed.
SERVER_ONLY = ("grpc_status", "scipy", "torch", "vtk", "nnunetv2", "medseg.serving", "medseg.summary")


def test_server_packages_are_an_extra_not_a_dependency():
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    names = {d.split("=")[0].split(">")[0].split("[")[0].strip().lower() for d in project["dependencies"]}
    assert not names & {"grpcio-reflection", "grpcio-status", "scipy"}
    assert {"grpcio-reflection", "grpcio-status", "scipy"} <= {
        d.split("=")[0].split(">")[0].strip().lower() for d in project["optional-dependencies"]["server"]}


def test_client_and_cli_import_no_server_only_module():
    code = ("import sys, medseg.client, medseg.cli, medseg.phantom; "
            f"print(sorted(m for m in {SERVER_ONLY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
