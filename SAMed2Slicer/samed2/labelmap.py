"""Label maps: reading and writing NIfTI / NRRD / Slicer seg.nrrd with segment names and
colours, and putting a label map onto another grid in physical space (nearest neighbour).

Where names live: seg.nrrd and .nrrd carry them in the header with Slicer's `Segment<i>_*`
keys (so Slicer shows names and colours); NIfTI has no place for them, so they go to a
`<name>.labels.json` file beside the image.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from samed2.errors import InputError
from samed2.files import atomic_output, check_output_path
from samed2.terminology import default_term

log = logging.getLogger(__name__)

_FLOAT_TYPES = (sitk.sitkFloat32, sitk.sitkFloat64)
_NIFTI_SUFFIXES = (".nii.gz", ".nii")
_NRRD_SUFFIXES = (".nrrd",)
LABELMAP_SUFFIXES = (".seg.nrrd",) + _NIFTI_SUFFIXES + _NRRD_SUFFIXES
# relative tolerance when deciding that two grids are the same (DICOM/NRRD round their numbers)
GRID_TOLERANCE = 1e-4


@dataclass
class LabelMap:
    """A 3D label image (integer labels, 0 = background), or a probability map (float image
    with values in [0, 1], one segment), with optional names and RGB colours per label."""

    image: sitk.Image
    names: dict[int, str] = field(default_factory=dict)
    colors: dict[int, tuple[int, int, int]] = field(default_factory=dict)
    source: str = "label map"

    @property
    def is_probability(self) -> bool:
        return self.image.GetPixelID() in _FLOAT_TYPES

    def labels(self) -> list[int]:
        """The labels present, ascending (a probability map has the single label 1)."""
        array = sitk.GetArrayViewFromImage(self.image)
        if self.is_probability:
            return [1] if bool((array > 0).any()) else []
        return [int(v) for v in np.unique(array) if v != 0]

    def name(self, label: int) -> str:
        return self.names.get(label, f"Label {label}")


# ---------------------------------------------------------------- reading


def read_labelmap(path: str | Path) -> LabelMap:
    """Read a label map (or probability map) from NIfTI, NRRD or seg.nrrd, with its names."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"label map not found: {path}")
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise InputError(f"cannot read {path} as an image: {str(exc).strip().splitlines()[-1]}") from None
    check_labelmap_image(image, str(path))
    image = _labels_or_probabilities(image, path)
    names, colors = _read_segment_keys(image)
    if not names:
        names, colors = _read_sidecar(_sidecar_path(path))
    return LabelMap(image, names, colors, source=str(path))


def check_labelmap_image(image: sitk.Image, name: str) -> None:
    """A label map is a 3D image with one value per voxel."""
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{name} has {image.GetNumberOfComponentsPerPixel()} values per voxel (a seg.nrrd with "
                         "several layers of overlapping segments?); save each layer as its own label map")
    if image.GetDimension() != 3:
        raise InputError(f"{name} is {image.GetDimension()}D; a label map must be 3D")


def _labels_or_probabilities(image: sitk.Image, path: Path) -> sitk.Image:
    """Integer images pass; float images become labels when integral, stay as probabilities
    when inside [0, 1], and are refused otherwise."""
    if image.GetPixelID() not in _FLOAT_TYPES:
        return image
    array = sitk.GetArrayViewFromImage(image)
    if not np.isfinite(array).all():
        raise InputError(f"{path} contains NaN or infinite values")
    if np.array_equal(array, np.round(array)):
        return sitk.Cast(image, sitk.sitkInt32)
    if array.min() >= 0 and array.max() <= 1:
        return sitk.Cast(image, sitk.sitkFloat32)
    raise InputError(f"{path} has non-integer values outside [0, 1]: neither a label map nor a probability map")


def _parse_color(text: str) -> tuple[int, int, int] | None:
    try:
        rgb = [float(v) for v in text.split()]
    except ValueError:
        return None
    if len(rgb) != 3 or not all(0 <= c <= 1 for c in rgb):
        return None
    return (round(rgb[0] * 255), round(rgb[1] * 255), round(rgb[2] * 255))


