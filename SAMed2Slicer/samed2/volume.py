"""Volumes and their geometry: voxel, RAS and LPS coordinates, and slices along voxel axes.

Conventions used by the whole engine and by the Slicer logic:

- ``Volume.array`` is indexed ``[k, j, i]``, as ``SimpleITK.GetArrayFromImage`` and
  Slicer's ``slicer.util.arrayFromVolume`` return it: ``array.shape == (nk, nj, ni)``.
- A voxel index ``(i, j, k)`` is continuous; integer values are voxel centres, so voxel
  ``n`` covers ``[n - 0.5, n + 0.5)`` along its axis.
- ``Volume.ijk_to_ras`` is the 4x4 matrix taking ``(i, j, k, 1)`` to RAS millimetres, the
  matrix of Slicer's ``vtkMRMLScalarVolumeNode.GetIJKToRASMatrix``.
  ``Volume(array_kji, ijk_to_ras)`` is all the Slicer side needs.
  LPS (SimpleITK, ITK, DICOM patient coordinates) is RAS with x and y negated;
  ``Volume.ijk_to_lps`` is ``diag(-1, -1, 1, 1) @ ijk_to_ras``.
- "axis" in this module always means a voxel axis: 0 = i, 1 = j, 2 = k (never an array
  axis; the array axis of voxel axis ``a`` is ``2 - a``). An axial CT is sliced along
  axis 2 (k).
- A slice along ``axis`` at ``index`` is a 2D array whose rows and columns are the two other
  voxel axes, in array order (see :func:`slice_axes`):
  axis 2 -> ``array[index]`` (rows j, columns i); axis 1 -> ``array[:, index, :]``
  (rows k, columns i); axis 0 -> ``array[:, :, index]`` (rows k, columns j).
  Slice pixel coordinates are ``(x, y) = (column, row)``, continuous, integers at pixel
  centres: what SAM 2 takes as point prompts.

Bad input raises :class:`~samed2.errors.InputError` with a message that says what is wrong:
2D or 4D images, multi-component pixels, empty volumes, volumes above ``MAX_VOXELS`` (unless
``max_voxels=None``), singular matrices, oblique views, points outside the volume. Reading files
is :mod:`samed2.volume_files`, the model's input and output :mod:`samed2.model_coords`; constant
volumes and NaN/inf voxels are handled by :mod:`samed2.presets`.

Needs numpy and SimpleITK only (no torch): the Slicer logic imports it at start-up.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from samed2.errors import InputError

MAX_VOXELS = 2**29
"""Default size limit, 536,870,912 voxels (e.g. 512 x 512 x 2048): larger volumes are refused
unless the caller passes ``max_voxels=None`` (or a larger limit)."""
DEFAULT_OBLIQUE_TOLERANCE_DEG = 3.0
"""Largest angle between a view's normal and a voxel slice plane's normal that still counts as
that plane: about 6 mm out of plane at 120 mm from the centre of the view."""
RAS_FROM_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
"""Flips x and y: LPS to RAS and, being its own inverse, RAS to LPS."""
SPACES = ("RAS", "LPS")
AXIS_NAMES = ("i", "j", "k")

@dataclass(frozen=True)
class SlicePoint:
    """A point on a slice: ``index`` along the slicing axis, ``(x, y)`` = (column, row)."""

    index: int
    x: float
    y: float


class Volume:
    """A 3D scalar image: ``array[k, j, i]`` plus its ``ijk_to_ras`` 4x4 matrix.

    ``array`` is stored as given (no copy) behind a read-only view, so the engine cannot
    modify the caller's data. ``modality`` is the DICOM modality ("CT", "MR", ...) when known.
    """

    def __init__(self, array, ijk_to_ras, modality: str | None = None,
                 max_voxels: int | None = MAX_VOXELS):
        array = np.asarray(array)
        check_array_layout(array.shape, array.dtype, max_voxels)
        self.array = array.view()
        self.array.flags.writeable = False
        self._ijk_to_ras = checked_matrix(ijk_to_ras)
        self._ras_to_ijk = np.linalg.inv(self._ijk_to_ras)
        self.modality = modality or None

    @classmethod
    def from_lps(cls, array, ijk_to_lps, modality: str | None = None,
                 max_voxels: int | None = MAX_VOXELS) -> Volume:
        """From ``array[k, j, i]`` and an index-to-LPS matrix (the ITK convention)."""
        return cls(array, RAS_FROM_LPS @ checked_matrix(ijk_to_lps), modality, max_voxels)

    @classmethod
    def from_sitk(cls, image: sitk.Image, modality: str | None = None,
                  max_voxels: int | None = MAX_VOXELS) -> Volume:
        """From a 3D scalar SimpleITK image (a 4D image with one time point is accepted)."""
        image = as_3d_scalar(image, "image")
        ijk_to_lps = np.eye(4)
        direction = np.array(image.GetDirection()).reshape(3, 3)
        ijk_to_lps[:3, :3] = direction @ np.diag(image.GetSpacing())
        ijk_to_lps[:3, 3] = image.GetOrigin()
        return cls.from_lps(sitk.GetArrayFromImage(image), ijk_to_lps, modality, max_voxels)

    @property
    def shape_ijk(self) -> tuple[int, int, int]:
        """Number of voxels along i, j, k (the array's shape reversed)."""
        nk, nj, ni = self.array.shape
        return ni, nj, nk

    @property
    def ijk_to_ras(self) -> np.ndarray:
        return self._ijk_to_ras.copy()

    @property
    def ras_to_ijk(self) -> np.ndarray:
        return self._ras_to_ijk.copy()

    @property
    def ijk_to_lps(self) -> np.ndarray:
        return RAS_FROM_LPS @ self._ijk_to_ras

    @property
    def lps_to_ijk(self) -> np.ndarray:
        return self._ras_to_ijk @ RAS_FROM_LPS

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along i, j, k."""
        return tuple(float(s) for s in np.linalg.norm(self._ijk_to_ras[:3, :3], axis=0))

    def to_sitk(self, array=None) -> sitk.Image:
        """This volume (or another ``array[k, j, i]`` on its grid, e.g. a mask) as a SimpleITK
        image with spacing, direction and origin in LPS."""
        values = self.array if array is None else np.asarray(array)
        if values.shape != self.array.shape:
            raise ValueError(f"array of shape {values.shape} is not on this volume's grid {self.array.shape}")
        image = sitk.GetImageFromArray(np.ascontiguousarray(values))
        ijk_to_lps = self.ijk_to_lps
        spacing = np.linalg.norm(ijk_to_lps[:3, :3], axis=0)
        image.SetSpacing(spacing.tolist())
        image.SetDirection((ijk_to_lps[:3, :3] / spacing).reshape(-1).tolist())
        image.SetOrigin(ijk_to_lps[:3, 3].tolist())
        return image

    def grid_image(self) -> sitk.Image:
        """An empty (zero, uint8) SimpleITK image on this volume's grid: a target to resample onto."""
        return self.to_sitk(np.zeros(self.array.shape, dtype=np.uint8))

    def index_to_physical(self, ijk, space: str = "RAS") -> np.ndarray:
        """Continuous voxel indices ``(i, j, k)``, shape (3,) or (N, 3), to RAS or LPS mm."""
        return apply_affine(self._ijk_to_ras if checked_space(space) == "RAS" else self.ijk_to_lps, ijk)

    def physical_to_index(self, points, space: str = "RAS") -> np.ndarray:
        """RAS or LPS points in mm, shape (3,) or (N, 3), to continuous ``(i, j, k)``."""
        return apply_affine(self._ras_to_ijk if checked_space(space) == "RAS" else self.lps_to_ijk, points)

    def voxel_at(self, point, space: str = "RAS") -> tuple[int, int, int]:
        """The ``(i, j, k)`` voxel containing a physical point; InputError when outside."""
        ijk = self.physical_to_index(point, space)
        self.require_inside(ijk, f"{space} point {format_point(point)}")
        return tuple(int(v) for v in nearest_index(ijk))

    def require_inside(self, ijk, what: str) -> None:
        """InputError when a continuous index lies outside the volume's voxels."""
        ijk = np.asarray(ijk, dtype=float)
        inside = (ijk >= -0.5) & (ijk < np.array(self.shape_ijk) - 0.5)
        if not (np.all(np.isfinite(ijk)) and np.all(inside)):
            raise InputError(f"{what} is outside the volume: voxel index (i, j, k) = "
                             f"{format_point(ijk)}, valid range 0..{self.shape_ijk[0] - 1}, "
                             f"0..{self.shape_ijk[1] - 1}, 0..{self.shape_ijk[2] - 1}")

    def num_slices(self, axis: int) -> int:
        """Number of slices along a voxel axis."""
        return self.shape_ijk[checked_axis(axis)]

    def slice_shape(self, axis: int) -> tuple[int, int]:
        """(rows, columns) of a slice along a voxel axis."""
        row_axis, col_axis = slice_axes(axis)
        return self.shape_ijk[row_axis], self.shape_ijk[col_axis]

    def get_slice(self, axis: int, index: int) -> np.ndarray:
        """Read-only 2D view of slice ``index`` along voxel ``axis`` (see module doc)."""
        return get_slice(self.array, axis, index)

    def to_slice_coords(self, points, axis: int, space: str = "RAS") -> np.ndarray:
        """Physical points to continuous ``(index, x, y)`` on slices along ``axis``, no bounds
        check (for box corners that may lie outside). Shape (3,) or (N, 3)."""
        return ijk_to_slice_coords(self.physical_to_index(points, space), axis)

    def to_slice_point(self, point, axis: int, space: str = "RAS") -> SlicePoint:
        """A physical point as a :class:`SlicePoint` on the nearest slice along ``axis``;
        InputError when the point is outside the volume."""
        ijk = self.physical_to_index(point, space)
        self.require_inside(ijk, f"{space} point {format_point(point)}")
        index, x, y = ijk_to_slice_coords(ijk, axis)
        return SlicePoint(int(nearest_index(index)), float(x), float(y))

    def slicing_axis(self, normal, space: str = "RAS",
                     tolerance_deg: float = DEFAULT_OBLIQUE_TOLERANCE_DEG) -> int:
        """The voxel axis whose slices are parallel to a view with this plane ``normal``.

        Compares the normal with each voxel slice plane's normal (the cross product of the
        two in-plane axes, correct for sheared grids too); InputError when the best one is
        more than ``tolerance_deg`` degrees away (an oblique view).
        """
        angles = self.view_angles(normal, space)
        best = int(np.argmin(angles))
        if angles[best] > tolerance_deg:
            listed = ", ".join(f"{a:.1f} deg from {n}-slices" for a, n in zip(angles, AXIS_NAMES))
            raise InputError(f"the view is oblique to the volume ({listed}; tolerance {tolerance_deg:g} deg): "
                             "rotate the view to the volume's planes (in Slicer: 'Rotate to volume plane') "
                             "or resample the volume")
        return best

    def view_angles(self, normal, space: str = "RAS") -> np.ndarray:
        """Angles in degrees between a view normal and the normals of the i, j and k slices."""
        normal_ras = np.asarray(normal, dtype=float).reshape(3)
        if checked_space(space) == "LPS":
            normal_ras = RAS_FROM_LPS[:3, :3] @ normal_ras
        length = np.linalg.norm(normal_ras)
        if not np.isfinite(length) or length == 0:
            raise InputError(f"view normal {format_point(normal)} is not a usable direction")
        angles = []
        for axis in range(3):
            plane_normal = slice_plane_normal(self._ijk_to_ras[:3, :3], axis)
            cosine = abs(plane_normal @ normal_ras) / length
            angles.append(np.degrees(np.arccos(min(cosine, 1.0))))
        return np.array(angles)

    def __repr__(self) -> str:
        return (f"Volume(shape_ijk={self.shape_ijk}, spacing={tuple(round(s, 4) for s in self.spacing)}, "
                f"dtype={self.array.dtype}, modality={self.modality!r})")


def slice_plane_normal(direction_3x3: np.ndarray, axis: int) -> np.ndarray:
    """Unit normal of the slices along ``axis``: cross product of the other two columns."""
    first, second = [direction_3x3[:, a] for a in range(3) if a != axis]
    normal = np.cross(first, second)
    return normal / np.linalg.norm(normal)


def slice_axes(axis: int) -> tuple[int, int]:
    """(row voxel axis, column voxel axis) of slices along ``axis``: 0 -> (k, j),
    1 -> (k, i), 2 -> (j, i)."""
    row_axis, col_axis = [a for a in (2, 1, 0) if a != checked_axis(axis)]
    return row_axis, col_axis


def ijk_to_slice_coords(ijk, axis: int) -> np.ndarray:
    """Continuous voxel indices (..., 3) to ``(index, x, y)`` on slices along ``axis``."""
    row_axis, col_axis = slice_axes(axis)
    return np.asarray(ijk, dtype=float)[..., [axis, col_axis, row_axis]]


def slice_coords_to_ijk(index, x, y, axis: int) -> np.ndarray:
    """``(index, x, y)`` on slices along ``axis`` back to continuous voxel ``(i, j, k)``."""
    row_axis, col_axis = slice_axes(axis)
    ijk = np.empty(np.broadcast(index, x, y).shape + (3,))
    ijk[..., axis], ijk[..., col_axis], ijk[..., row_axis] = index, x, y
    return ijk


def get_slice(array_kji: np.ndarray, axis: int, index: int) -> np.ndarray:
    """Read-only 2D view of slice ``index`` along voxel ``axis`` of an ``[k, j, i]`` array."""
    view = np.asarray(array_kji)[slice_selector(array_kji, axis, index)]
    view.flags.writeable = False
    return view


def put_slice(target_kji: np.ndarray, axis: int, index: int, slice_2d) -> None:
    """Write a 2D slice (e.g. a mask) into a 3D ``[k, j, i]`` array, in place."""
    selector = slice_selector(target_kji, axis, index)
    values = np.asarray(slice_2d)
    expected = target_kji[selector].shape
    if values.shape != expected:
        raise ValueError(f"slice of shape {values.shape} does not fit slices along axis "
                         f"{AXIS_NAMES[axis]} of shape {expected}")
    target_kji[selector] = values


def slice_selector(array_kji, axis: int, index: int) -> tuple:
    """The index tuple selecting slice ``index`` along voxel ``axis``; InputError if out of range."""
    array_axis = 2 - checked_axis(axis)
    count = np.shape(array_kji)[array_axis]
    if not 0 <= index < count:
        raise InputError(f"slice {index} is outside the volume along axis {AXIS_NAMES[axis]} (0..{count - 1})")
    selector = [slice(None)] * 3
    selector[array_axis] = int(index)
    return tuple(selector)


def as_3d_scalar(image: sitk.Image, source: str) -> sitk.Image:
    """The image itself if 3D scalar; its only time point if 4D with one; InputError otherwise."""
    size = image.GetSize()
    check_dimension(image.GetDimension(), size, source)
    check_components(image.GetNumberOfComponentsPerPixel(), source)
    if image.GetDimension() == 4:
        return sitk.Extract(image, [*size[:3], 0], [0, 0, 0, 0])
    return image


def check_dimension(dimension: int, size, source: str) -> None:
    if dimension == 3 or (dimension == 4 and size[3] == 1):
        return
    if dimension == 2:
        raise InputError(f"{source} is a 2D image of size {tuple(size)}; a volume (3D image) is needed")
    raise InputError(f"{source} is a {dimension}D image of size {tuple(size)}; "
                     "extract one 3D volume (one time point or channel) first")


def check_components(components: int, source: str) -> None:
    if components != 1:
        raise InputError(f"{source} has {components} components per voxel (colour or vector image); "
                         "a scalar (grey-level) volume is needed")


def check_array_layout(shape_kji: tuple, dtype, max_voxels: int | None) -> None:
    """InputError for non-3D, empty, too large or non-numeric arrays."""
    if len(shape_kji) != 3:
        dims = f"{len(shape_kji)}D"
        hint = "a volume (3D) is needed" if len(shape_kji) < 3 else "extract one 3D volume first"
        raise InputError(f"array of shape {tuple(shape_kji)} is {dims}: {hint}")
    voxels = int(np.prod(shape_kji))
    if voxels == 0:
        raise InputError(f"the volume is empty (array shape {tuple(shape_kji)})")
    if max_voxels is not None and voxels > max_voxels:
        raise InputError(f"the volume has {voxels:,} voxels (array shape {tuple(shape_kji)}), above the "
                         f"limit of {max_voxels:,}; crop or downsample it, or allow it with max_voxels=None")
    if dtype is not None and not is_real_dtype(dtype):
        raise InputError(f"voxel type {dtype} is not a real number type")


def is_real_dtype(dtype) -> bool:
    return np.issubdtype(dtype, np.bool_) or np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)


