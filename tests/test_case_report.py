"""The case job's report: schema validation, the self-contained HTML page and its pictures."""
from __future__ import annotations

import base64
import copy
import io
import json
import re
import time
import tracemalloc

import numpy as np
import pytest
from medseg.labels import COLORS, NAMES, STRUCTURES, Label
from medseg.phantom import make_phantom
from medseg.volumes import Volume
from PIL import Image
from scipy import ndimage

from case_svc import report as report_module
from case_svc.report import (
    REPORT_SCHEMA_VERSION,
    SCHEMA,
    ReportError,
    render_html,
    validate_report,
    write_report,
)

_IMG = re.compile(r'<img alt="([^"]*)" src="data:image/png;base64,([A-Za-z0-9+/=]+)">')


def _mm(volume: Volume, zyx) -> list[float]:
    z, y, x = zyx
    return [float(v) for v in (volume.index_to_physical_matrix() @ np.array([x, y, z, 1.0]))[:3]]


def build_report(case, source_folder: str = "inputs") -> dict:
    """A report as the case service would write it, from the phantom's ground truth."""
    mask = case.labels
    voxel_ml = mask.voxel_volume_mm3 / 1000.0
    structures = []
    for value, name in STRUCTURES.items():
        inside = mask.array == value
        if not inside.any():
            continue
        z, y, x = np.nonzero(inside)
        structures.append({
            "value": value, "name": name,
            "volume_ml": float(inside.sum() * voxel_ml),
            "pieces": int(ndimage.label(inside)[1]),
            "bbox_min_mm": _mm(mask, (z.min(), y.min(), x.min())),
            "bbox_max_mm": _mm(mask, (z.max(), y.max(), x.max())),
            "largest_diameter_mm": float(np.linalg.norm(np.subtract(_mm(mask, (z.max(), y.max(), x.max())),
                                                                    _mm(mask, (z.min(), y.min(), x.min()))))),
        })
    tumor = case.anatomy["tumor"]
    by_name = {s["name"]: s for s in structures}
    return {
        "schema": "medseg.case-report",
        "schema_version": REPORT_SCHEMA_VERSION,
        "case_id": "phantom-0001",
        "created": "2025-03-14T09:26:53+00:00",
        "state": "SUCCEEDED",
        "error": None,
        "inputs": {
            phase: {"sha256": volume.sha256(), "size": list(volume.size), "spacing_mm": list(volume.spacing),
                    "source": f"{source_folder}/{phase}.nii.gz"}
            for phase, volume in case.phases.items() if phase != "delayed"
        },
        "skipped": [{"task": "ureter", "reason": "no delayed phase"}],
        "steps": [
            {"name": "segment", "state": "SUCCEEDED", "seconds": 41.2, "note": "tasks total, vessels, tumor on cuda:0"},
            {"name": "combine", "state": "SUCCEEDED", "seconds": 0.8, "note": ""},
            {"name": "repair vessels", "state": "SUCCEEDED", "seconds": 3.1, "note": ""},
            {"name": "repair ureters", "state": "SKIPPED", "seconds": 0.0, "note": "no delayed phase"},
            {"name": "fat", "state": "SUCCEEDED", "seconds": 2.4, "note": ""},
            {"name": "cleanup", "state": "SUCCEEDED", "seconds": 0.6, "note": ""},
            {"name": "meshes", "state": "SUCCEEDED", "seconds": 5.9, "note": "OBJ+MTL, GLB"},
            {"name": "measure", "state": "SUCCEEDED", "seconds": 1.3, "note": ""},
        ],
        "models": [
            {"task": "vessels", "folders": ["/srv/models/Dataset902_Vessels/nnUNetTrainer__nnUNetPlans__3d_fullres"],
             "version": "demo-2025.03", "digest": "9f" * 32},
        ],
        "structures": structures,
        "removed_specks": [{"label": "artery", "voxels": 3, "volume_ml": 3 * voxel_ml, "centre_mm": [12.0, -40.5, 3.0]}],
        "repairs": {
            "vessels": {"pieces_before": 5, "pieces_after": 2, "bridges": 3, "note": "renal arteries joined to the aorta"},
            "ureters": None,
        },
        "fat": {"volume_ml": by_name["fat"]["volume_ml"], "used_ct": True, "note": "fat window -190..-30 HU"},
        "tumors": [{
            "side": tumor["side"],
            "polar_location": "interpolar",
            "centre_mm": [float(v) for v in tumor["centre_mm"]],
            "max_diameter_mm": 2.0 * tumor["radius_mm"],
            "volume_ml": by_name["tumor"]["volume_ml"],
            "exophytic_fraction": 0.42,
            "distance_to_sinus_mm": 8.5,
            "distance_to_artery_mm": 21.0,
            "distance_to_vein_mm": None,
            "renal": {"R": 2, "E": 2, "N": 2, "A": "a", "L": 2, "score": 8},
            "note": "",
        }],
        "outputs": {
            "mask.nii.gz": {"sha256": "ab" * 32, "bytes": 123456},
            "meshes/model.obj": {"sha256": "cd" * 32, "bytes": 9876543},
            "meshes/model.mtl": {"sha256": "ef" * 32, "bytes": 512},
            "meshes/model.glb": {"sha256": "01" * 32, "bytes": 3456789},
        },
    }


