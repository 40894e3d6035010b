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
