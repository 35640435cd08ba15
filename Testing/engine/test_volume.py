"""samed2.volume and samed2.presets: geometry on rotated/flipped/anisotropic grids, file and
DICOM loading, slicing, intensity presets on real CT and MR, and the model's pre/postprocessing.

SimpleITK (index <-> LPS), pydicom (DICOM tags and pixels) and Pillow (resizing) are the
independent references."""
import os
import warnings

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import torch
from PIL import Image

from samed2 import presets
from samed2.choices import ENGINE_PRESETS
from samed2.errors import InputError
from samed2.model_coords import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    logits_to_slice,
    mask_box,
    preprocess_slices,
    slice_box_to_model,
    slice_points_to_model,
)
from samed2.volume import Volume, get_slice, ijk_to_slice_coords, put_slice, slice_coords_to_ijk
from samed2.volume_files import load_volume

LPS_TO_RAS = np.array([-1.0, -1.0, 1.0])
RNG_SEED = 20240607


def rotation(axis, angle_deg):
    """Rotation matrix about ``axis`` by ``angle_deg`` (Rodrigues)."""
    axis = np.asarray(axis, dtype=float) / np.linalg.norm(axis)
    cross = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    angle = np.radians(angle_deg)
    return np.eye(3) + np.sin(angle) * cross + (1 - np.cos(angle)) * cross @ cross


def oblique_image(direction_lps, size=(7, 5, 4), spacing=(0.7, 1.3, 2.9), origin=(12.5, -30.25, 7.0)):
    """A SimpleITK image whose every voxel holds a distinct value."""
    values = np.arange(np.prod(size), dtype=np.int16).reshape(size[::-1])
    image = sitk.GetImageFromArray(values)
    image.SetSpacing(spacing)
    image.SetDirection(np.asarray(direction_lps, dtype=float).reshape(-1).tolist())
    image.SetOrigin(origin)
    return image


ROTATED_FLIPPED = rotation((1, 2, 3), 37.0) @ np.diag([1.0, -1.0, 1.0])


@pytest.fixture()
def rotated_image():
    return oblique_image(ROTATED_FLIPPED)


def all_indices(image):
    return [(i, j, k) for k in range(image.GetSize()[2]) for j in range(image.GetSize()[1])
            for i in range(image.GetSize()[0])]


# --- geometry -------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_volume_written_and_loaded_keeps_physical_positions(rotated_image, tmp_path, suffix):
    path = tmp_path / f"rotated{suffix}"
    sitk.WriteImage(rotated_image, str(path))
    volume = load_volume(path)
    reference = sitk.ReadImage(str(path))
    assert volume.shape_ijk == rotated_image.GetSize()
    for i, j, k in all_indices(rotated_image):
        lps = np.array(reference.TransformIndexToPhysicalPoint((i, j, k)))
        np.testing.assert_allclose(volume.index_to_physical((i, j, k), "LPS"), lps, atol=1e-4)
        np.testing.assert_allclose(volume.index_to_physical((i, j, k), "RAS"), lps * LPS_TO_RAS, atol=1e-4)
        assert volume.array[k, j, i] == rotated_image[i, j, k]
    np.testing.assert_allclose(volume.spacing, rotated_image.GetSpacing(), rtol=1e-5)


def test_volume_physical_point_lands_on_its_voxel(rotated_image):
    volume = Volume.from_sitk(rotated_image)
    rng = np.random.default_rng(RNG_SEED)
    for i, j, k in all_indices(rotated_image):
        continuous = np.array([i, j, k]) + rng.uniform(-0.45, 0.45, 3)
        lps = rotated_image.TransformContinuousIndexToPhysicalPoint(continuous.tolist())
        assert rotated_image.TransformPhysicalPointToIndex(lps) == (i, j, k)
        assert volume.voxel_at(lps, "LPS") == (i, j, k)
        assert volume.voxel_at(np.array(lps) * LPS_TO_RAS, "RAS") == (i, j, k)


def test_volume_voxel_to_ras_to_voxel_round_trip(rotated_image):
    volume = Volume.from_sitk(rotated_image)
    indices = np.random.default_rng(RNG_SEED).uniform(-0.5, 6.5, size=(200, 3))
    np.testing.assert_allclose(volume.physical_to_index(volume.index_to_physical(indices, "RAS"), "RAS"),
                               indices, atol=1e-9)
    np.testing.assert_allclose(volume.physical_to_index(volume.index_to_physical(indices, "LPS"), "LPS"),
                               indices, atol=1e-9)
    np.testing.assert_allclose(volume.ijk_to_ras @ volume.ras_to_ijk, np.eye(4), atol=1e-12)