@pytest.fixture(scope="module")
def case():
    return make_phantom((128, 128, 96), seed=1)


@pytest.fixture(scope="module")
def page(case, tmp_path_factory):
    # inputs given by absolute paths, as a careless caller might: the page must not show them
    folder = tmp_path_factory.mktemp("case")
    return render_html(build_report(case, str(folder / "inputs")), case.labels, case.phases["portal"]), folder


def _images(page: str) -> dict[str, np.ndarray]:
    images = {}
    for alt, data in _IMG.findall(page):
        png = base64.b64decode(data)
        assert png.startswith(b"\x89PNG\r\n\x1a\n"), alt
        images[alt] = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    return images


def _rgb(value: int) -> np.ndarray:
    return np.array([int(COLORS[value][i : i + 2], 16) for i in (1, 3, 5)])


# ---------------------------------------------------------------------------- schema
def test_report_from_phantom_validates(case):
    report = build_report(case)
    validate_report(report)
    json.dumps(report, allow_nan=False)  # plain JSON, nothing numpy left


def test_broken_report_names_each_bad_field(case):
    report = build_report(case)
    del report["case_id"]
    report["structures"][1]["volume_ml"] = "12.5"
    report["tumors"][0]["renal"]["score"] = 13
    report["tumors"][0]["renall"] = {}
    report["outputs"]["/abs/mask.nii.gz"] = {"sha256": "ab" * 32, "bytes": 1}
    report["steps"][0]["seconds"] = float("nan")
    report["removed_specks"][0]["voxels"] = np.int64(3)  # not JSON
    with pytest.raises(ReportError) as error:
        validate_report(report)
    message = str(error.value)
    for field in ("case_id: missing", "structures[1].volume_ml: expected number, got str", "tumors[0].renal.score",
                  "tumors[0].renall: unknown field", "outputs./abs/mask.nii.gz (name)", "steps[0].seconds",
                  "removed_specks[0].voxels: expected integer, got int64"):
        assert field in message


def test_wrong_version_and_state_are_refused(case):
    for key, value in (("schema_version", 2), ("schema_version", True), ("state", "DONE")):
        report = build_report(case)
        report[key] = value
        with pytest.raises(ReportError, match=key):
            validate_report(report)


def test_nullable_facts_and_failed_report_validate(case):
    report = build_report(case)
    report.update(state="FAILED", error="segment: nnunet unavailable", structures=[], fat=None, tumors=[],
                  outputs={}, repairs={"vessels": None, "ureters": None})
    validate_report(report)
    report = build_report(case)
    tumor = report["tumors"][0]
    for key in ("side", "polar_location", "centre_mm", "max_diameter_mm", "volume_ml", "exophytic_fraction",
                "distance_to_sinus_mm", "distance_to_artery_mm", "renal"):
        tumor[key] = None
    validate_report(report)


