"""The local medseg stack: Envoy + nnunet + smoothing + postprocess + case (+ the viewer's HTTP
server, behind the gateway's /viewer/) under supervisord.

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
MEDSEG_ENVOY_MAX_HEAP_BYTES (overload manager, default 2 GiB), MEDSEG_<SERVICE>_HOST,
MEDSEG_<SERVICE>_REPLICAS (default 1: replica i > 0 is supervisord program <service>-i on
port MEDSEG_<SERVICE>_PORT + 100·i; Envoy balances over all of them).
"""
from __future__ import annotations

import argparse
import json
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
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

from medseg import addresses
from medseg.client import Client, RetryPolicy

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent
SERVICES = addresses.SERVICES
# The viewer's HTTP server (viewer/server.py) runs in every stack: Envoy routes /viewer/ to it.
VIEWER = "viewer"
PROGRAMS = ("envoy", VIEWER) + SERVICES
PORT_NAMES = ("gateway", "admin", "metrics", VIEWER) + SERVICES  # metrics: Envoy's /stats/prometheus
DEFAULT_UP_TIMEOUT = 300.0
# Replica i of a service listens on its port + REPLICA_PORT_STEP * i (`make up`'s fixed ports).
REPLICA_PORT_STEP = 100
# supervisord's wait before SIGKILL: above the servers' drain + grace (6 s + 10 s by default).
STOP_WAIT_SECONDS = 30


@dataclass(frozen=True)
class GatewayTls:
    """The gateway listener's security. mode "off" (plaintext h2c), "tls" (server certificate)
    or "mtls" (clients must present a certificate signed by `ca`). `ca` is also what the
    stack's own clients trust; `client_cert`/`client_key` are theirs in mtls (the case service
    gets them as MEDSEG_TLS_*). Env: MEDSEG_GATEWAY_TLS, MEDSEG_GATEWAY_CERT, MEDSEG_GATEWAY_KEY,
    MEDSEG_GATEWAY_CA, MEDSEG_TLS_CERT, MEDSEG_TLS_KEY; `make certs` writes development ones."""

    mode: str = "off"
    cert: Path | None = None
    key: Path | None = None
    ca: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None

    @classmethod
    def from_env(cls) -> "GatewayTls":
        def path(name: str) -> Path | None:
            value = os.environ.get(name)
            return Path(value).resolve() if value else None

        return cls(os.environ.get("MEDSEG_GATEWAY_TLS", "off") or "off", path("MEDSEG_GATEWAY_CERT"),
                   path("MEDSEG_GATEWAY_KEY"), path("MEDSEG_GATEWAY_CA"), path("MEDSEG_TLS_CERT"),
                   path("MEDSEG_TLS_KEY"))

    def check(self) -> None:
        if self.mode not in ("off", "tls", "mtls"):
            raise StackError(f"MEDSEG_GATEWAY_TLS must be off, tls or mtls, not {self.mode!r}")
        needed = {"tls": ("cert", "key", "ca"), "mtls": ("cert", "key", "ca", "client_cert", "client_key")}
        for name in needed.get(self.mode, ()):
            value = getattr(self, name)
            if value is None or not Path(value).is_file():
                raise StackError(f"gateway TLS mode {self.mode}: {name} file missing ({value}); run `make certs` "
                                 f"or set MEDSEG_GATEWAY_CERT/KEY/CA and MEDSEG_TLS_CERT/KEY")

    def transport_socket(self) -> str:
        """The listener's transport_socket lines ('' in plaintext mode)."""
        if self.mode == "off":
            return ""
        lines = ["      transport_socket:",
                 "        name: envoy.transport_sockets.tls",
                 "        typed_config:",
                 '          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext',
                 f"          require_client_certificate: {str(self.mode == 'mtls').lower()}",
                 "          common_tls_context:",
                 "            alpn_protocols: [h2, http/1.1]",
                 "            tls_params: { tls_minimum_protocol_version: TLSv1_2 }",
                 f"            tls_certificates: [{{ certificate_chain: {{ filename: {json.dumps(str(self.cert))} }}, "
                 f"private_key: {{ filename: {json.dumps(str(self.key))} }} }}]"]
        if self.mode == "mtls":
            lines.append(f"            validation_context: {{ trusted_ca: {{ filename: {json.dumps(str(self.ca))} }} }}")
        return "\n".join(lines)

    def client(self):
        """What the stack's own clients use (None: plaintext)."""
        from medseg.client import ClientTls

        if self.mode == "off":
            return None
        return ClientTls(self.ca, self.client_cert, self.client_key)

    def client_env(self) -> dict[str, str]:
        out = {} if self.mode == "off" else {"MEDSEG_TLS_CA": str(self.ca)}
        if self.mode == "mtls":
            out.update(MEDSEG_TLS_CERT=str(self.client_cert), MEDSEG_TLS_KEY=str(self.client_key))
        return out


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


