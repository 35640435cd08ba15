"""DICOM-SEG export and import on real, imperfect DICOM (dcmqi's GE CT with an empty
SpecificCharacterSet, a JPEG 2000 Siemens CT with empty UIDs), checked against dcmqi's
reference SEGs, dicom3tools' validators, dcmqi's own reader and SimpleITK's DICOM grid."""
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

import samed2
from samed2.dicomseg import export_seg, load_series, read_seg, write_repaired_series
from samed2.errors import DicomError, InputError, OutputError
from samed2.labelmap import LabelMap, grid_differences, read_labelmap, write_labelmap
from samed2.terminology import load_seg_metadata, lookup_term
from samed2_tools.cli import build_parser

from dicomseg_checks import assert_seg_valid, dcmqi_masks, no_leftovers, on_grid, series_grid

TOTALSEG_LIVER = 5


@pytest.fixture(scope="module")
def dcmqi(data_dir) -> Path:
    return data_dir / "dcmqi"


@pytest.fixture(scope="module")
def ct3(dcmqi) -> Path:
    return dcmqi / "ct-3slice"


@pytest.fixture(scope="module")
def totalseg_dicom(data_dir) -> Path:
    return data_dir / "totalseg" / "example_ct_dicom"


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("seg")


@pytest.fixture(scope="module")
def liver_export(dcmqi, ct3, out_dir):
    return export_seg(dcmqi / "liver_seg.nrrd", ct3, out_dir / "liver.dcm",
                      metadata=dcmqi / "examples" / "seg-example.json")


@pytest.fixture(scope="module")
def overlaps_export(dcmqi, ct3, out_dir):
    maps = [dcmqi / f"partial_overlaps-{i}.nrrd" for i in (1, 2, 3)]
    return export_seg(maps, ct3, out_dir / "overlaps.dcm",
                      metadata=dcmqi / "examples" / "seg-example_partial_overlaps.json")


@pytest.fixture(scope="module")
def totalseg_labels(data_dir) -> LabelMap:
    labels = read_labelmap(data_dir / "totalseg" / "example_seg_dicom.nii.gz")
    labels.names = {TOTALSEG_LIVER: "liver", 1: "spleen", 8: "adrenal_gland_right"}
    return labels


@pytest.fixture(scope="module")
def totalseg_export(totalseg_labels, totalseg_dicom, out_dir):
    return export_seg(totalseg_labels, totalseg_dicom, out_dir / "totalseg_liver.dcm", only=[TOTALSEG_LIVER],
                      algorithm_type="AUTOMATIC", algorithm_version="test-weights sha256:0123abcd")


@pytest.fixture(scope="module")
def totalseg_grid(totalseg_dicom) -> sitk.Image:
    return series_grid(totalseg_dicom)


@pytest.fixture(scope="module")
def totalseg_liver_expected(totalseg_labels, totalseg_grid) -> np.ndarray:
    """The NIfTI's liver resampled onto SimpleITK's grid of the DICOM series."""
    return on_grid(totalseg_labels.image == TOTALSEG_LIVER, totalseg_grid).astype(bool)


@pytest.fixture(scope="module")
def repaired_totalseg(totalseg_dicom, out_dir) -> list[Path]:
    return write_repaired_series(load_series(totalseg_dicom), out_dir / "totalseg_repaired")


def _masks_by_label(imported) -> dict[str, np.ndarray]:
    return {segment.label: segment.mask for segment in imported.segments}


def _probability_map(ct3: Path) -> LabelMap:
    grid = series_grid(ct3)
    z, y, x = np.mgrid[0:3, 0:512, 0:512]
    distance = np.hypot(y - 300, x - 200) / 60.0
    probability = np.clip(1.0 - distance, 0, 1).astype(np.float32) * (z != 1)
    image = sitk.GetImageFromArray(probability)
    image.CopyInformation(grid)
    return LabelMap(image, names={1: "Läsion (Verdacht)"}, source="probability map")


# ---------------------------------------------------------------- reference SEGs


