"""One streaming call, from request stream to result: the parts every servicer shares.

    call = StreamingCall(context, config, MeasureResponse)
    params = call.receive(request_iterator)            # params + inline volumes
    mask = call.load("mask", params.mask_path)          # by path or inline, digested
    result = yield from call.run(queue, work)           # progress streamed while it works
    output = yield from call.deliver(volume, "mask", params.output, "measure")
    yield MeasureResponse(result=MeasureResult(..., info=call.info()))

Files other than volumes (meshes) go out through `call.deliver_files` the same way.
"""
from __future__ import annotations

import hashlib
import time
from contextlib import contextmanager
from pathlib import Path

import grpc

from medseg import codec
from medseg.codec import VolumeAssembler, read_nifti_header_of_file
from medseg.serving import metrics
from medseg.serving.config import ServerConfig
from medseg.serving.errors import FieldError, Unsupported
from medseg.serving.paths import DataRoot
from medseg.summary import summarize_labels
from medseg.serving.work import WorkQueue
from medseg.volume.v1 import volume_pb2 as pb
from medseg.volumes import Volume, atomic_write, read_volume, write_volume

_NIFTI_SUFFIXES = (".nii", ".nii.gz")


def read_checked(path: Path, max_bytes: int, field: str, given: str | None = None,
                 dicom: pb.DicomSelection | None = None, notes: list[str] | None = None,
                 reads: list | None = None) -> Volume:
    """Read a volume file or DICOM folder, checking a NIfTI header before decoding. Errors
    name the request field and the path as the client gave it (`given`), never the
    server's own path. `dicom`: series choice and QC options for DICOM inputs; what their
    QC tolerated is appended to `notes`, the medseg.dicom.DicomRead itself to `reads`."""
    given = path.name if given is None else given
    from medseg.dicom.errors import DicomError

    def bad(reason: str) -> FieldError:
        return FieldError(field, f"'{given}': {reason}")

    try:
        if path.is_dir():
            if not any(path.iterdir()):
                raise bad("is an empty folder, expected a volume file or a DICOM series folder")
        elif path.name.endswith(_NIFTI_SUFFIXES):
            header = read_nifti_header_of_file(path)
            with path.open("rb") as f:
                gzipped = f.read(2) == b"\x1f\x8b"
            codec.check_nifti_header(header, max_bytes, "",
                                     available=None if gzipped else path.stat().st_size)
            if gzipped:
                codec.check_nifti_gzip_file(path, header)
        from medseg.dicom import looks_like_dicom_source, read_dicom

        if looks_like_dicom_source(path):  # folder, DICOMDIR, zip, file: found and checked by medseg.dicom
            read = read_dicom(path, series_uid=tuple(dicom.series_uids) if dicom else (),
                              allow_non_ct=bool(dicom and dicom.allow_non_ct), max_bytes=max_bytes)
            if notes is not None:
                notes.extend(f"'{given}': {note}" for note in read.notes)
            if reads is not None:
                reads.append(read)
            return read.volume
        return read_volume(path)
    except FieldError:
        raise
    except DicomError as exc:
        if exc.field == "series_uid" and dicom is not None:  # the choice, not the path, is wrong
            raise FieldError(f"{field.rsplit('.', 1)[0]}.dicom.series_uids", f"'{given}': {exc.reason}") from None
        raise bad(exc.reason) from None
    except codec.VolumeError as exc:
        raise bad(exc.reason) from None
    except codec.VolumeTooLarge as exc:
        raise codec.VolumeTooLarge(f"{field}: '{given}': {exc}") from None
    except FileNotFoundError:  # a folder holding no DICOM series (the path itself exists)
        raise bad("is a folder with no DICOM series in it, expected a volume file or a DICOM "
                  "series folder") from None
    except RuntimeError as exc:  # SimpleITK reports unreadable files as RuntimeError
        raise bad(f"cannot be read as an image ({codec.readable_itk_error(exc, path)})") from None
    except IsADirectoryError:
        raise bad("is a folder, expected a file") from None
    except PermissionError:
        raise PermissionError(f"{field}: '{given}': the server is not allowed to read it") from None
    except OSError as exc:
        raise bad(f"cannot be read ({exc.strerror or exc.__class__.__name__})") from None
    except ValueError as exc:
        raise bad(str(exc)) from None


@contextmanager
def _chunk_errors():
    """A malformed inline volume as INVALID_ARGUMENT on its request field, e.g.
    `chunk.header.size: inline volume 'mask': ...`."""
    try:
        yield
    except codec.VolumeError as exc:
        what = f"inline volume '{exc.role}'" if exc.role else "inline volume"
        raise FieldError(f"chunk.{exc.field}", f"{what}: {exc.reason}") from None


def _result_encoding(volume: Volume) -> str:
    """How a compressed inline result travels: masks gzip'd and bit-packed where their
    values allow, anything else gzip'd."""
    return "gzip+packed" if codec.packed_bits(volume.array) else "gzip"


