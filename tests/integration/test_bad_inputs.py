"""The bad-input catalogue (issue 15): every case goes through the gateway, inline and by
reference where both apply, and must be answered with

- the right status code, and a message naming the input (request field or inline role)
  and the reason;
- for INVALID_ARGUMENT, a google.rpc.BadRequest detail whose field path the message names;
- no server filesystem path in the message (neither the data root nor a temporary folder);
- no output file, and no partial one, left behind;
- and the server answering the next call.

Cheap targets: postprocess Measure (inline) and smoothing MeshMask (by reference, with an
output path, so a failure that wrote anything would show).
"""
from __future__ import annotations

import gzip
import os
import struct
import threading
import time
from pathlib import Path

import grpc
import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from medseg import codec
from medseg.client import CHANNEL_OPTIONS, Client, Ref
from medseg.postprocess.v1 import postprocess_pb2 as pp
from medseg.postprocess.v1 import postprocess_pb2_grpc
from medseg.smoothing.v1 import smoothing_pb2 as sm
from medseg.smoothing.v1 import smoothing_pb2_grpc
from medseg.volume.v1 import volume_pb2 as vpb
from medseg.volumes import Volume, read_volume, write_volume

pytestmark = pytest.mark.integration

OK = grpc.StatusCode.OK
INVALID = grpc.StatusCode.INVALID_ARGUMENT
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
DENIED = grpc.StatusCode.PERMISSION_DENIED
NOT_FOUND = grpc.StatusCode.NOT_FOUND
SPACING = (0.8, 0.9, 1.5)


@pytest.fixture(autouse=True)
def _needs_services(stack):
    missing = {"postprocess", "smoothing"} - set(stack.services)
    if missing:
        pytest.skip(f"{sorted(missing)} not started")


# --- NIfTI files, built byte by byte ------------------------------------------------------

def _mask_xyz(dtype=np.uint8, shape=(16, 14, 12)) -> np.ndarray:
    a = np.zeros(shape, dtype)
    a[4:10, 3:9, 2:8] = 1
    a[6:8, 5:7, 4:6] = 2
    return a


def _nifti(array_xyz: np.ndarray, big_endian: bool = False) -> bytes:
    affine = np.diag(list(SPACING) + [1.0])
    affine[:3, 3] = (-10, 20, 30)
    image = nib.Nifti1Image(array_xyz, affine)
    image.set_sform(affine, 1)
    image.set_qform(affine, 1)
    if big_endian:
        header = image.header.as_byteswapped(">")
        image = nib.Nifti1Image(array_xyz.astype(array_xyz.dtype.newbyteorder(">")), affine, header=header)
    return image.to_bytes()


BASE = _nifti(_mask_xyz())


def _patch(data: bytes, offset: int, fmt: str, *values) -> bytes:
    out = bytearray(data)
    struct.pack_into("<" + fmt, out, offset, *values)
    return bytes(out)


def _dims(data: bytes, *dims: int) -> bytes:
    return _patch(data, 40, "8h", *(list(dims) + [1] * (8 - len(dims))))


def _pixdim(index: int, value: float) -> bytes:
    return _patch(BASE, 76 + 4 * index, "f", value)


