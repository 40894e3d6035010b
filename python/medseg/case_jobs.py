"""Case jobs from Python: upload phases, submit, follow, fetch the results.

    from medseg.case_jobs import CaseClient
    from medseg.client import Ref
    with CaseClient("localhost:8080") as cases:
        job = cases.submit(arterial="A.nii.gz", portal="P.nii.gz", delayed="D.nii.gz")  # uploaded
        job = cases.submit(portal=Ref("case1/portal.nii.gz"))                            # by reference
        job = cases.wait(job.job_id, on_event=print)          # follows WatchCase, re-attaches
        cases.fetch(job.job_id, "out/case1")                  # files verified against their sha256

A local file (a .nii/.nii.gz file, or anything medseg.volumes reads, converted to .nii.gz) is
uploaded once with UploadVolume and passed by digest; a `Ref` is a data-root path; a
`Digest` is an earlier upload.
"""
from __future__ import annotations

import hashlib
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Union

import grpc

from medseg import addresses
from medseg.cases.v1 import cases_pb2 as pb
from medseg.cases.v1 import cases_pb2_grpc
from medseg.client import CHANNEL_OPTIONS, IntegrityError, Ref
from medseg.codec import CHUNK_SIZE
from medseg.nnunet.v1 import nnunet_pb2 as nn
from medseg.postprocess.v1 import postprocess_pb2 as pp
from medseg.smoothing.v1 import smoothing_pb2 as sm

FINAL_STATES = (pb.CASE_STATE_SUCCEEDED, pb.CASE_STATE_FAILED, pb.CASE_STATE_CANCELLED)
# Codes after which a watch re-attaches: the connection or the serving replica went away.
REATTACH_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)
MESH_FORMATS = {"obj": sm.MESH_FORMAT_OBJ, "glb": sm.MESH_FORMAT_GLB, "stl": sm.MESH_FORMAT_STL,
                "ply": sm.MESH_FORMAT_PLY}


@dataclass(frozen=True)
class Digest:
    """A volume uploaded before (UploadVolume's sha256)."""

    sha256: str


PhaseValue = Union[Ref, Digest, str, Path, None]


def state_name(state: int) -> str:
    return pb.CaseState.Name(state).removeprefix("CASE_STATE_")


def step_state_name(state: int) -> str:
    return pb.StepState.Name(state).removeprefix("STEP_STATE_")


def _nifti_bytes(path: Path) -> bytes:
    if path.is_file() and path.name.endswith((".nii", ".nii.gz")):
        return path.read_bytes()
    from medseg.volumes import read_volume, write_volume  # other formats and DICOM folders

    with tempfile.TemporaryDirectory(prefix="medseg-upload-") as tmp:
        target = Path(tmp) / "volume.nii.gz"
        write_volume(read_volume(path), target)
        return target.read_bytes()


