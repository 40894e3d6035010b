"""The viewer's HTTP server: the static bundle, and a case's files read-only, by job id.

Envoy routes /viewer/ of the gateway here (gateway_envoy/envoy.yaml.in); the page itself calls
the services through Envoy's gRPC-Web filter. This server only hands out bytes:

    GET /viewer/                                   index.html of the bundle (viewer/dist)
    GET /viewer/<asset>                            a file of the bundle (flat folder)
    GET /viewer/cases/<job id>/outputs/<name>      an output the job lists (CaseResult.outputs)
    GET /viewer/cases/<job id>/phases/<phase>      the NIfTI file of one input phase
    GET /viewer/healthz                            "ok"

What a job may serve is what GetCase (through the gateway, like any client) says it has: a
name not in its outputs is 404, whatever the folder holds, so no URL reaches any other file;
resolved paths must stay under the data root. Error bodies never name server paths.

Env: MEDSEG_VIEWER_PORT / MEDSEG_VIEWER_HOST (default 50055, 127.0.0.1), MEDSEG_DATA_ROOT,
MEDSEG_GATEWAY (GetCase), MEDSEG_VIEWER_DIST (bundle folder, default viewer/dist).
"""
from __future__ import annotations

import json
import logging
import mimetypes
import os
import re
import signal
import sys
import threading
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import grpc

from medseg import addresses
from medseg.cases.v1 import cases_pb2 as pb
from medseg.cases.v1 import cases_pb2_grpc
from medseg.labels import PHASES
from medseg.serving.config import ServerConfig

log = logging.getLogger("medseg.viewer")

PREFIX = "/viewer/"
JOB_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
ASSET = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
CHUNK = 1 << 20
TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
         ".html": "text/html; charset=utf-8", ".map": "application/json", ".json": "application/json",
         ".gz": "application/gzip", ".obj": "text/plain; charset=utf-8", ".mtl": "text/plain; charset=utf-8",
         ".glb": "model/gltf-binary", ".dcm": "application/dicom"}


@dataclass
class ViewerConfig:
    data_root: Path
    host: str
    port: int
    gateway: str
    dist: Path

    @classmethod
    def from_env(cls) -> "ViewerConfig":
        server = ServerConfig.from_env("viewer")
        dist = os.environ.get("MEDSEG_VIEWER_DIST") or str(Path(__file__).resolve().parent / "dist")
        return cls(data_root=server.data_root, host=server.host, port=server.port,
                   gateway=addresses.gateway_address(), dist=Path(dist).resolve())


class HttpError(Exception):
    def __init__(self, status: HTTPStatus, message: str):
        super().__init__(message)
        self.status, self.message = status, message