def _noisy_gzip_truncated() -> bytes:
    rng = np.random.default_rng(3)
    data = gzip.compress(_nifti(rng.integers(0, 3, size=(32, 32, 24), dtype=np.uint8)))
    return data[: len(data) * 3 // 4]


def _gzip_bomb() -> bytes:
    """A valid small image followed by 64 MiB of zeros: ~64 KiB compressed."""
    return gzip.compress(BASE + bytes(64 << 20), compresslevel=1)


def _huge_header_gzip() -> bytes:
    """A header declaring 2048 x 2048 x 1024 uint8 voxels (4 GiB), a little data after it."""
    return gzip.compress(_dims(BASE, 3, 2048, 2048, 1024) + bytes(1 << 20), compresslevel=1)


# name -> (file name suffix, bytes builder, expected inline, expected by ref, message words)
# An expected value is a status code; words are lower-case substrings of the message.
NIFTI_CASES = {
    "byte-swapped (big-endian) header and data": (".nii", lambda: _nifti(_mask_xyz(np.int16), big_endian=True), OK, OK, []),
    "dim[0] = 0": (".nii", lambda: _patch(BASE, 40, "h", 0), INVALID, INVALID, ["dim[0] = 0"]),
    "dim[0] = 9": (".nii", lambda: _patch(BASE, 40, "h", 9), INVALID, INVALID, ["dim[0] = 9"]),
    "negative dimension": (".nii", lambda: _dims(BASE, 3, 16, -14, 12), INVALID, INVALID, ["dimensions"]),
    "dimension over 16384": (".nii", lambda: _dims(BASE, 3, 20000, 14, 12), INVALID, INVALID, ["out of range"]),
    "negative pixdim": (".nii", lambda: _pixdim(1, -0.8), INVALID, INVALID, ["pixdim", "positive"]),
    "zero pixdim": (".nii", lambda: _pixdim(2, 0.0), INVALID, INVALID, ["pixdim", "positive"]),
    "NaN pixdim": (".nii", lambda: _pixdim(3, float("nan")), INVALID, INVALID, ["pixdim", "nan"]),
    "infinite pixdim": (".nii", lambda: _pixdim(1, float("inf")), INVALID, INVALID, ["pixdim", "inf"]),
    "dimensions claiming more data than the file holds": (
        ".nii", lambda: _dims(BASE, 3, 16, 14, 48), INVALID, INVALID, ["truncated", "declares"]),
    "dimensions claiming more data (gzip)": (
        ".nii.gz", lambda: gzip.compress(_dims(BASE, 3, 16, 14, 48)), INVALID, INVALID, ["truncated"]),
    "degenerate sform, no qform": (
        ".nii", lambda: _patch(_patch(BASE, 280, "4f", 0, 0, 0, -10), 252, "hh", 0, 1),
        INVALID, INVALID, ["orthonormal"]),
    "truncated data": (".nii", lambda: BASE[:-100], INVALID, INVALID, ["truncated"]),
    "truncated gzip": (".nii.gz", _noisy_gzip_truncated, INVALID, INVALID, ["truncated"]),
    ".gz that is not gzip": (".nii.gz", lambda: b"this is not gzip data\n" * 20, INVALID, INVALID, ["not a nifti"]),
    "gzip bomb (64 MiB of zeros after a small image)": (".nii.gz", _gzip_bomb, INVALID, INVALID, ["gzip bomb"]),
    "gzip header declaring 4 GiB": (".nii.gz", _huge_header_gzip, EXHAUSTED, EXHAUSTED, ["limit"]),
    "4D (two volumes)": (".nii", lambda: _dims(BASE, 4, 16, 14, 12, 2) + BASE[352:], INVALID, INVALID,
                         ["more than 3 dimensions"]),
    "NIfTI-2": (".nii", lambda: nib.Nifti2Image(_mask_xyz(), np.eye(4)).to_bytes(), INVALID, INVALID, ["nifti-2"]),
    "2D": (".nii", lambda: _dims(BASE, 2, 16, 14), INVALID, INVALID, ["2d", "3d volume is required"]),
    "RGB": (".nii", lambda: _patch(BASE, 70, "hh", 128, 24) + BASE[352:] * 2, INVALID, INVALID, ["rgb"]),
    "complex voxels": (".nii", lambda: _patch(BASE, 70, "hh", 32, 64), INVALID, INVALID, ["complex"]),
    "float64 mask": (".nii", lambda: _nifti(_mask_xyz(np.float64)), INVALID, INVALID, ["float64", "integer"]),
    "empty file": (".nii.gz", lambda: b"", INVALID, INVALID, ["empty"]),
    "vox_offset inside the header": (".nii", lambda: _patch(BASE, 108, "f", 100.0), INVALID, INVALID, ["vox_offset"]),
    "ANALYZE-style .hdr/.img pair header": (".nii", lambda: _patch(BASE, 344, "4s", b"ni1\x00"), INVALID, INVALID,
                                            [".hdr/.img pair"]),
    "a text file": (".nii", lambda: b"patient notes\n", INVALID, INVALID, ["not a nifti"]),
}


# --- calls -------------------------------------------------------------------------------

class Answer:
    def __init__(self, code, message="", fields=(), result=None):
        self.code, self.message, self.fields, self.result = code, message, list(fields), result

    def __repr__(self):
        return f"{self.code.name} {self.message!r} fields={self.fields}"


def _answer(responses) -> Answer:
    result = None
    try:
        for response in responses:
            if response.WhichOneof("payload") == "result":
                result = response.result
    except grpc.RpcError as exc:
        fields = []
        status = rpc_status.from_call(exc)
        for detail in status.details if status else ():
            if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                fields += [v.field for v in bad.field_violations]
        return Answer(exc.code(), exc.details() or "", fields)
    return Answer(OK, result=result)


def _measure(stack, requests, timeout=60, options=CHANNEL_OPTIONS) -> Answer:
    with grpc.insecure_channel(stack.gateway, options=options) as channel:
        stub = postprocess_pb2_grpc.PostprocessServiceStub(channel)
        return _answer(stub.Measure(iter(requests), timeout=timeout))


def _mesh(stack, requests, timeout=60) -> Answer:
    with grpc.insecure_channel(stack.gateway, options=CHANNEL_OPTIONS) as channel:
        stub = smoothing_pb2_grpc.SmoothingServiceStub(channel)
        return _answer(stub.MeshMask(iter(requests), timeout=timeout))


def _measure_inline(*chunks, params=None) -> list:
    return [pp.MeasureRequest(params=params or pp.MeasureParams())] + [pp.MeasureRequest(chunk=c) for c in chunks]


def _nifti_chunks(data: bytes, role: str = "mask") -> list:
    header = vpb.VolumeHeader(role=role, encoding=vpb.VOLUME_ENCODING_NIFTI, total_bytes=len(data))
    return [vpb.VolumeChunk(header=header)] + [
        vpb.VolumeChunk(data=data[i:i + codec.CHUNK_SIZE]) for i in range(0, len(data), codec.CHUNK_SIZE)]


def _mesh_by_ref(path: str, output: str = "") -> list:
    return [sm.MeshMaskRequest(params=sm.MeshMaskParams(mask_path=path, output_path=output))]


def _small_volume() -> Volume:
    return Volume(np.ascontiguousarray(_mask_xyz().transpose(2, 1, 0)), SPACING)


def _raw_chunks(role="mask", **header_fields) -> list:
    chunks = list(codec.volume_chunks(_small_volume(), role))
    for name, value in header_fields.items():
        field = getattr(chunks[0].header, name)
        if isinstance(value, list):
            del field[:]
            field.extend(value)
        else:
            setattr(chunks[0].header, name, value)
    return chunks


def _partial_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if ".partial" in p.name]


