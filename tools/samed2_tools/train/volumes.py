"""A case ready for training: loaded (`samed2_tools.cases.load_case`) with its intensity window and
slicing axis; the label values or names a run asks for.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from samed2.errors import InputError
from samed2.presets import IntensityWindow, get_preset
from samed2.volume import get_slice
from samed2_tools.cases import Case, LoadedCase, load_case


@dataclass
class CaseVolume(LoadedCase):
    """One case on one grid: raw voxels, the label values [k, j, i], the resolved intensity window."""

    window: IntensityWindow
    axis: int

    @property
    def num_slices(self) -> int:
        return self.volume.num_slices(self.axis)

    def image_slices(self, indices) -> np.ndarray:
        """(T, H, W) float32 in [0, 1]: the preset applied to these slices only (the volume is untouched)."""
        return np.stack([self.window.apply(self.volume.get_slice(self.axis, int(k))) for k in indices])

    def object_slices(self, indices, value: int) -> np.ndarray:
        """(T, H, W) bool: where label `value` is on these slices."""
        return np.stack([get_slice(self.labels, self.axis, int(k)) == value for k in indices])

    def slices_with(self, value: int) -> np.ndarray:
        """Bool per slice along the axis: does label `value` appear on it."""
        array_axis = 2 - self.axis
        other = tuple(a for a in range(3) if a != array_axis)
        return (self.labels == value).any(axis=other)


def load_case_volume(case: Case, axis: int, preset: str) -> CaseVolume:
    """Load a case for training and resolve its intensity preset."""
    loaded = load_case(case, "training")
    volume = loaded.volume
    window = get_preset(preset, volume.array, volume.modality).resolve(volume.array)
    return CaseVolume(loaded.name, volume, loaded.labels, loaded.names, window, axis)


def resolve_labels(requested: list, labelmaps_names: dict[str, dict[int, str]]) -> list[int]:
    """Label values for the requested values or names, checked against every case's label names.

    `labelmaps_names` maps case name -> {value: name}. A name must mean the same value in every
    case that names it, and at least one case must name it.
    """
    values = []
    for token in requested:
        text = str(token).strip()
        if text.lstrip("-").isdigit():
            values.append(int(text))
            continue
        values.append(_value_of_name(text, labelmaps_names))
    return values


def _value_of_name(name: str, labelmaps_names: dict[str, dict[int, str]]) -> int:
    key = _name_key(name)
    found = {case: value for case, names in labelmaps_names.items()
             for value, label_name in names.items() if _name_key(label_name) == key}
    if not found:
        known = sorted({n for names in labelmaps_names.values() for n in names.values()})
        listing = ", ".join(known) if known else "none: the label maps carry no names, use label values"
        raise InputError(f"no case names a label {name!r}; names found: {listing}")
    if len(set(found.values())) > 1:
        raise InputError(f"label {name!r} has different values in different cases: {found}")
    return next(iter(found.values()))


def _name_key(name: str) -> str:
    return " ".join(name.lower().replace("_", " ").replace("-", " ").split())