def test_liver_seg_reproduces_dcmqi_reference_voxel_for_voxel(liver_export, dcmqi, ct3):
    ours = read_seg(liver_export.path, ct3)
    reference = read_seg(dcmqi / "liver.dcm", ct3)
    assert [s.label for s in ours.segments] == [s.label for s in reference.segments] == ["Liver"]
    ours_mask, reference_mask = ours.segments[0].mask, reference.segments[0].mask
    assert reference_mask.sum() > 100_000
    np.testing.assert_array_equal(ours_mask, reference_mask)
    segment, described = ours.segments[0], load_seg_metadata(dcmqi / "examples" / "seg-example.json").segments[0][0]
    assert (segment.category, segment.type, segment.color) == (described.category, described.type, described.color)


def test_partial_overlaps_seg_round_trips_against_reference(overlaps_export, dcmqi, ct3):
    ours = _masks_by_label(read_seg(overlaps_export.path, ct3))
    reference = _masks_by_label(read_seg(dcmqi / "partial_overlaps.dcm", ct3))
    assert sorted(ours) == sorted(reference) == ["DARK_BLUE", "GREEN", "LIGHT_BLUE", "ORANGE", "PURPLE"]
    assert (sum(m.astype(int) for m in reference.values()) > 1).any(), "the reference segments should overlap"
    for label, mask in reference.items():
        assert mask.any()
        np.testing.assert_array_equal(ours[label], mask, err_msg=label)


def test_seg_metadata_file_sets_codes_algorithm_and_series_fields(overlaps_export, dcmqi):
    meta = load_seg_metadata(dcmqi / "examples" / "seg-example_partial_overlaps.json")
    seg = hd.seg.segread(overlaps_export.path)
    assert seg.SeriesNumber == meta.series_number == 100
    assert seg.SeriesDescription == meta.series_description
    described = {a.label: a for group in meta.segments for a in group}
    for item in seg.SegmentSequence:
        expected = described[item.SegmentLabel]
        assert item.SegmentedPropertyTypeCodeSequence[0].CodeValue == expected.type.value
        assert item.SegmentedPropertyCategoryCodeSequence[0].CodeValue == expected.category.value
        assert item.SegmentAlgorithmType == "MANUAL" and "SegmentAlgorithmName" not in item
        assert item.SegmentDescription == expected.description


# ---------------------------------------------------------------- the UID-less JPEG 2000 series


def test_totalseg_liver_seg_exports_after_uid_repair(totalseg_export, totalseg_dicom, totalseg_grid,
                                                     totalseg_liver_expected):
    repairs = " ".join(totalseg_export.repairs)
    for keyword in ("SOPInstanceUID", "SOPClassUID", "StudyInstanceUID", "SeriesInstanceUID"):
        assert f"empty {keyword}" in repairs
    assert any("not on the grid of the DICOM series" in w for w in totalseg_export.warnings), "the NIfTI is y-flipped"
    imported = read_seg(totalseg_export.path, totalseg_dicom)
    labelmap = imported.to_labelmap()
    assert grid_differences(labelmap.image, totalseg_grid) == []
    assert totalseg_liver_expected.sum() > 300_000
    np.testing.assert_array_equal(sitk.GetArrayFromImage(labelmap.image) == 1, totalseg_liver_expected)
    assert labelmap.names == {1: "liver"}


def test_totalseg_seg_references_file_meta_uids_and_weights(totalseg_export, totalseg_dicom):
    seg = pydicom.dcmread(totalseg_export.path)
    referenced = {item.ReferencedSOPInstanceUID for item in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    file_meta_uids = {pydicom.dcmread(p, stop_before_pixels=True).file_meta.MediaStorageSOPInstanceUID
                      for p in totalseg_dicom.iterdir()}
    assert referenced == file_meta_uids
    assert seg.StudyInstanceUID == load_series(totalseg_dicom).datasets[0].StudyInstanceUID
    algorithm = seg.SegmentSequence[0].SegmentAlgorithmName, seg.SegmentSequence[0].SegmentAlgorithmType
    assert algorithm == ("SAMed-2", "AUTOMATIC")
    identification = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert identification.AlgorithmVersion == "test-weights sha256:0123abcd"
    assert (seg.Manufacturer, seg.SoftwareVersions) == ("SAMed2Slicer", samed2.__version__)


def test_dicom_repairs_are_deterministic_and_never_touch_source_files(totalseg_dicom, totalseg_labels,
                                                                      repaired_totalseg, tmp_path):
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in totalseg_dicom.iterdir()}
    first, second = load_series(totalseg_dicom), load_series(totalseg_dicom)
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        assert [ds.get(keyword) for ds in first.datasets] == [ds.get(keyword) for ds in second.datasets]
        assert all(ds.get(keyword) for ds in first.datasets)
    report = export_seg(totalseg_labels, first, tmp_path / "liver.dcm", only=[TOTALSEG_LIVER])
    assert_seg_valid(report.path, repaired_totalseg)
    after = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in totalseg_dicom.iterdir()}
    assert after == before