def _assert_answer(stack, answer: Answer, expected, words, names=("mask",), given: str = ""):
    """The checks every case shares (see the module docstring)."""
    assert answer.code == expected, answer
    message = answer.message
    low = message.lower()
    for word in words:
        assert word.lower() in low, f"{answer} does not say {word!r}"
    if expected is not OK:
        assert any(name in message for name in names), f"{answer} names none of {names}"
    if expected is INVALID:
        assert answer.fields, f"{answer}: no BadRequest field violation"
        assert all(answer.fields), answer
        assert answer.fields[0] in message, f"{answer}: the message does not name its field"
    root = str(stack.data_root)
    for leak in {root, str(Path(root).resolve()), "/tmp/", "medseg-nifti"}:
        if leak in given:
            continue
        assert leak not in message, f"{answer} shows the server path {leak!r}"
    assert not _partial_files(stack.data_root)


def _assert_next_call_works(stack):
    with Client(stack.gateway, timeout=60) as client:
        out = client.measure(_small_volume())
    assert [m.voxel_count for m in out.result.labels] == [208, 8]


# --- NIfTI cases: inline (Measure) and by reference (MeshMask writing beside it) -------------

@pytest.mark.parametrize("mode", ["inline", "by-ref"])
@pytest.mark.parametrize("case", list(NIFTI_CASES))
def test_nifti_case(stack, case, mode):
    suffix, build, expected_inline, expected_ref, words = NIFTI_CASES[case]
    data = build()
    if mode == "inline":
        answer = _measure(stack, _measure_inline(*_nifti_chunks(data)))
        _assert_answer(stack, answer, expected_inline, words)
        if expected_inline is OK:
            assert [m.voxel_count for m in answer.result.labels] == [208, 8]
    else:
        slug = "".join(c if c.isalnum() else "_" for c in case)[:60]
        relative = f"bad/{slug}{suffix}"
        (stack.data_root / "bad").mkdir(exist_ok=True)
        (stack.data_root / relative).write_bytes(data)
        output = f"bad/out/{slug}.obj"
        answer = _mesh(stack, _mesh_by_ref(relative, output))
        _assert_answer(stack, answer, expected_ref, words, names=("mask_path",))
        if expected_ref is not OK:
            assert relative in answer.message, answer
            assert not (stack.data_root / output).exists()
            assert not (stack.data_root / output).with_suffix(".mtl").exists()
    _assert_next_call_works(stack)


