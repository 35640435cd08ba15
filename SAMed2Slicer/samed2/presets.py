"""Intensity presets: map raw voxel values (CT Hounsfield units, MR signal) to float32 in [0, 1].

A preset is resolved once per volume into an :class:`IntensityWindow` (the raw values that
map to 0 and to 1); the window is then applied to whole volumes or single slices. Applying a
window always returns a new float32 array: the caller's array is never modified.

- CT windows (width W, level L, in HU): values <= L - W/2 map to 0, values >= L + W/2 to 1,
  linear in between. Named: ``soft_tissue``, ``lung``, ``bone``, ``brain``, ``liver``;
  any other with :func:`ct_window`.
- MR (and any non-CT modality): robust percentiles of the finite voxels, 0.5 % and 99.5 %
  by default (:func:`percentile_preset`).
- :func:`default_preset` picks one from the DICOM modality, or from the value range when
  the modality is unknown (NIfTI, NRRD): a minimum at or below -500 looks like CT in HU.

Non-finite voxels (NaN, +-inf) are not refused: windows are computed from the finite voxels
only, and in the output NaN and -inf become 0, +inf becomes 1, with a
:class:`NonFiniteVoxelsWarning`. A volume with no finite voxel, or whose finite voxels all
have one value, is refused with :class:`~samed2.errors.InputError` (nothing to segment).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np

from samed2.choices import ENGINE_PRESETS, check_choice
from samed2.errors import InputError

CT_WINDOWS: dict[str, tuple[float, float]] = {
    # name: (width, level) in Hounsfield units
    "soft_tissue": (400.0, 40.0),
    "lung": (1500.0, -600.0),
    "bone": (1800.0, 400.0),
    "brain": (80.0, 40.0),
    "liver": (150.0, 30.0),
}
MR_PERCENTILES = (0.5, 99.5)
CT_MINIMUM_HU_THRESHOLD = -500.0
"""Volumes of unknown modality whose minimum is at or below this look like CT in HU."""
PERCENTILE_SAMPLE_SIZE = 4_000_000
"""Percentiles of larger volumes are computed on an evenly strided sample of this size."""
RANGE_CHUNK_SIZE = 16_000_000
"""Min/max are computed in chunks of this many voxels, to bound temporary memory."""


class NonFiniteVoxelsWarning(UserWarning):
    """Some voxels were NaN or infinite and were replaced in the model's copy."""


@dataclass(frozen=True)
class IntensityWindow:
    """Raw values ``low`` -> 0.0 and ``high`` -> 1.0, linear in between, clipped outside."""

    low: float
    high: float

    def apply(self, values) -> np.ndarray:
        """Return a new float32 array in [0, 1]; ``values`` itself is left untouched."""
        raw = np.asarray(values)
        scaled = (raw.astype(np.float32) - np.float32(self.low)) / np.float32(self.high - self.low)
        replace_non_finite(scaled)
        return np.clip(scaled, 0.0, 1.0, out=scaled)


@dataclass(frozen=True)
class IntensityPreset:
    """A named rule that resolves to an :class:`IntensityWindow` for a given volume.

    ``kind`` is ``"window"`` (uses ``width``/``level``) or ``"percentile"`` (uses
    ``low_percentile``/``high_percentile``).
    """

    name: str
    kind: str
    width: float = 0.0
    level: float = 0.0
    low_percentile: float = 0.0
    high_percentile: float = 100.0

    def resolve(self, values) -> IntensityWindow:
        """The window for these voxel values; InputError if they carry no contrast."""
        low, high = finite_range(values)
        if self.kind == "window":
            return IntensityWindow(self.level - self.width / 2.0, self.level + self.width / 2.0)
        return percentile_window(values, self.low_percentile, self.high_percentile, (low, high))

    def apply(self, values) -> np.ndarray:
        """Resolve on ``values`` and apply: a new float32 array in [0, 1]."""
        return self.resolve(values).apply(values)


def ct_window(width: float, level: float, name: str = "custom") -> IntensityPreset:
    """A CT window of ``width`` HU centred on ``level`` HU (custom W/L)."""
    if not np.isfinite(width) or not np.isfinite(level) or width <= 0:
        raise InputError(f"CT window needs a finite width > 0 and a finite level, got W={width} L={level}")
    return IntensityPreset(name=name, kind="window", width=float(width), level=float(level))