def test_volume_from_slicer_matrix_matches_sitk_geometry(rotated_image):
    from_sitk = Volume.from_sitk(rotated_image)
    array_kji = sitk.GetArrayFromImage(rotated_image)
    from_ras = Volume(array_kji, from_sitk.ijk_to_ras)
    exported = from_ras.to_sitk()
    np.testing.assert_allclose(exported.GetSpacing(), rotated_image.GetSpacing(), atol=1e-12)
    np.testing.assert_allclose(exported.GetDirection(), rotated_image.GetDirection(), atol=1e-12)
    np.testing.assert_allclose(exported.GetOrigin(), rotated_image.GetOrigin(), atol=1e-12)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(exported), array_kji)


def test_volume_keeps_the_callers_array_unmodifiable_without_copying():
    array = np.zeros((3, 4, 5), dtype=np.int16)
    volume = Volume(array, np.eye(4))
    assert np.shares_memory(volume.array, array)
    with pytest.raises(ValueError):
        volume.array[0, 0, 0] = 1
    assert array.flags.writeable


# --- slicing axis choice --------------------------------------------------------------

RAS_NORMALS = {"sagittal": (1.0, 0.0, 0.0), "coronal": (0.0, 1.0, 0.0), "axial": (0.0, 0.0, 1.0)}
# Acquisitions: the RAS direction of voxel axes i, j, k (signs = flips).
ACQUISITIONS = {
    "axial_flipped": [(-1, 0, 0), (0, -1, 0), (0, 0, 1)],
    "sagittal": [(0, 1, 0), (0, 0, -1), (1, 0, 0)],
    "coronal": [(1, 0, 0), (0, 0, 1), (0, -1, 0)],
}


def acquisition_volume(name, tilt_deg=0.0, tilt_axis=(1.0, 1.0, 0.0), spacing=(0.8, 1.1, 5.0)):
    """A volume with permuted/flipped voxel axes, rotated by ``tilt_deg`` in RAS."""
    columns = rotation(tilt_axis, tilt_deg) @ np.array(ACQUISITIONS[name], dtype=float).T
    ijk_to_ras = np.eye(4)
    ijk_to_ras[:3, :3] = columns * np.array(spacing)
    ijk_to_ras[:3, 3] = (-40.0, 22.0, 13.0)
    return Volume(np.arange(6 * 7 * 8, dtype=np.float32).reshape(8, 7, 6), ijk_to_ras)


def expected_axis(acquisition, view):
    """The voxel axis whose direction is parallel to the view's normal, by construction."""
    directions = np.abs(np.array(ACQUISITIONS[acquisition], dtype=float))
    return int(np.argmax(directions @ np.array(RAS_NORMALS[view])))


@pytest.mark.parametrize("acquisition", sorted(ACQUISITIONS))
@pytest.mark.parametrize("view", sorted(RAS_NORMALS))
def test_volume_slicing_axis_for_standard_views(acquisition, view):
    volume = acquisition_volume(acquisition, tilt_deg=2.0)
    normal_ras = np.array(RAS_NORMALS[view])
    axis = volume.slicing_axis(normal_ras, "RAS")
    assert axis == expected_axis(acquisition, view)
    assert volume.slicing_axis(normal_ras * LPS_TO_RAS, "LPS") == axis
    assert volume.slicing_axis(-normal_ras, "RAS") == axis
    # every voxel of the chosen slice lies (within the 2 degree tilt) in one view plane
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in volume.shape_ijk], indexing="ij"), -1).reshape(-1, 3)
    on_slice = ijk[ijk[:, axis] == 3]
    heights = volume.index_to_physical(on_slice, "RAS") @ normal_ras
    diameter = np.linalg.norm(np.ptp(volume.index_to_physical(on_slice, "RAS"), axis=0))
    assert np.ptp(heights) <= diameter * np.sin(np.radians(2.0)) + 1e-9


