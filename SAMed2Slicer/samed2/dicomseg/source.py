"""The source series of a SEG: its image slices' headers, read, repaired and sorted.

Real-world defects (empty UIDs, an empty SpecificCharacterSet, duplicate files, irregular
spacing, several series in one folder) are repaired on in-memory copies and reported; the
user's files are only ever read.
"""
from __future__ import annotations

import hashlib
import logging
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from samed2.dicom_series import DicomSeries, choose_series
from samed2.errors import DicomError
from samed2.files import atomic_output

log = logging.getLogger(__name__)

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

    def regular_image(self, array: np.ndarray, report: Report) -> sitk.Image:
        """A (slices, rows, columns) array on this series' slices as an image on its regular grid
        (irregular slices: the nearest slice for each grid slice)."""
        grid = self.grid()
        if not self.regular:
            if self.sheared:
                raise DicomError("the series' slices are shifted in-plane (gantry tilt): a regular label map cannot "
                                 "represent them; use the per-slice masks")
            steps = np.arange(grid.GetSize()[2]) * grid.GetSpacing()[2]
            offsets = (self.positions - self.positions[0]) @ self.axes[:, 2]
            nearest = np.abs(steps[:, None] - offsets[None, :]).argmin(axis=1)
            report.warn(f"irregular slices put on a regular grid of {len(steps)} slices, "
                             f"{grid.GetSpacing()[2]:.4g} mm apart (nearest slice)")
            array = array[nearest]
        image = sitk.GetImageFromArray(array)
        image.CopyInformation(grid)
        return image

    def _smallest_step(self) -> float:
        steps = list(self.pixel_spacing) + ([float(self.gaps.min())] if self.gaps.size else [])
        return min(steps)


def load_series(dicom: str | Path, series_uid: str | None = None, preferred_uid: str | None = None) -> SourceSeries:
    """Load and repair the image slices of one series from a folder (searched recursively).
    With several series in the folder, `series_uid` says which (else `preferred_uid`, when there);
    the error lists them."""
    directory = Path(dicom)
    if not directory.is_dir():
        raise DicomError(f"DICOM folder not found: {directory}")
    groups = _group_series(_read_image_headers(directory))
    chosen = choose_series([_described(uid, members) for uid, members in groups.items()], directory,
                           series_uid, preferred_uid)
    report = Report()
    members = _drop_duplicate_instances(groups[chosen.uid], report)
    _repair_instances(members, report)
    _repair_series_uids(members, chosen.uid, report)
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


def _described(uid: str, members: list[tuple[Path, Dataset]]) -> DicomSeries:
    first = members[0][1]
    return DicomSeries(uid, tuple(str(path) for path, _ in members), str(first.get("SeriesDescription", "")).strip(),
                       str(first.get("Modality", "")), derived_uid=not first.get("SeriesInstanceUID"))


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
        own_orientation = np.array(_required(ds, path, "ImageOrientationPatient"), dtype=float)
        if not np.allclose(own_orientation, orientation, atol=1e-4):
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
        report.warn("slice positions move within the slice plane (gantry tilt?); "
                    "each slice is handled at its own position")
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
