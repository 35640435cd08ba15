"""DICOM Segmentation (SEG) export from label maps, and import back onto the source series.

The source series sets the geometry: a label map on another grid is resampled onto the
series' slices in physical space. Real-world defects of the source (empty UIDs, an empty
SpecificCharacterSet, irregular spacing, several series in one folder) are repaired on
in-memory copies and reported; the user's files are only ever read.
"""
from __future__ import annotations

import hashlib
import logging
import uuid
import warnings
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.sr.codedict import codes

from samed2 import __version__
from samed2.errors import DicomError, InputError
from samed2.files import atomic_output
from samed2.labelmap import (LabelMap, bounds_overlap, check_labelmap_image, grid_differences,
                             physical_bounds, read_labelmap, resample_like)
from samed2.terminology import Code, SegMetadata, SegmentAttributes, SegmentTerm, default_term, load_seg_metadata

log = logging.getLogger(__name__)

MANUFACTURER = "SAMed2Slicer"
MODEL_NAME = "samed2"
DEVICE_SERIAL_NUMBER = "0"  # software-only equipment has no serial number
DEFAULT_SERIES_NUMBER = 300
CONTENT_LABEL = "SAMED2"
MAX_SEGMENTS = 65535  # SegmentNumber is an unsigned short
# fraction of the smallest voxel size within which two positions are the same point
POSITION_TOLERANCE = 0.1
# relative spread of the gaps between slices beyond which spacing is irregular
SPACING_TOLERANCE = 0.01
_UID_ATTRIBUTES = ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID")


@dataclass
class Report:
    """Defects repaired in the source and other facts the user should know; each is logged."""

    repairs: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def repaired(self, message: str) -> None:
        log.warning(message)
        self.repairs.append(message)

    def warn(self, message: str) -> None:
        log.warning(message)
        self.warnings.append(message)

    def copy(self) -> Report:
        return Report(list(self.repairs), list(self.warnings))


# ---------------------------------------------------------------- source series


@dataclass
class SourceSeries:
    """The single-frame image slices of one series, repaired, headers only, sorted along the
    slice normal (`axes` columns: row direction, column direction, normal)."""

    directory: Path
    paths: list[Path]
    datasets: list[Dataset]
    axes: np.ndarray
    positions: np.ndarray
    pixel_spacing: tuple[float, float]
    regular: bool
    sheared: bool
    report: Report

    @property
    def series_uid(self) -> str:
        return str(self.datasets[0].SeriesInstanceUID)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (len(self.datasets), int(self.datasets[0].Rows), int(self.datasets[0].Columns))

    @property
    def gaps(self) -> np.ndarray:
        return np.diff(self.positions @ self.axes[:, 2])

    def _grid(self, origin: np.ndarray, slices: int, slice_spacing: float) -> sitk.Image:
        _, rows, columns = self.shape
        image = sitk.Image(columns, rows, slices, sitk.sitkUInt8)
        image.SetOrigin(origin.tolist())
        image.SetSpacing((self.pixel_spacing[1], self.pixel_spacing[0], slice_spacing))
        image.SetDirection(self.axes.flatten().tolist())
        return image

    def grid(self) -> sitk.Image:
        """A regular grid through the series: its slices when the spacing is regular, else
        the smallest gap from the first slice to the last."""
        gaps = self.gaps
        if gaps.size == 0:
            return self._grid(self.positions[0], 1, float(self.datasets[0].get("SliceThickness") or 1.0))
        if self.regular:
            return self._grid(self.positions[0], len(self.datasets), float(np.median(gaps)))
        step = float(gaps.min())
        return self._grid(self.positions[0], int(round(gaps.sum() / step)) + 1, step)

    def slice_grid(self, index: int) -> sitk.Image:
        """The one-slice grid of slice `index`."""
        return self._grid(self.positions[index], 1, float(np.median(self.gaps)) if self.gaps.size else 1.0)

    def slice_at(self, position: Sequence[float]) -> int | None:
        """Index of the slice whose origin is at `position`, or None."""
        distances = np.linalg.norm(self.positions - np.asarray(position, dtype=float), axis=1)
        index = int(distances.argmin())
        return index if distances[index] <= POSITION_TOLERANCE * self._smallest_step() else None

    def _smallest_step(self) -> float:
        steps = list(self.pixel_spacing) + ([float(self.gaps.min())] if self.gaps.size else [])
        return min(steps)


def load_series(dicom: str | Path, series_uid: str | None = None) -> SourceSeries:
    """Load and repair the image slices of one series from a folder (searched recursively).
    With several series in the folder, `series_uid` says which; the error lists them."""
    return _load_series(Path(dicom), series_uid, preferred_uid=None)