def test_volume_oblique_view_is_refused_unless_tolerance_allows():
    volume = acquisition_volume("axial_flipped", tilt_deg=20.0, tilt_axis=(1.0, 0.0, 0.0))
    with pytest.raises(InputError, match="oblique"):
        volume.slicing_axis((0, 0, 1))
    assert volume.slicing_axis((0, 0, 1), tolerance_deg=25.0) == 2


def test_volume_in_plane_rotation_keeps_the_axis():
    volume = acquisition_volume("axial_flipped", tilt_deg=45.0, tilt_axis=(0.0, 0.0, 1.0))
    assert volume.slicing_axis((0, 0, 1)) == 2
    with pytest.raises(InputError, match="oblique"):
        volume.slicing_axis((0, 1, 0))


def test_volume_gantry_tilt_uses_the_slice_plane_not_the_k_direction():
    ijk_to_ras = np.eye(4)
    ijk_to_ras[:3, :3] = np.column_stack([(0.7, 0, 0), (0, 0.7, 0), 2.5 * rotation((1, 0, 0), 15.0)[:, 2]])
    volume = Volume(np.zeros((4, 5, 6), dtype=np.int16), ijk_to_ras)
    assert volume.view_angles((0, 0, 1))[2] == pytest.approx(0.0, abs=1e-9)
    assert volume.slicing_axis((0, 0, 1)) == 2


@pytest.mark.parametrize("normal", [(0, 0, 0), (np.nan, 0, 1)])
def test_volume_unusable_view_normal_is_refused(normal):
    with pytest.raises(InputError, match="normal"):
        acquisition_volume("sagittal").slicing_axis(normal)


# --- slices ---------------------------------------------------------------------------


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_volume_slice_pixels_are_the_right_voxels(rotated_image, axis):
    volume = Volume.from_sitk(rotated_image)
    for i, j, k in all_indices(rotated_image)[::7]:
        lps = rotated_image.TransformIndexToPhysicalPoint((i, j, k))
        point = volume.to_slice_point(lps, axis, "LPS")
        pixel = volume.get_slice(axis, point.index)[round(point.y), round(point.x)]
        assert pixel == rotated_image[i, j, k]
        assert tuple(slice_coords_to_ijk(point.index, point.x, point.y, axis).round(6)) == (i, j, k)
    assert volume.get_slice(axis, 0).shape == volume.slice_shape(axis)
    assert volume.num_slices(axis) == rotated_image.GetSize()[axis]


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_volume_put_slice_writes_only_that_slice(axis):
    volume = acquisition_volume("coronal")
    mask = np.zeros(volume.array.shape, dtype=np.uint8)
    index = volume.num_slices(axis) - 2
    put_slice(mask, axis, index, np.ones(volume.slice_shape(axis), dtype=np.uint8))
    written = np.argwhere(mask)[:, ::-1]  # (i, j, k)
    assert len(written) == np.prod(volume.slice_shape(axis))
    assert set(written[:, axis]) == {index}
    np.testing.assert_array_equal(get_slice(mask, axis, index), 1)
    with pytest.raises(ValueError, match="does not fit"):
        put_slice(mask, axis, index, np.ones((2, 2)))


def test_volume_slice_index_and_points_outside_are_refused(rotated_image):
    volume = Volume.from_sitk(rotated_image)
    with pytest.raises(InputError, match="slice 4 is outside"):
        volume.get_slice(2, 4)
    with pytest.raises(InputError, match="axis"):
        volume.get_slice(3, 0)
    beyond = rotated_image.TransformContinuousIndexToPhysicalPoint((3.0, 2.0, 3.6))
    with pytest.raises(InputError, match="outside the volume"):
        volume.to_slice_point(beyond, 2, "LPS")
    with pytest.raises(InputError, match="outside the volume"):
        volume.voxel_at(np.array(beyond) * LPS_TO_RAS, "RAS")
    with pytest.raises(InputError, match="RAS' or 'LPS"):
        volume.voxel_at(beyond, "XYZ")
    slice_coords = volume.to_slice_coords(beyond, 2, "LPS")
    np.testing.assert_allclose(slice_coords, ijk_to_slice_coords((3.0, 2.0, 3.6), 2), atol=1e-9)


# --- bad input ------------------------------------------------------------------------