class Files:
    """Resolves a request path to a file that may be served (or raises HttpError)."""

    def __init__(self, config: ViewerConfig):
        self.config = config
        self.channel = grpc.insecure_channel(config.gateway)
        self.cases = cases_pb2_grpc.CaseServiceStub(self.channel)

    def asset(self, name: str) -> Path:
        name = name or "index.html"
        if not ASSET.match(name) or name.startswith("."):
            raise HttpError(HTTPStatus.NOT_FOUND, f"no such file in the viewer: {name!r}")
        path = self.config.dist / name
        if not path.is_file():
            if name == "index.html":
                raise HttpError(HTTPStatus.SERVICE_UNAVAILABLE, "the viewer is not built: run `make viewer`")
            raise HttpError(HTTPStatus.NOT_FOUND, f"no such file in the viewer: {name!r}")
        return path

    def job(self, job_id: str) -> pb.CaseJob:
        if not JOB_ID.match(job_id):
            raise HttpError(HTTPStatus.BAD_REQUEST, "job id: letters, digits, '-' and '_' only")
        try:
            return self.cases.GetCase(pb.GetCaseRequest(job_id=job_id), timeout=10).job
        except grpc.RpcError as exc:
            code = exc.code()
            if code is grpc.StatusCode.NOT_FOUND:
                raise HttpError(HTTPStatus.NOT_FOUND, f"no case job {job_id!r}") from None
            if code is grpc.StatusCode.INVALID_ARGUMENT:
                raise HttpError(HTTPStatus.BAD_REQUEST, exc.details() or "bad job id") from None
            log.warning("GetCase %s: %s %s", job_id, code, exc.details())
            raise HttpError(HTTPStatus.SERVICE_UNAVAILABLE, f"the case service did not answer ({code.name})") from None

    def under_root(self, relative: str, what: str) -> Path:
        root = self.config.data_root
        path = (root / relative).resolve()
        if not path.is_relative_to(root) or not path.is_file():
            raise HttpError(HTTPStatus.NOT_FOUND, f"{what} is not there (any more)")
        return path

    def case_file(self, job_id: str, kind: str, name: str) -> tuple[Path, str]:
        """(path, download name) of one of a job's files."""
        job = self.job(job_id)
        if kind == "outputs":
            for output in job.result.outputs:
                if output.name == name:
                    return self.under_root(output.path, f"output {name!r}"), name.rsplit("/", 1)[-1]
            raise HttpError(HTTPStatus.NOT_FOUND, f"job {job_id!r} has no output {name!r}")
        if kind == "phases":
            if name not in PHASES:
                raise HttpError(HTTPStatus.NOT_FOUND, f"phase must be one of {list(PHASES)}, got {name!r}")
            for item in job.inputs:
                if item.phase == name:
                    path = self.under_root(item.path, f"the {name} phase")
                    if not path.name.endswith((".nii", ".nii.gz")):
                        raise HttpError(HTTPStatus.NOT_FOUND, f"the {name} phase is not a NIfTI file")
                    return path, name + (".nii.gz" if path.name.endswith(".nii.gz") else ".nii")
            raise HttpError(HTTPStatus.NOT_FOUND, f"job {job_id!r} has no {name} phase")
        raise HttpError(HTTPStatus.NOT_FOUND, "no such path")

    def resolve(self, url_path: str) -> tuple[Path, str | None]:
        """(file, download name or None)."""
        rest = url_path[len(PREFIX):]
        parts = [unquote(p) for p in rest.split("/")]
        if parts[0] == "cases":
            if len(parts) < 4 or not all(parts[1:]):
                raise HttpError(HTTPStatus.NOT_FOUND, "expected /viewer/cases/<job id>/(outputs|phases)/<name>")
            path, download = self.case_file(parts[1], parts[2], "/".join(parts[3:]))
            return path, download
        if len(parts) != 1:
            raise HttpError(HTTPStatus.NOT_FOUND, "no such path")
        return self.asset(parts[0]), None


def _content_type(path: Path) -> str:
    return TYPES.get(path.suffix) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"


def make_handler(files: Files) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "medseg-viewer"
        sys_version = ""
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):  # one line per request, on the program's log
            log.info("%s %s", self.address_string(), fmt % args)

        def _error(self, status: HTTPStatus, message: str) -> None:
            body = json.dumps({"error": message}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def do_HEAD(self):
            self.do_GET()

        def do_GET(self):
            url_path = urlsplit(self.path).path
            if url_path == "/viewer/healthz":
                return self._send_bytes(b"ok\n", "text/plain")
            if url_path == "/viewer":
                self.send_response(HTTPStatus.MOVED_PERMANENTLY)
                self.send_header("Location", PREFIX)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if not url_path.startswith(PREFIX):
                return self._error(HTTPStatus.NOT_FOUND, "no such path")
            try:
                path, download = files.resolve(url_path)
            except HttpError as exc:
                return self._error(exc.status, exc.message)
            self._send_file(path, download)

        def _send_bytes(self, body: bytes, content_type: str) -> None:
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _send_file(self, path: Path, download: str | None) -> None:
            with path.open("rb") as f:
                size = os.fstat(f.fileno()).st_size
                self.send_response(HTTPStatus.OK)
                self.send_header("Content-Type", _content_type(path))
                self.send_header("Content-Length", str(size))
                # Bundles and outputs change between builds and runs: revalidate each time.
                self.send_header("Cache-Control", "no-cache")
                self.send_header("X-Content-Type-Options", "nosniff")
                if download:
                    self.send_header("Content-Disposition", f'attachment; filename="{download}"')
                self.end_headers()
                if self.command == "HEAD":
                    return
                while chunk := f.read(CHUNK):
                    self.wfile.write(chunk)

    return Handler


def create_server(config: ViewerConfig) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer((config.host, config.port), make_handler(Files(config)))
    server.daemon_threads = True
    return server


def main() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = ViewerConfig.from_env()
    server = create_server(config)

    def stop(*_args) -> None:  # shutdown() waits for serve_forever: call it off the main thread
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("viewer on http://%s:%d%s (bundle %s, case files through %s)", config.host, config.port,
             PREFIX, "built" if (config.dist / "index.html").is_file() else "NOT BUILT: run `make viewer`",
             config.gateway)
    server.serve_forever()
    server.server_close()


if __name__ == "__main__":
    main()