def _load_series(directory: Path, series_uid: str | None, preferred_uid: str | None) -> SourceSeries:
    if not directory.is_dir():
        raise DicomError(f"DICOM folder not found: {directory}")
    groups = _group_series(_read_image_headers(directory))
    uid = _choose_series(groups, directory, series_uid, preferred_uid)
    report = Report()
    members = _drop_duplicate_instances(groups[uid], report)
    _repair_instances(members, report)
    _repair_series_uids(members, uid, report)
    return _build_series(directory, members, report)


def _read_image_headers(directory: Path) -> list[tuple[Path, Dataset]]:
    """Headers of every single-frame image slice in the folder; other files are skipped."""
    images, dicom_files = [], 0
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        try:
            dataset = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError, EOFError, ValueError):
            continue
        dicom_files += 1
        if "ImagePositionPatient" in dataset and "Rows" in dataset:
            images.append((path, dataset))
    if not images:
        detail = (f"; its {dicom_files} DICOM file(s) are not single-frame image slices with ImagePositionPatient "
                  "(SEG, SR, DICOMDIR and enhanced multi-frame images are not supported as a source)"
                  if dicom_files else "")
        raise DicomError(f"no DICOM image slices in {directory}{detail}")
    return images


def _uid_from(*parts: str) -> str:
    """A deterministic UID: the 2.25 form of a name-based (SHA-1) UUID of `parts`."""
    return f"2.25.{uuid.uuid5(uuid.NAMESPACE_OID, '|'.join(('samed2',) + parts)).int}"


def _sop_instance_uid(path: Path, dataset: Dataset) -> str:
    """The SOP Instance UID, from the dataset, else the file meta, else a hash of the file."""
    meta = getattr(dataset, "file_meta", None) or Dataset()
    return (dataset.get("SOPInstanceUID") or meta.get("MediaStorageSOPInstanceUID")
            or _uid_from("sop", hashlib.sha256(path.read_bytes()).hexdigest()))


def _derived_uid(kind: str, members: list[tuple[Path, Dataset]]) -> str:
    """A UID that depends only on the slices' SOP Instance UIDs: the same files always get it."""
    return _uid_from(kind, *sorted(_sop_instance_uid(path, ds) for path, ds in members))


def _group_series(images: list[tuple[Path, Dataset]]) -> dict[str, list[tuple[Path, Dataset]]]:
    """Slices by SeriesInstanceUID; slices without one are grouped by what a series shares
    and keyed by a derived UID."""
    by_key: dict[tuple, list[tuple[Path, Dataset]]] = {}
    for path, ds in images:
        uid = ds.get("SeriesInstanceUID")
        key = (uid,) if uid else ("", ds.get("FrameOfReferenceUID"), ds.get("SeriesNumber"),
                                  ds.get("SeriesDescription"), ds.get("Modality"), ds.get("Rows"), ds.get("Columns"))
        by_key.setdefault(key, []).append((path, ds))
    return {key[0] or _derived_uid("series", members): members for key, members in by_key.items()}


def _describe_series(uid: str, members: list[tuple[Path, Dataset]]) -> str:
    first = members[0][1]
    derived = "" if first.get("SeriesInstanceUID") else ", UID derived: the files' SeriesInstanceUID is empty"
    return (f"{uid} ({first.get('Modality', '?')}, {str(first.get('SeriesDescription', '')).strip()!r}, "
            f"{len(members)} slices{derived})")


def _choose_series(groups: dict, directory: Path, series_uid: str | None, preferred_uid: str | None) -> str:
    listing = "; ".join(_describe_series(uid, members) for uid, members in groups.items())
    if series_uid is not None:
        if series_uid not in groups:
            raise DicomError(f"series {series_uid} is not in {directory}; it holds: {listing}")
        return series_uid
    if len(groups) == 1:
        return next(iter(groups))
    if preferred_uid in groups:
        return preferred_uid
    raise DicomError(f"{directory} holds {len(groups)} series; choose one with --series UID: {listing}")


def _drop_duplicate_instances(members: list[tuple[Path, Dataset]], report: Report) -> list[tuple[Path, Dataset]]:
    kept, seen = [], {}
    for path, ds in members:
        uid = _sop_instance_uid(path, ds)
        if uid in seen:
            report.warn(f"{path.name} is another copy of SOP instance {uid} ({seen[uid].name}); ignored")
            continue
        seen[uid] = path
        kept.append((path, ds))
    return kept


def _report_counts(counts: Counter, total: int, report: Report) -> None:
    for message, count in counts.items():
        report.repaired(f"{message} ({count} of {total} files)")


