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
from medseg.serving.config import ServerConfig
from medseg.serving.errors import FieldError
from medseg.serving.paths import DataRoot
from medseg.summary import summarize_labels
from medseg.serving.work import WorkQueue
from medseg.volume.v1 import volume_pb2 as pb
from medseg.volumes import Volume, atomic_write, read_volume, write_volume

_NIFTI_SUFFIXES = (".nii", ".nii.gz")


def read_checked(path: Path, max_bytes: int, field: str) -> Volume:
    """Read a volume file or DICOM folder, checking a NIfTI header before decoding."""
    if path.name.endswith(_NIFTI_SUFFIXES):
        codec.check_nifti_header(read_nifti_header_of_file(path), max_bytes, field)
    try:
        return read_volume(path)
    except RuntimeError as exc:  # SimpleITK reports unreadable files as RuntimeError
        last = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unreadable"
        raise FieldError(field, f"cannot read '{path.name}': {last}") from None
    except ValueError as exc:
        raise FieldError(field, str(exc)) from None


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
                    assembler.add(request.chunk)
                else:
                    raise FieldError("payload", "empty request message")
            if params is None:
                raise FieldError("params", "missing: the stream held no params message")
            for item in assembler.finish():
                if item.role in self.inline:
                    raise FieldError("chunk.header.role", f"volume '{item.role}' sent twice")
                self.inline[item.role] = item
        return params

    def has_input(self, role: str, path: str) -> bool:
        return bool(path) or role in self.inline

    def load(self, role: str, path: str, field: str | None = None) -> Volume:
        """The input `role` from its path under the data root, or from the inline stream.
        Each load is one read, recorded as one `received` digest."""
        field = field or f"{role}_path"
        if path and role in self.inline:
            raise FieldError(field, f"given both as a path and inline; send '{role}' once")
        if path:
            with self.timed(f"read {role}"):
                file = self.root.input(field, path)
                volume = read_checked(file, self.config.max_volume_bytes, field)
            self.input_paths.append(file)
            self.received.append(pb.Digest(role=role, path=self.root.relative(file),
                                           sha256=volume.sha256(), bytes=volume.array.nbytes))
            return volume
        if role not in self.inline:
            raise FieldError(field, f"missing: give a path or send an inline volume with role '{role}'")
        item = self.inline[role]
        self.received.append(pb.Digest(role=role, sha256=item.sha256, bytes=item.nbytes))
        return item.volume

    def load_mask(self, role: str, path: str, field: str | None = None) -> Volume:
        """Like load, for label masks: the voxel type must be an integer type."""
        field = field or f"{role}_path"
        volume = self.load(role, path, field)
        if volume.array.dtype.kind not in "ui":
            raise FieldError(field if path else f"inline volume '{role}'", f"'{role}' must be a label mask with an integer voxel type, "
                                    f"got {volume.array.dtype}")
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
            return job.result()

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
                field: str = "output.path"):
        """Write the volume under the data root and/or stream it inline, as asked.
        Returns (via `yield from`) the OutputVolume describing where it went."""
        path = output.path or ("" if self.wants_inline(output) else self.default_output(suffix))
        digest = volume.sha256()
        written = ""
        if path:
            with self.timed(f"write {role}"):
                target = self.root.output(field, path)
                write_volume(volume, target)
            written = self.root.relative(target)
            self.sent.append(pb.Digest(role=role, path=written, sha256=digest,
                                       bytes=volume.array.nbytes))
        if self.wants_inline(output):
            with self.timed(f"send {role}"):
                for chunk in codec.volume_chunks(volume, role, digest=digest):
                    yield self.response_cls(**{self.chunk_field: chunk})
            self.sent.append(pb.Digest(role=role, sha256=digest, bytes=volume.array.nbytes))
        return pb.OutputVolume(role=role, path=written, labels=summarize(volume))

    def deliver_files(self, encode, path: str, inline: bool, field: str = "params.output_path"):
        """Files made by `encode(stem) -> {name: bytes}` (the first is the main file, e.g.
        model.obj before model.mtl): written atomically under the data root beside `path`
        and/or streamed inline as FileChunks, as asked. Returns (via `yield from`) the paths
        written, relative to the data root."""
        target = self.root.output(field, path) if path else None
        files = encode(target.name.removesuffix(target.suffix) if target else "mesh")
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
        return pb.ResultInfo(received=self.received, sent=self.sent, timings=self.timings)
