"""The `medseg` command against real servers on loopback (no gateway: that is covered in
tests/integration). Inline and --by-ref, outputs written, errors as exit code 2."""
import numpy as np
import pytest

from medseg.cli import main
from medseg.phantom import make_phantom
from medseg.serving.config import ServerConfig
from medseg.volumes import read_volume


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("root")


@pytest.fixture(scope="module")
def gateway(data_root):
    """Postprocess and smoothing servers; the CLI talks to one at a time via --gateway."""
    from postprocess_svc.server import create_server as postprocess
    from smoothing_svc.server import create_server as smoothing

    servers = {}
    for name, factory in (("postprocess", postprocess), ("smoothing", smoothing)):
        server = factory(ServerConfig(service=name, data_root=data_root, port=0)).start()
        server.set_serving(True)
        servers[name] = f"127.0.0.1:{server.port}"
        servers[name + "_server"] = server
    yield servers
    for name in ("postprocess", "smoothing"):
        servers[name + "_server"].stop(drain_seconds=0, grace=0)


@pytest.fixture(scope="module")
def case(data_root):
    phantom = make_phantom(size=(96, 96, 64), seed=7)
    files = phantom.write(data_root / "case")
    return phantom, files


def test_phantom_command_writes_a_case(tmp_path, capsys):
    assert main(["phantom", str(tmp_path / "p"), "--size", "48", "48", "32", "--seed", "2"]) == 0
    names = sorted(p.name for p in (tmp_path / "p").glob("*.nii.gz"))
    assert names == ["arterial.nii.gz", "delayed.nii.gz", "labels.nii.gz", "organs.nii.gz", "portal.nii.gz"]
    assert "labels" in capsys.readouterr().out


@pytest.mark.parametrize("by_ref", [False, True])
def test_measure_matches_ground_truth(gateway, case, by_ref, capsys):
    phantom, files = case
    path = "case/labels.nii.gz" if by_ref else str(files["labels"])
    args = ["--quiet", "--gateway", gateway["postprocess"], "measure", path] + (["--by-ref"] if by_ref else [])
    assert main(args) == 0
    out = capsys.readouterr().out
    for value, count in zip(*np.unique(phantom.labels.array, return_counts=True)):
        if value:
            assert f" {count} voxels" in out, f"label {value} count {count} missing from:\n{out}"
    assert ("case/labels.nii.gz" in out) == by_ref


def test_mesh_writes_obj_and_mtl(gateway, case, tmp_path, capsys):
    _, files = case
    target = tmp_path / "model.obj"
    assert main(["--quiet", "--gateway", gateway["smoothing"], "mesh", str(files["labels"]),
                 "-o", str(target), "--labels", "1", "2"]) == 0
    text = target.read_text()
    assert "o kidney" in text and "o tumor" in text
    assert target.with_suffix(".mtl").exists()
    assert "closed=True" in capsys.readouterr().out


def test_fat_by_ref_writes_under_the_data_root(gateway, case, data_root, capsys):
    assert main(["--quiet", "--gateway", gateway["postprocess"], "fat", "case/labels.nii.gz",
                 "case/organs.nii.gz", "--ct", "case/portal.nii.gz", "--by-ref",
                 "-o", "case/out/fat.nii.gz"]) == 0
    assert "CT used: True" in capsys.readouterr().out
    assert (read_volume(data_root / "case/out/fat.nii.gz").array == 6).any()


def test_errors_exit_2_with_the_status(gateway, capsys):
    assert main(["--quiet", "--gateway", gateway["postprocess"], "measure", "../../etc/passwd", "--by-ref"]) == 2
    assert "PERMISSION_DENIED" in capsys.readouterr().err
    assert main(["--quiet", "--gateway", gateway["postprocess"], "measure", "missing.nii.gz", "--by-ref"]) == 2
    assert "NOT_FOUND" in capsys.readouterr().err


# --- issue 15: the client side -----------------------------------------------------------------

