"""Label tables survive files (issue 13 item 4): a whole-body mask written to disk keeps its
class names (NAME.labels.json beside a NIfTI, 3D Slicer segment metadata in NAME.seg.nrrd),
is measured with those names, and a mask without a table is refused by `medseg measure`
with how to state it, instead of being read in the convention (spleen as "kidney")."""
from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from medseg.cli import main
from medseg.labelfiles import sidecar_path, write_mask_file
from medseg.phantom import make_phantom
from medseg.serving.config import ServerConfig
from medseg.volumes import read_volume, write_volume


@pytest.fixture(scope="module")
def organs():
    return make_phantom(size=(48, 48, 32), seed=5).organs


@pytest.fixture(scope="module")
def postprocess(tmp_path_factory):
    from postprocess_svc.server import create_server

    server = create_server(ServerConfig(service="postprocess", data_root=tmp_path_factory.mktemp("root"),
                                        port=0)).start()
    server.set_serving(True)
    yield f"127.0.0.1:{server.port}"
    server.stop(drain_seconds=0, grace=0)


def test_nifti_mask_keeps_its_table_in_a_sidecar(organs, tmp_path):
    path = write_mask_file(organs, tmp_path / "total.nii.gz")
    assert sidecar_path(path) == tmp_path / "total.labels.json"
    assert json.loads(sidecar_path(path).read_text())["labels"]["1"] == "spleen"
    back = read_volume(path)
    assert back.labels == organs.labels and np.array_equal(back.array, organs.array)


def test_seg_nrrd_carries_slicer_segment_metadata(organs, tmp_path):
    path = write_mask_file(organs, tmp_path / "total.seg.nrrd")
    assert not sidecar_path(path).exists()
    header = path.read_bytes().split(b"\n\n", 1)[0].decode()
    assert "Segmentation_MasterRepresentation:=Binary labelmap" in header
    image = sitk.ReadImage(str(path))
    names = {image.GetMetaData(f"Segment{i}_Name"): int(image.GetMetaData(f"Segment{i}_LabelValue"))
             for i in range(len(organs.labels) - 1)}
    assert names["spleen"] == 1 and names["kidney_left"] == 3 and names["liver"] == 5
    # Slicer's extent is x0 x1 y0 y1 z0 z1 of the segment
    z, y, x = np.nonzero(organs.array == 1)
    spleen = [i for i in range(len(organs.labels) - 1) if image.GetMetaData(f"Segment{i}_Name") == "spleen"][0]
    assert image.GetMetaData(f"Segment{spleen}_Extent") == f"{x.min()} {x.max()} {y.min()} {y.max()} {z.min()} {z.max()}"
    back = read_volume(path)
    assert back.labels == organs.labels and np.array_equal(back.array, organs.array)


def test_measure_uses_the_files_table(organs, postprocess, tmp_path, capsys):
    path = write_mask_file(organs, tmp_path / "total.nii.gz")
    assert main(["--quiet", "--gateway", postprocess, "measure", str(path)]) == 0
    out = capsys.readouterr().out
    assert "spleen" in out and "liver" in out and " kidney " not in out


def test_low_numbers_without_a_table_are_refused_not_misnamed(organs, postprocess, tmp_path, capsys):
    """Spleen (1) and liver (5) only: in the convention they would read as kidney and ureter."""
    low = organs.with_array(np.where(np.isin(organs.array, (1, 5)), organs.array, 0).astype(np.uint8))
    bare = write_volume(low, tmp_path / "low.nii.gz")  # no table anywhere
    assert main(["--quiet", "--gateway", postprocess, "measure", str(bare)]) == 1
    err = capsys.readouterr().err
    assert "carries no label table" in err and "--labels convention" in err and "--labels TABLE.json" in err
    table = tmp_path / "table.json"
    table.write_text(json.dumps({"labels": {"0": "background", "1": "spleen", "5": "liver"}}))
    assert main(["--quiet", "--gateway", postprocess, "measure", str(bare), "--labels", str(table)]) == 0
    out = capsys.readouterr().out
    assert "spleen" in out and "liver" in out and "kidney" not in out and "ureter" not in out
    assert main(["--quiet", "--gateway", postprocess, "measure", str(bare), "--labels", "convention"]) == 0
    assert "kidney" in capsys.readouterr().out  # stated explicitly: read as the convention