def test_seg_codes_laterality_from_builtin_table(totalseg_labels, totalseg_dicom, repaired_totalseg, tmp_path):
    report = export_seg(totalseg_labels, totalseg_dicom, tmp_path / "organs.dcm", only=[1, 8])
    seg = pydicom.dcmread(report.path)
    coded = {}
    for item in seg.SegmentSequence:
        type_item = item.SegmentedPropertyTypeCodeSequence[0]
        modifier = type_item.get("SegmentedPropertyTypeModifierCodeSequence")
        coded[item.SegmentLabel] = (type_item.CodeValue, modifier[0].CodeMeaning if modifier else None)
    assert coded == {"spleen": ("78961009", None), "adrenal_gland_right": ("23451007", "Right")}
    assert_seg_valid(report.path, repaired_totalseg)
    assert lookup_term("Left Kidney") == lookup_term("kidney_left") != lookup_term("kidney right")
    assert lookup_term("no such organ") is None


# ---------------------------------------------------------------- FRACTIONAL and many segments


def test_fractional_seg_round_trips_probabilities(ct3, tmp_path):
    probabilities = _probability_map(ct3)
    report = export_seg(probabilities, ct3, tmp_path / "fractional.dcm", fractional=True)
    assert_seg_valid(report.path, sorted(ct3.iterdir()))
    imported = read_seg(report.path, ct3)
    assert imported.fractional and [s.label for s in imported.segments] == ["Läsion (Verdacht)"]
    expected = sitk.GetArrayFromImage(probabilities.image)
    np.testing.assert_allclose(imported.segments[0].mask, expected, atol=0.5 / 255 + 1e-6)
    with pytest.raises(InputError, match="probability map"):
        export_seg(probabilities, ct3, tmp_path / "binary.dcm")
    assert no_leftovers(tmp_path, "binary.dcm")


def test_binary_seg_with_hundreds_of_labels_above_255(ct3, tmp_path):
    grid = series_grid(ct3)
    values = np.arange(300) * 7 + 1000  # 300 segments, label values 1000..3093
    array = np.zeros((3, 512, 512), dtype=np.int32)
    for i, value in enumerate(values):
        row, column = divmod(i, 20)
        array[i % 3, 20 + row * 30: 40 + row * 30, 20 + column * 24: 40 + column * 24] = value
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(grid)
    report = export_seg(LabelMap(image), ct3, tmp_path / "many.dcm")
    assert [s.number for s in report.segments] == list(range(1, 301))
    assert [s.value for s in report.segments] == values.tolist()
    assert report.segments[0].label == "Label 1000"
    assert_seg_valid(report.path, sorted(ct3.iterdir()))
    labelmap = read_seg(report.path, ct3).to_labelmap()
    assert sitk.GetArrayFromImage(labelmap.image).dtype == np.uint16
    numbers = np.searchsorted(values, array) + 1
    np.testing.assert_array_equal(sitk.GetArrayFromImage(labelmap.image), np.where(array > 0, numbers, 0))


def test_more_segments_than_dicom_allows_is_a_dicom_error(ct3, tmp_path):
    grid = series_grid(ct3)
    array = np.zeros(3 * 512 * 512, dtype=np.int32)
    array[: 65536 * 2: 2] = np.arange(1, 65537)
    image = sitk.GetImageFromArray(array.reshape(3, 512, 512))
    image.CopyInformation(grid)
    with pytest.raises(DicomError, match="at most 65535"):
        export_seg(LabelMap(image), ct3, tmp_path / "too_many.dcm")
    assert no_leftovers(tmp_path, "too_many.dcm")