def test_local_read_failures_exit_1_before_any_call(tmp_path, capsys):
    """Nothing listens on port 1: a call would fail UNAVAILABLE (exit 2); the local file is
    reported first, with exit 1."""
    garbage = tmp_path / "notes.nii.gz"
    garbage.write_text("not an image")
    for path in (tmp_path / "missing.nii.gz", garbage):
        assert main(["--quiet", "--gateway", "127.0.0.1:1", "measure", str(path)]) == 1
        err = capsys.readouterr().err
        assert f"cannot read mask '{path}'" in err, err
        assert "UNAVAILABLE" not in err and "Exception iterating" not in err


def test_local_read_failure_in_a_subprocess_is_exit_1_not_an_abort(tmp_path):
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "medseg.cli", "--quiet", "--gateway", "127.0.0.1:1",
                             "mesh", str(tmp_path / "missing.nii.gz"), "-o", str(tmp_path / "m.obj")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, (result.returncode, result.stderr)
    assert "no such file or folder" in result.stderr
    assert not (tmp_path / "m.obj").exists()


def test_global_options_work_before_and_after_the_subcommand(gateway, case, capsys):
    path = "case/labels.nii.gz"
    for args in (["measure", path, "--by-ref", "--quiet", "--gateway", gateway["postprocess"]],
                 ["--quiet", "measure", path, "--by-ref", "--gateway", gateway["postprocess"], "--timeout", "30"],
                 # after the subcommand wins over before it
                 ["--gateway", "127.0.0.1:1", "measure", "--gateway", gateway["postprocess"], path, "--by-ref"]):
        assert main(args) == 0, args
        assert "case/labels.nii.gz" in capsys.readouterr().out
    assert main(["models", "--gateway", "127.0.0.1:1", "--timeout", "2"]) == 2
    assert "UNAVAILABLE" in capsys.readouterr().err


def test_mesh_obj_names_its_own_mtl(gateway, case, tmp_path):
    _, files = case
    target = tmp_path / "out" / "model.obj"
    assert main(["--quiet", "--gateway", gateway["smoothing"], "mesh", str(files["labels"]),
                 "-o", str(target), "--labels", "1"]) == 0
    assert "mtllib model.mtl" in target.read_text()
    assert "mesh.mtl" not in target.read_text()
    assert (tmp_path / "out" / "model.mtl").exists()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["model.mtl", "model.obj"]


def test_mesh_inline_files_take_the_requested_stem(gateway, case):
    import grpc

    from medseg.client import Client

    phantom, _ = case
    with Client(gateway["smoothing"], timeout=60) as client:
        out = client.mesh(phantom.labels, labels=[1], inline=True, file_stem="kidney_model")
        assert sorted(out.files) == ["kidney_model.mtl", "kidney_model.obj"]
        assert b"mtllib kidney_model.mtl" in out.files["kidney_model.obj"]
        assert sorted(client.mesh(phantom.labels, labels=[1], inline=True).files) == ["mesh.mtl", "mesh.obj"]
        with pytest.raises(grpc.RpcError) as info:
            client.mesh(phantom.labels, labels=[1], inline=True, file_stem="../x")
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "params.file_stem" in info.value.details()


def test_mesh_by_path_inline_without_output_path_writes_beside_the_mask_and_sends(gateway, case, data_root):
    """MeshMaskParams.output_path: empty and the mask by path -> written next to it as
    <stem>_mesh.<format>; inline -> also sent, under the same names."""
    from medseg.client import Client, Ref

    with Client(gateway["smoothing"], timeout=60) as client:
        out = client.mesh(Ref("case/labels.nii.gz"), labels=[1], inline=True)
    assert list(out.result.paths) == ["case/labels_mesh.obj", "case/labels_mesh.mtl"]
    assert sorted(out.files) == ["labels_mesh.mtl", "labels_mesh.obj"]
    assert (data_root / "case" / "labels_mesh.obj").read_bytes() == out.files["labels_mesh.obj"]
    assert b"mtllib labels_mesh.mtl" in out.files["labels_mesh.obj"]
