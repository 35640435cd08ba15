"""The prompts a user would give, derived from the truth: the slice and extent for the box, and the
challenge's corrective click at the voxel deepest inside the largest error (SciPy's components and
distances)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from samed2.volume import ijk_to_slice_coords


@dataclass(frozen=True)
class Click:
    kji: tuple[int, int, int]
    positive: bool  # True: the object was missed here; False: over-segmented here
    depth: float  # voxels from the error component's edge


def largest_error_component(pred: np.ndarray, truth: np.ndarray) -> Optional[np.ndarray]:
    """The largest fully connected (26 in 3D, 8 in 2D) component of the voxels where `pred` and `truth`
    differ (None if none)."""
    from scipy import ndimage

    errors = pred != truth
    if not errors.any():
        return None
    labels, _ = ndimage.label(errors, structure=np.ones((3,) * errors.ndim, dtype=bool))
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def deepest_voxel(component: np.ndarray) -> tuple[tuple[int, ...], float]:
    """(index ([k, j, i], or [row, column] in 2D) of the voxel farthest from the component's edge (the
    array's border counts as edge), depth)."""
    from scipy import ndimage

    box = ndimage.find_objects(component.astype(np.uint8))[0]
    depth = ndimage.distance_transform_edt(np.pad(component[box], 1))[(slice(1, -1),) * component.ndim]
    local = np.unravel_index(int(np.argmax(depth)), depth.shape)
    voxel = tuple(int(s.start + v) for s, v in zip(box, local))
    return voxel, float(depth[local])


def corrective_click(pred: np.ndarray, truth: np.ndarray) -> Optional[Click]:
    """The challenge's simulated click: the deepest voxel of the largest error component (None when perfect)."""
    component = largest_error_component(pred, truth)
    if component is None:
        return None
    voxel, depth = deepest_voxel(component)
    return Click(voxel, bool(truth[voxel]), depth)


def slice_click(pred: np.ndarray, truth: np.ndarray) -> Optional[tuple[float, float, bool]]:
    """The same rule on one slice: (x, y, positive) at the pixel deepest inside the largest 8-connected
    error region of the slice (None when the slice is right)."""
    component = largest_error_component(pred, truth)
    if component is None:
        return None
    (row, column), _ = deepest_voxel(component)
    return float(column), float(row), bool(truth[row, column])


def click_on_slice(click: Click, axis: int) -> tuple[int, tuple[float, float, bool]]:
    """(slice index, (x, y, positive)) of a click for a session slicing along `axis`."""
    k, j, i = click.kji
    index, x, y = ijk_to_slice_coords((i, j, k), axis)
    return int(index), (float(x), float(y), click.positive)


def middle_slice(truth: np.ndarray, axis: int) -> int:
    """The slice along `axis` holding the object's median voxel (never an empty slice)."""
    positions = np.sort(np.nonzero(truth)[2 - axis])
    return int(positions[len(positions) // 2])


def extent(truth: np.ndarray, axis: int) -> tuple[int, int]:
    """First and last slice along `axis` holding the object."""
    positions = np.nonzero(truth)[2 - axis]
    return int(positions.min()), int(positions.max())