# ---------------------------------------------------------------- irregular spacing, several series


def test_irregular_spacing_dicom_series_exports_each_slice_in_place(totalseg_dicom, totalseg_labels,
                                                                    totalseg_liver_expected, tmp_path):
    folder = tmp_path / "gap"
    folder.mkdir()
    by_z = sorted(totalseg_dicom.iterdir(), key=lambda p: float(pydicom.dcmread(p, stop_before_pixels=True)
                                                                 .ImagePositionPatient[2]))
    dropped = 10
    for path in by_z[:dropped] + by_z[dropped + 1:]:
        shutil.copy(path, folder / path.name)
    report = export_seg(totalseg_labels, folder, tmp_path / "gap.dcm", only=[TOTALSEG_LIVER])
    assert any("irregular slice spacing" in w for w in report.warnings)
    assert_seg_valid(report.path, write_repaired_series(load_series(folder), tmp_path / "gap_repaired"))
    imported = read_seg(report.path, folder)
    expected = np.delete(totalseg_liver_expected, dropped, axis=0)
    np.testing.assert_array_equal(imported.segments[0].mask, expected)
    labelmap = imported.to_labelmap()
    assert labelmap.image.GetSize()[2] == 20 and labelmap.image.GetSpacing()[2] == pytest.approx(2.0)
    assert any("regular grid" in w for w in imported.report.warnings)


def test_several_dicom_series_in_one_folder_are_chosen_by_uid(ct3, totalseg_dicom, dcmqi, tmp_path):
    folder = tmp_path / "mixed"
    shutil.copytree(ct3, folder / "ct3")
    shutil.copytree(totalseg_dicom, folder / "totalseg")
    ct3_uid = pydicom.dcmread(next(ct3.iterdir())).SeriesInstanceUID
    totalseg_uid = load_series(totalseg_dicom).series_uid
    with pytest.raises(DicomError, match="holds 2 DICOM series") as error:
        export_seg(dcmqi / "liver_seg.nrrd", folder, tmp_path / "liver.dcm")
    assert ct3_uid in str(error.value) and totalseg_uid in str(error.value)
    assert no_leftovers(tmp_path, "liver.dcm")
    with pytest.raises(DicomError, match="no DICOM series with SeriesInstanceUID"):
        export_seg(dcmqi / "liver_seg.nrrd", folder, tmp_path / "liver.dcm", series_uid="1.2.3.4")
    report = export_seg(dcmqi / "liver_seg.nrrd", folder, tmp_path / "liver.dcm", series_uid=ct3_uid)
    assert report.source_series_uid == ct3_uid
    assert_seg_valid(report.path, sorted(ct3.iterdir()))
    # reading back finds the series the SEG references
    assert read_seg(report.path, folder).series.series_uid == ct3_uid


# ---------------------------------------------------------------- validators and an independent reader


@pytest.fixture(params=["liver", "overlaps", "totalseg"])
def written_seg(request, ct3, repaired_totalseg):
    if request.param == "totalseg":
        return request.getfixturevalue("totalseg_export").path, repaired_totalseg
    return request.getfixturevalue(f"{request.param}_export").path, sorted(ct3.iterdir())


def test_written_seg_passes_dciodvfy_and_dcentvfy(written_seg):
    assert_seg_valid(*written_seg)


def test_dcmqi_segimage2itkimage_reads_our_liver_seg(liver_export, dcmqi, tmp_path):
    masks = dcmqi_masks(liver_export.path, tmp_path)
    source = read_labelmap(dcmqi / "liver_seg.nrrd").image
    assert list(masks) == ["Liver"]
    np.testing.assert_array_equal(on_grid(masks["Liver"], source), sitk.GetArrayFromImage(source) == 1)