def _read_segment_keys(image: sitk.Image) -> tuple[dict[int, str], dict[int, tuple[int, int, int]]]:
    """Names and colours from Slicer's `Segment<i>_*` header keys (single-layer files)."""
    names, colors = {}, {}
    index = 0
    while image.HasMetaDataKey(f"Segment{index}_ID"):
        key = f"Segment{index}_"
        index += 1
        if image.HasMetaDataKey(key + "Layer") and image.GetMetaData(key + "Layer").strip() != "0":
            continue
        value = int(image.GetMetaData(key + "LabelValue")) if image.HasMetaDataKey(key + "LabelValue") else 1
        if image.HasMetaDataKey(key + "Name"):
            names[value] = image.GetMetaData(key + "Name")
        color = _parse_color(image.GetMetaData(key + "Color")) if image.HasMetaDataKey(key + "Color") else None
        if color:
            colors[value] = color
    return names, colors


def _sidecar_path(path: Path) -> Path:
    name = path.name
    for suffix in _NIFTI_SUFFIXES + (".seg.nrrd",) + _NRRD_SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return path.with_name(name + ".labels.json")


def _read_sidecar(path: Path) -> tuple[dict[int, str], dict[int, tuple[int, int, int]]]:
    if not path.is_file():
        return {}, {}
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))["labels"]
        names = {int(e["value"]): str(e["name"]) for e in entries}
        colors = {int(e["value"]): tuple(int(c) for c in e["color"]) for e in entries if "color" in e}
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{path}: not a label description file ({exc})") from None
    return names, colors


# ---------------------------------------------------------------- writing


def _suffix(path: Path) -> str:
    """The label-map format's file ending of a checked output path."""
    return next(s for s in LABELMAP_SUFFIXES if path.name.lower().endswith(s))


def write_labelmap(labelmap: LabelMap, path: str | Path) -> Path:
    """Write a label map as .nii/.nii.gz (names in a `.labels.json` beside it), .nrrd or
    .seg.nrrd (names and colours in Slicer's segment header keys)."""
    path = check_output_path(path, LABELMAP_SUFFIXES)
    suffix = _suffix(path)
    image = sitk.Image(labelmap.image)
    if suffix in (".seg.nrrd", ".nrrd") and not labelmap.is_probability:
        _set_segment_keys(image, labelmap)
    with atomic_output(path) as temporary:
        sitk.WriteImage(image, str(temporary), useCompression=True)
    if suffix in _NIFTI_SUFFIXES:
        _write_sidecar(labelmap, _sidecar_path(path))
    return path


def _segment_extents(image: sitk.Image) -> dict[int, str]:
    """Per label, its voxel bounding box as Slicer's "i0 i1 j0 j1 k0 k1" extent."""
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(image)
    extents = {}
    for label in stats.GetLabels():
        x, y, z, sx, sy, sz = stats.GetBoundingBox(label)
        extents[int(label)] = f"{x} {x + sx - 1} {y} {y + sy - 1} {z} {z + sz - 1}"
    return extents


def _set_segment_keys(image: sitk.Image, labelmap: LabelMap) -> None:
    """Slicer's seg.nrrd header: one `Segment<i>_*` group per label, all in layer 0."""
    image.SetMetaData("Segmentation_MasterRepresentation", "Binary labelmap")
    image.SetMetaData("Segmentation_ContainedRepresentationNames", "Binary labelmap|")
    image.SetMetaData("Segmentation_ReferenceImageExtentOffset", "0 0 0")
    for index, (label, extent) in enumerate(sorted(_segment_extents(labelmap.image).items())):
        name = labelmap.name(label)
        term = default_term(name, index)
        color = labelmap.colors.get(label, term.color)
        key = f"Segment{index}_"
        image.SetMetaData(key + "ID", f"Segment_{label}")
        image.SetMetaData(key + "Name", name)
        image.SetMetaData(key + "NameAutoGenerated", "0")
        image.SetMetaData(key + "Color", " ".join(f"{c / 255:.6g}" for c in color))
        image.SetMetaData(key + "ColorAutoGenerated", "0")
        image.SetMetaData(key + "LabelValue", str(label))
        image.SetMetaData(key + "Layer", "0")
        image.SetMetaData(key + "Extent", extent)
        image.SetMetaData(key + "Tags", f"TerminologyEntry:{term.slicer_tag()}|")


