"""Volumes through the gateway: a full-size CT and masks arrive byte-identical with their
geometry, and every kind of bad input gets its own status code and a message naming the
problem, after which the server keeps serving."""
from __future__ import annotations

import gzip
import os
from pathlib import Path

import grpc
import numpy as np
import pytest

from medseg import codec
from medseg.client import CHANNEL_OPTIONS, Client
from medseg.labels import Label
from medseg.postprocess.v1 import postprocess_pb2 as pp
from medseg.postprocess.v1 import postprocess_pb2_grpc
from medseg.volume.v1 import volume_pb2 as vpb
from medseg.volumes import Volume, write_volume

pytestmark = pytest.mark.integration

# A CT-sized grid, with geometry that would show any mix-up: anisotropic spacing, an
# off-centre origin and a flipped (RAS-stored) direction.
FULL_SHAPE_ZYX = (300, 512, 512)
SPACING = (0.7, 0.74, 1.25)
ORIGIN = (180.5, 170.25, -420.0)
DIRECTION = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)


@pytest.fixture(autouse=True)
def _needs_postprocess(stack):
    if "postprocess" not in stack.services:
        pytest.skip("postprocess not started")


def _volume(array: np.ndarray) -> Volume:
    return Volume(array, SPACING, ORIGIN, DIRECTION)


