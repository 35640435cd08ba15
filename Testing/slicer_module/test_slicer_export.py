"""Export from segmentation nodes on real MRML (slicer-core) with the shared DICOM series:
DICOM-SEG that dciodvfy accepts and that reads back to the segments' voxels, Slicer's
terminology codes in the SEG, the DICOM database glue, and NIfTI / NRRD / seg.nrrd files."""
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import slicer

from samed2.dicomseg import read_seg
from samed2.labelmap import read_labelmap
from SAMed2SlicerLib.export import (
    dicom_files_for_volume,
    export_dicom_seg,
    export_labelmap_file,
    import_into_dicom_database,
    parse_terminology,
    staged_series,
)

from dicomseg_checks import assert_dciodvfy_clean, on_grid, series_grid
from slicer_harness import load_volume

LIVER_TERM = ("Segmentation category and type - 3D Slicer General Anatomy list~SCT^123037004^Anatomical Structure"
              "~SCT^10200004^Liver~^^~Anatomic codes - DICOM master list~^^~^^")
KIDNEY_TERM = ("Segmentation category and type - 3D Slicer General Anatomy list~SCT^123037004^Anatomical Structure"
               "~SCT^64033007^Kidney~SCT^7771000^Left~Anatomic codes - DICOM master list~^^~^^")
TOTALSEG_LIVER = 5


@pytest.fixture(scope="module")
def dcmqi(data_dir):
    return data_dir / "dcmqi"


@pytest.fixture(scope="module")
def ct3(dcmqi):
    return dcmqi / "ct-3slice"


def import_labelmap_file(path, segmentation, name, threshold=None):
    """Add a segment from a label map file the way Slicer imports one (labelmap node ->
    segmentation), keeping only `threshold`'s label when given."""
    if threshold is not None:
        image = read_labelmap(path).image == threshold
        path = Path(slicer.app.cachePath) / f"{name}.nrrd"
        sitk.WriteImage(image, str(path))
    labelmap = slicer.modules.volumes.logic().AddArchetypeVolume(str(path), name, 1, None)
    before = segmentation.GetSegmentation().GetNumberOfSegments()
    assert slicer.modules.segmentations.logic().ImportLabelmapToSegmentationNode(labelmap, segmentation)
    slicer.mrmlScene.RemoveNode(labelmap)
    segment = segmentation.GetSegmentation().GetNthSegment(before)
    segment.SetName(name)
    return segmentation.GetSegmentation().GetNthSegmentID(before)


def new_segmentation(volume):
    segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "segmentation")
    segmentation.CreateDefaultDisplayNodes()
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    return segmentation


@pytest.fixture
def ct3_scene(mrml_scene, dcmqi, ct3):
    volume = load_volume(ct3 / "01.dcm", "ct")
    segmentation = new_segmentation(volume)
    import_labelmap_file(dcmqi / "liver_seg.nrrd", segmentation, "Liver")
    import_labelmap_file(dcmqi / "spine_seg.nrrd", segmentation, "Spine")
    return volume, segmentation


def masks_by_label(imported):
    return {segment.label: segment.mask for segment in imported.segments}


def expected_on_series(path, folder, label=None):
    image = read_labelmap(path).image
    return on_grid(image != 0 if label is None else image == label, series_grid(folder)).astype(bool)