def test_volume_2d_and_4d_files_are_refused(tmp_path):
    sitk.WriteImage(sitk.Image(8, 9, sitk.sitkInt16), str(tmp_path / "flat.nii.gz"))
    with pytest.raises(InputError, match="2D image"):
        load_volume(tmp_path / "flat.nii.gz")
    sitk.WriteImage(sitk.Image([4, 5, 6, 2], sitk.sitkFloat32), str(tmp_path / "series.nii.gz"))
    with pytest.raises(InputError, match="4D image"):
        load_volume(tmp_path / "series.nii.gz")
    sitk.WriteImage(sitk.Image([4, 5, 6], sitk.sitkVectorUInt8, 3), str(tmp_path / "rgb.nrrd"))
    with pytest.raises(InputError, match="3 components"):
        load_volume(tmp_path / "rgb.nrrd")


def test_volume_4d_file_with_one_time_point_loads_as_3d(tmp_path):
    image = sitk.Image([4, 5, 6, 1], sitk.sitkInt16)
    image[2, 3, 4, 0] = 7
    sitk.WriteImage(image, str(tmp_path / "one.nii.gz"))
    volume = load_volume(tmp_path / "one.nii.gz")
    assert volume.shape_ijk == (4, 5, 6)
    assert volume.array[4, 3, 2] == 7


@pytest.mark.parametrize("array, message", [
    (np.zeros((0, 5, 5)), "empty"),
    (np.zeros((5, 5)), "2D"),
    (np.zeros((2, 3, 4, 5)), "4D"),
    (np.zeros((2, 3, 4), dtype=complex), "real number"),
])
def test_volume_bad_arrays_are_refused(array, message):
    with pytest.raises(InputError, match=message):
        Volume(array, np.eye(4))


def test_volume_bad_matrix_is_refused():
    singular = np.diag([1.0, 0.0, 1.0, 1.0])
    with pytest.raises(InputError, match="singular"):
        Volume(np.zeros((2, 2, 2)), singular)
    with pytest.raises(InputError, match="4x4"):
        Volume(np.zeros((2, 2, 2)), np.eye(3))


def test_volume_huge_array_refused_unless_allowed():
    huge = np.broadcast_to(np.int16(0), (2048, 1024, 1024))  # no memory behind it
    with pytest.raises(InputError, match="above the limit"):
        Volume(huge, np.eye(4))
    assert Volume(huge, np.eye(4), max_voxels=None).shape_ijk == (1024, 1024, 2048)


def test_volume_huge_file_refused_from_its_header_before_reading(tmp_path):
    header = tmp_path / "huge.mhd"
    header.write_text("ObjectType = Image\nNDims = 3\nDimSize = 2048 2048 2048\nElementType = MET_SHORT\n"
                      "ElementDataFile = missing.raw\n")
    with pytest.raises(InputError, match="above the limit"):
        load_volume(header)
    with pytest.raises(InputError, match="pixel data"):
        load_volume(header, max_voxels=None)


def test_volume_missing_or_unreadable_file_is_refused(tmp_path):
    with pytest.raises(InputError, match="no such image"):
        load_volume(tmp_path / "absent.nii.gz")
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(InputError, match="cannot read"):
        load_volume(tmp_path / "notes.txt")


# --- DICOM ----------------------------------------------------------------------------


def dicom_slices_by_position(folder):
    datasets = [pydicom.dcmread(folder / name) for name in os.listdir(folder)]
    normal = np.cross(*np.array(datasets[0].ImageOrientationPatient, dtype=float).reshape(2, 3))
    return sorted(datasets, key=lambda d: np.array(d.ImagePositionPatient, dtype=float) @ normal)


@pytest.mark.parametrize("series", ["totalseg/example_ct_dicom", "dcmqi/ct-3slice"])
def test_volume_dicom_series_geometry_and_pixels_match_pydicom(data_dir, series):
    folder = data_dir / series
    volume = load_volume(folder)
    datasets = dicom_slices_by_position(folder)
    assert volume.modality == "CT"
    assert volume.shape_ijk == (datasets[0].Columns, datasets[0].Rows, len(datasets))
    for k, dataset in enumerate(datasets):
        np.testing.assert_allclose(volume.index_to_physical((0, 0, k), "LPS"),
                                   np.array(dataset.ImagePositionPatient, dtype=float), atol=1e-3)
        hounsfield = dataset.pixel_array * float(dataset.RescaleSlope) + float(dataset.RescaleIntercept)
        np.testing.assert_array_equal(volume.array[k], hounsfield)
    row_step = volume.index_to_physical((0, 1, 0), "LPS") - volume.index_to_physical((0, 0, 0), "LPS")
    column_direction = np.array(datasets[0].ImageOrientationPatient[3:], dtype=float)
    np.testing.assert_allclose(row_step, column_direction * float(datasets[0].PixelSpacing[0]), atol=1e-6)