def test_schema_uses_only_keywords_the_validator_knows():
    def walk(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key not in ("properties", "$defs"):
                    assert key in report_module.SUPPORTED_KEYWORDS, key
                walk(list(value.values()) if key in ("properties", "$defs") else value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(SCHEMA)


# ---------------------------------------------------------------------------- page
def test_page_holds_the_facts(case, page):
    html, _ = page
    report = build_report(case)
    for s in report["structures"]:
        assert f"{s['volume_ml']:.1f}" in html, s["name"]
        assert s["name"] in html
    assert f"{2.0 * case.anatomy['tumor']['radius_mm']:.1f}" in html
    assert "R2 E2 N2 Aa L2 = 8 (moderate complexity)" in html
    assert "interpolar" in html and case.anatomy["tumor"]["side"] in html
    assert "no delayed phase" in html and "demo-2025.03" in html and "9f" * 32 in html
    assert "meshes/model.glb" in html and "cd" * 32 in html
    assert "41.2" in html  # a step time


def test_page_is_self_contained_and_hides_server_paths(page):
    html, folder = page
    assert "<script" not in html.lower() and "http://" not in html and "https://" not in html
    assert re.search(r"(src|href)=\"(?!data:)", html) is None
    assert str(folder) not in html and "/srv/models" not in html
    assert "…/Dataset902_Vessels/nnUNetTrainer__nnUNetPlans__3d_fullres" in html


def test_pictures_decode_and_show_the_mask(page):
    images = _images(page[0])
    assert len(images) >= 4
    assert {"Axial slice", "Coronal slice", "Sagittal slice", "Anterior 3D view"} <= set(images)
    for alt in ("Axial slice", "Coronal slice", "Sagittal slice"):
        image = images[alt].reshape(-1, 3)
        # outlines are drawn in the label colours exactly; the slices go through the tumor
        for value in (Label.KIDNEY, Label.TUMOR):
            assert (image == _rgb(value)).all(axis=1).any(), (alt, NAMES[value])
        assert len(np.unique(image, axis=0)) > 20, alt
    front = images["Anterior 3D view"]
    assert len(np.unique(front.reshape(-1, 3), axis=0)) > 20  # shaded, not flat


def test_pictures_have_physical_aspect_and_orientation():
    """A box left of the midline (patient's left, +x), anterior and superior, on an anisotropic
    grid: it must appear image-right in axial/coronal, top in coronal/sagittal, left (anterior)
    in sagittal, and 2:1 as wide as tall where it is 40 x 20 mm."""
    array = np.zeros((40, 60, 80), dtype=np.uint8)  # z 2.5 mm, y 1 mm, x 0.5 mm: 100 x 60 x 40 mm
    # x 50..70 mm (+x: patient left), y 10..30 mm (anterior), z 70..80 mm (superior); 20 x 20 x 10 mm
    array[28:32, 10:30, 50:70] = Label.TUMOR
    mask = Volume(array, spacing=(0.5, 1.0, 2.5))
    images = _images(render_html(_minimal_report(), mask))

    def extent(alt):
        """Where the box ends in the picture (bottom, left, right as fractions), and h / w."""
        image = images[alt]
        rows, cols = np.nonzero(image.sum(axis=2) > 0)  # black background without CT
        h, w = image.shape[:2]
        return (rows.max() / h, cols.min() / w, cols.max() / w), h / w

    (bottom, left, right), aspect = extent("Axial slice")
    assert aspect == pytest.approx(60 / 40, rel=0.02)  # square pixels: 40 mm wide, 60 mm tall
    assert left > 0.5 and bottom < 0.6  # patient's left on image right, anterior up
    (bottom, left, right), aspect = extent("Coronal slice")
    assert aspect == pytest.approx(100 / 40, rel=0.02)
    assert left > 0.5 and bottom < 0.35  # superior up
    (bottom, left, right), aspect = extent("Sagittal slice")
    assert aspect == pytest.approx(100 / 60, rel=0.02)
    assert right < 0.6 and bottom < 0.35  # anterior on the left, superior up
    _, aspect = extent("Anterior 3D view")  # cropped to the box: 10 mm tall, 10 mm wide
    assert aspect == pytest.approx(1.0, rel=0.05)


def _minimal_report() -> dict:
    return {"schema": "medseg.case-report", "schema_version": 1, "case_id": "synthetic", "created": "2025-01-01T00:00:00Z",
            "state": "SUCCEEDED", "error": None, "inputs": {}, "skipped": [], "steps": [], "models": [], "structures": [],
            "removed_specks": [], "repairs": {"vessels": None, "ureters": None}, "fat": None, "tumors": [], "outputs": {}}


def _flipped_xy(mask: Volume) -> Volume:
    """The same body stored with x and y running the other way (RAS-like storage)."""
    return Volume(mask.array[:, ::-1, ::-1].copy(), spacing=mask.spacing,
                  origin=_mm(mask, (0, mask.array.shape[1] - 1, mask.array.shape[2] - 1)),
                  direction=(-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0))


def _swapped_yz(mask: Volume) -> Volume:
    """The same body stored with index y along physical z and index z along physical y."""
    sx, sy, sz = mask.spacing
    return Volume(mask.array.transpose(1, 0, 2).copy(), spacing=(sx, sz, sy), origin=mask.origin,
                  direction=(1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0))


@pytest.mark.parametrize("stored", [_flipped_xy, _swapped_yz])
def test_pictures_do_not_depend_on_the_storage_order(case, stored):
    other = stored(case.labels)
    def tumor_mm(mask):  # same voxels at the same places: the storage helpers are right
        z, y, x = np.nonzero(mask.array == Label.TUMOR)
        points = (mask.index_to_physical_matrix() @ np.stack([x, y, z, np.ones_like(x)]))[:3].T
        return np.round(points[np.lexsort(points.T)], 3)

    assert np.array_equal(tumor_mm(case.labels), tumor_mm(other))
    plain_page, other_page = render_html(_minimal_report(), case.labels), render_html(_minimal_report(), other)
    plain, moved = _images(plain_page), _images(other_page)
    for alt in plain:
        assert np.array_equal(plain[alt], moved[alt]), alt
    assert re.findall(r"LPS \([^)]*\)", plain_page) == re.findall(r"LPS \([^)]*\)", other_page)


def test_ct_on_another_grid_is_refused(case):
    ct = Volume(np.zeros((10, 10, 10), dtype=np.int16))
    with pytest.raises(ValueError, match="grid"):
        render_html(build_report(case), case.labels, ct)


def test_write_report_is_atomic_and_validated(case, tmp_path):
    report = build_report(case)
    paths = write_report(tmp_path, report, case.labels, case.phases["portal"])
    assert set(paths) == {"report.json", "report.html"}
    assert json.loads(paths["report.json"].read_text()) == json.loads(json.dumps(report))
    assert paths["report.json"].read_text().startswith('{\n  "case_id"')  # sorted, indented
    assert paths["report.html"].read_text().startswith("<!DOCTYPE html>")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html", "report.json"]  # no temporaries left

    broken = copy.deepcopy(report)
    broken["state"] = "DONE"
    with pytest.raises(ReportError):
        write_report(tmp_path / "other", broken, case.labels, None)
    assert not (tmp_path / "other").exists()


@pytest.mark.slow
def test_render_full_size_case():
    case = make_phantom((512, 512, 300), seed=2)
    report = build_report(case)
    tracemalloc.start()
    start = time.perf_counter()
    render_html(report, case.labels, case.phases["portal"])
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    print(f"512x512x300 render: {seconds:.2f} s, peak {peak / 2**20:.0f} MiB traced")
