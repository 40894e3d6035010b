"""Case-job mask arithmetic: combining task masks, merging repairs, removing specks; the
content-addressed upload store; task resolution."""
from __future__ import annotations

import gzip

import numpy as np
import pytest

from case_svc import masks, pipeline
from case_svc.cas import UnknownDigest, VolumeStore
from medseg.codec import DigestMismatch, VolumeTooLarge
from medseg.labels import Label
from medseg.serving.errors import FieldError
from medseg.volumes import Volume, write_volume


def vol(array, spacing=(2.0, 2.0, 2.0)):
    return Volume(np.asarray(array, dtype=np.uint8), spacing=spacing)


def test_combine_precedence():
    shape = (4, 4, 4)
    tumor = np.zeros(shape, np.uint8); tumor[0] = Label.KIDNEY; tumor[0, 0] = Label.TUMOR
    vessels = np.zeros(shape, np.uint8); vessels[0, :, 0] = Label.ARTERY; vessels[1] = Label.VEIN
    vessels[3] = Label.KIDNEY
    ureter = np.zeros(shape, np.uint8); ureter[1, 0] = Label.URETER; ureter[2] = Label.URETER
    out = masks.combine({"tumor": vol(tumor), "vessels": vol(vessels), "ureter": vol(ureter)}, vol(tumor))[0].array
    assert out[0, 0, 0] == Label.TUMOR                 # tumor over the artery
    assert out[0, 1, 0] == Label.KIDNEY                # kidney model's kidney over the artery
    assert (out[1] == Label.VEIN).all()                # vein before ureter
    assert (out[2] == Label.URETER).all()
    assert (out[3] == 0).all()                         # kidney only from the first kidney source
    only_ureter = masks.combine({"ureter": vol(np.where(ureter > 0, ureter, Label.KIDNEY))}, vol(ureter))[0].array
    assert (only_ureter[0] == Label.KIDNEY).all()


def test_combine_resamples_onto_the_reference_grid():
    fine = np.zeros((8, 8, 8), np.uint8); fine[:4] = Label.KIDNEY
    coarse = vol(np.zeros((4, 4, 4)), spacing=(2.0, 2.0, 2.0))
    tumor = Volume(fine, spacing=(1.0, 1.0, 1.0), origin=(-0.5, -0.5, -0.5))
    out, dropped = masks.combine({"tumor": tumor}, coarse)
    assert dropped == {} and out.same_grid(coarse) and (out.array[:2] == Label.KIDNEY).all() and (out.array[2:] == 0).all()


def test_combine_keeps_the_tumor_out_of_the_liver_and_spleen():
    shape = (12, 12, 12)
    tumor = np.zeros(shape, np.uint8)
    tumor[1:5, 1:5, 1:5] = Label.TUMOR                 # the true tumor ...
    tumor[2:4, 2:4, 5:7] = Label.TUMOR                 # ... and its bulge into the liver
    tumor[8:11, 8:11, 8:11] = Label.TUMOR              # a false piece in the liver ...
    tumor[8, 8, 7] = Label.TUMOR                       # ... with a rim the liver model left out
    organs = np.zeros(shape, np.uint8)
    organs[:, :, 5:] = 5                               # liver, TotalSegmentator numbering
    organs[8, 8, 7] = 0
    combined, dropped = masks.combine({"tumor": vol(tumor)}, vol(tumor), vol(organs))
    out = combined.array
    assert dropped == {"tumor in liver or spleen": 8 + 27 + 1}
    assert (out[1:5, 1:5, 1:5] == Label.TUMOR).all()
    assert not (out[:, :, 5:] == Label.TUMOR).any()
    # by name with a label table: value 5 is the pancreas here, so the tumor stands
    pancreas = Volume(organs, spacing=(2.0, 2.0, 2.0), labels={0: "background", 5: "pancreas"})
    kept = masks.combine({"tumor": vol(tumor)}, vol(tumor), pancreas)[0].array
    assert (kept == Label.TUMOR).sum() == (tumor == Label.TUMOR).sum()


def test_combine_drops_ureter_in_and_beside_the_vertebrae():
    shape = (12, 12, 12)
    ureter = np.zeros(shape, np.uint8)
    ureter[:, 2, 2] = Label.URETER                     # the real ureter, clear of the bone
    ureter[5:7, 7:9, 7:9] = Label.URETER               # a false piece in a vertebral body
    ureter[5, 6, 7] = Label.URETER                     # ... and its rim just outside the bone
    organs = np.zeros(shape, np.uint8)
    organs[4:8, 7:11, 7:11] = 29                       # vertebrae_L3, TotalSegmentator numbering
    combined, dropped = masks.combine({"ureter": vol(ureter)}, vol(ureter), vol(organs))
    out = combined.array
    assert dropped == {"ureter at a vertebra": 8 + 1}
    assert (out[:, 2, 2] == Label.URETER).all()
    assert not (out[4:9, 5:12, 5:12] == Label.URETER).any()
    # with a label table the names decide: class 29 is not a vertebra here
    spleen = Volume(organs, spacing=(2.0, 2.0, 2.0), labels={0: "background", 29: "spleen"})
    kept = masks.combine({"ureter": vol(ureter)}, vol(ureter), spleen)[0].array
    assert (kept[5:7, 7:9, 7:9] == Label.URETER).all()


