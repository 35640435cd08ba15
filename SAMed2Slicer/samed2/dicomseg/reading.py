"""DICOM Segmentation (SEG) import: a SEG read back onto its source series."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from samed2.dicomseg.source import Report, SourceSeries, load_series
from samed2.errors import DicomError, InputError
from samed2.labelmap import LabelMap
from samed2.terminology import Code


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
        return LabelMap(self.series.regular_image(array, self.report), names={s.number: s.label for s in self.segments},
                        colors={s.number: s.color for s in self.segments if s.color}, source=str(self.path))


def read_seg(path: str | Path, dicom: SourceSeries | str | Path, series_uid: str | None = None) -> SegImport:
    """Read a SEG (highdicom) onto its source series: each frame goes to the slice at its
    position, so any SEG whose frames lie on the series' slices reads back."""
    path = Path(path)
    segmentation = _read_segmentation(path)
    if isinstance(dicom, SourceSeries):
        series = dicom
    else:
        series = load_series(dicom, series_uid, preferred_uid=_referenced_series_uid(segmentation))
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
        raise DicomError(f"{path.name} is in frame of reference {segmentation.FrameOfReferenceUID}, "
                         f"the series {series.series_uid} in {source.FrameOfReferenceUID}: "
                         "it is not a segmentation of this series")
    plane = _frame_item(segmentation, 0, "PlaneOrientationSequence")
    orientation = np.array(plane.ImageOrientationPatient, dtype=float)
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
    return ImportedSegment(int(item.SegmentNumber), str(item.SegmentLabel),
                           code("SegmentedPropertyCategoryCodeSequence"), code("SegmentedPropertyTypeCodeSequence"),
                           color, mask)