def test_volume_folder_with_several_series_needs_a_uid(data_dir, tmp_path):
    for series in ["totalseg/example_ct_dicom", "dcmqi/ct-3slice"]:
        for name in os.listdir(data_dir / series):
            os.symlink(data_dir / series / name, tmp_path / name)
    three_slice_uid = pydicom.dcmread(data_dir / "dcmqi/ct-3slice/01.dcm").SeriesInstanceUID
    with pytest.raises(InputError, match="2 DICOM series") as refused:
        load_volume(tmp_path)
    assert three_slice_uid in str(refused.value) and "empty SeriesInstanceUID" in str(refused.value)
    assert load_volume(tmp_path, series_uid=three_slice_uid).shape_ijk[2] == 3
    assert load_volume(tmp_path, series_uid="").shape_ijk[2] == 20
    with pytest.raises(InputError, match="no DICOM series with SeriesInstanceUID"):
        load_volume(tmp_path, series_uid="1.2.3")


def test_volume_folder_without_dicom_is_refused(tmp_path):
    with pytest.raises(InputError, match="no DICOM series"):
        load_volume(tmp_path)


# --- intensity presets ----------------------------------------------------------------


@pytest.fixture(scope="module")
def ct_volume(data_dir):
    return load_volume(data_dir / "totalseg" / "example_ct_sm.nii.gz")


@pytest.fixture(scope="module")
def mr_volume(data_dir):
    return load_volume(data_dir / "pyradiomics" / "brain1_image.nrrd")


@pytest.mark.parametrize("name", sorted(presets.CT_WINDOWS))
def test_volume_ct_window_presets_on_real_ct(ct_volume, name):
    width, level = presets.CT_WINDOWS[name]
    before = ct_volume.array.copy()
    mapped = presets.get_preset(name).apply(ct_volume.array)
    np.testing.assert_array_equal(ct_volume.array, before)
    assert mapped.dtype == np.float32 and mapped.shape == before.shape
    assert mapped.min() >= 0.0 and mapped.max() <= 1.0
    hu = before.astype(float)
    assert np.all(mapped[hu <= level - width / 2] == 0.0)
    assert np.all(mapped[hu >= level + width / 2] == 1.0)
    inside = (hu > level - width / 2) & (hu < level + width / 2)
    assert inside.any()
    np.testing.assert_allclose(mapped[inside], (hu[inside] - (level - width / 2)) / width, atol=1e-6)


def test_volume_default_preset_recognises_ct_and_mr(ct_volume, mr_volume):
    assert presets.default_preset(ct_volume.array).name == "soft_tissue"
    assert presets.default_preset(mr_volume.array).kind == "percentile"
    assert presets.default_preset(ct_volume.array, modality="MR").kind == "percentile"
    assert presets.default_preset(mr_volume.array, modality="CT").name == "soft_tissue"
    assert presets.get_preset("auto", ct_volume.array).name == "soft_tissue"


def test_volume_mr_percentile_preset_on_real_mr(mr_volume):
    before = mr_volume.array.copy()
    preset = presets.percentile_preset(0.5, 99.5)
    mapped = preset.apply(mr_volume.array)
    np.testing.assert_array_equal(mr_volume.array, before)
    assert mapped.dtype == np.float32 and mapped.min() == 0.0 and mapped.max() == 1.0
    window = preset.resolve(mr_volume.array)
    assert np.mean(before > window.high) <= 0.005
    assert np.mean(before >= window.high) >= 0.005
    order = np.argsort(before, axis=None, kind="stable")
    assert np.all(np.diff(mapped.reshape(-1)[order]) >= 0)  # monotone: contrast order kept


def test_volume_percentiles_of_a_sample_and_chunked_range(mr_volume, monkeypatch):
    exact = presets.percentile_preset().resolve(mr_volume.array)
    full_range = (float(mr_volume.array.min()), float(mr_volume.array.max()))
    monkeypatch.setattr(presets, "PERCENTILE_SAMPLE_SIZE", 200_000)
    monkeypatch.setattr(presets, "RANGE_CHUNK_SIZE", 100_000)
    sampled = presets.percentile_preset().resolve(mr_volume.array)
    assert presets.finite_range(mr_volume.array) == full_range
    assert sampled.high == pytest.approx(exact.high, rel=0.05)
    assert sampled.low == pytest.approx(exact.low, abs=0.05 * (exact.high - exact.low))


