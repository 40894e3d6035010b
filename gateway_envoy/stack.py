"""The local medseg stack: Envoy + nnunet + smoothing + postprocess + case under supervisord.

    .venv/bin/python gateway_envoy/stack.py up [--services postprocess,smoothing] [--timeout S] [--keep]
    .venv/bin/python gateway_envoy/stack.py down
    .venv/bin/python gateway_envoy/stack.py status
    .venv/bin/python gateway_envoy/stack.py render        # configs only (then envoy --mode validate)
    .venv/bin/python gateway_envoy/stack.py logs [-f] [name ...]

`up` renders run/envoy.yaml and run/supervisord.conf from the templates next to this file
(ports from medseg.addresses, env MEDSEG_<NAME>_PORT), starts supervisord in the background and
waits until every started service answers SERVING through the gateway. `make up`, the
integration tests and the benchmarks all go through `Stack` below.

Environment: MEDSEG_DATA_ROOT (default data/), MEDSEG_RUN_DIR (default run/),
MEDSEG_UP_TIMEOUT (seconds, default 300), MEDSEG_SERVICES (comma list, default all four),
MEDSEG_ENVOY_MAX_HEAP_BYTES (overload manager, default 2 GiB), MEDSEG_<SERVICE>_HOST.
"""
from __future__ import annotations

import argparse
import os
import shutil
import socket
import string
import subprocess
import sys
import tempfile
import time
import xmlrpc.client
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable, Iterator

from medseg import addresses
from medseg.client import Client

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent
SERVICES = addresses.SERVICES
PROGRAMS = ("envoy",) + SERVICES
DEFAULT_UP_TIMEOUT = 300.0
# supervisord's wait before SIGKILL: above the servers' drain + grace (6 s + 10 s by default).
STOP_WAIT_SECONDS = 30


class StackError(RuntimeError):
    """The stack could not be started, or did not become ready."""


def _env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    return float(value) if value else default


def _bin(name: str) -> str:
    """A tool installed next to this interpreter (.venv/bin), else on PATH."""
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = subprocess.run(["which", name], capture_output=True, text=True).stdout.strip()
    if not found:
        raise StackError(f"'{name}' not found next to {sys.executable} or on PATH (run `make setup`)")
    return found


def _supervisor_quote(value: str) -> str:
    # supervisord expands %(name)s in its config: a literal % must be doubled.
    return '"' + str(value).replace("%", "%%").replace('"', '\\"') + '"'


def _grpc_stats_services() -> str:
    """YAML list of every service with its methods, read from the compiled contract."""
    from google.protobuf import descriptor_pool

    from medseg.nnunet.v1 import nnunet_pb2  # noqa: F401  (registers the descriptors)
    from medseg.postprocess.v1 import postprocess_pb2  # noqa: F401
    from medseg.smoothing.v1 import smoothing_pb2  # noqa: F401

    from google.longrunning import operations_pb2  # noqa: F401  (case jobs as operations)

    pool = descriptor_pool.Default()
    lines = []
    names = [addresses.SERVICE_NAMES[name] for name in SERVICES]
    if "case" in SERVICES:
        names.append(operations_pb2.DESCRIPTOR.services_by_name["Operations"].full_name)
    for full_name in names:
        service = pool.FindServiceByName(full_name)
        methods = ", ".join(m.name for m in service.methods)
        lines.append(f"                - {{ name: {service.full_name}, method_names: [{methods}] }}")
    return "\n".join(lines)


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


