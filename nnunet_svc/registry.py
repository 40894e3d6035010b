"""The model registry: which nnU-Net v2 results folders serve which task.

One YAML file (default `models/registry.yaml`; the server takes env `MEDSEG_MODEL_REGISTRY`) maps each
task to one or more nnU-Net v2 results folders (`dataset.json`, `plans.json`,
`fold_*/checkpoint_*.pth`), the input phases in channel order, and how each model's labels land
in the task's output label table. Swapping in real weights is an edit of that file only.

Label tables and maps are written with names, not numbers, so no label number is hard-coded:
- `labels: convention` + `structures: [kidney, tumor]` takes numbers and names from the contract's
  label convention (`medseg.labels`); `labels: {1: spleen, 2: kidney_right, ...}` gives an explicit
  table (TotalSegmentator's own class numbers for `total`).
- a model's `label_map` maps its dataset.json label names to output label names; left out, labels
  map by identical name. Numbers are accepted too (model value -> output value).
"""
from __future__ import annotations

import json
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from medseg.labels import NAMES as CONVENTION_NAMES
from medseg.labels import PHASES, is_kidney_name
DEFAULT_REGISTRY = Path(__file__).resolve().parent.parent / "models" / "registry.yaml"
@dataclass
class ModelSpec:
    """One nnU-Net v2 results folder and how its labels map onto the task's output labels."""

    folder: Path
    folds: tuple
    checkpoint: str
    label_map: dict[int, int]  # model label value -> task output label value
    channel_names: tuple[str, ...] = ()  # dataset.json channel names, in channel order
    model_labels: dict[int, str] = field(default_factory=dict)  # dataset.json labels, value -> name


def model_version(spec: ModelSpec) -> str:
    """Human-readable identity of a results folder: dataset/trainer__plans__configuration,
    folds and checkpoint (the digest says whether the weights are the same)."""
    folds = ",".join(str(f) for f in spec.folds)
    return f"{spec.folder.parent.name}/{spec.folder.name} folds {folds} {spec.checkpoint}"