def test_dcmqi_segimage2itkimage_reads_our_overlapping_seg(overlaps_export, dcmqi, tmp_path):
    masks = dcmqi_masks(overlaps_export.path, tmp_path)
    meta = load_seg_metadata(dcmqi / "examples" / "seg-example_partial_overlaps.json")
    for index, group in enumerate(meta.segments):
        source = read_labelmap(dcmqi / f"partial_overlaps-{index + 1}.nrrd").image
        for attributes in group:
            expected = sitk.GetArrayFromImage(source) == attributes.label_id
            np.testing.assert_array_equal(on_grid(masks[attributes.label], source), expected,
                                          err_msg=attributes.label)


def test_dcmqi_segimage2itkimage_reads_our_totalseg_seg(totalseg_export, totalseg_grid, totalseg_liver_expected,
                                                        tmp_path):
    masks = dcmqi_masks(totalseg_export.path, tmp_path)
    np.testing.assert_array_equal(on_grid(masks["liver"], totalseg_grid), totalseg_liver_expected)


# ---------------------------------------------------------------- bad inputs


def _shifted(path: Path, offset_mm: float) -> LabelMap:
    labels = read_labelmap(path)
    origin = np.array(labels.image.GetOrigin()) + offset_mm
    labels.image.SetOrigin(origin.tolist())
    return labels


def _empty_like(path: Path) -> LabelMap:
    image = read_labelmap(path).image
    return LabelMap(image * 0, source="empty map")


@pytest.mark.parametrize("case, error, message", [
    ("no dicom", DicomError, "no DICOM image slices"),
    ("missing dicom folder", DicomError, "DICOM folder not found"),
    ("no overlap", InputError, "does not overlap the DICOM series"),
    ("empty labels", InputError, "label map is empty"),
    ("missing output folder", InputError, "output folder does not exist"),
    ("missing label map", InputError, "label map not found"),
    ("2D label map", InputError, "must be 3D"),
])
def test_bad_dicom_seg_inputs_raise_clear_errors_and_leave_no_file(case, error, message, dcmqi, ct3, tmp_path):
    labels, dicom, out = dcmqi / "liver_seg.nrrd", ct3, tmp_path / "out.dcm"
    if case == "no dicom":
        dicom = tmp_path / "notes"
        dicom.mkdir()
        (dicom / "readme.txt").write_text("not DICOM")
    elif case == "missing dicom folder":
        dicom = tmp_path / "nowhere"
    elif case == "no overlap":
        labels = _shifted(labels, 1000.0)
    elif case == "empty labels":
        labels = _empty_like(labels)
    elif case == "missing output folder":
        out = tmp_path / "nowhere" / "out.dcm"
    elif case == "missing label map":
        labels = tmp_path / "missing.nrrd"
    elif case == "2D label map":
        labels = LabelMap(read_labelmap(labels).image[:, :, 0], source="one slice")
    with pytest.raises(error, match=message):
        export_seg(labels, dicom, out)
    assert no_leftovers(tmp_path, "out.dcm")


def test_seg_write_failure_leaves_no_partial_file(dcmqi, ct3, tmp_path, monkeypatch):
    def disk_full(self, filename, *args, **kwargs):
        Path(filename).write_bytes(b"DICM partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(hd.seg.Segmentation, "save_as", disk_full)
    with pytest.raises(OutputError, match="No space left"):
        export_seg(dcmqi / "liver_seg.nrrd", ct3, tmp_path / "liver.dcm")
    assert list(tmp_path.iterdir()) == []


def test_seg_metadata_file_errors_are_specific(tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        load_seg_metadata(broken)
    no_label = tmp_path / "no_label.json"
    no_label.write_text(json.dumps({"segmentAttributes": [[{"SegmentLabel": "Liver"}]]}))
    with pytest.raises(InputError, match="labelID"):
        load_seg_metadata(no_label)


def test_seg_with_overlaps_needs_permission_for_one_label_map(overlaps_export, ct3):
    imported = read_seg(overlaps_export.path, ct3)
    with pytest.raises(InputError, match="overlap"):
        imported.to_labelmap()
    array = sitk.GetArrayFromImage(imported.to_labelmap(allow_overlap=True).image)
    top = max(imported.segments, key=lambda s: s.number)
    assert (array[top.mask] == top.number).all()


def test_seg_import_refuses_other_series_and_non_seg_files(overlaps_export, ct3, totalseg_dicom):
    with pytest.raises(DicomError, match="frame of reference"):
        read_seg(overlaps_export.path, totalseg_dicom)
    with pytest.raises(DicomError, match="not a readable DICOM Segmentation"):
        read_seg(sorted(ct3.iterdir())[0], ct3)


# ---------------------------------------------------------------- label-map files


@pytest.mark.parametrize("suffix", [".seg.nrrd", ".nrrd", ".nii.gz"])
def test_labelmap_files_keep_names_and_colours_for_seg(dcmqi, tmp_path, suffix):
    source = read_labelmap(dcmqi / "liver_spine_seg.nrrd")
    source.names, source.colors = {1: "Liver", 2: "Thoracic spine"}, {1: (221, 130, 101), 2: (10, 20, 30)}
    path = write_labelmap(source, tmp_path / f"labels{suffix}")
    back = read_labelmap(path)
    assert (back.names, back.colors) == (source.names, source.colors)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back.image), sitk.GetArrayFromImage(source.image))
    assert grid_differences(back.image, source.image) == []
    if suffix.endswith("nrrd"):
        header = sitk.ReadImage(str(path))
        assert header.GetMetaData("Segment1_LabelValue") == "2"
        assert header.GetMetaData("Segment0_Extent").split()[4:] == ["0", "2"]
        assert "SCT^10200004^Liver" in header.GetMetaData("Segment0_Tags")
    else:
        assert (tmp_path / "labels.labels.json").is_file()