class Stack:
    """One local stack: its run folder (configs, logs, supervisor socket), data root,
    ports and the services it starts. Ports are read from medseg.addresses (env overrides)
    when the Stack is created."""

    def __init__(self, run_dir: str | Path | None = None, data_root: str | Path | None = None,
                 services: Iterable[str] | None = None, ports: dict[str, int] | None = None,
                 extra_env: dict[str, str] | None = None):
        self.run_dir = Path(run_dir or os.environ.get("MEDSEG_RUN_DIR") or REPO_ROOT / "run").resolve()
        self.data_root = Path(data_root or os.environ.get("MEDSEG_DATA_ROOT") or REPO_ROOT / "data").resolve()
        if services is None:
            listed = os.environ.get("MEDSEG_SERVICES", "")
            services = [s.strip() for s in listed.split(",") if s.strip()] or SERVICES
        unknown = sorted(set(services) - set(SERVICES))
        if unknown:
            raise StackError(f"unknown service(s) {unknown}; expected some of {list(SERVICES)}")
        self.services = tuple(s for s in SERVICES if s in set(services))
        self.ports = {name: addresses.port(name) for name in ("gateway", "admin") + SERVICES}
        self.ports.update(ports or {})
        self.extra_env = dict(extra_env or {})
        self.hosts = {name: os.environ.get(f"MEDSEG_{name.upper()}_HOST", "127.0.0.1")
                      for name in SERVICES}
        self.logs_dir = self.run_dir / "logs"
        self.envoy_config = self.run_dir / "envoy.yaml"
        self.supervisor_config = self.run_dir / "supervisord.conf"
        self.socket_path = self.run_dir / "supervisor.sock"

    # --- addresses -------------------------------------------------------------------

    @property
    def gateway(self) -> str:
        return f"127.0.0.1:{self.ports['gateway']}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['admin']}"

    def direct(self, service: str) -> str:
        """Address of a server itself, bypassing the gateway."""
        return f"{self.hosts[service]}:{self.ports[service]}"

    def log_path(self, program: str) -> Path:
        return self.logs_dir / f"{program}.log"

    # --- configuration ---------------------------------------------------------------

    def environment(self) -> dict[str, str]:
        """The variables every child gets (on top of the caller's environment)."""
        pythonpath = os.pathsep.join(
            [str(REPO_ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
        env = {"PYTHONPATH": pythonpath, "PYTHONUNBUFFERED": "1",
               "MEDSEG_DATA_ROOT": str(self.data_root)}
        env.update({f"MEDSEG_{name.upper()}_PORT": str(port) for name, port in self.ports.items()})
        env.update(self.extra_env)
        return env

    def render(self) -> dict[str, Path]:
        """Write envoy.yaml and supervisord.conf into the run folder; returns their paths."""
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        values = {f"{name}_port": port for name, port in self.ports.items()}
        values.update({f"{name}_host": host for name, host in self.hosts.items()})
        values.update({f"{name}_service": addresses.SERVICE_NAMES[name] for name in SERVICES})
        values.update({f"{name}_autostart": str(name in self.services).lower() for name in SERVICES})
        values.update(
            grpc_stats_services=_grpc_stats_services(),
            max_heap_bytes=int(os.environ.get("MEDSEG_ENVOY_MAX_HEAP_BYTES", 2 << 30)),
            run_dir=self.run_dir, repo_root=REPO_ROOT, python=sys.executable, envoy=_bin("envoy"),
            stopwaitsecs=STOP_WAIT_SECONDS,
            environment=",".join(f"{k}={_supervisor_quote(v)}" for k, v in self.environment().items()),
        )
        outputs = {}
        for template, target in (("envoy.yaml.in", self.envoy_config),
                                 ("supervisord.conf.in", self.supervisor_config)):
            text = string.Template((HERE / template).read_text()).substitute(values)
            target.write_text(text)
            outputs[template.removesuffix(".in")] = target
        return outputs

    def validate_envoy(self) -> str:
        """`envoy --mode validate` on the rendered config; returns its output, raises on error."""
        result = subprocess.run([_bin("envoy"), "--mode", "validate", "-c", str(self.envoy_config),
                                 "--disable-hot-restart", "--log-level", "warn"],
                                capture_output=True, text=True, timeout=60)
        output = (result.stdout + result.stderr).strip()
        if result.returncode != 0:
            raise StackError(f"envoy rejected {self.envoy_config}:\n{output}")
        return output

    # --- supervisord -----------------------------------------------------------------

    def supervisor(self) -> xmlrpc.client.ServerProxy:
        from supervisor.xmlrpc import SupervisorTransport

        transport = SupervisorTransport(None, None, serverurl=f"unix://{self.socket_path}")
        return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)

    def running(self) -> bool:
        """True when this run folder's supervisord answers."""
        if not self.socket_path.exists():
            return False
        try:
            return self.supervisor().supervisor.getState()["statename"] == "RUNNING"
        except (OSError, xmlrpc.client.Error):
            return False

    def processes(self) -> dict[str, dict]:
        """supervisord's view of each program: statename, pid, ..."""
        return {info["name"]: info for info in self.supervisor().supervisor.getAllProcessInfo()}

    def pid(self, program: str) -> int:
        return self.processes()[program]["pid"]

    def start_program(self, program: str) -> None:
        self.supervisor().supervisor.startProcess(self._qualified(program), True)

    def signal_program(self, program: str, sig: str = "TERM") -> None:
        self.supervisor().supervisor.signalProcess(self._qualified(program), sig)

    @staticmethod
    def _qualified(program: str) -> str:
        return program if program == "envoy" else f"services:{program}"

    # --- readiness -------------------------------------------------------------------

    def status(self, timeout: float = 3.0) -> dict[str, str]:
        """Each service's readiness as the gateway reports it (SERVING, NOT_SERVING or the
        error). A fresh channel each time: a channel that failed to connect backs off."""
        with Client(self.gateway) as client:
            return client.status(timeout=timeout)

    def model_load_error(self, timeout: float = 3.0) -> str:
        """nnunet's ListModels `load_error` through the gateway; '' while loading or unreachable."""
        import grpc

        try:
            with Client(self.gateway, timeout=timeout) as client:
                return client.list_models().load_error
        except grpc.RpcError:
            return ""

    def tail(self, program: str, lines: int = 40) -> str:
        path = self.log_path(program)
        if not path.exists():
            return f"(no log at {path})"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def wait_ready(self, timeout: float | None = None, say: Callable[[str], None] = print) -> float:
        """Wait until every started service is SERVING through the gateway. Returns the
        seconds it took; raises StackError (with the failing log's tail) otherwise."""
        timeout = _env_float("MEDSEG_UP_TIMEOUT", DEFAULT_UP_TIMEOUT) if timeout is None else timeout
        start = time.monotonic()
        seen: dict[str, str] = {}
        while True:
            elapsed = time.monotonic() - start
            states = self.processes()
            for program in ("envoy",) + self.services:
                info = states.get(program)
                if info and info["statename"] in ("FATAL", "EXITED", "BACKOFF"):
                    raise StackError(f"{program} is {info['statename']} after {elapsed:.0f} s "
                                     f"({info.get('spawnerr') or info.get('description')}); "
                                     f"last lines of {self.log_path(program)}:\n{self.tail(program)}")
            health = self.status()
            if "nnunet" in self.services and health["nnunet"] != "SERVING":
                reason = self.model_load_error()
                if reason:  # it will not become SERVING by itself: say why now
                    raise StackError(f"nnunet's models failed to load ({elapsed:.0f} s): {reason}\n"
                                     f"last lines of {self.log_path('nnunet')}:\n{self.tail('nnunet')}")
            for name in self.services:
                if seen.get(name) != health[name]:
                    say(f"  {elapsed:6.1f} s  {name:<12} {health[name]}")
                    seen[name] = health[name]
            if all(health[name] == "SERVING" for name in self.services):
                return elapsed
            if elapsed > timeout:
                waiting = [n for n in self.services if health[n] != "SERVING"]
                tails = "\n".join(f"--- {self.log_path(n)} (last lines)\n{self.tail(n)}" for n in waiting)
                raise StackError(f"not ready after {timeout:.0f} s: {', '.join(waiting)} "
                                 f"(set MEDSEG_UP_TIMEOUT to wait longer)\n{tails}")
            time.sleep(0.5)

    # --- up / down -------------------------------------------------------------------

    def up(self, timeout: float | None = None, say: Callable[[str], None] = print) -> float:
        """Render, validate, start supervisord (background) and wait for readiness."""
        if self.running():
            say(f"stack already running (supervisord in {self.run_dir}); waiting for readiness")
            states = self.processes()
            for name in self.services:
                if states[name]["statename"] in ("STOPPED", "EXITED", "FATAL"):
                    say(f"starting {name}")
                    self.start_program(name)
            return self.wait_ready(timeout, say)
        wanted = {"gateway": self.ports["gateway"], "admin": self.ports["admin"],
                  **{name: self.ports[name] for name in self.services}}
        taken = [f"{name} {port}" for name, port in wanted.items() if not port_is_free(port)]
        if taken:
            raise StackError(f"port(s) already in use on 127.0.0.1: {', '.join(taken)} "
                             f"(another stack? set MEDSEG_<NAME>_PORT to move)")
        self.render()
        self.validate_envoy()
        self.data_root.mkdir(parents=True, exist_ok=True)
        say(f"starting {', '.join(('envoy',) + self.services)} (gateway {self.gateway}, admin "
            f"{self.admin_url}, data root {self.data_root}, logs {self.logs_dir})")
        env = {**os.environ, **self.environment()}
        started = subprocess.run([_bin("supervisord"), "-c", str(self.supervisor_config)],
                                 env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
                                 stdin=subprocess.DEVNULL)
        if started.returncode != 0:
            raise StackError(f"supervisord failed to start:\n{started.stdout}{started.stderr}")
        deadline = time.monotonic() + 15
        while not self.running():
            if time.monotonic() > deadline:
                raise StackError(f"supervisord did not answer on {self.socket_path}:\n"
                                 f"{self.tail('supervisord')}")
            time.sleep(0.1)
        seconds = self.wait_ready(timeout, say)
        say(f"ready in {seconds:.1f} s: gateway {self.gateway}")
        return seconds

    def down(self, timeout: float = STOP_WAIT_SECONDS + 30, say: Callable[[str], None] = print) -> None:
        """Stop every program (SIGTERM, drain, grace) and supervisord; wait until all exited."""
        if not self.running():
            say(f"stack not running (no supervisord in {self.run_dir})")
            return
        pids = [info["pid"] for info in self.processes().values() if info["pid"]]
        supervisord_pid = self.supervisor().supervisor.getPID()
        self.supervisor().supervisor.shutdown()
        say("stopping (servers drain first, then envoy)...")
        deadline = time.monotonic() + timeout
        for pid in [*pids, supervisord_pid]:
            while _alive(pid):
                if time.monotonic() > deadline:
                    raise StackError(f"process {pid} still running {timeout:.0f} s after shutdown")
                time.sleep(0.1)
        say("stopped")


def free_ports(count: int) -> list[int]:
    """`count` distinct ports free on 127.0.0.1 right now (held open together while chosen)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@contextmanager
def temporary_stack(services: Iterable[str] = SERVICES, data_root: str | Path | None = None,
                    run_dir: str | Path | None = None, timeout: float | None = None,
                    extra_env: dict[str, str] | None = None,
                    say: Callable[[str], None] = print) -> Iterator[Stack]:
    """A stack on free ports with its own run folder (and data root unless given), started
    through the same code path as `stack.py up`, always stopped on exit. For tests and
    benchmarks; the caller's environment is not modified."""
    scratch = Path(tempfile.mkdtemp(prefix="medseg-stack-"))
    names = ("gateway", "admin") + SERVICES
    stack = Stack(run_dir=run_dir or scratch / "run", data_root=data_root or scratch / "data",
                  services=services, ports=dict(zip(names, free_ports(len(names)))),
                  extra_env=extra_env)
    stack.data_root.mkdir(parents=True, exist_ok=True)
    try:
        stack.up(timeout, say)
        yield stack
    finally:
        if stack.running():
            stack.down(say=say)
    # Only a clean run removes its scratch folder: after a failure its logs are evidence.
    shutil.rmtree(scratch, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped by its parent) counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return True


# --- command line ------------------------------------------------------------------------

def _print_status(stack: Stack) -> int:
    if not stack.running():
        print(f"stack not running (no supervisord in {stack.run_dir})")
        return 3
    processes = stack.processes()
    health = stack.status()
    print(f"gateway {stack.gateway}   admin {stack.admin_url}   data root {stack.data_root}")
    for program in PROGRAMS:
        info = processes.get(program, {})
        ready = "" if program == "envoy" else health.get(program, "")
        print(f"  {program:<12} {info.get('statename', '?'):<9} pid {info.get('pid') or '-':<8} {ready}")
    started = [p for p in SERVICES if processes.get(p, {}).get("statename") == "RUNNING"]
    return 0 if started and all(health[p] == "SERVING" for p in started) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start the stack and wait until it is ready")
    up.add_argument("--services", help="comma list (default: env MEDSEG_SERVICES or all three)")
    up.add_argument("--timeout", type=float, help="seconds to wait for readiness (env MEDSEG_UP_TIMEOUT)")
    up.add_argument("--keep", action="store_true", help="leave it running when it does not become ready")
    sub.add_parser("down", help="stop everything")
    sub.add_parser("status", help="print each program's state and readiness")
    sub.add_parser("render", help="write the configs and validate the Envoy one")
    logs = sub.add_parser("logs", help="show the last lines of the logs")
    logs.add_argument("-f", "--follow", action="store_true")
    logs.add_argument("names", nargs="*", default=list(PROGRAMS))
    args = parser.parse_args(argv)

    services = args.services.split(",") if getattr(args, "services", None) else None
    try:
        stack = Stack(services=services)
        if args.command == "up":
            try:
                stack.up(args.timeout)
            except (StackError, KeyboardInterrupt) as exc:
                print(f"stack.py up: {exc or 'interrupted'}", file=sys.stderr)
                if stack.running() and not args.keep:
                    stack.down(say=lambda line: print(line, file=sys.stderr))
                return 1
            return 0
        if args.command == "down":
            stack.down()
            return 0
        if args.command == "status":
            return _print_status(stack)
        if args.command == "render":
            paths = stack.render()
            print(stack.validate_envoy() or f"{paths['envoy.yaml']}: valid")
            for path in paths.values():
                print(path)
            return 0
        if args.command == "logs":
            files = [str(stack.log_path(name)) for name in args.names if stack.log_path(name).exists()]
            if not files:
                print(f"no logs in {stack.logs_dir}")
                return 1
            os.execvp("tail", ["tail", "-n", "40"] + (["-F"] if args.follow else []) + files)
    except StackError as exc:
        print(f"stack.py {args.command}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