def _repair_instances(members: list[tuple[Path, Dataset]], report: Report) -> None:
    """Per-file repairs: SOP UIDs from the file meta, empty SpecificCharacterSet removed."""
    counts: Counter = Counter()
    for path, ds in members:
        meta = getattr(ds, "file_meta", None) or Dataset()
        if not ds.get("SOPInstanceUID"):
            from_meta = bool(meta.get("MediaStorageSOPInstanceUID"))
            ds.SOPInstanceUID = _sop_instance_uid(path, ds)
            counts["empty SOPInstanceUID " + ("taken from the file meta (MediaStorageSOPInstanceUID)"
                                              if from_meta else "replaced by a UID derived from the file's bytes")] += 1
        if not ds.get("SOPClassUID"):
            if not meta.get("MediaStorageSOPClassUID"):
                raise DicomError(f"{path}: SOPClassUID is empty in the dataset and in the file meta; "
                                 "cannot tell what kind of image this is")
            ds.SOPClassUID = meta.MediaStorageSOPClassUID
            counts["empty SOPClassUID taken from the file meta (MediaStorageSOPClassUID)"] += 1
        if "SpecificCharacterSet" in ds and not ds.SpecificCharacterSet:
            del ds.SpecificCharacterSet
            counts["empty SpecificCharacterSet removed (the default character repertoire applies)"] += 1
    _report_counts(counts, len(members), report)


def _repair_series_uids(members: list[tuple[Path, Dataset]], series_uid: str, report: Report) -> None:
    """Fill empty study, series and frame-of-reference UIDs: with the value the other slices
    agree on, or with a UID derived from the slices' SOP Instance UIDs."""
    for keyword in _UID_ATTRIBUTES:
        values = {str(ds.get(keyword)) for _, ds in members if ds.get(keyword)}
        if len(values) > 1:
            raise DicomError(f"series {series_uid}: its slices disagree on {keyword} ({', '.join(sorted(values))})")
        empty = [ds for _, ds in members if not ds.get(keyword)]
        if not empty:
            continue
        if values:
            fill, how = values.pop(), "the value of the other slices"
        elif keyword == "SeriesInstanceUID":
            fill, how = series_uid, "derived from a hash of the slices' SOP Instance UIDs"
        else:
            fill, how = _derived_uid(keyword, members), "derived from a hash of the slices' SOP Instance UIDs"
        for ds in empty:
            setattr(ds, keyword, fill)
        report.repaired(f"empty {keyword} set to {fill} ({how}; {len(empty)} of {len(members)} files)")


def _required(ds: Dataset, path: Path, keyword: str):
    value = ds.get(keyword)
    if value in (None, ""):
        raise DicomError(f"{path}: {keyword} is missing or empty; the slice geometry cannot be known")
    return value


def _build_series(directory: Path, members: list[tuple[Path, Dataset]], report: Report) -> SourceSeries:
    first_path, first = members[0]
    orientation = np.array(_required(first, first_path, "ImageOrientationPatient"), dtype=float)
    spacing = np.array(_required(first, first_path, "PixelSpacing"), dtype=float)
    for path, ds in members:
        if not np.allclose(np.array(_required(ds, path, "ImageOrientationPatient"), dtype=float), orientation, atol=1e-4):
            raise DicomError(f"{path}: ImageOrientationPatient differs from {first_path.name}'s within one series")
        if not np.allclose(np.array(_required(ds, path, "PixelSpacing"), dtype=float), spacing, rtol=1e-4):
            raise DicomError(f"{path}: PixelSpacing differs from {first_path.name}'s within one series")
        if (ds.Rows, ds.Columns) != (first.Rows, first.Columns):
            raise DicomError(f"{path}: image size differs from {first_path.name}'s within one series")
    row, column = orientation[:3], orientation[3:]
    axes = np.stack([row, column, np.cross(row, column)], axis=1)
    positions = np.array([np.array(_required(ds, path, "ImagePositionPatient"), dtype=float) for path, ds in members])
    order = np.argsort(positions @ axes[:, 2], kind="stable")
    members, positions = [members[i] for i in order], positions[order]
    regular, sheared = _check_spacing(members, positions, axes, spacing, report)
    return SourceSeries(directory, [p for p, _ in members], [ds for _, ds in members], axes, positions,
                        (float(spacing[0]), float(spacing[1])), regular, sheared, report)