def model_digest(specs: list[ModelSpec]) -> str:
    """sha256 over what a prediction depends on: each model's plans.json, dataset.json and
    its folds' checkpoints, in order. Equal digests mean the same weights and settings."""
    digest = hashlib.sha256()
    for spec in specs:
        files = [spec.folder / "plans.json", spec.folder / "dataset.json"]
        files += [spec.folder / f"fold_{f}" / spec.checkpoint for f in spec.folds]
        for path in files:
            with open(path, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class ModeSettings:
    """What one inference mode runs: the sliding-window tile step and how many folds."""

    tile_step_size: float
    max_folds: int = 0  # 0 = every fold the registry lists


# INFERENCE_MODE_FAST when the registry says nothing: TotalSegmentator's fast tile step, one fold.
FAST_DEFAULT = ModeSettings(tile_step_size=0.8, max_folds=1)
MODES = ("accurate", "fast")


@dataclass
class TaskSpec:
    """A task served by one or more models whose labels are merged (later models win overlaps)."""

    name: str
    phases: list[str]
    models: list[ModelSpec]
    labels: dict[int, str]
    kidney_crop: bool = False
    # Cheap low-resolution model used to find the kidneys when no kidney mask is at hand.
    locator: ModelSpec | None = None
    locator_kidney_labels: tuple[int, ...] = ()  # locator model label values that are kidney
    crop_margin_mm: float = 30.0
    tile_step_size: float = 0.5
    use_mirroring: bool = True
    tile_batch_size: int = 1  # sliding-window tiles per forward pass (1 = nnU-Net's own loop)
    fast: ModeSettings = FAST_DEFAULT

    def mode(self, name: str) -> ModeSettings:
        """The settings of inference mode `name` (one of MODES)."""
        if name == "fast":
            return self.fast
        if name == "accurate":
            return ModeSettings(self.tile_step_size, 0)
        raise ValueError(f"unknown inference mode {name!r}; expected one of {list(MODES)}")


def _fail(source: Path, where: str, why: str) -> ValueError:
    return ValueError(f"model registry {source}: {where}: {why}")


def _read_dataset_json(folder: Path, source: Path, where: str) -> dict:
    path = folder / "dataset.json"
    if not folder.is_dir():
        raise _fail(source, where, f"results folder {folder} does not exist")
    for needed in ("dataset.json", "plans.json"):
        if not (folder / needed).is_file():
            raise _fail(source, where, f"{folder} has no {needed} (not an nnU-Net v2 results folder)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise _fail(source, where, f"{path} is not valid JSON: {err}") from err


def _model_labels(dataset_json: dict) -> dict[int, str]:
    out = {}
    for name, value in dataset_json.get("labels", {}).items():
        if isinstance(value, (list, tuple)):  # region-based models are not supported for serving
            raise ValueError(f"label {name!r} is a region {value}; region-based models are not supported")
        out[int(value)] = name
    return out


def _resolve_label(key: Any, table: dict[int, str], what: str) -> int:
    """A label given by name or value -> its value in `table`."""
    if isinstance(key, bool):
        raise ValueError(f"{what} label {key!r} is neither a name nor a number")
    if isinstance(key, int) or (isinstance(key, str) and key.strip().isdigit()):
        value = int(key)
        if value not in table:
            raise ValueError(f"{what} label {value} is not one of {sorted(table)}")
        return value
    by_name = {name: value for value, name in table.items()}
    if key not in by_name:
        raise ValueError(f"{what} label {key!r} is not one of {sorted(by_name)}")
    return by_name[key]


def _positive_int(value, source: Path, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _fail(source, where, f"must be a positive integer, got {value!r}")
    return value


def _parse_labels(task: str, raw: dict, source: Path) -> dict[int, str]:
    labels = raw.get("labels")
    if labels == "convention":
        structures = raw.get("structures")
        if not structures:
            raise _fail(source, f"task {task!r}", "labels: convention needs a `structures` list")
        names = {name: value for value, name in CONVENTION_NAMES.items()}
        table = {0: CONVENTION_NAMES[0]}
        for s in structures:
            if s not in names:
                raise _fail(source, f"task {task!r}", f"structure {s!r} is not in the label convention {sorted(names)}")
            table[names[s]] = s
        return dict(sorted(table.items()))
    if isinstance(labels, dict) and labels:
        try:
            table = {int(k): str(v) for k, v in labels.items()}
        except (TypeError, ValueError) as err:
            raise _fail(source, f"task {task!r}", f"label table keys must be integers: {err}") from err
        table.setdefault(0, "background")
        if any(v < 0 or v > 65535 for v in table):
            raise _fail(source, f"task {task!r}", "label values must be within 0..65535")
        if len(set(table.values())) != len(table):
            raise _fail(source, f"task {task!r}", "label names must be unique")
        return dict(sorted(table.items()))
    raise _fail(source, f"task {task!r}", "`labels` must be `convention` or a {value: name} table")


def _parse_model(raw: Any, task: str, index: int, out_labels: dict[int, str], source: Path,
                 map_labels: bool = True) -> ModelSpec:
    where = f"task {task!r} model {index}"
    if not isinstance(raw, dict) or "folder" not in raw:
        raise _fail(source, where, "each model needs a `folder`")
    folder = Path(os.path.expandvars(os.path.expanduser(str(raw["folder"]))))
    if not folder.is_absolute():
        folder = source.parent / folder
    folder = folder.resolve()
    where = f"{where} ({folder.parent.name}/{folder.name})"
    dataset_json = _read_dataset_json(folder, source, where)
    folds_raw = raw.get("folds", [0])
    folds = tuple(f if f == "all" else int(f) for f in (folds_raw if isinstance(folds_raw, list) else [folds_raw]))
    checkpoint = str(raw.get("checkpoint", "checkpoint_final.pth"))
    for f in folds:
        ckpt = folder / f"fold_{f}" / checkpoint
        if not ckpt.is_file():
            raise _fail(source, where, f"checkpoint {ckpt} does not exist")
    try:
        model_labels = _model_labels(dataset_json)
    except ValueError as err:
        raise _fail(source, where, str(err)) from err
    label_map: dict[int, int] = {}
    if map_labels:
        raw_map = raw.get("label_map")
        try:
            if raw_map is None:  # same names in model and output table
                out_by_name = {n: v for v, n in out_labels.items()}
                label_map = {v: out_by_name[n] for v, n in model_labels.items() if v != 0 and n in out_by_name}
            else:
                for m, o in raw_map.items():
                    label_map[_resolve_label(m, model_labels, "model")] = _resolve_label(o, out_labels, "output")
        except ValueError as err:
            raise _fail(source, where, str(err)) from err
        if not label_map:
            raise _fail(source, where, "no model label maps onto the task's label table")
        if 0 in label_map and label_map[0] != 0:
            raise _fail(source, where, "background (0) must map to 0")
        label_map.pop(0, None)
    channels = dataset_json.get("channel_names") or dataset_json.get("modality") or {}
    channel_names = tuple(str(channels[k]) for k in sorted(channels, key=int))
    return ModelSpec(folder=folder, folds=folds, checkpoint=checkpoint, label_map=label_map,
                     channel_names=channel_names, model_labels=model_labels)


def _parse_task(name: str, raw: Any, defaults: dict, source: Path) -> TaskSpec:
    where = f"task {name!r}"
    if not isinstance(raw, dict):
        raise _fail(source, where, "must be a mapping")
    phases = raw.get("phases")
    if not isinstance(phases, list) or not phases:
        raise _fail(source, where, f"`phases` must be a non-empty list of {list(PHASES)}")
    for p in phases:
        if p not in PHASES:
            raise _fail(source, where, f"unknown phase {p!r}; expected one of {list(PHASES)}")
    if len(set(phases)) != len(phases):
        raise _fail(source, where, f"phases repeat: {phases}")
    labels = _parse_labels(name, raw, source)
    models_raw = raw.get("models")
    if not isinstance(models_raw, list) or not models_raw:
        raise _fail(source, where, "`models` must be a non-empty list")
    models = [_parse_model(m, name, i, labels, source) for i, m in enumerate(models_raw)]
    for i, m in enumerate(models):
        if m.channel_names and len(m.channel_names) != len(phases):
            raise _fail(source, f"{where} model {i}",
                        f"model expects {len(m.channel_names)} input channels {list(m.channel_names)} "
                        f"but the task lists {len(phases)} phases {phases}")
    settings = {**defaults, **(raw.get("settings") or {})}
    fast = {**(defaults.get("fast") or {}), **((raw.get("settings") or {}).get("fast") or {})}
    kidney_crop = bool(raw.get("kidney_crop", False))
    locator = None
    locator_labels: tuple[int, ...] = ()
    if raw.get("kidney_locator") is not None:
        loc_raw = raw["kidney_locator"]
        locator = _parse_model(loc_raw, name, -1, labels, source, map_labels=False)
        names = loc_raw.get("kidney_labels") or [n for n in locator.model_labels.values() if is_kidney_name(n)]
        try:
            locator_labels = tuple(_resolve_label(n, locator.model_labels, "locator") for n in names)
        except ValueError as err:
            raise _fail(source, f"{where} kidney_locator", str(err)) from err
        if not locator_labels:
            raise _fail(source, f"{where} kidney_locator", "the locator model has no kidney label")
        if len(locator.channel_names) != 1:
            raise _fail(source, f"{where} kidney_locator", "the locator must take one CT channel")
    return TaskSpec(
        name=name, phases=list(phases), models=models, labels=labels, kidney_crop=kidney_crop,
        locator=locator, locator_kidney_labels=locator_labels,
        crop_margin_mm=float(raw.get("crop_margin_mm", settings.get("crop_margin_mm", 30.0))),
        tile_step_size=float(settings.get("tile_step_size", 0.5)),
        use_mirroring=bool(settings.get("use_mirroring", True)),
        tile_batch_size=_positive_int(settings.get("tile_batch_size", 1), source, f"{where} settings.tile_batch_size"),
        fast=_mode_settings(fast, FAST_DEFAULT, source, f"{where} settings.fast"),
    )


def _mode_settings(raw: dict, default: ModeSettings, source: Path, where: str) -> ModeSettings:
    unknown = set(raw) - {"tile_step_size", "max_folds"}
    if unknown:
        raise _fail(source, where, f"unknown setting(s) {sorted(unknown)}; expected tile_step_size, max_folds")
    step = raw.get("tile_step_size", default.tile_step_size)
    if isinstance(step, bool) or not isinstance(step, (int, float)) or not 0 < step <= 1:
        raise _fail(source, where, f"tile_step_size must be a number in (0, 1], got {step!r}")
    folds = raw.get("max_folds", default.max_folds)
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 0:
        raise _fail(source, where, f"max_folds must be an integer >= 0 (0 = every fold), got {folds!r}")
    return ModeSettings(float(step), folds)


def load_registry(path: Path | str | None = None) -> dict[str, TaskSpec]:
    """Read and check the registry; every folder, checkpoint and label reference must resolve."""
    source = Path(path or DEFAULT_REGISTRY).resolve()
    if not source.is_file():
        raise ValueError(f"model registry {source} does not exist")
    try:
        raw = yaml.safe_load(source.read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"model registry {source} is not valid YAML: {err}") from err
    if not isinstance(raw, dict) or not isinstance(raw.get("tasks"), dict) or not raw["tasks"]:
        raise ValueError(f"model registry {source}: needs a non-empty `tasks` mapping")
    defaults = raw.get("settings") or {}
    return {str(name): _parse_task(str(name), task, defaults, source) for name, task in raw["tasks"].items()}
