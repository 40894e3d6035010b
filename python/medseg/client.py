"""Python client: one method per operation, volumes inline or by reference.

    from medseg.client import Client, Ref
    with Client("localhost:8080") as client:
        out = client.measure("case/labels.nii.gz")            # local file, sent inline
        out = client.measure(Ref("case/labels.nii.gz"))       # path under the data root
        out.result.labels[0].volume_ml

Every inline volume that comes back is checked against the digest the server reports.
"""
from __future__ import annotations

import hashlib
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Union

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from medseg import addresses, codec
from medseg.nnunet.v1 import nnunet_pb2 as nn
from medseg.nnunet.v1 import nnunet_pb2_grpc
from medseg.postprocess.v1 import postprocess_pb2 as pp
from medseg.postprocess.v1 import postprocess_pb2_grpc
from medseg.smoothing.v1 import smoothing_pb2 as sm
from medseg.smoothing.v1 import smoothing_pb2_grpc
from medseg.volume.v1 import volume_pb2 as vpb
from medseg.volumes import Volume, read_volume

CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", codec.MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", codec.MAX_MESSAGE_BYTES),
]


@dataclass(frozen=True)
class Ref:
    """A path under the server's data root (sent by reference, not uploaded)."""

    path: str


Input = Union[Ref, Volume, str, Path, None]
ProgressFn = Callable[[vpb.Progress], None]


@dataclass
class CallResult:
    """What an operation returned: the result message, inline volumes and files."""

    result: object
    volumes: dict[str, Volume] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)


class IntegrityError(Exception):
    """An inline result's bytes do not match the digest the server reported."""


class LocalInputError(ValueError):
    """A local input could not be read; raised before any call is made."""

    def __init__(self, role: str, path: str | Path, reason: str):
        super().__init__(f"cannot read {role} '{path}': {reason}")
        self.role, self.path, self.reason = role, str(path), reason


@dataclass
class DicomReading:
    """How local DICOM inputs are read (medseg.dicom): the series to take where a source
    holds several (one UID per input, or all in one set), the research override of the
    CT-only rules, and what was read (role -> medseg.dicom.DicomRead, for DICOM-SEG output)."""

    series_uids: tuple[str, ...] = ()
    allow_non_ct: bool = False
    on_note: Callable[[str], None] | None = None
    reads: dict = field(default_factory=dict)
    pacs_auth: object = None  # medseg.dicom.web.PacsAuth for inputs given as DICOMweb URLs


def _is_url(value) -> bool:
    return isinstance(value, str) and value.startswith(("http://", "https://"))


def _as_volume(role: str, value: Volume | str | Path, dicom: DicomReading | None = None) -> Volume:
    """A local input as a Volume, read now: a file that cannot be read is reported here,
    before the stream opens (an exception inside gRPC's request iterator would only show
    as `UNKNOWN: Exception iterating requests!`)."""
    if isinstance(value, Volume):
        return value
    dicom = dicom or DicomReading()
    if _is_url(value):  # a study or series on a PACS (DICOMweb), pulled now
        from medseg.dicom import DicomError
        from medseg.dicom.web import PacsAuth, read_url, shown_url

        try:
            read = read_url(value, dicom.pacs_auth or PacsAuth(), dicom.series_uids, dicom.allow_non_ct)
        except DicomError as exc:
            raise LocalInputError(role, shown_url(value), exc.reason) from None
        dicom.reads[role] = read
        for note in read.notes:
            if dicom.on_note:
                dicom.on_note(f"{role}: {note}")
        return read.volume
    path = Path(value)
    if not path.exists():
        raise LocalInputError(role, path, "no such file or folder")
    try:
        from medseg.dicom import DicomError, looks_like_dicom_source, read_dicom

        if looks_like_dicom_source(path):
            read = read_dicom(path, series_uid=dicom.series_uids, allow_non_ct=dicom.allow_non_ct)
            dicom.reads[role] = read
            for note in read.notes:
                if dicom.on_note:
                    dicom.on_note(f"{role} '{path}': {note}")
            return read.volume
        return read_volume(path)
    except DicomError as exc:  # its own words, listing included
        raise LocalInputError(role, path, exc.reason) from None
    except (RuntimeError, ValueError, OSError) as exc:
        text = str(exc).strip()
        line = text.splitlines()[-1] if text else exc.__class__.__name__
        for prefix in ("ITK ERROR:", "sitk::ERROR:"):
            line = line.removeprefix(prefix).strip()
        raise LocalInputError(role, path, line) from None