def _check_spacing(members, positions: np.ndarray, axes: np.ndarray, spacing: np.ndarray,
                   report: Report) -> tuple[bool, bool]:
    """(regular, sheared): equal gaps along the normal, and whether slices shift in-plane."""
    if len(members) < 2:
        return True, False
    gaps = np.diff(positions @ axes[:, 2])
    tolerance = POSITION_TOLERANCE * float(min(spacing.min(), gaps.max()))
    duplicate = np.flatnonzero(gaps <= tolerance)
    if duplicate.size:
        i = int(duplicate[0])
        raise DicomError(f"{members[i][0].name} and {members[i + 1][0].name} are at the same position "
                         f"{positions[i].round(3).tolist()}: several acquisitions in one series are not supported")
    in_plane = (positions - positions[0]) @ axes[:, :2]
    sheared = bool(np.abs(in_plane).max() > tolerance)
    regular = bool(gaps.max() - gaps.min() <= SPACING_TOLERANCE * np.median(gaps)) and not sheared
    if sheared:
        report.warn("slice positions move within the slice plane (gantry tilt?); each slice is handled at its own position")
    elif not regular:
        report.warn(f"irregular slice spacing: gaps from {gaps.min():.4g} to {gaps.max():.4g} mm; "
                    "each slice is handled at its own position")
    return regular, sheared


