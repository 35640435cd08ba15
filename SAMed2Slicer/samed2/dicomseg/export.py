"""DICOM Segmentation (SEG) export: label maps onto the source series, written with highdicom.

The source series sets the geometry: a label map on another grid is resampled onto the
series' slices in physical space.
"""
from __future__ import annotations

import logging
import warnings
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import SimpleITK as sitk
from pydicom.sr.codedict import codes

from samed2 import __version__
from samed2.choices import EFFECT_NAME
from samed2.dicomseg.source import Report, SourceSeries, load_series
from samed2.errors import DicomError, InputError
from samed2.files import atomic_output
from samed2.labelmap import (
    LabelMap,
    check_labelmap_image,
    labels_on_grid,
    read_labelmap,
    require_overlap,
    resample_like,
)
from samed2.terminology import Code, SegmentAttributes, SegmentTerm, SegMetadata, default_term, load_seg_metadata

log = logging.getLogger(__name__)

MANUFACTURER = "SAMed2Slicer"
MODEL_NAME = "samed2"
DEVICE_SERIAL_NUMBER = "0"  # software-only equipment has no serial number
DEFAULT_SERIES_NUMBER = 300
CONTENT_LABEL = "SAMED2"
MAX_SEGMENTS = 65535  # SegmentNumber is an unsigned short


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
               algorithm_type: str = "SEMIAUTOMATIC", algorithm_name: str = EFFECT_NAME,
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
    if series.regular:
        return labels_on_grid(labelmap, series.grid(), "the DICOM series", report.warn)
    require_overlap(labelmap, series.grid(), "the DICOM series")
    report.warn(f"the DICOM series' slices are irregular: {labelmap.source} resampled onto each slice in physical "
                "space (nearest neighbour)")
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