def test_volume_custom_window_and_bad_presets():
    values = np.array([-100.0, 0.0, 50.0, 100.0, 200.0])
    np.testing.assert_allclose(presets.ct_window(200, 0).apply(values), [0.0, 0.5, 0.75, 1.0, 1.0])
    with pytest.raises(InputError, match="width"):
        presets.ct_window(0, 40)
    with pytest.raises(InputError, match="percentiles"):
        presets.percentile_preset(99, 1)
    with pytest.raises(InputError, match="soft_tissue"):
        presets.get_preset("abdomen")


def test_every_engine_preset_name_is_a_preset(ct_volume):
    """samed2.choices.ENGINE_PRESETS, what the engine's options offer, are the presets get_preset knows."""
    assert set(presets.CT_WINDOWS) | {"mr", "auto"} == set(ENGINE_PRESETS)
    for name in ENGINE_PRESETS:
        presets.get_preset(name, ct_volume.array).apply(ct_volume.array[:1])


@pytest.mark.parametrize("values, message", [
    (np.full((3, 4, 5), 7, dtype=np.int16), "constant"),
    (np.full((3, 4, 5), np.nan), "no finite voxel"),
    (np.zeros((0, 4, 5)), "no finite voxel"),
])
def test_volume_presets_refuse_volumes_without_contrast(values, message):
    with pytest.raises(InputError, match=message):
        presets.percentile_preset().apply(values)
    with pytest.raises(InputError, match=message):
        presets.get_preset("soft_tissue").apply(values)


def test_volume_non_finite_voxels_replaced_in_the_copy_with_a_warning(ct_volume):
    values = ct_volume.array.astype(np.float32)
    values[0, 0, :3] = [np.nan, np.inf, -np.inf]
    before = values.copy()
    with pytest.warns(presets.NonFiniteVoxelsWarning, match="3 voxel"):
        mapped = presets.default_preset(values).apply(values)
    np.testing.assert_array_equal(values, before)  # NaN still there: the input is untouched
    assert np.all(np.isfinite(mapped))
    np.testing.assert_array_equal(mapped[0, 0, :3], [0.0, 1.0, 0.0])


# --- model input and output -----------------------------------------------------------


def pil_resize(slice_2d, width_height):
    image = Image.fromarray(slice_2d.astype(np.float32), mode="F")
    return np.asarray(image.resize(width_height, Image.BILINEAR))


@pytest.mark.parametrize("image_size", [64, 256])
def test_volume_preprocess_resizes_like_pillow(ct_volume, image_size):
    slice_01 = presets.get_preset("soft_tissue").apply(ct_volume.get_slice(2, 15))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model_input = preprocess_slices(slice_01, image_size)
    assert model_input.shape == (1, 3, image_size, image_size) and model_input.dtype == torch.float32
    expected = pil_resize(slice_01, (image_size, image_size))
    for channel in range(3):
        np.testing.assert_allclose(model_input[0, channel].numpy(), expected, atol=2e-5)


def test_volume_preprocess_imagenet_normalisation_and_batches(ct_volume):
    windowed = presets.get_preset("soft_tissue").apply(ct_volume.array)
    plain = preprocess_slices([windowed[3], windowed[4]], 128, normalize="none")
    np.testing.assert_array_equal(preprocess_slices(windowed[3:5], 128).numpy(), plain.numpy())
    normalised = preprocess_slices(windowed[3:5], 128, normalize="imagenet")
    for channel, (mean, std) in enumerate(zip(IMAGENET_MEAN, IMAGENET_STD)):
        np.testing.assert_allclose(normalised[:, channel].numpy() * std + mean, plain[:, 0].numpy(), atol=1e-6)


def test_volume_preprocess_at_the_slice_size_is_identity():
    slice_01 = np.random.default_rng(RNG_SEED).random((32, 32), dtype=np.float32)
    np.testing.assert_array_equal(preprocess_slices(slice_01, 32)[0, 1].numpy(), slice_01)