def write_repaired_series(series: SourceSeries, folder: str | Path) -> list[Path]:
    """Write the source slices, pixel data included, with the repairs applied, so that an
    archive receives images consistent with the UIDs the SEG references."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for index, (path, repaired) in enumerate(zip(series.paths, series.datasets)):
        full = pydicom.dcmread(path)
        for keyword in ("SOPInstanceUID", "SOPClassUID") + _UID_ATTRIBUTES:
            setattr(full, keyword, repaired.get(keyword))
        if "SpecificCharacterSet" not in repaired and "SpecificCharacterSet" in full:
            del full.SpecificCharacterSet
        full.file_meta.MediaStorageSOPInstanceUID = repaired.SOPInstanceUID
        full.file_meta.MediaStorageSOPClassUID = repaired.SOPClassUID
        target = folder / f"{index + 1:04d}.dcm"
        with atomic_output(target) as temporary:
            full.save_as(temporary, enforce_file_format=True)
        written.append(target)
    return written


# ---------------------------------------------------------------- export


@dataclass
class ExportedSegment:
    number: int
    label: str
    label_map: int  # index of the input label map
    value: int  # its label value there
    voxels: int  # voxels inside the segment on the series grid


@dataclass
class ExportReport:
    path: Path
    sop_instance_uid: str
    series_instance_uid: str
    source_series_uid: str
    segments: list[ExportedSegment]
    repairs: list[str]
    warnings: list[str]


@dataclass
class _SegmentSpec:
    label_map: int
    value: int
    label: str
    term: SegmentTerm
    algorithm_type: str
    algorithm_name: str
    algorithm_version: str
    description: str | None = None
    anatomic_region: Code | None = None
    tracking_id: str | None = None
    tracking_uid: str | None = None


def export_seg(labels: LabelMap | str | Path | Sequence[LabelMap | str | Path], dicom: SourceSeries | str | Path,
               out: str | Path, *, series_uid: str | None = None, metadata: SegMetadata | str | Path | None = None,
               fractional: bool = False, only: Collection[int] | None = None,
               algorithm_type: str = "SEMIAUTOMATIC", algorithm_name: str = "SAMed-2",
               algorithm_version: str | None = None) -> ExportReport:
    """Write a DICOM Segmentation of `labels` on the series in `dicom` to `out`.

    One segment per label (per label map when several are given; they may overlap), in
    order of label map then label value, numbered 1..N. `metadata` (a dcmqi JSON) names and
    codes the segments; otherwise the built-in table is looked up by the label's name.
    BINARY by default, FRACTIONAL (probability) with `fractional`; `only` keeps those label
    values. `algorithm_version` should identify the weights (default: the package version).
    """
    out = Path(out)
    if not out.parent.is_dir():
        raise InputError(f"output folder does not exist: {out.parent}")
    if algorithm_type not in ("SEMIAUTOMATIC", "AUTOMATIC"):
        raise InputError(f"algorithm_type must be AUTOMATIC or SEMIAUTOMATIC, got {algorithm_type!r}")
    maps = _as_labelmaps(labels)
    meta = load_seg_metadata(metadata) if isinstance(metadata, (str, Path)) else metadata
    series = dicom if isinstance(dicom, SourceSeries) else load_series(dicom, series_uid)
    report = series.report.copy()
    algorithm = (algorithm_type, algorithm_name, algorithm_version or f"samed2 {__version__}")
    specs = _segment_specs(maps, meta, only, algorithm, fractional, report)
    arrays = {i: _on_series_grid(maps[i], series, report) for i in sorted({s.label_map for s in specs})}
    pixels, specs, voxels = _pixel_array(arrays, specs, maps, fractional, report)
    segmentation = _segmentation(series, pixels, specs, fractional, meta or SegMetadata(), report)
    with atomic_output(out) as temporary:
        segmentation.save_as(temporary)
    log.info("wrote %s: %d segment(s) on series %s", out, len(specs), series.series_uid)
    segments = [ExportedSegment(n, s.label, s.label_map, s.value, v) for n, (s, v) in enumerate(zip(specs, voxels), 1)]
    return ExportReport(out, str(segmentation.SOPInstanceUID), str(segmentation.SeriesInstanceUID),
                        series.series_uid, segments, report.repairs, report.warnings)


def _as_labelmaps(labels) -> list[LabelMap]:
    items = [labels] if isinstance(labels, (LabelMap, str, Path)) else list(labels)
    if not items:
        raise InputError("no label map given")
    maps = [item if isinstance(item, LabelMap) else read_labelmap(item) for item in items]
    for labelmap in maps:
        check_labelmap_image(labelmap.image, labelmap.source)
    return maps


def _segment_specs(maps: list[LabelMap], meta: SegMetadata | None, only: Collection[int] | None,
                   algorithm: tuple[str, str, str], fractional: bool, report: Report) -> list[_SegmentSpec]:
    specs, present_anywhere = [], set()
    for index, labelmap in enumerate(maps):
        if labelmap.is_probability and not fractional:
            raise InputError(f"{labelmap.source} is a probability map (values in [0, 1]): export it as FRACTIONAL "
                             "(--fractional) or threshold it into a label map")
        present = labelmap.labels()
        present_anywhere.update(present)
        wanted = [value for value in present if only is None or value in only]
        specs += _map_specs(index, labelmap, wanted, present, meta, algorithm, len(specs), report)
    for absent in sorted(set(only or ()) - present_anywhere):
        report.warn(f"label {absent} has no voxels in any label map; no segment for it")
    if not specs:
        raise InputError("the label map is empty (no non-zero voxel" + (" with the requested labels" if only else "")
                         + "): nothing to export")
    if len(specs) > MAX_SEGMENTS:
        raise DicomError(f"{len(specs)} segments: a DICOM Segmentation holds at most {MAX_SEGMENTS}")
    return specs


def _map_specs(index: int, labelmap: LabelMap, wanted: list[int], present: list[int], meta: SegMetadata | None,
               algorithm: tuple[str, str, str], first: int, report: Report) -> list[_SegmentSpec]:
    """The segments of one label map, with its entries of the metadata file, if any."""
    specs = []
    for value in wanted:
        attributes = meta.attributes(index, value) if meta else None
        if meta and attributes is None:
            report.warn(f"label {value} of {labelmap.source} is not in the metadata file; using defaults")
        specs.append(_segment_spec(index, value, labelmap, attributes, first + len(specs), algorithm, report))
    described = {s.label_id for s in meta.segments[index]} if meta and index < len(meta.segments) else set()
    for absent in sorted(described - set(present)):
        report.warn(f"label {absent} of the metadata file has no voxels in {labelmap.source}; no segment for it")
    return specs


def _segment_spec(index: int, value: int, labelmap: LabelMap, attributes: SegmentAttributes | None,
                  number: int, algorithm: tuple[str, str, str], report: Report) -> _SegmentSpec:
    attributes = attributes or SegmentAttributes(label_id=value)
    label = attributes.label or labelmap.name(value)
    if len(label) > 64:
        report.warn(f"segment label {label!r} cut to the 64 characters DICOM allows")
        label = label[:64]
    base = default_term(labelmap.names.get(value, label), number)
    term = SegmentTerm(category=attributes.category or base.category, type=attributes.type or base.type,
                       color=attributes.color or labelmap.colors.get(value) or base.color,
                       type_modifier=attributes.type_modifier if attributes.type else base.type_modifier)
    algorithm_type, algorithm_name, algorithm_version = algorithm
    name = attributes.algorithm_name or algorithm_name
    return _SegmentSpec(
        label_map=index, value=value, label=label, term=term,
        algorithm_type=attributes.algorithm_type or algorithm_type, algorithm_name=name,
        # a name from the metadata file is another algorithm, whose version we do not know
        algorithm_version=algorithm_version if name == algorithm_name else "unknown",
        description=attributes.description, anatomic_region=attributes.anatomic_region,
        tracking_id=attributes.tracking_id, tracking_uid=attributes.tracking_uid)


def _on_series_grid(labelmap: LabelMap, series: SourceSeries, report: Report) -> np.ndarray:
    """The label map's values at the series' voxels, as a (slices, rows, columns) array."""
    grid = series.grid()
    differences = grid_differences(labelmap.image, grid)
    if series.regular and not differences:
        return sitk.GetArrayFromImage(labelmap.image)
    low, high = physical_bounds(labelmap.image)
    series_bounds = physical_bounds(grid)
    if not bounds_overlap((low, high), series_bounds):
        raise InputError(f"{labelmap.source} (x, y, z from {low.round(1).tolist()} to {high.round(1).tolist()} mm) "
                         f"does not overlap the DICOM series (from {series_bounds[0].round(1).tolist()} to "
                         f"{series_bounds[1].round(1).tolist()} mm): is it the segmentation of another image?")
    report.warn(f"{labelmap.source} is not on the DICOM series' grid ({'; '.join(differences) or 'irregular slices'}): "
                "resampled onto the series in physical space (nearest neighbour)")
    if series.regular:
        return sitk.GetArrayFromImage(resample_like(labelmap.image, grid))
    return np.concatenate([sitk.GetArrayFromImage(resample_like(labelmap.image, series.slice_grid(k)))
                           for k in range(len(series.datasets))])


def _pixel_array(arrays: dict[int, np.ndarray], specs: list[_SegmentSpec], maps: list[LabelMap], fractional: bool,
                 report: Report) -> tuple[np.ndarray, list[_SegmentSpec], list[int]]:
    """highdicom's input: a label-map style array for one integer label map, stacked
    per-segment masks otherwise. Segments left empty on the series grid are dropped."""
    if len(arrays) == 1 and not maps[specs[0].label_map].is_probability:
        pixels, voxels = _relabelled(arrays[specs[0].label_map], [s.value for s in specs])
    else:
        pixels = np.stack([_segment_values(arrays[s.label_map], s, maps) for s in specs], axis=-1)
        voxels = np.count_nonzero(pixels.reshape(-1, len(specs)), axis=0)
    empty = [s for s, v in zip(specs, voxels) if v == 0]
    for spec in empty:
        report.warn(f"segment {spec.label!r} has no voxel inside the DICOM series; left out")
    if len(empty) == len(specs):
        raise InputError("no labelled voxel lies inside the DICOM series: nothing to export")
    if empty:
        keep = np.flatnonzero(np.asarray(voxels) > 0)
        pixels = _keep_segments(pixels, keep, stacked=pixels.ndim == 4)
        specs, voxels = [specs[i] for i in keep], [voxels[i] for i in keep]
    return pixels, specs, [int(v) for v in voxels]


def _relabelled(array: np.ndarray, values: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Label values -> segment numbers 1..N (0 elsewhere), and the voxel count per segment."""
    table = np.asarray(values, dtype=array.dtype)
    index = np.searchsorted(table, array)
    found = table[np.minimum(index, len(table) - 1)] == array
    dtype = np.uint8 if len(values) <= 255 else np.uint16
    numbers = np.where(found & (array != 0), index + 1, 0).astype(dtype)
    return numbers, np.bincount(numbers.ravel(), minlength=len(values) + 1)[1:]