def _artery_mask(shape_zyx) -> np.ndarray:
    """One straight artery tube along z (a single piece: nothing for a repair to bridge)."""
    mask = np.zeros(shape_zyx, np.uint8)
    z, y, x = shape_zyx
    mask[z // 4: 3 * z // 4, y // 2 - 2: y // 2 + 2, x // 2 - 2: x // 2 + 2] = Label.ARTERY
    return mask


def _same_geometry(a: Volume, b: Volume) -> bool:
    return (np.allclose(a.spacing, b.spacing, atol=1e-9) and np.allclose(a.origin, b.origin, atol=1e-9)
            and np.allclose(a.direction, b.direction, atol=1e-9) and a.size == b.size)


def _received(result, role: str) -> vpb.Digest:
    matches = [d for d in result.info.received if d.role == role]
    assert len(matches) == 1, result.info.received
    return matches[0]


@pytest.mark.slow
def test_full_size_ct_and_masks_arrive_identical(stack):
    """AddFat with a 512x512x300 int16 CT, kidney mask and organ mask sent inline: the server
    reports the digests of what it received, and its output comes back on the same grid."""
    rng = np.random.default_rng(7)
    ct = rng.integers(-1024, 1500, size=FULL_SHAPE_ZYX, dtype=np.int16)
    mask = np.zeros(FULL_SHAPE_ZYX, np.uint8)
    mask[140:170, 200:260, 300:340] = Label.KIDNEY
    mask[150:160, 210:220, 305:315] = Label.TUMOR
    ct[120:190, 180:280, 280:360] = -100          # fat HU around the kidney
    organs = np.zeros(FULL_SHAPE_ZYX, np.uint8)
    organs[140:170, 200:260, 300:340] = 2         # TotalSegmentator kidney_right
    organs[100:200, 100:180, 100:250] = 5         # liver, away from the kidney
    ct_volume, mask_volume, organs_volume = _volume(ct), _volume(mask), _volume(organs)

    with Client(stack.gateway, timeout=300) as client:
        out = client.add_fat(mask_volume, organs_volume, ct_volume)

    result = out.result
    assert ct.nbytes == 512 * 512 * 300 * 2
    for role, volume in (("ct", ct_volume), ("mask", mask_volume), ("organs", organs_volume)):
        digest = _received(result, role)
        assert digest.sha256 == volume.sha256(), role
        assert digest.bytes == volume.array.nbytes, role
    # The CT arrived on the mask's grid (AddFat refuses inputs on different grids), and the
    # inline output (its digest already checked by the client) is on that grid too.
    returned = out.volumes["mask"]
    assert _same_geometry(returned, mask_volume)
    assert returned.array.dtype == np.uint8
    kept = mask != 0
    assert np.array_equal(returned.array[kept], mask[kept])
    added = returned.array != mask
    assert added.any() and np.all(returned.array[added] == Label.FAT) and not np.any(mask[added])
    assert result.used_ct and result.fat_volume_ml > 0


@pytest.mark.slow
def test_full_size_mask_echo_is_byte_identical(stack):
    """ConnectVessels on a single-piece artery changes nothing: the mask comes back inline
    exactly as sent, geometry included."""
    mask_volume = _volume(_artery_mask(FULL_SHAPE_ZYX))
    local_digest = mask_volume.sha256()
    with Client(stack.gateway, timeout=300) as client:
        out = client.connect_vessels(mask_volume, inline=True)
    assert _received(out.result, "mask").sha256 == local_digest
    sent = [d for d in out.result.info.sent if d.role == "mask" and not d.path]
    assert [d.sha256 for d in sent] == [local_digest]
    echoed = out.volumes["mask"]
    assert _same_geometry(echoed, mask_volume)
    assert echoed.array.dtype == mask_volume.array.dtype
    assert np.array_equal(echoed.array, mask_volume.array)
    assert out.result.report.pieces_before == 1 == out.result.report.pieces_after


# --- bad inputs ------------------------------------------------------------------------

SMALL_SHAPE_ZYX = (24, 20, 16)


def _small_mask() -> Volume:
    return _volume(_artery_mask(SMALL_SHAPE_ZYX))


def _header(**fields) -> vpb.VolumeHeader:
    base = dict(role="mask", encoding=vpb.VOLUME_ENCODING_RAW, size=[16, 20, 24],
                spacing=list(SPACING), origin=list(ORIGIN), direction=list(DIRECTION),
                voxel_type=vpb.VOXEL_TYPE_UINT8, total_bytes=16 * 20 * 24)
    base.update(fields)
    return vpb.VolumeHeader(**base)


def _inline(chunks) -> list[pp.ConnectVesselsRequest]:
    return [pp.ConnectVesselsRequest(params=pp.ConnectVesselsParams())] + [
        pp.ConnectVesselsRequest(chunk=chunk) for chunk in chunks]


def _by_path(path: str) -> list[pp.ConnectVesselsRequest]:
    return [pp.ConnectVesselsRequest(params=pp.ConnectVesselsParams(mask_path=path))]


def _raw_call(stack, requests) -> tuple[grpc.StatusCode, str]:
    """Send a hand-built request stream through the gateway; the status it ended with."""
    with grpc.insecure_channel(stack.gateway, options=CHANNEL_OPTIONS) as channel:
        stub = postprocess_pb2_grpc.PostprocessServiceStub(channel)
        try:
            for _ in stub.ConnectVessels(iter(requests), timeout=60):
                pass
        except grpc.RpcError as exc:
            return exc.code(), exc.details()
    return grpc.StatusCode.OK, ""


def _truncated_gzip_nifti(tmp: Path) -> list:
    path = tmp / "mask.nii.gz"
    write_volume(_small_mask(), path)
    data = path.read_bytes()
    assert data[:2] == b"\x1f\x8b"
    path.write_bytes(data[: len(data) // 2])
    return list(codec.file_volume_chunks(path, "mask"))


def _wrong_digest() -> list:
    chunks = list(codec.volume_chunks(_small_mask(), "mask"))
    chunks[0].header.sha256 = "0" * 64
    return chunks


def _float_mask() -> list:
    return list(codec.volume_chunks(_volume(_artery_mask(SMALL_SHAPE_ZYX).astype(np.float32)), "mask"))


def _with_data(header: vpb.VolumeHeader, nbytes: int = 1024) -> list:
    return [vpb.VolumeChunk(header=header), vpb.VolumeChunk(data=bytes(nbytes))]


GIGA = 16000 ** 3  # 16000^3 uint8 voxels: 4 TB

# name -> (request stream builder, expected code, words the message must contain)
BAD_INLINE = {
    "truncated gzip NIfTI": (lambda tmp: _inline(_truncated_gzip_nifti(tmp)),
                             grpc.StatusCode.INVALID_ARGUMENT, ["truncated"]),
    "size with 2 values": (lambda tmp: _inline(_with_data(_header(size=[16, 20]))),
                           grpc.StatusCode.INVALID_ARGUMENT, ["size", "3 values"]),
    "total_bytes mismatch": (lambda tmp: _inline(_with_data(_header(total_bytes=1000))),
                             grpc.StatusCode.INVALID_ARGUMENT, ["total_bytes", "1000"]),
    "100000^3 voxels": (lambda tmp: _inline(_with_data(_header(size=[100000] * 3, total_bytes=1000))),
                        grpc.StatusCode.INVALID_ARGUMENT, ["size", "out of range"]),
    "16000^3 uint8 over the limit": (lambda tmp: _inline(_with_data(_header(size=[16000] * 3, total_bytes=GIGA))),
                                     grpc.StatusCode.RESOURCE_EXHAUSTED, ["limit"]),
    "16000^3 uint8 with small total_bytes": (
        lambda tmp: _inline(_with_data(_header(size=[16000] * 3, total_bytes=1000))),
        grpc.StatusCode.RESOURCE_EXHAUSTED, ["limit"]),
    "voxel type unspecified": (
        lambda tmp: _inline(_with_data(_header(voxel_type=vpb.VOXEL_TYPE_UNSPECIFIED))),
        grpc.StatusCode.INVALID_ARGUMENT, ["voxel_type"]),
    "float32 mask": (lambda tmp: _inline(_float_mask()),
                     grpc.StatusCode.INVALID_ARGUMENT, ["float32"]),
    "sha256 mismatch": (lambda tmp: _inline(_wrong_digest()),
                        grpc.StatusCode.DATA_LOSS, ["sha256", "does not match"]),
}


def _assert_still_serving(stack) -> None:
    with Client(stack.gateway, timeout=60) as client:
        out = client.connect_vessels(_small_mask())
    assert out.result.report.pieces_before == 1
    assert np.array_equal(out.volumes["mask"].array, _small_mask().array)


@pytest.mark.parametrize("case", sorted(BAD_INLINE))
def test_bad_inline_input_gets_its_status_and_the_next_call_works(stack, tmp_path, case):
    build, expected, words = BAD_INLINE[case]
    code, message = _raw_call(stack, build(tmp_path))
    assert code == expected, f"{case}: {code.name} {message!r}"
    for word in words:
        assert word.lower() in message.lower(), f"{case}: {message!r} does not mention {word!r}"
    assert "mask" in message, f"{case}: {message!r} does not name the input"
    _assert_still_serving(stack)


@pytest.fixture()
def outside_file(tmp_path_factory, data_root) -> Path:
    """A valid mask file outside the data root."""
    path = tmp_path_factory.mktemp("outside") / "mask.nii.gz"
    assert not path.resolve().is_relative_to(data_root.resolve())
    write_volume(_small_mask(), path)
    return path


def test_dotdot_path_is_permission_denied(stack, data_root, outside_file):
    relative = os.path.relpath(outside_file, data_root)
    assert relative.startswith("..")
    code, message = _raw_call(stack, _by_path(relative))
    assert code == grpc.StatusCode.PERMISSION_DENIED, message
    assert "mask_path" in message and "outside the data root" in message
    _assert_still_serving(stack)


def test_symlink_out_of_the_root_is_permission_denied(stack, data_root, outside_file):
    link = data_root / "links" / "escape.nii.gz"
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(outside_file)
    code, message = _raw_call(stack, _by_path("links/escape.nii.gz"))
    assert code == grpc.StatusCode.PERMISSION_DENIED, message
    assert "outside the data root" in message
    _assert_still_serving(stack)


def test_missing_file_is_not_found(stack, data_root):
    assert not (data_root / "nowhere" / "mask.nii.gz").exists()
    code, message = _raw_call(stack, _by_path("nowhere/mask.nii.gz"))
    assert code == grpc.StatusCode.NOT_FOUND, message
    assert "nowhere/mask.nii.gz" in message and "does not exist" in message
    _assert_still_serving(stack)


def test_by_reference_inside_the_root_works(stack, data_root):
    """The control for the path cases: the same mask, inside the root, is accepted."""
    write_volume(_small_mask(), data_root / "ok" / "mask.nii.gz")
    code, message = _raw_call(stack, _by_path("ok/mask.nii.gz"))
    assert code == grpc.StatusCode.OK, message
    assert (data_root / "ok" / "mask_vessels.nii.gz").exists()


def test_truncated_plain_gzip_is_really_truncated(tmp_path):
    """Guard for the truncated-gzip case: the file we send cannot be decompressed."""
    chunks = _truncated_gzip_nifti(tmp_path)
    data = b"".join(chunk.data for chunk in chunks[1:])
    with pytest.raises(EOFError):
        gzip.decompress(data)
