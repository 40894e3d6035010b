"""The label convention, read from the contract (protos/medseg/volume/v1/volume.proto).

The enum there is the one place where label numbers, names and colours are defined; this
module only turns it into convenient Python values.
"""
from __future__ import annotations

from enum import IntEnum
from typing import Callable, Iterable

from medseg.volume.v1 import volume_pb2

_DESCRIPTOR = volume_pb2.Label.DESCRIPTOR


def _option(value_descriptor, extension) -> str:
    return value_descriptor.GetOptions().Extensions[extension]


# value -> lower-case structure name, e.g. {0: "background", 1: "kidney", ...}
NAMES: dict[int, str] = {v.number: _option(v, volume_pb2.label_name) for v in _DESCRIPTOR.values}
# value -> "#rrggbb"
COLORS: dict[int, str] = {v.number: _option(v, volume_pb2.label_color) for v in _DESCRIPTOR.values}

# Label.KIDNEY == 1 etc.; members are named after the structure.
Label = IntEnum("Label", {name.upper(): value for value, name in NAMES.items()})

# Structures of the convention (everything but background).
STRUCTURES: dict[int, str] = {v: n for v, n in NAMES.items() if v != 0}


def convention_table() -> dict[int, str]:
    """The convention's label table, background included."""
    return dict(NAMES)

# The contrast phases of a case, in acquisition order (the request fields are
# `<phase>_path`; model registries name their inputs by these).
PHASES = ("arterial", "portal", "delayed")

# TotalSegmentator's kidney classes (class number -> name), for organ masks without a table.
TOTALSEG_KIDNEY_CLASSES = {2: "kidney_right", 3: "kidney_left"}
# TotalSegmentator v2 `total` vertebrae, vertebrae_S1 (26) up to vertebrae_C1 (50), for organ
# masks without a table.
TOTALSEG_VERTEBRA_CLASSES = tuple(range(26, 51))
# The solid organs beside the kidneys (TotalSegmentator v2 `total` numbering and names): in the
# portal phase they enhance about as much as a renal tumor.
TOTALSEG_NEIGHBOUR_ORGAN_CLASSES = {1: "spleen", 5: "liver"}


def is_kidney_name(name: str) -> bool:
    """True for a label name that is kidney tissue: the convention's 'kidney' and
    TotalSegmentator's 'kidney_left' / 'kidney_right', but not its 'kidney_cyst_*'."""
    name = name.lower()
    return "kidney" in name and "cyst" not in name


def is_vertebra_name(name: str) -> bool:
    """True for TotalSegmentator's 'vertebrae_L1' etc."""
    return name.lower().startswith("vertebrae")


def is_neighbour_organ_name(name: str) -> bool:
    """True for the liver and the spleen (TOTALSEG_NEIGHBOUR_ORGAN_CLASSES' names)."""
    return name.lower() in TOTALSEG_NEIGHBOUR_ORGAN_CLASSES.values()


def organ_values(labels: dict[int, str] | None, is_name: Callable[[str], bool],
                 numbering: Iterable[int]) -> tuple[int, ...]:
    """The values of an organ mask that are one kind of organ: those whose name `is_name`
    accepts when the mask has a label table, else `numbering` (TotalSegmentator v2 `total`)."""
    if labels:
        return tuple(int(v) for v, name in labels.items() if is_name(name))
    return tuple(numbering)