def _local_volumes(inputs: dict[str, Input], dicom: DicomReading | None = None) -> dict[str, Volume]:
    return {role: _as_volume(role, value, dicom) for role, value in inputs.items()
            if value is not None and not isinstance(value, Ref)}


def _requests(request_cls, params, volumes: dict[str, Volume]) -> Iterator:
    yield request_cls(params=params)
    for role, volume in volumes.items():
        for chunk in codec.volume_chunks(volume, role, encoding="auto"):  # masks gzip'd + bit-packed
            yield request_cls(chunk=chunk)


def _path_fields(inputs: dict[str, Input]) -> dict[str, str]:
    return {f"{role}_path": value.path for role, value in inputs.items() if isinstance(value, Ref)}


def output_options(output: str | None = None, inline: bool | None = None) -> vpb.OutputOptions:
    """output: data-root path to write the result to; inline: stream it back too."""
    return vpb.OutputOptions(path=output or "", inline=bool(inline),
                             compression=vpb.VOLUME_COMPRESSION_GZIP)  # inline results compressed


def inference_mode(mode: str) -> int:
    """'accurate' or 'fast' -> the contract's InferenceMode value (the registry says what each runs)."""
    try:
        return nn.InferenceMode.Value(f"INFERENCE_MODE_{mode.upper()}")
    except ValueError:
        raise ValueError(f"unknown inference mode {mode!r}; expected 'accurate' or 'fast'") from None


@dataclass(frozen=True)
class RetryPolicy:
    """Retries of idempotent calls answered UNAVAILABLE (a replica died or is draining; the
    gateway has another): calls whose inputs all go by reference, and read-only ones
    (Measure, ListLabels, ListModels). Exponential backoff with full jitter, so clients cut off
    together do not come back together. attempts=1: no retries."""

    attempts: int = 5
    initial_s: float = 0.2
    maximum_s: float = 3.0
    multiplier: float = 2.0

    def delay(self, retry: int) -> float:
        return random.uniform(0.0, min(self.maximum_s, self.initial_s * self.multiplier ** retry))


def _transient(exc: grpc.RpcError) -> bool:
    """UNAVAILABLE, or a stream reset by the transport after the response began (a replica
    killed mid-call reaches the client through Envoy as RST_STREAM = INTERNAL)."""
    return exc.code() == grpc.StatusCode.UNAVAILABLE or (
        exc.code() == grpc.StatusCode.INTERNAL and "RST_STREAM" in (exc.details() or ""))


@dataclass(frozen=True)
class ClientTls:
    """TLS to the gateway: `ca` = the certificates to trust (PEM); `cert` + `key` = this
    client's certificate for a gateway in mTLS mode. Env: MEDSEG_TLS_CA, MEDSEG_TLS_CERT,
    MEDSEG_TLS_KEY (`from_env` is None without MEDSEG_TLS_CA: plaintext)."""

    ca: Path
    cert: Path | None = None
    key: Path | None = None

    @classmethod
    def from_env(cls) -> "ClientTls | None":
        ca = os.environ.get("MEDSEG_TLS_CA")
        if not ca:
            return None
        cert, key = os.environ.get("MEDSEG_TLS_CERT"), os.environ.get("MEDSEG_TLS_KEY")
        return cls(Path(ca), Path(cert) if cert else None, Path(key) if key else None)

    def credentials(self) -> grpc.ChannelCredentials:
        def read(path: Path | None) -> bytes | None:
            return Path(path).read_bytes() if path else None

        return grpc.ssl_channel_credentials(read(self.ca), read(self.key), read(self.cert))