def test_float64_ct_is_accepted_inline_and_by_reference(stack):
    """A float64 CT is a valid CT: AddFat takes it (inline and by path) like an int16 one."""
    from medseg.phantom import make_phantom

    files = make_phantom(size=(48, 48, 32), seed=5).write(stack.data_root / "f64")
    portal = read_volume(files["portal"])
    ct64 = portal.with_array(portal.array.astype(np.float64))
    write_volume(ct64, stack.data_root / "f64" / "portal64.nii.gz")
    with Client(stack.gateway, timeout=120) as client:
        inline = client.add_fat(read_volume(files["labels"]), read_volume(files["organs"]), ct64, inline=True)
        by_ref = client.add_fat(Ref("f64/labels.nii.gz"), Ref("f64/organs.nii.gz"), Ref("f64/portal64.nii.gz"),
                                output="f64/out/fat.nii.gz")
    assert inline.result.used_ct and by_ref.result.used_ct
    assert inline.result.fat_volume_ml == pytest.approx(by_ref.result.fat_volume_ml)
    _assert_next_call_works(stack)


# --- stream cases (inline only) -----------------------------------------------------------

def _stream_cases():
    small = _raw_chunks()
    header, data = small[0], small[1]
    nbytes = len(data.data)
    more = vpb.VolumeChunk(data=data.data + b"\x00" * 10)
    fewer = vpb.VolumeChunk(data=data.data[:-10])
    params = pp.MeasureRequest(params=pp.MeasureParams())
    return {
        # name -> (requests, expected code, words, expected field)
        "chunk before params": ([pp.MeasureRequest(chunk=header), params, pp.MeasureRequest(chunk=data)],
                                INVALID, ["first message"], "params"),
        "params twice": ([params, params] + [pp.MeasureRequest(chunk=c) for c in small], INVALID, ["twice"], "params"),
        "empty request message": ([params, pp.MeasureRequest()], INVALID, ["empty request"], "payload"),
        "empty volume chunk": (_measure_inline(vpb.VolumeChunk()), INVALID, ["empty volume chunk"], "chunk.part"),
        "data without a header": (_measure_inline(data), INVALID, ["before any volume header"], "chunk.data"),
        "more bytes than declared": (_measure_inline(header, more), INVALID, ["more data", str(nbytes)], "chunk.data"),
        "fewer bytes than declared": (_measure_inline(header, fewer), INVALID, ["truncated"], "chunk.data"),
        "a second header before the first volume is complete": (
            _measure_inline(header, fewer, header, data), INVALID, ["truncated"], "chunk.data"),
        "unknown role": (_measure_inline(*_raw_chunks("tumour")), INVALID, ["role 'mask'", "['tumour']"],
                         "params.mask_path"),
        "unknown role beside the mask": (_measure_inline(*small, *_raw_chunks("tumour")), INVALID,
                                         ["unexpected inline volume", "tumour"], "chunk.header.role"),
        "empty role": (_measure_inline(*_raw_chunks("")), INVALID, ["role is empty"], "chunk.header.role"),
        "role twice": (_measure_inline(*small, *small), INVALID, ["sent twice"], "chunk.header.role"),
        "no mask at all": (_measure_inline(), INVALID, ["missing"], "params.mask_path"),
        "mask both by path and inline": (
            _measure_inline(*small, params=pp.MeasureParams(mask_path="x.nii.gz")), INVALID, ["both"],
            "params.mask_path"),
        "unknown encoding": (_measure_inline(*_raw_chunks(encoding=7)), INVALID, ["unknown encoding"],
                             "chunk.header.encoding"),
        "NIfTI encoding with total_bytes 0": (_measure_inline(vpb.VolumeChunk(header=vpb.VolumeHeader(
            role="mask", encoding=vpb.VOLUME_ENCODING_NIFTI))), INVALID, ["total_bytes is 0"], "chunk.header.total_bytes"),
        "size with 2 values": (_measure_inline(*_raw_chunks(size=[16, 14])), INVALID, ["3 values"], "chunk.header.size"),
        "total_bytes not size x voxel type": (_measure_inline(*_raw_chunks(total_bytes=100)), INVALID,
                                              ["total_bytes 100"], "chunk.header.total_bytes"),
        "zero spacing": (_measure_inline(*_raw_chunks(spacing=[0.8, 0.0, 1.5])), INVALID, ["positive"],
                         "chunk.header.spacing"),
        "NaN origin": (_measure_inline(*_raw_chunks(origin=[0.0, float("nan"), 0.0])), INVALID, ["finite"],
                       "chunk.header.origin"),
        "direction not orthonormal": (_measure_inline(*_raw_chunks(direction=[1, 0, 0, 1, 0, 0, 0, 0, 1])), INVALID,
                                      ["orthonormal"], "chunk.header.direction"),
        "voxel type unspecified": (_measure_inline(*_raw_chunks(voxel_type=0)), INVALID, ["voxel_type"],
                                   "chunk.header.voxel_type"),
        "float32 mask (RAW)": (_measure_inline(*codec.volume_chunks(
            _small_volume().with_array(_small_volume().array.astype(np.float32)), "mask")), INVALID,
            ["float32", "integer"], "chunk.header.voxel_type"),
        "size over the byte limit": (_measure_inline(*_raw_chunks(size=[4096, 4096, 4096], total_bytes=4096 ** 3)),
                                     EXHAUSTED, ["limit"], None),
        "sha256 mismatch": (_measure_inline(*_raw_chunks(sha256="0" * 64)), grpc.StatusCode.DATA_LOSS,
                            ["sha256", "does not match"], None),
    }