def _segment_values(array: np.ndarray, spec: _SegmentSpec, maps: list[LabelMap]) -> np.ndarray:
    if maps[spec.label_map].is_probability:
        return array.astype(np.float32)
    return (array == spec.value).astype(np.uint8)


def _keep_segments(pixels: np.ndarray, keep: np.ndarray, stacked: bool) -> np.ndarray:
    if stacked:
        return pixels[..., keep]
    table = np.zeros(int(pixels.max()) + 1, dtype=pixels.dtype)
    table[keep + 1] = np.arange(1, len(keep) + 1)
    return table[pixels]


def _coded(code: Code) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(code.value, code.scheme, code.meaning)


def _description(number: int, spec: _SegmentSpec) -> hd.seg.SegmentDescription:
    algorithm = None
    if spec.algorithm_type != "MANUAL":
        algorithm = hd.AlgorithmIdentificationSequence(name=spec.algorithm_name, version=spec.algorithm_version,
                                                       family=codes.cid7162.ArtificialIntelligence)
    tracking_uid = (spec.tracking_uid or hd.UID()) if spec.tracking_id else None
    description = hd.seg.SegmentDescription(
        segment_number=number, segment_label=spec.label,
        segmented_property_category=_coded(spec.term.category), segmented_property_type=_coded(spec.term.type),
        algorithm_type=spec.algorithm_type, algorithm_identification=algorithm,
        tracking_id=spec.tracking_id, tracking_uid=tracking_uid,
        anatomic_regions=[_coded(spec.anatomic_region)] if spec.anatomic_region else None,
        display_color=hd.color.CIELabColor.from_rgb(*spec.term.color))
    if spec.term.type_modifier:
        description.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [
            _coded(spec.term.type_modifier)]
    if spec.description:
        description.SegmentDescription = spec.description
    return description


