"""SmoothingService over real gRPC: meshes inline and by reference, clear answers for bad
or empty masks, server still up."""
import grpc
import numpy as np
import pytest
import trimesh

from medseg.client import Client, Ref
from medseg.serving.config import ServerConfig
from medseg.smoothing.v1 import smoothing_pb2 as sm
from medseg.volumes import Volume, write_volume
from smoothing_svc.server import create_server


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("root")


@pytest.fixture(scope="module")
def client(root):
    server = create_server(ServerConfig(service="smoothing", data_root=root, port=0)).start()
    server.set_serving(True)
    with Client(f"127.0.0.1:{server.port}", timeout=120) as c:
        yield c
    server.stop(drain_seconds=0, grace=0)


def _two_spheres() -> Volume:
    z, y, x = np.mgrid[:30, :64, :64]
    mask = np.zeros((30, 64, 64), np.uint8)
    mask[(x - 20) ** 2 + (y - 32) ** 2 + ((z - 15) * 2.5) ** 2 < 12 ** 2] = 1
    mask[(x - 45) ** 2 + (y - 32) ** 2 + ((z - 15) * 2.5) ** 2 < 8 ** 2] = 3
    return Volume(mask, (1.0, 1.0, 2.5), (-30.0, 12.0, 100.0))


def test_inline_obj_has_one_object_per_structure(client):
    out = client.mesh(_two_spheres())
    assert sorted(out.files) == ["mesh.mtl", "mesh.obj"]
    text = out.files["mesh.obj"].decode()
    assert "o kidney" in text and "o artery" in text
    assert all(m.closed for m in out.result.meshes)
    sphere = 4 / 3 * np.pi * 12 ** 3 / 1000
    kidney = next(m for m in out.result.meshes if m.name == "kidney")
    assert kidney.volume_ml == pytest.approx(sphere, rel=0.05)


def test_by_ref_formats(client, root):
    write_volume(_two_spheres(), root / "spheres.nii.gz")
    for fmt, name in ((sm.MESH_FORMAT_STL, "m.stl"), (sm.MESH_FORMAT_PLY, "m.ply"), (sm.MESH_FORMAT_GLB, "m.glb")):
        out = client.mesh(Ref("spheres.nii.gz"), fmt=fmt, output=f"meshes/{name}")
        assert out.result.paths == [f"meshes/{name}"]
        loaded = trimesh.load(root / "meshes" / name)
        assert loaded is not None
    out = client.mesh(Ref("spheres.nii.gz"))  # default: next to the mask
    assert out.result.paths == ["spheres_mesh.obj", "spheres_mesh.mtl"]


def test_empty_mask_and_bad_inputs(client):
    out = client.mesh(Volume(np.zeros((8, 8, 8), np.uint8)))
    assert not out.result.meshes and "no labelled voxels" in out.result.note
    bad = _two_spheres()
    bad.array[0, 0, 0] = 77
    with pytest.raises(grpc.RpcError) as info:
        client.mesh(bad)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "77" in info.value.details()
    with pytest.raises(grpc.RpcError) as info:
        client.mesh(_two_spheres(), decimation=2.0)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "decimation" in info.value.details()
    one = np.zeros((8, 8, 8), np.uint8)
    one[4, 4, 4] = 2
    out = client.mesh(Volume(one))
    assert len(out.result.meshes) == 1 and out.result.meshes[0].note
    assert client.mesh(_two_spheres()).result.meshes  # still serving


def _mesh_by_ref(client, params: sm.MeshMaskParams) -> sm.MeshMaskResult:
    """MeshMask with raw params (the SDK's mesh() has no `method` argument yet)."""
    responses = client.smoothing.MeshMask(iter([sm.MeshMaskRequest(params=params)]), timeout=120)
    return next(r.result for r in responses if r.HasField("result"))


def test_method_surface_nets_default_and_flying_edges(client, root):
    write_volume(_two_spheres(), root / "method.nii.gz")
    results = {}
    for method in (sm.MESH_METHOD_UNSPECIFIED, sm.MESH_METHOD_SURFACE_NETS, sm.MESH_METHOD_FLYING_EDGES):
        name = sm.MeshMethod.Name(method).lower()
        results[method] = _mesh_by_ref(client, sm.MeshMaskParams(mask_path="method.nii.gz", method=method,
                                                                  output_path=f"method/{name}.obj"))
        assert results[method].paths == [f"method/{name}.obj", f"method/{name}.mtl"]
        assert all(m.closed for m in results[method].meshes)
    default, nets, edges = (results[m] for m in sorted(results))
    # Unset is surface nets: the same surfaces; flying edges gives other ones.
    assert [(m.faces, m.volume_ml) for m in default.meshes] == [(m.faces, m.volume_ml) for m in nets.meshes]
    unset, surface_nets = ((root / f"method/{name}.obj").read_text().replace(f"mtllib {name}.mtl", "")
                           for name in ("mesh_method_unspecified", "mesh_method_surface_nets"))
    assert unset == surface_nets
    assert [m.volume_ml for m in edges.meshes] != [m.volume_ml for m in nets.meshes]
    sphere = 4 / 3 * np.pi * 12 ** 3 / 1000
    for result in (nets, edges):
        kidney = next(m for m in result.meshes if m.name == "kidney")
        assert kidney.volume_ml == pytest.approx(sphere, rel=0.05)
    with pytest.raises(grpc.RpcError) as info:
        _mesh_by_ref(client, sm.MeshMaskParams(mask_path="method.nii.gz", method=7))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "params.method" in info.value.details()