def _is_seg(output: pb.OutputOptions, path: str) -> bool:
    if output.format == pb.OUTPUT_FORMAT_DICOM_SEG:
        return True
    return output.format == pb.OUTPUT_FORMAT_UNSPECIFIED and path.lower().endswith(".dcm")


def _file_digest(name: str, data: bytes, path: str) -> pb.Digest:
    return pb.Digest(role=name, path=path, bytes=len(data), sha256=hashlib.sha256(data).hexdigest())


def summarize(volume: Volume) -> list[pb.LabelSummary]:
    """Per-label voxel count, volume and bounding box of a mask, as carried by results."""
    return [pb.LabelSummary(value=s.value, name=s.name, voxel_count=s.voxel_count, volume_ml=s.volume_ml,
                            bbox=pb.BoundingBox(min_index=s.min_index, max_index=s.max_index,
                                                min_mm=s.min_mm, max_mm=s.max_mm))
            for s in summarize_labels(volume, require_names=False)]


class StreamingCall:
    """State of one bidirectional call: inputs received, digests, timings."""

    def __init__(self, context: grpc.ServicerContext, config: ServerConfig, response_cls,
                 chunk_field: str = "chunk"):
        self.context = context
        self.config = config
        self.root = DataRoot(config.data_root)
        self.response_cls = response_cls
        self.chunk_field = chunk_field
        self.inline: dict[str, codec.ReceivedVolume] = {}
        self.input_paths: list[Path] = []
        self.received: list[pb.Digest] = []
        self.sent: list[pb.Digest] = []
        self.timings: list[pb.Timing] = []
        self.dicom: pb.DicomSelection | None = None
        self.notes: list[str] = []
        self.dicom_reads: list = []

    @contextmanager
    def timed(self, stage: str):
        start = time.perf_counter()
        yield
        self.timings.append(pb.Timing(stage=stage, seconds=time.perf_counter() - start))

    # --- input ----------------------------------------------------------------------

    def receive(self, request_iterator):
        """Read the whole request stream: params first, then inline volume chunks."""
        with self.timed("receive"):
            params = None
            assembler = VolumeAssembler(self.config.max_volume_bytes)
            for request in request_iterator:
                kind = request.WhichOneof("payload")
                if kind == "params":
                    if params is not None:
                        raise FieldError("params", "sent twice; send params once, first")
                    params = request.params
                elif kind == "chunk":
                    if params is None:
                        raise FieldError("params", "must be the first message of the stream")
                    with _chunk_errors():
                        assembler.add(request.chunk)
                else:
                    raise FieldError("payload", "empty request message (neither params nor chunk)")
            if params is None:
                raise FieldError("params", "missing: the stream held no params message")
            with _chunk_errors():
                received = assembler.finish()
            for item in received:
                if item.role in self.inline:
                    raise FieldError("chunk.header.role", f"volume '{item.role}' sent twice")
                self.inline[item.role] = item
        # Requests whose params carry a DicomSelection (`dicom`) apply it to every DICOM input.
        self.dicom = params.dicom if params is not None and "dicom" in params.DESCRIPTOR.fields_by_name else None
        return params

    def has_input(self, role: str, path: str) -> bool:
        return bool(path) or role in self.inline

    def load(self, role: str, path: str, field: str | None = None) -> Volume:
        """The input `role` from its path under the data root, or from the inline stream.
        Each load is one read, recorded as one `received` digest."""
        field = field or f"params.{role}_path"
        if path and role in self.inline:
            raise FieldError(field, f"given both as a path and inline; send '{role}' once")
        if path:
            with self.timed(f"read {role}"):
                file = self.root.input(field, path)
                reads: list = []
                volume = read_checked(file, self.config.max_volume_bytes, field, path, dicom=self.dicom,
                                      notes=self.notes, reads=reads)
                self.dicom_reads.extend(reads)  # sources a DICOM-SEG output may reference
            self.input_paths.append(file)
            self.received.append(pb.Digest(role=role, path=self.root.relative(file),
                                           sha256=volume.sha256(), bytes=volume.array.nbytes))
            return volume
        if role not in self.inline:
            sent = f" (the stream's inline volumes: {sorted(self.inline)})" if self.inline else ""
            raise FieldError(field, f"missing: give a path or send an inline volume with role '{role}'{sent}")
        item = self.inline[role]
        self.received.append(pb.Digest(role=role, sha256=item.sha256, bytes=item.nbytes))
        return item.volume

    def load_mask(self, role: str, path: str, field: str | None = None) -> Volume:
        """Like load, for label masks: the voxel type must be an integer type."""
        field = field or f"params.{role}_path"
        volume = self.load(role, path, field)
        if volume.array.dtype.kind not in "ui":
            raise FieldError(field if path else "chunk.header.voxel_type",
                             f"{f'{path!r}' if path else f'inline volume {role!r}'}: '{role}' must be "
                             f"a label mask with an integer voxel type, got {volume.array.dtype}")
        return volume

    def given(self, params, *names: str) -> dict:
        """The optional fields among `names` the request set, as keyword arguments: unset
        ones are left out so the science function's defaults apply."""
        return {name: getattr(params, name) for name in names if params.HasField(name)}

    def unused_inline(self, used: set[str]) -> None:
        extra = sorted(set(self.inline) - used)
        if extra:
            raise FieldError("chunk.header.role", f"unexpected inline volume(s) {extra}")

    # --- work -----------------------------------------------------------------------

    def run(self, work_queue: WorkQueue, work, stage: str = "compute"):
        """Run `work(progress, cancelled)` on the queue, streaming its progress. Returns
        (via `yield from`) the work's result."""
        job = work_queue.submit(work)
        self.context.add_callback(job.cancel)
        with self.timed(stage):
            for stage_name, fraction, message in job.iter_progress(is_active=self.context.is_active):
                yield self.response_cls(progress=pb.Progress(
                    stage=stage_name, fraction=fraction, message=message))
            try:
                return job.result()
            finally:
                if job.compute_seconds is not None:
                    metrics.COMPUTE.labels(self.config.service, stage).observe(job.compute_seconds)

    def progress(self, stage: str, fraction: float, message: str = ""):
        return self.response_cls(progress=pb.Progress(stage=stage, fraction=fraction, message=message))

    # --- output ---------------------------------------------------------------------

    def wants_inline(self, output: pb.OutputOptions) -> bool:
        return output.inline or (not output.path and bool(self.inline))

    def default_output(self, suffix: str, extension: str = ".nii.gz") -> str:
        """'<stem>_<suffix><extension>' next to the first input read by path."""
        first = self.input_paths[0]
        stem = first.name.split(".")[0] if first.is_file() else first.name
        return self.root.relative(first.parent / f"{stem}_{suffix}{extension}")

    def deliver(self, volume: Volume, role: str, output: pb.OutputOptions, suffix: str,
                field: str = "params.output.path"):
        """Write the volume under the data root and/or stream it inline, as asked.
        Returns (via `yield from`) the OutputVolume describing where it went."""
        path = output.path or ("" if self.wants_inline(output) else self.default_output(suffix))
        digest = volume.sha256()
        written = ""
        if path and _is_seg(output, path):
            with self.timed(f"write {role}"):
                target = self.root.output(field, path)
                data = self._write_seg(volume, target, suffix)
            written = self.root.relative(target)
            self.sent.append(_file_digest(role, data, written))
        elif path:
            with self.timed(f"write {role}"):
                target = self.root.output(field, path)
                write_volume(volume, target)
            written = self.root.relative(target)
            self.sent.append(pb.Digest(role=role, path=written, sha256=digest,
                                       bytes=volume.array.nbytes))
        if self.wants_inline(output):
            with self.timed(f"send {role}"):
                # Compressed (masks also bit-packed) when the request sent compressed volumes
                # or asked for it; raw for clients that never mentioned compression.
                compress = output.compression or any(v.compressed for v in self.inline.values())
                for chunk in codec.volume_chunks(volume, role, digest=digest,
                                                 encoding=_result_encoding(volume) if compress else "raw"):
                    yield self.response_cls(**{self.chunk_field: chunk})
            self.sent.append(pb.Digest(role=role, sha256=digest, bytes=volume.array.nbytes))
        return pb.OutputVolume(role=role, path=written, labels=summarize(volume))

    def _write_seg(self, volume: Volume, target: Path, operation: str) -> bytes:
        """The mask as DICOM-SEG, referencing the DICOM input whose grid it is on (if any)."""
        try:
            from medseg.dicom.seg import write_seg
        except ImportError:
            raise Unsupported("DICOM-SEG output needs highdicom on the server (pip install 'medseg[dicom]')") from None
        source = next((r for r in self.dicom_reads if not r.resampled and r.volume.same_grid(volume, tol=1e-3)), None)
        write_seg(volume, target, read=source, algorithm=f"medseg {operation}")
        return target.read_bytes()

    def deliver_files(self, encode, path: str, inline: bool, field: str = "params.output_path",
                      stem: str = ""):
        """Files made by `encode(stem) -> {name: bytes}` (the first is the main file, e.g.
        model.obj before model.mtl): written atomically under the data root beside `path`
        and/or streamed inline as FileChunks, as asked. Without a path the files are named
        after `stem` (default "mesh"). Returns (via `yield from`) the paths written,
        relative to the data root."""
        target = self.root.output(field, path) if path else None
        files = encode(target.name.removesuffix(target.suffix) if target else (stem or "mesh"))
        written = []
        if target is not None:
            with self.timed("write"):
                for name, data in files.items():
                    file = atomic_write(target.parent / name, lambda tmp, data=data: tmp.write_bytes(data))
                    written.append(self.root.relative(file))
                    self.sent.append(_file_digest(name, data, written[-1]))
        if inline or target is None:
            with self.timed("send"):
                for name, data in files.items():
                    for chunk in codec.file_chunks(name, data):
                        yield self.response_cls(**{self.chunk_field: chunk})
                    self.sent.append(_file_digest(name, data, ""))
        return written

    def info(self) -> pb.ResultInfo:
        return pb.ResultInfo(received=self.received, sent=self.sent, timings=self.timings, notes=self.notes)
