"""The model registry: the committed file resolves, and bad registries fail with clear messages."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from medseg.labels import NAMES, Label
from medseg.phantom import TOTAL_CLASSES
from medseg.serving.config import ServerConfig
from nnunet_svc.registry import DEFAULT_REGISTRY, load_registry


@pytest.fixture(scope="module")
def registry():
    return load_registry()


def test_committed_registry_has_the_four_tasks(registry):
    assert set(registry) == {"total", "vessels", "ureter", "tumor"}
    assert registry["vessels"].phases == ["arterial", "portal"]
    assert registry["ureter"].phases == ["delayed"]
    for spec in registry.values():
        for model in spec.models:
            assert (model.folder / "dataset.json").is_file()
            for fold in model.folds:
                assert (model.folder / f"fold_{fold}" / model.checkpoint).is_file()
            assert len(model.channel_names) == len(spec.phases)


def test_kidney_task_labels_come_from_the_convention(registry):
    assert registry["vessels"].labels == {0: NAMES[0], Label.KIDNEY: "kidney", Label.ARTERY: "artery",
                                          Label.VEIN: "vein"}
    assert registry["tumor"].labels == {0: NAMES[0], Label.KIDNEY: "kidney", Label.TUMOR: "tumor"}
    assert registry["ureter"].labels == {0: NAMES[0], Label.KIDNEY: "kidney", Label.URETER: "ureter"}
    # every model label maps onto an output label of the same name
    for name in ("vessels", "ureter", "tumor"):
        spec = registry[name]
        for model in spec.models:
            for m, o in model.label_map.items():
                assert model.model_labels[m] == spec.labels[o]


def test_total_merges_part_models_into_totalsegmentator_numbers(registry):
    total = registry["total"]
    assert len(total.models) >= 2
    assert {v: n for v, n in total.labels.items() if v} == TOTAL_CLASSES
    targets = [set(m.label_map.values()) for m in total.models]
    assert set().union(*targets) == set(TOTAL_CLASSES)  # every class comes from some part
    assert not targets[0] & targets[1]  # parts do not overlap
    for model in total.models:
        for m, o in model.label_map.items():
            assert model.model_labels[m] == total.labels[o]


def _write(tmp_path: Path, data: dict) -> Path:
    """A registry in tmp_path whose relative folders point at the committed demo models."""
    shutil.copytree(DEFAULT_REGISTRY.parent / "demo", tmp_path / "demo", dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("*.pth"))
    for ckpt in (DEFAULT_REGISTRY.parent / "demo").glob("*/*/fold_*/*.pth"):
        dst = tmp_path / ckpt.relative_to(DEFAULT_REGISTRY.parent)
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.symlink_to(ckpt)
    path = tmp_path / "registry.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _base() -> dict:
    return yaml.safe_load(DEFAULT_REGISTRY.read_text())


def test_env_variable_selects_the_registry(tmp_path, monkeypatch):
    data = _base()
    data["tasks"] = {"tumor": data["tasks"]["tumor"]}
    monkeypatch.setenv("MEDSEG_MODEL_REGISTRY", str(_write(tmp_path, data)))
    config = ServerConfig.from_env("nnunet")
    assert set(load_registry(config.model_registry)) == {"tumor"}


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d["tasks"]["tumor"]["models"][0].update(folder="demo/nowhere"), "does not exist"),
        (lambda d: d["tasks"]["tumor"]["models"][0].update(folds=[3]), "fold_3.*does not exist"),
        (lambda d: d["tasks"]["tumor"].update(phases=["venous"]), "unknown phase 'venous'"),
        (lambda d: d["tasks"]["vessels"].update(phases=["arterial"]), "expects 2 input channels"),
        (lambda d: d["tasks"]["tumor"]["models"][0].update(label_map={"cyst": "tumor"}),
         "model label 'cyst' is not one of"),
        (lambda d: d["tasks"]["tumor"].update(structures=["kidney", "stone"]), "structure 'stone' is not in"),
        (lambda d: d["tasks"]["tumor"].update(models=[]), "`models` must be a non-empty list"),
        (lambda d: d.update(tasks={}), "non-empty `tasks`"),
        (lambda d: d["settings"].update(tile_batch_size=0), "tile_batch_size: must be a positive integer"),
        (lambda d: d["settings"].update(fast={"tile_step_size": 1.5}), "settings.fast: tile_step_size must be"),
        (lambda d: d["settings"].update(fast={"max_folds": -1}), "max_folds must be an integer >= 0"),
        (lambda d: d["settings"].update(fast={"tile_step": 0.8}), "unknown setting.*tile_step"),
    ],
)
def test_bad_registry_names_the_problem(tmp_path, edit, message):
    data = _base()
    edit(data)
    path = _write(tmp_path, data)
    with pytest.raises(ValueError, match=message):
        load_registry(path)


def test_dataset_json_without_labels_is_rejected(tmp_path):
    path = _write(tmp_path, _base())
    folder = tmp_path / "demo" / "Dataset905_Tumor" / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    ds = json.loads((folder / "dataset.json").read_text())
    ds["labels"] = {"background": 0, "something": 1}
    (folder / "dataset.json").write_text(json.dumps(ds))
    with pytest.raises(ValueError, match="Dataset905_Tumor.*model label 'kidney' is not one of"):
        load_registry(path)


def test_missing_registry_file(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_registry(tmp_path / "none.yaml")


def test_fast_mode_comes_from_the_registry_and_a_task_can_override_it(tmp_path):
    data = _base()
    data["tasks"]["tumor"].setdefault("settings", {})["fast"] = {"tile_step_size": 0.7}
    registry = load_registry(_write(tmp_path, data))
    default_fast = registry["ureter"].mode("fast")
    assert (default_fast.tile_step_size, default_fast.max_folds) == (0.8, 1)  # models/registry.yaml
    tumor = registry["tumor"].mode("fast")
    assert (tumor.tile_step_size, tumor.max_folds) == (0.7, 1)  # max_folds still the default's
    assert registry["tumor"].mode("accurate").tile_step_size == registry["tumor"].tile_step_size