def _segmentation(series: SourceSeries, pixels: np.ndarray, specs: list[_SegmentSpec], fractional: bool,
                  meta: SegMetadata, report: Report) -> hd.seg.Segmentation:
    descriptions = [_description(number, spec) for number, spec in enumerate(specs, 1)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            segmentation = hd.seg.Segmentation(
                source_images=series.datasets, pixel_array=pixels,
                segmentation_type="FRACTIONAL" if fractional else "BINARY", segment_descriptions=descriptions,
                series_instance_uid=hd.UID(), series_number=meta.series_number or DEFAULT_SERIES_NUMBER,
                sop_instance_uid=hd.UID(), instance_number=meta.instance_number or 1,
                manufacturer=MANUFACTURER, manufacturer_model_name=MODEL_NAME, software_versions=__version__,
                device_serial_number=DEVICE_SERIAL_NUMBER,
                series_description=meta.series_description or "SAMed-2 segmentation",
                content_label=meta.content_label or CONTENT_LABEL,
                content_description=meta.content_description or "Segmentation made with SAMed2Slicer",
                content_creator_name=meta.content_creator_name)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise DicomError(f"cannot build the DICOM Segmentation: {exc}") from exc
    for warning in caught:
        report.warn(f"highdicom: {str(warning.message).split('. ')[0]}")
    texts = [meta.series_description, meta.content_description, meta.content_creator_name] + [
        text for s in specs for text in (s.label, s.description, s.algorithm_name, s.algorithm_version, s.tracking_id)]
    if not all(text.isascii() for text in texts if text):
        segmentation.SpecificCharacterSet = "ISO_IR 192"  # UTF-8: the default repertoire is ASCII only
    return segmentation


# ---------------------------------------------------------------- import


@dataclass
class ImportedSegment:
    number: int
    label: str
    category: Code
    type: Code
    color: tuple[int, int, int] | None
    mask: np.ndarray  # (slices, rows, columns) on the series: bool, or float32 in [0, 1] if FRACTIONAL


@dataclass
class SegImport:
    """A SEG read back onto its source series; `segments` keep overlaps and fractions."""

    path: Path
    series: SourceSeries
    segments: list[ImportedSegment]
    fractional: bool
    report: Report

    def to_labelmap(self, allow_overlap: bool = False) -> LabelMap:
        """One label map (label = segment number, FRACTIONAL thresholded at 0.5) on the
        series' grid. Overlapping segments are an error unless `allow_overlap`, where the
        higher segment number wins."""
        masks = [(s.number, s.mask >= 0.5 if self.fractional else s.mask) for s in self.segments]
        overlap = int(np.count_nonzero(sum(m.astype(np.uint16) for _, m in masks) > 1)) if masks else 0
        if overlap and not allow_overlap:
            raise InputError(f"segments of {self.path.name} overlap in {overlap} voxels, which one label map cannot "
                             "hold: allow overlap (--allow-overlap; the higher segment number wins) or use the masks")
        if overlap:
            self.report.warn(f"{overlap} voxels belong to several segments; the higher segment number was kept")
        numbers = max((s.number for s in self.segments), default=0)
        array = np.zeros(self.series.shape, dtype=np.uint8 if numbers <= 255 else np.uint16)
        for number, mask in sorted(masks, key=lambda item: item[0]):
            array[mask] = number
        return LabelMap(self._on_grid(array), names={s.number: s.label for s in self.segments},
                        colors={s.number: s.color for s in self.segments if s.color}, source=str(self.path))

    def _on_grid(self, array: np.ndarray) -> sitk.Image:
        grid = self.series.grid()
        if not self.series.regular:
            if self.series.sheared:
                raise DicomError("the series' slices are shifted in-plane (gantry tilt): a regular label map cannot "
                                 "represent them; use the per-slice masks")
            steps = np.arange(grid.GetSize()[2]) * grid.GetSpacing()[2]
            offsets = (self.series.positions - self.series.positions[0]) @ self.series.axes[:, 2]
            nearest = np.abs(steps[:, None] - offsets[None, :]).argmin(axis=1)
            self.report.warn(f"irregular slices put on a regular grid of {len(steps)} slices, "
                             f"{grid.GetSpacing()[2]:.4g} mm apart (nearest slice)")
            array = array[nearest]
        image = sitk.GetImageFromArray(array)
        image.CopyInformation(grid)
        return image


def read_seg(path: str | Path, dicom: SourceSeries | str | Path, series_uid: str | None = None) -> SegImport:
    """Read a SEG (highdicom) onto its source series: each frame goes to the slice at its
    position, so any SEG whose frames lie on the series' slices reads back."""
    path = Path(path)
    segmentation = _read_segmentation(path)
    if isinstance(dicom, SourceSeries):
        series = dicom
    else:
        series = _load_series(Path(dicom), series_uid, preferred_uid=_referenced_series_uid(segmentation))
    report = series.report.copy()
    _check_same_geometry(segmentation, series, path)
    fractional = segmentation.segmentation_type == hd.seg.SegmentationTypeValues.FRACTIONAL
    masks = _masks_on_series(segmentation, series, fractional, path)
    segments = [_imported_segment(item, masks[int(item.SegmentNumber)]) for item in segmentation.SegmentSequence]
    return SegImport(path, series, segments, fractional, report)


def _read_segmentation(path: Path) -> hd.seg.Segmentation:
    if not path.is_file():
        raise DicomError(f"SEG file not found: {path}")
    try:
        return hd.seg.segread(path)
    except (InvalidDicomError, ValueError, AttributeError, KeyError) as exc:
        raise DicomError(f"{path} is not a readable DICOM Segmentation: {exc}") from None


def _referenced_series_uid(segmentation: Dataset) -> str | None:
    referenced = segmentation.get("ReferencedSeriesSequence")
    return str(referenced[0].SeriesInstanceUID) if referenced else None


def _frame_item(segmentation: Dataset, index: int, keyword: str):
    """A functional-group item for frame `index`, per-frame first, else shared."""
    per_frame = segmentation.PerFrameFunctionalGroupsSequence[index]
    if keyword in per_frame:
        return per_frame[keyword].value[0]
    return segmentation.SharedFunctionalGroupsSequence[0][keyword].value[0]


def _check_same_geometry(segmentation: Dataset, series: SourceSeries, path: Path) -> None:
    source = series.datasets[0]
    if segmentation.FrameOfReferenceUID != source.FrameOfReferenceUID:
        raise DicomError(f"{path.name} is in frame of reference {segmentation.FrameOfReferenceUID}, the series "
                         f"{series.series_uid} in {source.FrameOfReferenceUID}: it is not a segmentation of this series")
    orientation = np.array(_frame_item(segmentation, 0, "PlaneOrientationSequence").ImageOrientationPatient, dtype=float)
    spacing = np.array(_frame_item(segmentation, 0, "PixelMeasuresSequence").PixelSpacing, dtype=float)
    if ((segmentation.Rows, segmentation.Columns) != (source.Rows, source.Columns)
            or not np.allclose(orientation, np.array(source.ImageOrientationPatient, dtype=float), atol=1e-4)
            or not np.allclose(spacing, series.pixel_spacing, rtol=1e-4)):
        raise DicomError(f"the frames of {path.name} are not on the pixel grid of series {series.series_uid} "
                         "(size, orientation or pixel spacing differ)")


def _masks_on_series(segmentation: hd.seg.Segmentation, series: SourceSeries, fractional: bool,
                     path: Path) -> dict[int, np.ndarray]:
    scale = 1.0 / float(segmentation.MaximumFractionalValue) if fractional else 1.0
    masks = {int(item.SegmentNumber): np.zeros(series.shape, dtype=np.float32 if fractional else bool)
             for item in segmentation.SegmentSequence}
    for index in range(int(segmentation.NumberOfFrames)):
        number = int(_frame_item(segmentation, index, "SegmentIdentificationSequence").ReferencedSegmentNumber)
        if number not in masks:
            raise DicomError(f"frame {index + 1} of {path.name} refers to segment {number}, which is not described")
        position = _frame_item(segmentation, index, "PlanePositionSequence").ImagePositionPatient
        slice_index = series.slice_at(np.array(position, dtype=float))
        if slice_index is None:
            raise DicomError(f"frame {index + 1} of {path.name} at {list(position)} lies on no slice of series "
                             f"{series.series_uid}")
        frame = segmentation.get_stored_frame(index + 1)
        masks[number][slice_index] = frame * scale if fractional else frame.astype(bool)
    return masks


def _imported_segment(item: Dataset, mask: np.ndarray) -> ImportedSegment:
    def code(sequence_keyword: str) -> Code:
        concept = item[sequence_keyword].value[0]
        return Code(str(concept.CodeValue), str(concept.CodingSchemeDesignator), str(concept.CodeMeaning))

    lab = item.get("RecommendedDisplayCIELabValue")
    color = hd.color.CIELabColor.from_dicom_value(lab).to_rgb(clip=True) if lab else None
    return ImportedSegment(int(item.SegmentNumber), str(item.SegmentLabel), code("SegmentedPropertyCategoryCodeSequence"),
                           code("SegmentedPropertyTypeCodeSequence"), color, mask)