@pytest.mark.parametrize("slice_2d, message", [
    (np.full((8, 8), 300.0), "intensity preset"),
    (np.full((8, 8), np.nan), "intensity preset"),
])
def test_volume_preprocess_refuses_raw_values(slice_2d, message):
    with pytest.raises(InputError, match=message):
        preprocess_slices(slice_2d, 16)
    with pytest.raises(InputError, match="normalize"):
        preprocess_slices(np.zeros((8, 8)), 16, normalize="zscore")


def test_volume_logits_upsampled_to_the_slice():
    logits = -torch.ones(2, 1, 256, 256)
    logits[:, :, 64:128, 32:96] = 1.0
    upsampled = logits_to_slice(logits, (512, 1024))
    assert upsampled.shape == (2, 1, 512, 1024)
    mask = upsampled[0, 0] > 0
    rows, columns = torch.nonzero(mask, as_tuple=True)
    assert (int(rows.min()), int(rows.max()) + 1) == (64 * 2, 128 * 2)
    assert (int(columns.min()), int(columns.max()) + 1) == (32 * 4, 96 * 4)
    scaled_block = torch.zeros_like(mask)
    scaled_block[64 * 2:128 * 2, 32 * 4:96 * 4] = True
    assert int((mask ^ scaled_block).sum()) <= 4  # bilinear rounds off the block's 4 corner pixels
    np.testing.assert_allclose(upsampled[1, 0].numpy(), pil_resize(logits[1, 0].numpy(), (1024, 512)), atol=1e-5)


def test_volume_point_prompt_lands_on_the_resized_pixel():
    """The mapped point sits on the resized image of the clicked pixel: within one model pixel
    of the centroid of that pixel's bilinear footprint (SAM 2's x * S / W convention is
    (S / W - 1) / 2 model pixels from the footprint's centre)."""
    rows, columns, size = 101, 122, 256
    for x, y in [(30, 70), (100, 5), (7, 93)]:
        slice_01 = np.zeros((rows, columns), dtype=np.float32)
        slice_01[y, x] = 1.0
        model_image = preprocess_slices(slice_01, size)[0, 0].numpy()
        grid_y, grid_x = np.indices(model_image.shape)
        centroid = np.array([(grid_x * model_image).sum(), (grid_y * model_image).sum()]) / model_image.sum()
        mapped = slice_points_to_model([[x, y]], (rows, columns), size)[0].numpy()
        assert np.all(np.abs(mapped - centroid) <= 1.0)


def test_volume_points_outside_the_slice_are_refused():
    with pytest.raises(InputError, match="outside the slice"):
        slice_points_to_model([[10, 10], [122, 50]], (101, 122), 1024)
    with pytest.raises(InputError, match="outside the slice"):
        slice_points_to_model([[10, -0.6]], (101, 122), 1024)


def test_volume_box_prompt_scaled_sorted_and_clipped():
    shape, size = (101, 122), 512
    box = slice_box_to_model([[90, 80, 10, 20]], shape, size)
    corners = slice_points_to_model([[10, 20], [90, 80]], shape, size)
    np.testing.assert_allclose(box.numpy(), corners.reshape(1, 4).numpy())
    clipped = slice_box_to_model([-20, 50, 40, 300], shape, size)
    np.testing.assert_allclose(clipped.numpy(), slice_points_to_model([[0, 50], [40, 100]], shape, size).reshape(4))
    with pytest.raises(InputError, match="zero width or height"):
        slice_box_to_model([10, 20, 10, 60], shape, size)
    with pytest.raises(InputError, match="outside the slice"):
        slice_box_to_model([130, 20, 160, 60], shape, size)


def test_volume_mask_box_widens_thin_masks_and_can_ignore_specks():
    mask = np.zeros((40, 50), dtype=bool)
    assert mask_box(mask) is None
    mask[10:20, 5:30] = True
    assert mask_box(mask) == (5, 10, 29, 19)
    line = np.zeros_like(mask)
    line[7, 3:9] = True  # one row thin: the box reaches the row's pixel edges
    assert mask_box(line) == (3, 6.5, 8, 7.5)
    slice_box_to_model(mask_box(line), line.shape, 64)  # a valid prompt, not a zero-size box
    speckled = mask.copy()
    speckled[35, 45] = speckled[0, 0] = True
    assert mask_box(speckled) == (0, 0, 45, 35)
    assert mask_box(speckled, largest_only=True) == (5, 10, 29, 19)