# ---------------------------------------------------------------- command line


def _seg_cli(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


def test_export_seg_and_import_seg_commands(dcmqi, ct3, tmp_path, capsys):
    out = tmp_path / "liver.dcm"
    code = _seg_cli(["export-seg", "--labels", str(dcmqi / "liver_seg.nrrd"), "--dicom", str(ct3),
                     "--meta", str(dcmqi / "examples" / "seg-example.json"), "--out", str(out)])
    liver_voxels = np.count_nonzero(sitk.GetArrayFromImage(read_labelmap(dcmqi / "liver_seg.nrrd").image))
    assert code == 0 and f"segment 1: Liver ({liver_voxels} voxels)" in capsys.readouterr().out
    assert_seg_valid(out, sorted(ct3.iterdir()))
    back = tmp_path / "liver_back.seg.nrrd"
    assert _seg_cli(["import-seg", str(out), "--dicom", str(ct3), "--out", str(back)]) == 0
    labelmap, source = read_labelmap(back), read_labelmap(dcmqi / "liver_seg.nrrd")
    assert labelmap.names == {1: "Liver"}
    np.testing.assert_array_equal(on_grid(labelmap.image, source.image), sitk.GetArrayFromImage(source.image))


def test_samed2_export_seg_from_the_shell(totalseg_dicom, data_dir, tmp_path):
    samed2 = Path(sys.executable).with_name("samed2")
    out = tmp_path / "liver.dcm"
    command = [str(samed2), "export-seg", "--labels", str(data_dir / "totalseg" / "example_seg_dicom.nii.gz"),
               "--dicom", str(totalseg_dicom), "--only", str(TOTALSEG_LIVER), "--name", "5=liver", "--out", str(out),
               "--repaired-series-out", str(tmp_path / "repaired")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "empty SOPInstanceUID" in result.stderr and "copy attributes" not in result.stderr
    liver_voxels = np.count_nonzero(sitk.GetArrayFromImage(read_labelmap(command[3]).image) == TOTALSEG_LIVER)
    assert f"segment 1: liver ({liver_voxels} voxels)" in result.stdout
    assert pydicom.dcmread(out).SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeValue == "10200004"
    assert_seg_valid(out, sorted((tmp_path / "repaired").iterdir()))
    failed = subprocess.run([str(samed2), "export-seg", "--labels", str(data_dir / "totalseg" / "example_seg.nii.gz"),
                             "--dicom", str(totalseg_dicom), "--out", str(tmp_path / "bad.dcm")],
                            capture_output=True, text=True, timeout=300)
    last_line = failed.stderr.strip().splitlines()[-1]
    assert failed.returncode == 2 and last_line.startswith("error: ") and "does not overlap" in last_line
    assert no_leftovers(tmp_path, "bad.dcm")
