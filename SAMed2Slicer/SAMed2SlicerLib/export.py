"""Segmentation node -> the engine's writers: DICOM-SEG on the source DICOM series, and label
map files (NIfTI, NRRD, seg.nrrd).

Segments are read on the reference volume's voxel grid and placed in the volume's own
patient geometry (its IJK-to-RAS without parent transforms: DICOM and files describe the
scanner's coordinates). Each segment becomes its own label map for DICOM-SEG, so overlapping
segments stay whole; names, colours and Slicer's terminology codes go with them.

Needs the engine (its Volume places the arrays), SimpleITK, and for DICOM-SEG pydicom and
highdicom.
"""
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from samed2.choices import EFFECT_NAME
from samed2.labelmap import LabelMap, write_labelmap
from samed2.terminology import Code, SegmentAttributes, SegMetadata
from samed2.volume import Volume
from SAMed2SlicerLib.geometry import local_ijk_to_ras, volume_to_array
from SAMed2SlicerLib.segments import read_segment

GENERIC_TISSUE = "85756007"  # SNOMED CT "Tissue", the type Slicer gives every new segment


def segment_ids(segmentation_node, only=None):
    """The segmentation's segment IDs in display order (only those in `only`, if given)."""
    segmentation = segmentation_node.GetSegmentation()
    ids = [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]
    return [i for i in ids if only is None or i in only]


def volume_grid(volume_node):
    """The volume as an engine Volume in its own patient geometry (its IJK-to-RAS without parent
    transforms: DICOM and files describe the scanner's coordinates)."""
    voxels, _ = volume_to_array(volume_node)
    return Volume(voxels, local_ijk_to_ras(volume_node))


def _rgb(segment):
    return tuple(int(round(c * 255)) for c in segment.GetColor())


def segment_labelmaps(segmentation_node, volume_node, only=None):
    """One binary label map (label 1) per segment, named and coloured like the segment."""
    grid = volume_grid(volume_node)
    maps = []
    for segment_id in segment_ids(segmentation_node, only):
        segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
        image = grid.to_sitk(read_segment(segmentation_node, segment_id, volume_node).astype(np.uint8))
        name = segment.GetName()
        maps.append(LabelMap(image, {1: name}, {1: _rgb(segment)}, source=f"segment '{name}'"))
    return maps


def merged_labelmap(segmentation_node, volume_node, only=None):
    """All segments in one label map, values 1..N in segment order (a later segment wins
    where segments overlap)."""
    ids = segment_ids(segmentation_node, only)
    labels = np.zeros(tuple(reversed(volume_node.GetImageData().GetDimensions())), np.uint16)
    names, colors = {}, {}
    for value, segment_id in enumerate(ids, 1):
        segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
        labels[read_segment(segmentation_node, segment_id, volume_node)] = value
        names[value], colors[value] = segment.GetName(), _rgb(segment)
    return LabelMap(volume_grid(volume_node).to_sitk(labels), names, colors, source=segmentation_node.GetName())


def export_labelmap_file(segmentation_node, volume_node, path, only=None):
    """Write the segments as one label map file (.nii.gz, .nii, .nrrd, .seg.nrrd)."""
    return write_labelmap(merged_labelmap(segmentation_node, volume_node, only), path)


def parse_terminology(tag):
    """(category, type, type modifier, anatomic region) engine Codes from a segment's Slicer
    "TerminologyEntry" tag; None for parts that are absent or unreadable."""
    fields = (tag or "").split("~")

    def code(position):
        parts = fields[position].split("^") if position < len(fields) else []
        return Code(parts[1], parts[0], parts[2]) if len(parts) == 3 and all(parts) else None

    return code(1), code(2), code(3), code(5)


def seg_metadata(segmentation_node, only=None):
    """The engine's SEG metadata for the segments: label, colour and Slicer's codes, if any."""
    groups = []
    for segment_id in segment_ids(segmentation_node, only):
        segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
        category, kind, modifier, region = parse_terminology(segment.GetTerminology())
        if category is None or kind is None or kind.value == GENERIC_TISSUE:
            category = kind = modifier = None  # Slicer's default: look the segment name up instead
        groups.append([SegmentAttributes(label_id=1, label=segment.GetName(), category=category, type=kind,
                                         type_modifier=modifier, anatomic_region=region, color=_rgb(segment))])
    return SegMetadata(segments=groups)


def export_dicom_seg(segmentation_node, volume_node, dicom_folder, out_path, only=None, fractional=False,
                     algorithm_version=None):
    """Write a DICOM-SEG of the segments, referencing the series in `dicom_folder` (the
    volume's source images); returns the engine's ExportReport (with the repairs it made)."""
    from samed2.dicomseg import export_seg

    return export_seg(segment_labelmaps(segmentation_node, volume_node, only), dicom_folder, out_path,
                      metadata=seg_metadata(segmentation_node, only), fractional=fractional,
                      algorithm_type="SEMIAUTOMATIC", algorithm_name=EFFECT_NAME,
                      algorithm_version=algorithm_version)


def dicom_files_for_volume(volume_node, database):
    """The files of the DICOM instances a volume was loaded from, found in Slicer's DICOM
    database (`slicer.dicomDatabase`). ValueError when the volume did not come from it."""
    uids = (volume_node.GetAttribute("DICOM.instanceUIDs") or "").split()
    if not uids:
        raise ValueError(f"'{volume_node.GetName()}' was not loaded from the DICOM database: choose the folder "
                         "of its DICOM files instead")
    files = [database.fileForInstance(uid) for uid in uids]
    missing = [uid for uid, path in zip(uids, files) if not path or not os.path.isfile(path)]
    if missing:
        raise ValueError(f"{len(missing)} of the {len(uids)} DICOM files of '{volume_node.GetName()}' are not in "
                         "the DICOM database any more: choose the folder of its DICOM files instead")
    return files


@contextmanager
def staged_series(files):
    """A temporary folder holding links (or copies) to the given DICOM files."""
    folder = Path(tempfile.mkdtemp(prefix="samed2-series-"))
    try:
        for number, source in enumerate(files):
            link = folder / f"{number:05d}.dcm"
            try:
                os.symlink(source, link)
            except OSError:
                shutil.copyfile(source, link)
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def import_into_dicom_database(seg_path, database, import_dicom=None):
    """Put a copy of a DICOM-SEG into Slicer's DICOM database (whose DICOM module can send it to a
    PACS); the file itself stays where it is. RuntimeError when the database does not list it
    afterwards. `import_dicom(folder, database, copyFiles)`: Slicer's DICOMUtils.importDicom
    (returns False when it fails), which takes a folder: the copy is staged alone in one."""
    import pydicom

    if import_dicom is None:
        from DICOMLib.DICOMUtils import importDicom as import_dicom
    seg_path = Path(seg_path)
    uid = str(pydicom.dcmread(seg_path, stop_before_pixels=True).SOPInstanceUID)
    staged = Path(tempfile.mkdtemp(prefix="samed2-seg-"))
    try:
        shutil.copy(seg_path, staged)
        taken = database is not None and import_dicom(str(staged), database, True) and database.fileForInstance(uid)
    finally:
        shutil.rmtree(staged)
    if not taken:
        raise RuntimeError(f"Slicer's DICOM database did not take the DICOM-SEG (open the DICOM module once, which "
                           f"creates the database, and try again); the SEG is in {seg_path}")