def endpoints_yaml(addresses_: Iterable[tuple[str, int]]) -> str:
    """Envoy lb_endpoints entries, one line each, indented for envoy.yaml.in."""
    return "\n".join(f"        - endpoint: {{ address: {{ socket_address: {{ address: {host}, port_value: {port} }} }} }}"
                     for host, port in addresses_)


def _replica_sections(text: str, service: str, ports: list[int]) -> tuple[str, list[str]]:
    """supervisord sections for replicas 1.. of `service`: copies of its rendered section
    with their own name, log and port."""
    start = text.index(f"[program:{service}]")
    end = text.find("\n[", start + 1)
    section = text[start:] if end < 0 else text[start:end + 1]
    out, names = [], []
    for i, port in enumerate(ports[1:], start=1):
        name = f"{service}-{i}"
        copy = section.replace(f"[program:{service}]", f"[program:{name}]")
        copy = copy.replace(f"/logs/{service}.log", f"/logs/{name}.log")
        copy = copy.rstrip("\n") + (f"\nenvironment=MEDSEG_{service.upper()}_PORT=\"{port}\","
                                     f"MEDSEG_REPLICA=\"{i}\"\n")
        out.append(copy)
        names.append(name)
    return "\n".join(out), names


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # SO_REUSEADDR: connections of a stack just stopped (TIME_WAIT) do not count, a
        # listening socket does.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
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
                 extra_env: dict[str, str] | None = None, replicas: dict[str, int] | None = None,
                 tls: GatewayTls | None = None):
        self.run_dir = Path(run_dir or os.environ.get("MEDSEG_RUN_DIR") or REPO_ROOT / "run").resolve()
        self.data_root = Path(data_root or os.environ.get("MEDSEG_DATA_ROOT") or REPO_ROOT / "data").resolve()
        if services is None:
            listed = os.environ.get("MEDSEG_SERVICES", "")
            services = [s.strip() for s in listed.split(",") if s.strip()] or SERVICES
        unknown = sorted(set(services) - set(SERVICES))
        if unknown:
            raise StackError(f"unknown service(s) {unknown}; expected some of {list(SERVICES)}")
        self.services = tuple(s for s in SERVICES if s in set(services))
        self.ports = {name: addresses.port(name) for name in PORT_NAMES}
        self.ports.update(ports or {})
        self.extra_env = dict(extra_env or {})
        counts = {name: int(os.environ.get(f"MEDSEG_{name.upper()}_REPLICAS") or 1) for name in SERVICES}
        # Envoy's view of the servers: fixed addresses on loopback here; kubernetes_envoy_config
        # switches to DNS names.
        self.cluster_type, self.listen_address = "STATIC", "127.0.0.1"
        self.tls = tls or GatewayTls.from_env()
        self.status_host: str | None = None  # ListModels' hosts; None: nnunet's
        self.set_replicas({**counts, **(replicas or {})})
        self.hosts = {name: os.environ.get(f"MEDSEG_{name.upper()}_HOST", "127.0.0.1")
                      for name in SERVICES + (VIEWER,)}
        self.logs_dir = self.run_dir / "logs"
        self.envoy_config = self.run_dir / "envoy.yaml"
        self.supervisor_config = self.run_dir / "supervisord.conf"
        self.socket_path = self.run_dir / "supervisor.sock"

    # --- addresses -------------------------------------------------------------------

    @property
    def gateway(self) -> str:
        return f"127.0.0.1:{self.ports['gateway']}"

    @property
    def viewer_url(self) -> str:
        """The viewer's page, through the gateway."""
        scheme = "http" if self.tls.mode == "off" else "https"
        return f"{scheme}://127.0.0.1:{self.ports['gateway']}/viewer/"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['admin']}"

    def direct(self, service: str) -> str:
        """Address of a server itself, bypassing the gateway."""
        return f"{self.hosts[service]}:{self.ports[service]}"

    def set_replicas(self, counts: dict[str, int], ports: list[int] | None = None) -> None:
        """Replicas per service; extra replicas take `ports` in order (default: the service's
        port + REPLICA_PORT_STEP * i)."""
        spare = list(ports or [])
        self.replica_ports: dict[str, list[int]] = {}
        for name in SERVICES:
            count = int(counts.get(name, 1))
            if count < 1:
                raise StackError(f"MEDSEG_{name.upper()}_REPLICAS must be at least 1, got {count}")
            self.replica_ports[name] = [self.ports[name]] + [
                spare.pop(0) if spare else self.ports[name] + REPLICA_PORT_STEP * i for i in range(1, count)]

    def replicas(self, service: str) -> list[str]:
        """supervisord program names of a service's replicas (the first is the service's name)."""
        return [service] + [f"{service}-{i}" for i in range(1, len(self.replica_ports[service]))]

    def host_health(self) -> dict[str, dict[str, str]]:
        """Envoy's view of every host (admin /clusters): cluster -> {"host:port": flags};
        flags "healthy" or e.g. "/failed_active_hc"."""
        import urllib.request

        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(f"{self.admin_url}/clusters", timeout=5) as reply:
            lines = reply.read().decode().splitlines()
        hosts: dict[str, dict[str, str]] = {}
        for line in lines:
            parts = line.split("::")
            if len(parts) == 4 and parts[2] == "health_flags":
                hosts.setdefault(parts[0], {})[parts[1]] = parts[3]
        return hosts

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
        env.update(self.tls.client_env())  # the case service calls through the gateway too
        env.update(self.extra_env)
        return env

    def render(self) -> dict[str, Path]:
        """Write envoy.yaml and supervisord.conf into the run folder; returns their paths."""
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        values = {f"{name}_port": port for name, port in self.ports.items()}
        values.update({f"{name}_host": host for name, host in self.hosts.items()})
        values.update({f"{name}_service": addresses.SERVICE_NAMES[name] for name in SERVICES})
        values.update({f"{name}_autostart": str(name in self.services).lower() for name in SERVICES})
        values.update({f"{name}_endpoints": endpoints_yaml((self.hosts[name], p) for p in self.replica_ports[name])
                       for name in SERVICES})
        values["nnunet_status_endpoints"] = endpoints_yaml(
            (self.status_host or self.hosts["nnunet"], p) for p in self.replica_ports["nnunet"])
        self.tls.check()
        values.update(cluster_type=self.cluster_type, listen_address=self.listen_address,
                      downstream_tls=self.tls.transport_socket())
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
            if template == "supervisord.conf.in":
                text = self._with_replicas(text)
            target.write_text(text)
            outputs[template.removesuffix(".in")] = target
        return outputs

    def _with_replicas(self, text: str) -> str:
        """The rendered supervisord.conf plus a program per extra replica, in the services group."""
        extra = []
        for name in SERVICES:
            sections, names = _replica_sections(text, name, self.replica_ports[name])
            if names:
                text = text.rstrip("\n") + "\n\n" + sections
                extra += names
        if extra:
            start = text.index("[group:services]")
            line_start = text.index("programs=", start)
            line_end = text.index("\n", line_start)
            text = text[:line_end] + "," + ",".join(extra) + text[line_end:]
        return text

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

    def stop_program(self, program: str) -> None:
        """SIGTERM and wait until it exited (the server drains first, then finishes calls)."""
        self.supervisor().supervisor.stopProcess(self._qualified(program), True)

    def signal_program(self, program: str, sig: str = "TERM") -> None:
        self.supervisor().supervisor.signalProcess(self._qualified(program), sig)

    @staticmethod
    def _qualified(program: str) -> str:
        return program if program == "envoy" else f"services:{program}"

    # --- readiness -------------------------------------------------------------------

    def status(self, timeout: float = 3.0) -> dict[str, str]:
        """Each service's readiness as the gateway reports it (SERVING, NOT_SERVING or the
        error). A fresh channel each time: a channel that failed to connect backs off."""
        with Client(self.gateway, tls=self.tls.client()) as client:
            return client.status(timeout=timeout)

    def model_load_error(self, timeout: float = 3.0) -> str:
        """nnunet's ListModels `load_error` through the gateway; '' while loading or unreachable."""
        import grpc

        try:
            with Client(self.gateway, timeout=timeout, retry=RetryPolicy(attempts=1), tls=self.tls.client()) as client:
                return client.list_models().load_error
        except grpc.RpcError:
            return ""

    def viewer_ready(self, timeout: float = 3.0) -> bool:
        """True when the viewer's server answers through the gateway (/viewer/healthz)."""
        import urllib.request

        handlers = [urllib.request.ProxyHandler({})]  # loopback: no proxy
        if self.tls.mode != "off":
            import ssl

            context = ssl.create_default_context(cafile=str(self.tls.ca))
            if self.tls.mode == "mtls":
                context.load_cert_chain(str(self.tls.client_cert), str(self.tls.client_key))
            handlers.append(urllib.request.HTTPSHandler(context=context))
        opener = urllib.request.build_opener(*handlers)
        try:
            with opener.open(self.viewer_url + "healthz", timeout=timeout) as reply:
                return reply.status == 200
        except OSError:
            return False

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
            for program in ("envoy", VIEWER) + self.services:
                info = states.get(program)
                if info and info["statename"] in ("FATAL", "EXITED", "BACKOFF"):
                    raise StackError(f"{program} is {info['statename']} after {elapsed:.0f} s "
                                     f"({info.get('spawnerr') or info.get('description')}); "
                                     f"last lines of {self.log_path(program)}:\n{self.tail(program)}")
            health = self.status()
            extra = [r for name in self.services for r in self.replicas(name)[1:]]
            for program in extra:
                info = states.get(program)
                if info and info["statename"] in ("FATAL", "EXITED", "BACKOFF"):
                    raise StackError(f"{program} is {info['statename']} after {elapsed:.0f} s; last lines "
                                     f"of {self.log_path(program)}:\n{self.tail(program)}")
            if extra and all(health[name] == "SERVING" for name in self.services):
                # Every replica healthy in Envoy, not just one per service.
                hosts = self.host_health()
                sick = [f"{name} {self.hosts[name]}:{port}" for name in self.services
                        for port in self.replica_ports[name]
                        if hosts.get(name, {}).get(f"{self.hosts[name]}:{port}") != "healthy"]
                if sick:
                    if elapsed > timeout:
                        raise StackError(f"not ready after {timeout:.0f} s: replicas {', '.join(sick)}")
                    if seen.get("replicas") != str(sick):
                        say(f"  {elapsed:6.1f} s  waiting for replicas {', '.join(sick)}")
                        seen["replicas"] = str(sick)
                    time.sleep(0.5)
                    continue
            if "nnunet" in self.services and health["nnunet"] != "SERVING":
                reason = self.model_load_error()
                if reason:  # it will not become SERVING by itself: say why now
                    raise StackError(f"nnunet's models failed to load ({elapsed:.0f} s): {reason}\n"
                                     f"last lines of {self.log_path('nnunet')}:\n{self.tail('nnunet')}")
            for name in self.services:
                if seen.get(name) != health[name]:
                    say(f"  {elapsed:6.1f} s  {name:<12} {health[name]}")
                    seen[name] = health[name]
            if all(health[name] == "SERVING" for name in self.services) and self.viewer_ready():
                return elapsed
            if elapsed > timeout:
                waiting = [n for n in self.services if health[n] != "SERVING"]
                waiting += [] if self.viewer_ready() else [VIEWER]
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
        wanted = {"gateway": self.ports["gateway"], "admin": self.ports["admin"], VIEWER: self.ports[VIEWER],
                  **{name: self.ports[name] for name in self.services}}
        taken = [f"{name} {port}" for name, port in wanted.items() if not port_is_free(port)]
        taken += [] if port_is_free(self.ports["metrics"]) else [f"metrics {self.ports['metrics']}"]
        taken += [f"{program} {port}" for name in self.services
                  for program, port in zip(self.replicas(name)[1:], self.replica_ports[name][1:])
                  if not port_is_free(port)]
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