def test_mrml_dicom_seg_of_a_segmentation_node_passes_dciodvfy_and_reads_back(ct3_scene, dcmqi, ct3, tmp_path):
    volume, segmentation = ct3_scene
    report = export_dicom_seg(segmentation, volume, ct3, tmp_path / "seg.dcm", algorithm_version="tiny-test")

    assert_dciodvfy_clean(report.path)
    masks = masks_by_label(read_seg(report.path, ct3))
    assert list(masks) == ["Liver", "Spine"]
    np.testing.assert_array_equal(masks["Liver"], expected_on_series(dcmqi / "liver_seg.nrrd", ct3))
    np.testing.assert_array_equal(masks["Spine"], expected_on_series(dcmqi / "spine_seg.nrrd", ct3))
    dataset = pydicom.dcmread(report.path)
    liver = dataset.SegmentSequence[0]
    assert liver.SegmentAlgorithmName == "SAMed-2" and liver.SegmentAlgorithmType == "SEMIAUTOMATIC"
    assert liver.SegmentedPropertyTypeCodeSequence[0].CodeValue == "10200004"  # found by its name
    assert dataset.ReferencedSeriesSequence[0].SeriesInstanceUID == pydicom.dcmread(ct3 / "01.dcm").SeriesInstanceUID


def test_mrml_dicom_seg_carries_slicer_terminology_codes(ct3_scene, ct3, tmp_path):
    volume, segmentation = ct3_scene
    segmentation.GetSegmentation().GetNthSegment(1).SetName("Region 2")
    segmentation.GetSegmentation().GetNthSegment(1).SetTerminology(KIDNEY_TERM)

    report = export_dicom_seg(segmentation, volume, ct3, tmp_path / "seg.dcm")

    assert_dciodvfy_clean(report.path)
    item = pydicom.dcmread(report.path).SegmentSequence[1]
    assert item.SegmentLabel == "Region 2"
    assert item.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "123037004"
    assert item.SegmentedPropertyTypeCodeSequence[0].CodeValue == "64033007"
    assert item.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence[0].CodeValue == "7771000"


def test_mrml_dicom_seg_on_the_totalseg_series_with_empty_uids(mrml_scene, data_dir, tmp_path):
    folder = data_dir / "totalseg" / "example_ct_dicom"
    series = series_grid(folder)  # as Slicer's DICOM import orders it (by position)
    direction = np.array(series.GetDirection()).reshape(3, 3)
    ijk_to_ras = np.eye(4)
    ijk_to_ras[:3, :3] = np.diag([-1.0, -1.0, 1.0]) @ direction @ np.diag(series.GetSpacing())
    ijk_to_ras[:3, 3] = np.array([-1.0, -1.0, 1.0]) * series.GetOrigin()
    volume = slicer.util.addVolumeFromArray(sitk.GetArrayFromImage(series), ijk_to_ras, name="ct")
    segmentation = new_segmentation(volume)
    labels = data_dir / "totalseg" / "example_seg_dicom.nii.gz"  # flipped in y against the series
    import_labelmap_file(labels, segmentation, "Liver", threshold=TOTALSEG_LIVER)

    report = export_dicom_seg(segmentation, volume, folder, tmp_path / "liver.dcm")

    assert_dciodvfy_clean(report.path)
    assert any("SeriesInstanceUID" in repair for repair in report.repairs)
    (liver,) = read_seg(report.path, folder).segments
    np.testing.assert_array_equal(liver.mask, expected_on_series(labels, folder, TOTALSEG_LIVER))
    assert liver.mask.any()


class FolderDatabase:
    """Answers fileForInstance as ctkDICOMDatabase does (a path, or "" when unknown)."""

    def __init__(self, folder):
        self.files = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): str(p)
                      for p in sorted(Path(folder).iterdir())}

    def fileForInstance(self, uid):  # noqa: N802 (ctkDICOMDatabase's name)
        return self.files.get(uid, "")


def test_mrml_dicom_seg_from_the_dicom_database_files(ct3_scene, ct3, tmp_path):
    volume, segmentation = ct3_scene
    database = FolderDatabase(ct3)
    with pytest.raises(ValueError, match="not loaded from the DICOM database"):
        dicom_files_for_volume(volume, database)
    volume.SetAttribute("DICOM.instanceUIDs", " ".join(database.files))

    files = dicom_files_for_volume(volume, database)
    with staged_series(files) as folder:
        report = export_dicom_seg(segmentation, volume, folder, tmp_path / "seg.dcm")
    assert not folder.exists()
    assert_dciodvfy_clean(report.path)
    assert [s.label for s in read_seg(report.path, ct3).segments] == ["Liver", "Spine"]
    volume.SetAttribute("DICOM.instanceUIDs", "1.2.3.4 " + " ".join(database.files))
    with pytest.raises(ValueError, match="1 of the 4 DICOM files"):
        dicom_files_for_volume(volume, database)


