"""Every operation through the real gateway with the `medseg` command, inline and
--by-ref: what a user of the stack does. Results are checked against the phantom's truth."""
from __future__ import annotations

import numpy as np
import pytest

from medseg.cli import main
from medseg.phantom import make_phantom
from medseg.summary import summarize_labels
from medseg.volumes import read_volume

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def case(data_root):
    phantom = make_phantom(size=(96, 96, 64), seed=99)
    return phantom, phantom.write(data_root / "pipeline")


def run(stack, *args) -> int:
    return main(["--quiet", "--gateway", stack.gateway, *args])


def test_status_reports_every_service_serving(stack, capsys):
    assert run(stack, "status") == 0
    out = capsys.readouterr().out
    for name in stack.services:
        assert f"{name}" in out and "SERVING" in out


@pytest.mark.parametrize("by_ref", [False, True])
def test_measure_matches_the_phantom_exactly(stack, case, by_ref, capsys):
    phantom, files = case
    path = "pipeline/labels.nii.gz" if by_ref else str(files["labels"])
    assert run(stack, "measure", path, "--json", *(["--by-ref"] if by_ref else [])) == 0
    import json
    reply = json.loads(capsys.readouterr().out)
    truth = summarize_labels(phantom.labels)
    got = {int(m["value"]): m for m in reply["labels"]}
    assert sorted(got) == [t.value for t in truth]
    for t in truth:
        m = got[t.value]
        assert int(m["voxelCount"]) == t.voxel_count == np.count_nonzero(phantom.labels.array == t.value)
        assert [int(v) for v in m["bbox"].get("minIndex", [0, 0, 0])] == list(t.min_index)
        assert [int(v) for v in m["bbox"]["maxIndex"]] == list(t.max_index)


def _nnunet_running(stack) -> None:
    if "nnunet" not in stack.services:
        pytest.skip("nnunet not started in this session (MEDSEG_TEST_SERVICES)")


@pytest.mark.parametrize("task, phases", [("total", ["portal"]), ("tumor", ["portal"]),
                                          ("ureter", ["delayed"]), ("vessels", ["arterial", "portal"])])
def test_segment_inline_and_by_ref(stack, case, data_root, tmp_path, task, phases, capsys):
    _nnunet_running(stack)
    phantom, files = case
    local = tmp_path / f"{task}.nii.gz"
    assert run(stack, "segment", task, *[str(files[p]) for p in phases], "-o", str(local)) == 0
    assert run(stack, "segment", task, *[f"pipeline/{p}.nii.gz" for p in phases], "--by-ref",
               "-o", f"pipeline/out/{task}.nii.gz") == 0
    inline, by_ref = read_volume(local), read_volume(data_root / f"pipeline/out/{task}.nii.gz")
    assert np.array_equal(inline.array, by_ref.array)
    reference = phantom.phases[phases[0]]
    assert inline.array.shape == reference.array.shape
    assert np.allclose(inline.spacing, reference.spacing) and np.allclose(inline.origin, reference.origin)
    assert inline.array.any()


def test_segment_case_reads_each_phase_once_through_the_gateway(stack, case, data_root, capsys):
    _nnunet_running(stack)
    assert run(stack, "segment", "case", "--arterial", "pipeline/arterial.nii.gz",
               "--portal", "pipeline/portal.nii.gz", "--delayed", "pipeline/delayed.nii.gz",
               "--by-ref", "-o", "pipeline/case") == 0
    out = capsys.readouterr().out
    reads = [line for line in out.splitlines() if line.strip().startswith("received")]
    assert len(reads) == 3, out
    for task in ("total", "tumor", "vessels", "ureter"):
        assert (data_root / f"pipeline/case/{task}.nii.gz").exists()


def test_models_lists_the_registry(stack, capsys):
    _nnunet_running(stack)
    assert run(stack, "models") == 0
    out = capsys.readouterr().out
    for task in ("TASK_TOTAL", "TASK_VESSELS", "TASK_URETER", "TASK_TUMOR"):
        assert task in out or task.split("_")[1].lower() in out


@pytest.mark.parametrize("by_ref", [False, True])
def test_postprocess_and_mesh_commands(stack, case, data_root, tmp_path, by_ref, capsys):
    _, files = case
    if by_ref:
        p = lambda name: f"pipeline/{name}.nii.gz"  # noqa: E731
        extra, out = ["--by-ref"], lambda name: f"pipeline/cli/{name}"  # noqa: E731
    else:
        p = lambda name: str(files[name])  # noqa: E731
        extra, out = [], lambda name: str(tmp_path / name)  # noqa: E731
    assert run(stack, "fat", p("labels"), p("organs"), "--ct", p("portal"), "-o", out("fat.nii.gz"), *extra) == 0
    assert run(stack, "connect", "vessels", p("labels"), "-o", out("vessels.nii.gz"), *extra) == 0
    assert run(stack, "connect", "ureter", p("labels"), "-o", out("ureter.nii.gz"), *extra) == 0
    assert run(stack, "mesh", p("labels"), "-o", out("model.obj"), *extra) == 0
    root = data_root if by_ref else tmp_path
    prefix = "pipeline/cli/" if by_ref else ""
    for name in ("fat.nii.gz", "vessels.nii.gz", "ureter.nii.gz", "model.obj", "model.mtl"):
        assert (root / f"{prefix}{name}").exists(), name
    assert "o kidney" in (root / f"{prefix}model.obj").read_text()