STREAM_CASES = list(_stream_cases())


@pytest.mark.parametrize("case", STREAM_CASES)
def test_stream_case(stack, case):
    requests, expected, words, field = _stream_cases()[case]
    answer = _measure(stack, requests)
    _assert_answer(stack, answer, expected, words, names=("mask", "params", "payload", "chunk", "tumour", "volume"))
    if field is not None:
        assert answer.fields == [field], answer
    _assert_next_call_works(stack)


def test_message_over_the_size_limit(stack):
    """A 9 MiB chunk (the limit is 8 MiB) is refused by the server's gRPC layer."""
    size = 9 << 20
    header = vpb.VolumeHeader(role="mask", encoding=vpb.VOLUME_ENCODING_RAW, size=[size, 1, 1],
                              spacing=[1, 1, 1], origin=[0, 0, 0], voxel_type=vpb.VOXEL_TYPE_UINT8,
                              total_bytes=size)
    options = [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)]
    answer = _measure(stack, _measure_inline(vpb.VolumeChunk(header=header)), options=options)
    assert answer.code is INVALID  # size[0] over 16384: the header alone is refused
    answer = _measure(stack, _measure_inline(vpb.VolumeChunk(header=vpb.VolumeHeader(
        role="mask", encoding=vpb.VOLUME_ENCODING_NIFTI, total_bytes=size)), vpb.VolumeChunk(data=bytes(size))),
        options=options)
    assert answer.code is EXHAUSTED, answer
    assert "larger than max" in answer.message.lower(), answer
    _assert_next_call_works(stack)