def _write_sidecar(labelmap: LabelMap, path: Path) -> None:
    if not labelmap.names and not labelmap.colors:
        path.unlink(missing_ok=True)  # a stale description would mislabel the new image
        return
    entries = []
    for label in sorted(set(labelmap.names) | set(labelmap.colors)):
        entry = {"value": label, "name": labelmap.name(label)}
        if label in labelmap.colors:
            entry["color"] = list(labelmap.colors[label])
        entries.append(entry)
    with atomic_output(path) as temporary:
        temporary.write_text(json.dumps({"labels": entries}, indent=2) + "\n", encoding="utf-8")


# ---------------------------------------------------------------- grids


def _rounded(values, digits: int) -> list[float]:
    return [round(float(v), digits) for v in values]


def grid_differences(image: sitk.Image, reference: sitk.Image, tolerance: float = GRID_TOLERANCE) -> list[str]:
    """What differs between two voxel grids (size, spacing, origin, direction); [] if none."""
    differences = []
    if image.GetSize() != reference.GetSize():
        differences.append(f"size {list(image.GetSize())} vs {list(reference.GetSize())}")
    spacing, ref_spacing = np.array(image.GetSpacing()), np.array(reference.GetSpacing())
    if not np.allclose(spacing, ref_spacing, rtol=tolerance, atol=0):
        differences.append(f"spacing {_rounded(spacing, 4)} vs {_rounded(ref_spacing, 4)}")
    origin, ref_origin = np.array(image.GetOrigin()), np.array(reference.GetOrigin())
    if np.abs(origin - ref_origin).max() > tolerance * ref_spacing.min():
        differences.append(f"origin {_rounded(origin, 3)} vs {_rounded(ref_origin, 3)}")
    if not np.allclose(image.GetDirection(), reference.GetDirection(), atol=tolerance):
        differences.append(f"direction {_rounded(image.GetDirection(), 3)} vs {_rounded(reference.GetDirection(), 3)}")
    return differences


def labels_on_grid(labelmap: LabelMap, reference: sitk.Image, target: str, warn=log.warning) -> np.ndarray:
    """The label values at the voxels of `reference`, the grid of `target` (e.g. "the DICOM series"),
    as a [k, j, i] array: as read when the grids agree, else resampled in physical space (nearest
    neighbour) with a warning. InputError when the label map does not overlap `target` at all."""
    differences = grid_differences(labelmap.image, reference)
    if not differences:
        return sitk.GetArrayFromImage(labelmap.image)
    require_overlap(labelmap, reference, target)
    warn(f"{labelmap.source} is not on the grid of {target} ({'; '.join(differences)}): resampled onto it in "
         "physical space (nearest neighbour)")
    return sitk.GetArrayFromImage(resample_like(labelmap.image, reference))


def require_overlap(labelmap: LabelMap, reference: sitk.Image, target: str) -> None:
    """InputError when the label map and the grid of `target` share no point in physical space."""
    low, high = physical_bounds(labelmap.image)
    target_low, target_high = physical_bounds(reference)
    if not bounds_overlap((low, high), (target_low, target_high)):
        raise InputError(f"{labelmap.source} (x, y, z from {low.round(1).tolist()} to {high.round(1).tolist()} mm) "
                         f"does not overlap {target} (from {target_low.round(1).tolist()} to "
                         f"{target_high.round(1).tolist()} mm): is it the segmentation of another image?")


def resample_like(image: sitk.Image, reference: sitk.Image) -> sitk.Image:
    """`image` sampled at the voxel centres of `reference` (nearest neighbour, 0 outside)."""
    return sitk.Resample(image, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0.0, image.GetPixelID())


def physical_bounds(image: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned physical box (min corner, max corner) covering all voxels, in mm."""
    size = np.array(image.GetSize())
    corners = [np.where(corner, size - 0.5, -0.5) for corner in np.ndindex(2, 2, 2)]
    points = np.array([image.TransformContinuousIndexToPhysicalPoint(c.tolist()) for c in corners])
    return points.min(axis=0), points.max(axis=0)


def bounds_overlap(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> bool:
    return bool(np.all(a[0] <= b[1]) and np.all(b[0] <= a[1]))