def kubernetes_envoy_config() -> str:
    """envoy.yaml for deploy/k8s (its ConfigMap): the same template, listening on every
    interface, each cluster STRICT_DNS on the service's headless Service (one host per ready
    pod), ListModels on `nnunet-all` (not-ready pods too: a load error stays visible)."""
    scratch = Path(tempfile.mkdtemp(prefix="medseg-k8s-"))
    try:
        stack = Stack(run_dir=scratch, data_root=scratch, replicas={name: 1 for name in SERVICES},
                      ports={name: addresses._DEFAULT_PORTS[name] for name in addresses._DEFAULT_PORTS})
        stack.hosts = {name: name for name in stack.hosts}
        stack.cluster_type, stack.listen_address, stack.status_host = "STRICT_DNS", "0.0.0.0", "nnunet-all"
        text = stack.render()["envoy.yaml"].read_text()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    header = ("# GENERATED by `make k8s-envoy` (gateway_envoy/stack.py kubernetes_envoy_config) from\n"
              "# gateway_envoy/envoy.yaml.in: edit the template, not this file.\n")
    return header + text.replace("type: STATIC", "type: STRICT_DNS")


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
                    say: Callable[[str], None] = print,
                    replicas: dict[str, int] | None = None,
                    tls: GatewayTls | None = None) -> Iterator[Stack]:
    """A stack on free ports with its own run folder (and data root unless given), started
    through the same code path as `stack.py up`, always stopped on exit. For tests and
    benchmarks; the caller's environment is not modified."""
    scratch = Path(tempfile.mkdtemp(prefix="medseg-stack-"))
    stack = Stack(run_dir=run_dir or scratch / "run", data_root=data_root or scratch / "data",
                  services=services, ports=dict(zip(PORT_NAMES, free_ports(len(PORT_NAMES)))),
                  extra_env=extra_env, tls=tls or GatewayTls())  # not the caller's environment's
    if replicas:  # extra replicas on free ports too
        stack.set_replicas(replicas, free_ports(sum(max(0, n - 1) for n in replicas.values())))
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