def test_client_cancelling_mid_upload(stack):
    """The client cancels after sending part of a 64 MiB volume: CANCELLED, and the server
    answers the next call at once."""
    gate = threading.Event()
    volume = Volume(np.zeros((64, 1024, 1024), np.uint8), (1.0, 1.0, 1.0))
    chunks = codec.volume_chunks(volume, "mask")

    def requests():
        yield pp.MeasureRequest(params=pp.MeasureParams())
        for n, chunk in enumerate(chunks):
            if n == 8:
                gate.set()
                time.sleep(30)  # never finishes: the call is cancelled meanwhile
            yield pp.MeasureRequest(chunk=chunk)

    with grpc.insecure_channel(stack.gateway, options=CHANNEL_OPTIONS) as channel:
        stub = postprocess_pb2_grpc.PostprocessServiceStub(channel)
        call = stub.Measure(requests(), timeout=60)
        threading.Thread(target=lambda: (gate.wait(20), call.cancel()), daemon=True).start()
        answer = _answer(call)
    assert answer.code is grpc.StatusCode.CANCELLED, answer
    start = time.monotonic()
    _assert_next_call_works(stack)
    assert time.monotonic() - start < 10


def _many_labels_mask(side: int = 288) -> Volume:
    """A mask whose meshing takes a few seconds: six large balls, one per structure (the
    meshing checks for cancellation between structures)."""
    mask = np.zeros((side,) * 3, np.uint8)
    z, y, x = np.ogrid[:side, :side, :side]
    for label in range(1, 7):
        centre = side * (0.25 + 0.5 * ((label * 37) % 10) / 10)
        mask[(x - centre) ** 2 + (y - side / 2) ** 2 + (z - side / 2) ** 2 < (side / 6) ** 2] = label
    return Volume(mask, (0.8, 0.8, 0.8))


def test_deadline_expiring_mid_compute_frees_the_worker(stack):
    """MeshMask with a deadline shorter than its compute: DEADLINE_EXCEEDED, no output file,
    and the (single) smoothing worker is free again well before the meshing would have
    ended."""
    write_volume(_many_labels_mask(), stack.data_root / "deadline" / "mask.nii.gz")

    def slow_mesh(output: str) -> list:
        # Flying edges (label by label) with decimation keeps the compute long on any machine
        # (surface nets with decimation took 0.8 s), so a third of it is still far longer
        # than a call's overhead.
        return [sm.MeshMaskRequest(params=sm.MeshMaskParams(mask_path="deadline/mask.nii.gz",
                                                            output_path=output, decimation=0.5,
                                                            method=sm.MESH_METHOD_FLYING_EDGES))]

    with Client(stack.gateway, timeout=300) as client:
        start = time.monotonic()
        client.mesh(_small_volume(), inline=True)
        small_seconds = time.monotonic() - start
    start = time.monotonic()
    measured = _mesh(stack, slow_mesh("deadline/measured/model.obj"), timeout=300)
    full_seconds = time.monotonic() - start
    assert measured.code is grpc.StatusCode.OK, measured
    assert full_seconds > 2 * small_seconds + 1.0, (full_seconds, small_seconds)
    deadline = full_seconds / 3
    answer = _mesh(stack, slow_mesh("deadline/out/model.obj"), timeout=deadline)
    assert answer.code is grpc.StatusCode.DEADLINE_EXCEEDED, answer
    start = time.monotonic()
    with Client(stack.gateway, timeout=60) as client:
        out = client.mesh(_small_volume(), inline=True)
    assert out.files
    waited = time.monotonic() - start
    assert waited < full_seconds * 0.75, (waited, full_seconds)
    time.sleep(max(0.0, full_seconds - waited))  # long enough for a runaway job to have written
    assert not (stack.data_root / "deadline" / "out").exists()
    assert not _partial_files(stack.data_root)