def percentile_preset(low: float = MR_PERCENTILES[0], high: float = MR_PERCENTILES[1]) -> IntensityPreset:
    """Robust min/max: the ``low`` and ``high`` percentiles (0-100) of the finite voxels."""
    if not 0.0 <= low < high <= 100.0:
        raise InputError(f"percentiles must satisfy 0 <= low < high <= 100, got {low} and {high}")
    return IntensityPreset(name=f"percentile_{low:g}_{high:g}", kind="percentile",
                           low_percentile=float(low), high_percentile=float(high))


def get_preset(name: str, values=None, modality: str | None = None) -> IntensityPreset:
    """A preset by name: a CT window name, ``"mr"`` (percentiles) or ``"auto"``.

    ``"auto"`` needs ``values`` (and uses ``modality`` when known): see :func:`default_preset`.
    """
    check_choice("intensity preset", name, ENGINE_PRESETS)
    if name in CT_WINDOWS:
        width, level = CT_WINDOWS[name]
        return ct_window(width, level, name=name)
    if name == "mr":
        return percentile_preset()
    if values is None:
        raise InputError("the 'auto' intensity preset needs the volume's values to choose a preset")
    return default_preset(values, modality)


def default_preset(values, modality: str | None = None) -> IntensityPreset:
    """CT soft-tissue window for CT, robust percentiles otherwise.

    The DICOM modality decides when given (``"CT"`` -> CT; ``"MR"``, ``"PT"``, ... ->
    percentiles). Without it, a finite minimum <= ``CT_MINIMUM_HU_THRESHOLD`` (air is about
    -1000 HU, CT padding -1024 to -3024) is taken as CT.
    """
    if modality:
        is_ct = modality.strip().upper() == "CT"
    else:
        is_ct = finite_range(values)[0] <= CT_MINIMUM_HU_THRESHOLD
    return get_preset("soft_tissue") if is_ct else percentile_preset()


def finite_range(values) -> tuple[float, float]:
    """(min, max) over the finite voxels; InputError when none is finite or all are equal."""
    flat = np.asarray(values).reshape(-1)
    lows, highs = [], []
    for start in range(0, flat.size, RANGE_CHUNK_SIZE):
        finite = finite_values(flat[start:start + RANGE_CHUNK_SIZE])
        if finite.size:
            lows.append(finite.min())
            highs.append(finite.max())
    if not lows:
        raise InputError("the volume has no finite voxel (all NaN or infinite, or empty): nothing to segment")
    low, high = float(min(lows)), float(max(highs))
    if low == high:
        raise InputError(f"the volume is constant (every voxel is {low:g}): nothing to segment")
    return low, high


def finite_values(flat: np.ndarray) -> np.ndarray:
    """The finite entries of a flat array (all of them for integer and bool arrays)."""
    if np.issubdtype(flat.dtype, np.floating):
        return flat[np.isfinite(flat)]
    return flat


def percentile_window(values, low_pct: float, high_pct: float,
                      value_range: tuple[float, float]) -> IntensityWindow:
    """Window between two percentiles of the finite voxels (of an evenly strided sample of
    ``PERCENTILE_SAMPLE_SIZE`` voxels for larger volumes); ``value_range`` where they coincide."""
    flat = np.asarray(values).reshape(-1)
    step = math.ceil(flat.size / PERCENTILE_SAMPLE_SIZE)
    sample = finite_values(flat[::step])
    if sample.size == 0:
        return IntensityWindow(*value_range)
    low, high = np.percentile(sample, [low_pct, high_pct])
    if high <= low:
        return IntensityWindow(*value_range)
    return IntensityWindow(float(low), float(high))


def replace_non_finite(scaled: np.ndarray) -> None:
    """In place: NaN and -inf -> 0, +inf -> 1, with a warning saying how many."""
    bad = ~np.isfinite(scaled)
    count = int(bad.sum())
    if count == 0:
        return
    warnings.warn(f"{count} voxel(s) are NaN or infinite; the model's copy uses 0 for NaN and -inf, "
                  "1 for +inf (the volume itself is unchanged)", NonFiniteVoxelsWarning, stacklevel=3)
    np.nan_to_num(scaled, copy=False, nan=0.0, posinf=1.0, neginf=0.0)