class CaseClient:
    def __init__(self, target: str | grpc.Channel | None = None, timeout: float = 60.0):
        """target: gateway host:port (default MEDSEG_GATEWAY) or an open channel to share."""
        if isinstance(target, grpc.Channel):
            self.channel, self._owns = target, False
        else:
            self.channel = grpc.insecure_channel(target or addresses.gateway_address(), options=CHANNEL_OPTIONS)
            self._owns = True
        self.timeout = timeout
        self.stub = cases_pb2_grpc.CaseServiceStub(self.channel)

    def close(self) -> None:
        if self._owns:
            self.channel.close()

    def __enter__(self) -> "CaseClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- uploads and submit ---------------------------------------------------------

    def upload(self, path: str | Path) -> pb.UploadVolumeResponse:
        data = _nifti_bytes(Path(path))
        digest = hashlib.sha256(data).hexdigest()

        def requests():
            yield pb.UploadVolumeRequest(header=pb.UploadVolumeHeader(total_bytes=len(data), sha256=digest))
            for start in range(0, len(data), CHUNK_SIZE):
                yield pb.UploadVolumeRequest(data=data[start:start + CHUNK_SIZE])

        reply = self.stub.UploadVolume(requests(), timeout=max(self.timeout, 600.0))
        if reply.sha256 != digest:
            raise IntegrityError(f"server stored sha256 {reply.sha256}, sent {digest}")
        return reply

    def _phase(self, value: PhaseValue) -> pb.PhaseInput | None:
        if value is None:
            return None
        if isinstance(value, Ref):
            return pb.PhaseInput(path=value.path)
        if isinstance(value, Digest):
            return pb.PhaseInput(sha256=value.sha256)
        return pb.PhaseInput(sha256=self.upload(value).sha256)

    def submit(self, *, arterial: PhaseValue = None, portal: PhaseValue = None, delayed: PhaseValue = None,
               tasks: list[str] | None = None, fat: bool = True, mesh_formats: list[str] | None = None,
               vessel_limits: dict | None = None, ureter_limits: dict | None = None,
               speck_max_mm3: float | None = None, display_name: str = "",
               request_id: str | None = None, retries: int = 3) -> pb.CaseJob:
        """Queue a job. The request_id (a fresh UUID unless given) makes the submit safe to
        retry: UNAVAILABLE answers are retried with the same id, and never make two jobs."""
        options = pb.CaseOptions(
            tasks=[nn.Task.Value(f"TASK_{t.upper()}") for t in tasks or []],
            vessel_limits=pp.RepairLimits(**(vessel_limits or {})),
            ureter_limits=pp.RepairLimits(**(ureter_limits or {})), disable_fat=not fat,
            mesh_formats=[MESH_FORMATS[f.lower()] for f in mesh_formats or []])
        if speck_max_mm3 is not None:
            options.speck_max_mm3 = speck_max_mm3
        request = pb.SubmitCaseRequest(options=options, request_id=request_id or uuid.uuid4().hex,
                                       display_name=display_name)
        for phase, value in (("arterial", arterial), ("portal", portal), ("delayed", delayed)):
            message = self._phase(value)
            if message is not None:
                getattr(request, phase).CopyFrom(message)
        for attempt in range(retries + 1):
            try:
                return self.stub.SubmitCase(request, timeout=self.timeout).job
            except grpc.RpcError as exc:
                if exc.code() is not grpc.StatusCode.UNAVAILABLE or attempt == retries:
                    raise
                time.sleep(0.5 * 2 ** attempt)
        raise AssertionError("unreachable")

    # --- jobs -----------------------------------------------------------------------

    def get(self, job_id: str) -> pb.CaseJob:
        return self.stub.GetCase(pb.GetCaseRequest(job_id=job_id), timeout=self.timeout).job

    def list(self, state: str | None = None, page_size: int = 0) -> Iterator[pb.CaseJob]:
        """Every job (newest first), fetching pages as needed."""
        value = pb.CaseState.Value(f"CASE_STATE_{state.upper()}") if state else 0
        token = ""
        while True:
            reply = self.stub.ListCases(pb.ListCasesRequest(state=value, page_size=page_size, page_token=token),
                                        timeout=self.timeout)
            yield from reply.jobs
            token = reply.next_page_token
            if not token:
                return

    def cancel(self, job_id: str) -> pb.CaseJob:
        return self.stub.CancelCase(pb.CancelCaseRequest(job_id=job_id), timeout=self.timeout).job

    def delete(self, job_id: str) -> None:
        self.stub.DeleteCase(pb.DeleteCaseRequest(job_id=job_id), timeout=self.timeout)

    def watch(self, job_id: str, reattach: bool = True, max_wait: float = 120.0) -> Iterator[pb.WatchCaseResponse]:
        """WatchCase messages until the job ends. When the stream breaks (service restarted,
        connection lost), attach again: the new stream starts with a fresh snapshot."""
        backoff, broken_since = 0.5, None
        while True:
            try:
                for message in self.stub.WatchCase(pb.WatchCaseRequest(job_id=job_id)):
                    broken_since, backoff = None, 0.5
                    yield message
                    if message.HasField("snapshot") and message.snapshot.state in FINAL_STATES:
                        return
                return
            except grpc.RpcError as exc:
                if not reattach or exc.code() not in REATTACH_CODES:
                    raise
                broken_since = broken_since or time.monotonic()
                if time.monotonic() - broken_since > max_wait:
                    raise
                time.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    def wait(self, job_id: str, on_message: Callable[[pb.WatchCaseResponse], None] | None = None) -> pb.CaseJob:
        """Follow the job to its end; returns the final job."""
        last = None
        for message in self.watch(job_id):
            if on_message:
                on_message(message)
            if message.HasField("snapshot"):
                last = message.snapshot
        return last if last is not None and last.state in FINAL_STATES else self.get(job_id)

    def fetch(self, job_id: str, folder: str | Path, name: str = "", include_work: bool = False) -> list[Path]:
        """Download a job's output files (or one) into folder, each checked against its
        sha256. Intermediates (work/...) only with include_work. Each file is written to a
        temporary name and renamed once its digest matches: a broken download leaves none."""
        folder = Path(folder)
        written: list[Path] = []
        current, expected, target, partial, handle, hasher = None, "", None, None, None, None

        def close():
            if handle is None:
                return
            handle.close()
            if hasher.hexdigest() != expected:
                partial.unlink(missing_ok=True)
                raise IntegrityError(f"{current}: sha256 does not match the server's")
            partial.replace(target)
            written.append(target)

        try:
            for message in self.stub.FetchCaseOutput(pb.FetchCaseOutputRequest(job_id=job_id, name=name)):
                chunk = message.chunk
                if chunk.name != current:
                    close()
                    current, expected, handle = chunk.name, message.sha256, None
                    if not include_work and chunk.name.startswith("work/") and not name:
                        continue
                    target = folder / chunk.name
                    if not target.resolve().is_relative_to(folder.resolve()):
                        raise IntegrityError(f"refusing output name '{chunk.name}'")
                    target.parent.mkdir(parents=True, exist_ok=True)
                    partial = target.with_name(f".{target.name}.partial")
                    handle, hasher = partial.open("wb"), hashlib.sha256()
                if handle is not None:
                    handle.write(chunk.data)
                    hasher.update(chunk.data)
            close()
        except BaseException:
            if handle is not None and not handle.closed:
                handle.close()
                partial.unlink(missing_ok=True)
            raise
        return written