# --- path cases (by reference only) --------------------------------------------------------

def _dicom_slice(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((12, 14), np.int16)), str(path))


def _path_setup(root: Path) -> dict:
    """Files and links the path cases use; returns name -> (mask_path, output_path, code, words)."""
    (root / "paths").mkdir(exist_ok=True)
    write_volume(_small_volume(), root / "paths" / "mask.nii.gz")
    escape = root / "paths" / "escape.nii.gz"
    if not escape.is_symlink():
        escape.symlink_to("/etc/passwd")
    loop = root / "paths" / "loop.nii.gz"
    if not loop.is_symlink():
        loop.symlink_to(loop)
    (root / "paths" / "nodicom").mkdir(exist_ok=True)
    (root / "paths" / "nodicom" / "readme.txt").write_text("no images here")
    (root / "paths" / "empty").mkdir(exist_ok=True)
    _dicom_slice(root / "paths" / "series" / "slice0001.dcm")
    outside = os.path.relpath("/etc/passwd", root)
    ok = "paths/mask.nii.gz"
    return {
        "'..' out of the root": (outside, "", DENIED, ["outside the data root"]),
        "'..' inside the path, landing outside": ("paths/../../../../../../etc/passwd", "", DENIED, ["outside"]),
        "absolute path outside the root": ("/etc/passwd", "", DENIED, ["outside the data root"]),
        "absolute path inside the root": (str(root / ok), "paths/out/abs.obj", OK, []),
        "symlink out of the root": ("paths/escape.nii.gz", "", DENIED, ["outside the data root"]),
        "symlink loop": ("paths/loop.nii.gz", "", INVALID, ["cannot be resolved"]),
        "NUL byte": ("paths/mask.nii.gz\x00.txt", "", INVALID, ["nul byte"]),
        "over-long path": ("paths/" + "a/" * 2500 + "mask.nii.gz", "", INVALID, ["bytes long"]),
        "over-long file name": ("paths/" + "m" * 300 + ".nii.gz", "", INVALID, ["longer than 255"]),
        "missing file": ("paths/nowhere.nii.gz", "", NOT_FOUND, ["does not exist"]),
        "a directory where a file is expected": ("paths/nodicom", "", INVALID, ["no dicom series"]),
        "an empty directory": ("paths/empty", "", INVALID, ["empty folder"]),
        "a DICOM file where the series folder is expected": (
            "paths/series/slice0001.dcm", "", INVALID, ["single dicom file", "folder"]),
        "output path is a folder": (ok, "paths/empty", INVALID, ["is a folder"]),
        "output path under a file": (ok, "paths/mask.nii.gz/model.obj", INVALID, ["is a file"]),
        "output path outside the root": (ok, "../outside.obj", DENIED, ["outside the data root"]),
        "output path with a NUL byte": (ok, "paths/out/m\x00.obj", INVALID, ["nul byte"]),
    }


PATH_CASES = ["'..' out of the root", "'..' inside the path, landing outside", "absolute path outside the root",
              "absolute path inside the root", "symlink out of the root", "symlink loop", "NUL byte",
              "over-long path", "over-long file name", "missing file", "a directory where a file is expected",
              "an empty directory", "a DICOM file where the series folder is expected", "output path is a folder",
              "output path under a file", "output path outside the root", "output path with a NUL byte"]


@pytest.mark.parametrize("case", PATH_CASES)
def test_path_case(stack, case):
    mask_path, output, expected, words = _path_setup(stack.data_root)[case]
    answer = _mesh(stack, _mesh_by_ref(mask_path, output))
    field = "params.output_path" if output and mask_path == "paths/mask.nii.gz" else "params.mask_path"
    _assert_answer(stack, answer, expected, words, names=(field,), given=mask_path)
    if expected is INVALID:
        assert answer.fields == [field], answer
    if expected is OK:
        assert (stack.data_root / output).exists() and (stack.data_root / output).with_suffix(".mtl").exists()
    else:
        assert len(answer.message) < 400, answer
        assert not list((stack.data_root / "paths").glob("*.obj"))
    _assert_next_call_works(stack)