def checked_matrix(matrix) -> np.ndarray:
    """A 4x4 float64 affine matrix; InputError when malformed or singular."""
    matrix = np.array(matrix, dtype=float)
    if matrix.shape != (4, 4) or not np.all(np.isfinite(matrix)):
        raise InputError(f"index-to-physical matrix must be a finite 4x4 matrix, got shape {matrix.shape}")
    if not np.allclose(matrix[3], [0, 0, 0, 1]):
        raise InputError(f"index-to-physical matrix must end in the row (0, 0, 0, 1), got {matrix[3].tolist()}")
    if abs(np.linalg.det(matrix[:3, :3])) < 1e-12:
        raise InputError("index-to-physical matrix is singular (a zero spacing or collinear axes)")
    return matrix


def checked_space(space: str) -> str:
    if space not in SPACES:
        raise InputError(f"coordinate space must be 'RAS' or 'LPS', got {space!r}")
    return space


def checked_axis(axis: int) -> int:
    if axis not in (0, 1, 2):
        raise InputError(f"slicing axis must be a voxel axis 0 (i), 1 (j) or 2 (k), got {axis!r}")
    return int(axis)


def apply_affine(matrix: np.ndarray, points) -> np.ndarray:
    points = np.asarray(points, dtype=float)
    if points.shape[-1:] != (3,):
        raise InputError(f"points must have 3 coordinates, got shape {points.shape}")
    return points @ matrix[:3, :3].T + matrix[:3, 3]


def nearest_index(continuous):
    """Round half up (voxel n covers [n - 0.5, n + 0.5))."""
    return np.floor(np.asarray(continuous) + 0.5).astype(int)


def format_point(point) -> str:
    return "(" + ", ".join(f"{float(v):.2f}" for v in np.asarray(point, dtype=float).reshape(-1)) + ")"