# Requests whose calls change nothing: safe to send again even with inline volumes.
READ_ONLY_REQUESTS = (pp.MeasureRequest,)


class Client:
    def __init__(self, target: str | None = None, timeout: float | None = None,
                 max_volume_bytes: int = codec.DEFAULT_MAX_VOLUME_BYTES, dicom: DicomReading | None = None,
                 retry: RetryPolicy | None = None, tls: ClientTls | None = None):
        """dicom: how local DICOM inputs are read (series choice, research override); retry:
        see RetryPolicy (`retries` counts the retries this client made); tls: see ClientTls
        (default from the environment; none: plaintext)."""
        self.retry = retry or RetryPolicy()
        self.retries = 0
        self.dicom = dicom or DicomReading()
        self.target = target or addresses.gateway_address()
        self.timeout = timeout
        self.max_volume_bytes = max_volume_bytes
        self.tls = tls or ClientTls.from_env()
        self.channel = (grpc.secure_channel(self.target, self.tls.credentials(), options=CHANNEL_OPTIONS)
                        if self.tls else grpc.insecure_channel(self.target, options=CHANNEL_OPTIONS))
        self.nnunet = nnunet_pb2_grpc.NnUNetServiceStub(self.channel)
        self.smoothing = smoothing_pb2_grpc.SmoothingServiceStub(self.channel)
        self.postprocess = postprocess_pb2_grpc.PostprocessServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- generic streaming call ------------------------------------------------------

    def _retrying(self, idempotent: bool, attempt: Callable):
        """attempt(), again after a backoff when it fails UNAVAILABLE and may be repeated."""
        for retry in range(self.retry.attempts):
            try:
                return attempt()
            except grpc.RpcError as exc:
                if not idempotent or not _transient(exc) or retry == self.retry.attempts - 1:
                    raise
            self.retries += 1
            time.sleep(self.retry.delay(retry))

    def _call(self, method, request_cls, params, inputs: dict[str, Input],
              progress: ProgressFn | None) -> CallResult:
        volumes = _local_volumes(inputs, self.dicom)  # local read failures surface before the call
        if "dicom" in params.DESCRIPTOR.fields_by_name:  # the same choice for inputs the server reads
            params.dicom.CopyFrom(self._dicom_selection())
        idempotent = not volumes or request_cls in READ_ONLY_REQUESTS
        return self._retrying(idempotent, lambda: self._call_once(method, request_cls, params, volumes, progress))

    def _call_once(self, method, request_cls, params, volumes: dict[str, Volume],
                   progress: ProgressFn | None) -> CallResult:
        responses = method(_requests(request_cls, params, volumes), timeout=self.timeout)
        assembler = codec.VolumeAssembler(self.max_volume_bytes)
        files: dict[str, bytearray] = {}
        result = None
        for response in responses:
            kind = response.WhichOneof("payload")
            if kind == "progress" and progress:
                progress(response.progress)
            elif kind == "chunk":
                assembler.add(response.chunk)
            elif kind == "file":
                files.setdefault(response.file.name, bytearray()).extend(response.file.data)
            elif kind == "result":
                result = response.result
        if result is None:
            raise RuntimeError("the server closed the stream without a result")
        volumes = {item.role: item for item in assembler.finish()}
        self._verify(result, volumes, files)
        return CallResult(result, {r: v.volume for r, v in volumes.items()},
                          {n: bytes(b) for n, b in files.items()})

    def _dicom_selection(self) -> vpb.DicomSelection:
        """The series choice and research override, for DICOM inputs read by the server."""
        return vpb.DicomSelection(series_uids=list(self.dicom.series_uids), allow_non_ct=self.dicom.allow_non_ct)

    @staticmethod
    def _verify(result, volumes, files) -> None:
        sent = {(d.role, d.path): d.sha256 for d in result.info.sent}
        for role, item in volumes.items():
            if sent.get((role, "")) != item.sha256:
                raise IntegrityError(f"inline volume '{role}' digest {item.sha256} does not match "
                                     f"the server's {sent.get((role, ''))}")
        for name, data in files.items():
            digest = hashlib.sha256(data).hexdigest()
            if sent.get((name, "")) != digest:
                raise IntegrityError(f"file '{name}' digest does not match the server's")

    # --- postprocess -----------------------------------------------------------------

    def measure(self, mask: Input, progress: ProgressFn | None = None, *, tumor_facts: bool = False) -> CallResult:
        """Volumes, boxes, components and diameters per label; with `tumor_facts`, the
        facts about each tumor piece too (side, polar location, exophytic share, ...)."""
        inputs = {"mask": mask}
        return self._call(self.postprocess.Measure, pp.MeasureRequest,
                          pp.MeasureParams(tumor_facts=tumor_facts, **_path_fields(inputs)), inputs, progress)

    def add_fat(self, mask: Input, organs: Input, ct: Input = None, *, margin_mm=None,
                hu_min=None, hu_max=None, output=None, inline=None, progress=None) -> CallResult:
        inputs = {"mask": mask, "organs": organs, "ct": ct}
        options = {k: v for k, v in dict(margin_mm=margin_mm, hu_min=hu_min, hu_max=hu_max).items()
                   if v is not None}
        params = pp.AddFatParams(**_path_fields(inputs), **options,
                                 output=output_options(output, inline))
        return self._call(self.postprocess.AddFat, pp.AddFatRequest, params, inputs, progress)

    def sample_from_template(self, mask: Input, template: Input = None, *, output=None,
                             inline=None, progress=None) -> CallResult:
        inputs = {"mask": mask, "template": template}
        params = pp.SampleFromTemplateParams(**_path_fields(inputs),
                                             output=output_options(output, inline))
        return self._call(self.postprocess.SampleFromTemplate, pp.SampleFromTemplateRequest,
                          params, inputs, progress)

    def connect_vessels(self, mask: Input, *, limits: dict | None = None, backend: int = 0,
                        output=None, inline=None, progress=None) -> CallResult:
        inputs = {"mask": mask}
        params = pp.ConnectVesselsParams(**_path_fields(inputs), limits=pp.RepairLimits(**(limits or {})),
                                         backend=backend, output=output_options(output, inline))
        return self._call(self.postprocess.ConnectVessels, pp.ConnectVesselsRequest, params,
                          inputs, progress)

    def connect_ureters(self, mask: Input, *, limits: dict | None = None, backend: int = 0,
                        output=None, inline=None, progress=None) -> CallResult:
        inputs = {"mask": mask}
        params = pp.ConnectUretersParams(**_path_fields(inputs), limits=pp.RepairLimits(**(limits or {})),
                                         backend=backend, output=output_options(output, inline))
        return self._call(self.postprocess.ConnectUreters, pp.ConnectUretersRequest, params,
                          inputs, progress)

    def list_labels(self) -> list[pp.LabelInfo]:
        """The label convention (value, name, colour, enum name), from the server."""
        return self._retrying(True, lambda: list(self.postprocess.ListLabels(
            pp.ListLabelsRequest(), timeout=self.timeout or 10).labels))

    # --- smoothing -------------------------------------------------------------------

    def mesh(self, mask: Input, *, labels=(), smoothing=None, decimation=0.0, min_island_mm3=None,
             coordinate_system=0, fmt=0, output=None, inline=None, file_stem="",
             progress=None) -> CallResult:
        """file_stem: base name of files sent back inline (e.g. "model": model.obj whose
        mtllib line names model.mtl); default "mesh"."""
        inputs = {"mask": mask}
        options = {k: v for k, v in dict(smoothing=smoothing, min_island_mm3=min_island_mm3).items()
                   if v is not None}
        params = sm.MeshMaskParams(**_path_fields(inputs), labels=list(labels), decimation=decimation,
                                   coordinate_system=coordinate_system, format=fmt,
                                   output_path=output or "", inline=bool(inline),
                                   file_stem=file_stem or "", **options)
        return self._call(self.smoothing.MeshMask, sm.MeshMaskRequest, params, inputs, progress)

    # --- nnunet ----------------------------------------------------------------------

    def segment_total(self, ct: Input, *, output=None, inline=None, progress=None,
                      mode="accurate") -> CallResult:
        inputs = {"ct": ct}
        params = nn.SegmentTotalParams(**_path_fields(inputs), output=output_options(output, inline),
                                       mode=inference_mode(mode))
        return self._call(self.nnunet.SegmentTotal, nn.SegmentTotalRequest, params, inputs, progress)

    def segment_vessels(self, arterial: Input, portal: Input, *, kidney_crop=True, output=None,
                        inline=None, progress=None, mode="accurate") -> CallResult:
        inputs = {"arterial": arterial, "portal": portal}
        params = nn.SegmentVesselsParams(**_path_fields(inputs), disable_kidney_crop=not kidney_crop,
                                         output=output_options(output, inline), mode=inference_mode(mode))
        return self._call(self.nnunet.SegmentVessels, nn.SegmentVesselsRequest, params, inputs, progress)

    def segment_ureter(self, delayed: Input, *, kidney_crop=True, output=None, inline=None,
                       progress=None, mode="accurate") -> CallResult:
        inputs = {"delayed": delayed}
        params = nn.SegmentUreterParams(**_path_fields(inputs), disable_kidney_crop=not kidney_crop,
                                        output=output_options(output, inline), mode=inference_mode(mode))
        return self._call(self.nnunet.SegmentUreter, nn.SegmentUreterRequest, params, inputs, progress)

    def segment_tumor(self, ct: Input, *, kidney_crop=True, output=None, inline=None,
                      progress=None, mode="accurate") -> CallResult:
        inputs = {"ct": ct}
        params = nn.SegmentTumorParams(**_path_fields(inputs), disable_kidney_crop=not kidney_crop,
                                       output=output_options(output, inline), mode=inference_mode(mode))
        return self._call(self.nnunet.SegmentTumor, nn.SegmentTumorRequest, params, inputs, progress)

    def segment_case(self, tasks: list[str], *, arterial: Input = None, portal: Input = None,
                     delayed: Input = None, kidney_crop=True, output_dir=None, inline=None,
                     progress=None, mode="accurate") -> CallResult:
        inputs = {"arterial": arterial, "portal": portal, "delayed": delayed}
        params = nn.SegmentCaseParams(
            tasks=[nn.Task.Value(f"TASK_{t.upper()}") for t in tasks], **_path_fields(inputs),
            disable_kidney_crop=not kidney_crop, output_dir=output_dir or "", inline=bool(inline),
            mode=inference_mode(mode))
        return self._call(self.nnunet.SegmentCase, nn.SegmentCaseRequest, params, inputs, progress)

    def segment(self, task: str, phases: dict[str, Input], *, kidney_crop=True, output=None,
                inline=None, progress=None, mode="accurate") -> CallResult:
        """Any registry task by name (ListModels lists them); `phases` maps each phase the
        task takes ("portal", ...) to a local image or a Ref."""
        paths = {phase: value.path for phase, value in phases.items() if isinstance(value, Ref)}
        params = nn.SegmentParams(task=task, phase_paths=paths, disable_kidney_crop=not kidney_crop,
                                  output=output_options(output, inline), mode=inference_mode(mode))
        return self._call(self.nnunet.Segment, nn.SegmentRequest, params, phases, progress)

    def list_models(self) -> nn.ListModelsResponse:
        return self._retrying(True, lambda: self.nnunet.ListModels(nn.ListModelsRequest(),
                                                                  timeout=self.timeout or 10))

    # --- health ----------------------------------------------------------------------

    def status(self, timeout: float = 5.0) -> dict[str, str]:
        """Readiness of each service as seen through the gateway: SERVING, NOT_SERVING,
        or the error that prevented the check."""
        stub = health_pb2_grpc.HealthStub(self.channel)
        states = {}
        for short, full in addresses.SERVICE_NAMES.items():
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=full), timeout=timeout,
                                   metadata=[(addresses.HEALTH_ROUTE_HEADER, short)])
                states[short] = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
            except grpc.RpcError as exc:
                states[short] = f"{exc.code().name}: {exc.details()}"
        return states