def test_merge_takes_repaired_labels_into_background_only():
    combined = np.zeros((3, 3, 3), np.uint8); combined[0, 0, 0] = Label.KIDNEY
    repaired = np.zeros_like(combined); repaired[0, 0, :] = Label.ARTERY
    out = masks.merge_repairs(vol(combined), {Label.ARTERY: vol(repaired)}).array
    assert out[0, 0, 0] == Label.KIDNEY and (out[0, 0, 1:] == Label.ARTERY).all()


def test_remove_specks_keeps_the_largest_and_tumor():
    a = np.zeros((10, 10, 10), np.uint8)
    a[:5, :5, :5] = Label.ARTERY           # main piece
    a[8, 8, 8] = Label.ARTERY              # speck: 8 mm3 < 50
    a[8, 0:4, 0] = Label.ARTERY            # 32 mm3 < 50 too
    a[0, 8, 8] = Label.TUMOR               # a tiny second tumor stays: it touches the kidney
    a[1, 8, 8] = Label.KIDNEY
    a[2, 8:10, 8:10] = Label.TUMOR
    cleaned, removed = masks.remove_specks(vol(a), 50.0)
    assert np.count_nonzero(cleaned.array == Label.ARTERY) == 125
    assert np.count_nonzero(cleaned.array == Label.TUMOR) == 5
    assert sorted(r["voxels"] for r in removed) == [1, 4]
    assert all(r["label"] == "artery" and r["reason"] == "speck" for r in removed)
    assert removed[0]["centre_mm"] == [16.0, 16.0, 16.0] or removed[1]["centre_mm"] == [16.0, 16.0, 16.0]
    same, none = masks.remove_specks(vol(a), 0)
    assert none == [] and (same.array == a).all()


def test_a_tumor_piece_touching_no_kidney_is_removed_unless_it_is_the_largest():
    a = np.zeros((20, 20, 20), np.uint8)
    a[2:8, 2:8, 2:8] = Label.KIDNEY
    a[4:6, 4:6, 8:10] = Label.TUMOR        # the tumor, on the kidney
    a[15, 15, 15] = Label.TUMOR            # a false positive far from it
    cleaned, removed = masks.remove_specks(vol(a), 50.0)
    assert [(r["label"], r["voxels"], r["reason"]) for r in removed] == [("tumor", 1, "touches no kidney")]
    assert np.count_nonzero(cleaned.array == Label.TUMOR) == 8
    b = a.copy()
    b[a == Label.TUMOR] = 0
    b[15:18, 15:18, 15:18] = Label.TUMOR   # the largest tumor piece stays even away from the kidney
    b[4, 4, 8] = Label.TUMOR               # and the small one on the kidney too
    kept, none = masks.remove_specks(vol(b), 50.0)
    assert none == [] and (kept.array == b).all()


def test_remove_specks_by_size_relative_to_the_largest_piece():
    a = np.zeros((30, 30, 30), np.uint8)
    a[:20, :10, :10] = Label.ARTERY        # main piece, 2000 voxels
    a[25:28, 25:29, 25:30] = Label.ARTERY  # 60 mm3: over 50 but 3% of the main piece
    a[:20, 20:30, :10] = Label.URETER      # two ureters of one size both stay
    a[:20, 20:30, 20:29] = Label.URETER
    cleaned, removed = masks.remove_specks(vol(a), 50.0)
    assert [(r["label"], r["voxels"]) for r in removed] == [("artery", 60)]
    assert np.count_nonzero(cleaned.array == Label.URETER) == 3800
    kept, none = masks.remove_specks(vol(a), 50.0, max_fraction=0.0)
    assert none == [] and (kept.array == a).all()


def test_resolve_tasks_skips_tasks_without_their_phases():
    run, skipped = pipeline.resolve_tasks([], {"portal", "delayed"})
    assert run == ["total", "tumor", "ureter"]
    assert skipped == [{"task": "vessels", "reason": "no arterial phase"}]


def test_volume_store_is_content_addressed(tmp_path):
    source = tmp_path / "ct.nii.gz"
    write_volume(Volume(np.arange(27, dtype=np.int16).reshape(3, 3, 3)), source)
    data = source.read_bytes()
    cas = VolumeStore(tmp_path / "root", max_bytes=1 << 20)
    first = cas.put([data[:100], data[100:]])
    again = cas.put([data])
    assert first["sha256"] == again["sha256"] and not first["already_present"] and again["already_present"]
    assert first["path"].startswith(f"cas/sha256/{first['sha256'][:2]}/") and first["path"].endswith(".nii.gz")
    assert first["size"] == [3, 3, 3]
    assert cas.find(first["sha256"]).read_bytes() == data
    assert not list((tmp_path / "root" / "cas" / "tmp").iterdir())
    with pytest.raises(UnknownDigest):
        cas.find("cd" * 32)
    with pytest.raises(FieldError):
        cas.find("xyz")
    with pytest.raises(FieldError):
        cas.put([gzip.compress(b"not a nifti" * 100)])
    with pytest.raises(DigestMismatch):
        cas.put([data], declared_sha256="00" * 32)
    with pytest.raises(VolumeTooLarge):
        VolumeStore(tmp_path / "root", max_bytes=10).put([data])
    assert not list((tmp_path / "root" / "cas" / "tmp").iterdir())