class CopyingDatabase:
    """Takes files in as DICOMUtils.importDicom(folder, database, copyFiles=True) does with
    ctkDICOMDatabase (slicer-core has neither): copies them into its own folder, indexed by SOP
    Instance UID; or fails, returning False, as importDicom does when the indexer raises."""

    def __init__(self, storage, works=True):
        storage.mkdir()
        self.storage, self.works, self.files = storage, works, {}

    def import_dicom(self, folder, database, copy_files):
        assert database is self and copy_files
        if self.works:
            for path in Path(folder).iterdir():
                copy = Path(shutil.copy(path, self.storage))
                self.files[str(pydicom.dcmread(copy, stop_before_pixels=True).SOPInstanceUID)] = str(copy)
        return self.works

    def fileForInstance(self, uid):  # noqa: N802 (ctkDICOMDatabase's name)
        return self.files.get(uid, "")


@pytest.mark.parametrize("works", [True, False])
def test_mrml_dicom_seg_into_the_dicom_database(ct3_scene, ct3, tmp_path, works):
    volume, segmentation = ct3_scene
    seg = tmp_path / "exported" / "seg.dcm"
    seg.parent.mkdir()
    export_dicom_seg(segmentation, volume, ct3, seg)
    uid = str(pydicom.dcmread(seg, stop_before_pixels=True).SOPInstanceUID)
    database = CopyingDatabase(tmp_path / "database", works)
    staging = set(Path(tempfile.gettempdir()).glob("samed2-seg-*"))
    if works:
        import_into_dicom_database(seg, database, database.import_dicom)
        assert_dciodvfy_clean(Path(database.fileForInstance(uid)))
    else:
        with pytest.raises(RuntimeError, match=f"did not take the DICOM-SEG .* the SEG is in {seg}"):
            import_into_dicom_database(seg, database, database.import_dicom)
    assert seg.is_file(), "the user's file stays where it was written"
    assert set(Path(tempfile.gettempdir()).glob("samed2-seg-*")) == staging, "the staging folder is removed"


@pytest.mark.parametrize("suffix", [".seg.nrrd", ".nii.gz", ".nrrd"])
def test_mrml_labelmap_file_export_keeps_voxels_names_and_colours(ct3_scene, dcmqi, tmp_path, suffix):
    volume, segmentation = ct3_scene
    segmentation.GetSegmentation().GetNthSegment(0).SetColor(0.5, 0.25, 1.0)

    path = export_labelmap_file(segmentation, volume, tmp_path / f"segments{suffix}")

    written = read_labelmap(path)
    assert written.names == {1: "Liver", 2: "Spine"}
    assert written.colors[1] == (128, 64, 255)
    liver = sitk.GetArrayFromImage(read_labelmap(dcmqi / "liver_seg.nrrd").image) != 0
    np.testing.assert_array_equal(sitk.GetArrayFromImage(written.image) == 1, liver)
    np.testing.assert_allclose(written.image.GetOrigin(), read_labelmap(dcmqi / "liver_seg.nrrd").image.GetOrigin(),
                               atol=1e-3)


def test_slicer_terminology_tags_parse_into_codes():
    category, kind, modifier, region = parse_terminology(KIDNEY_TERM)
    assert (category.value, kind.value, kind.meaning, modifier.value) == ("123037004", "64033007", "Kidney", "7771000")
    assert region is None
    assert parse_terminology(LIVER_TERM)[2] is None
    assert parse_terminology("") == (None, None, None, None)
