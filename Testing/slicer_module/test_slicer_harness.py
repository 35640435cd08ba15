"""The slicer-core harness and the Slicer logic on real MRML: volumes, segments, markups,
scene bundles, and SAMed2SlicerLib.geometry's volume access."""
import os

import numpy as np
import pytest
import SimpleITK as sitk
import slicer
import vtk

from SAMed2SlicerLib.geometry import describe_volume, volume_to_array

from slicer_harness import MODULE_LOGIC_CLASSES, load_scene, load_volume, save_scene

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@pytest.fixture(scope="session")
def ct_path(data_dir):
    return data_dir / "totalseg" / "example_ct_sm.nii.gz"


def sitk_ijk_to_ras(image):
    """IJK-to-RAS matrix of a SimpleITK image, from its LPS geometry."""
    direction = np.array(image.GetDirection()).reshape(3, 3)
    ijk_to_lps = np.eye(4)
    ijk_to_lps[:3, :3] = direction @ np.diag(image.GetSpacing())
    ijk_to_lps[:3, 3] = image.GetOrigin()
    return LPS_TO_RAS @ ijk_to_lps


def rotation(axis, degrees):
    """4x4 rotation about a unit axis through the origin (Rodrigues)."""
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    angle = np.radians(degrees)
    cross = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    matrix = np.eye(4)
    matrix[:3, :3] = np.eye(3) + np.sin(angle) * cross + (1 - np.cos(angle)) * cross @ cross
    return matrix


def add_linear_transform(matrix, name):
    node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode", name)
    slicer.util.updateTransformMatrixFromArray(node, matrix)
    return node


def ijk_to_ras_of(volume_node):
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    return slicer.util.arrayFromVTKMatrix(matrix)


# --- the harness itself -------------------------------------------------------------

def test_slicer_core_registers_every_module_logic(slicer_app):
    for name in ["Colors", *MODULE_LOGIC_CLASSES]:
        logic = getattr(slicer.modules, name.lower()).logic()
        assert slicer_app.application_logic.GetModuleLogic(name) is logic
        assert logic.GetMRMLScene() is slicer.mrmlScene
    assert slicer.modules.segmentations.logic().GetMRMLApplicationLogic() is slicer_app.application_logic
    assert slicer.app.mrmlScene() is slicer.mrmlScene
    assert slicer.app.applicationLogic() is slicer_app.application_logic


def test_slicer_segmentations_logic_registered_labelmap_converter_rules(slicer_app):
    rules = slicer.vtkSegmentationConverterFactory.GetInstance().GetConverterRules()
    paths = {(rule.GetSourceRepresentationName(), rule.GetTargetRepresentationName()) for rule in rules}
    assert ("Binary labelmap", "Closed surface") in paths
    assert ("Closed surface", "Binary labelmap") in paths


@pytest.mark.parametrize("run", [1, 2])
def test_mrml_scene_fixture_gives_an_empty_scene(mrml_scene, run):
    # Whichever run comes second fails if the fixture did not clear the first one's node.
    assert slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode", mrml_scene) == []
    slicer.util.addVolumeFromArray(np.zeros((2, 2, 2)), name=f"left-over-{run}")


def test_slicer_util_helpers_need_only_the_core_app(mrml_scene):
    with slicer.util.RenderBlocker():
        volume = slicer.util.addVolumeFromArray(np.ones((3, 4, 5), np.int16), name="ones")
    assert slicer.util.getNode("ones") is volume
    assert slicer.util.arrayFromVolume(volume).shape == (3, 4, 5)


# --- volumes, segments, markups, bundles on the real CT -----------------------------

def test_mrml_loaded_ct_matches_simpleitk_voxels_and_geometry(mrml_scene, ct_path):
    volume = load_volume(ct_path)
    image = sitk.ReadImage(str(ct_path))

    np.testing.assert_array_equal(slicer.util.arrayFromVolume(volume), sitk.GetArrayFromImage(image))
    np.testing.assert_allclose(ijk_to_ras_of(volume), sitk_ijk_to_ras(image), atol=1e-4)


def test_mrml_load_volume_reports_a_missing_file(mrml_scene, tmp_path):
    with pytest.raises(RuntimeError, match="cannot load volume"):
        load_volume(tmp_path / "absent.nii.gz")


def add_two_segments(volume):
    segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "segmentation")
    segmentation.CreateDefaultDisplayNodes()
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    segmentation.GetSegmentation().AddEmptySegment("liver", "Liver")
    segmentation.GetSegmentation().AddEmptySegment("spleen", "Spleen")
    return segmentation


def segment_array(segmentation, segment_id, volume):
    return slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, segment_id, volume)


def slice_mask(shape, k, rows, columns):
    mask = np.zeros(shape, np.uint8)
    mask[k, rows, columns] = 1
    return mask


def test_mrml_segment_write_leaves_the_other_segment_untouched(mrml_scene, ct_path):
    volume = load_volume(ct_path)
    segmentation = add_two_segments(volume)
    shape = slicer.util.arrayFromVolume(volume).shape
    liver = slice_mask(shape, 12, slice(20, 50), slice(30, 70))
    spleen = slice_mask(shape, 12, slice(40, 60), slice(60, 90))  # overlaps the liver

    slicer.util.updateSegmentBinaryLabelmapFromArray(liver, segmentation, "liver", volume)
    assert not segment_array(segmentation, "spleen", volume).any()
    slicer.util.updateSegmentBinaryLabelmapFromArray(spleen, segmentation, "spleen", volume)

    assert segmentation.GetSegmentation().GetSegmentIdBySegmentName("Liver") == "liver"
    np.testing.assert_array_equal(segment_array(segmentation, "liver", volume), liver)
    np.testing.assert_array_equal(segment_array(segmentation, "spleen", volume), spleen)
    assert segmentation.CreateClosedSurfaceRepresentation()
    surface = vtk.vtkPolyData()
    segmentation.GetClosedSurfaceRepresentation("liver", surface)
    assert surface.GetNumberOfPoints() > 0


def test_mrml_markups_fiducials_and_roi(mrml_scene):
    points = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "include")
    points.AddControlPoint(10.0, -20.0, 30.0)
    points.AddControlPoint(-5.0, 0.5, 12.0)
    roi = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "box")
    roi.SetCenter(10.0, -20.0, 30.0)
    roi.SetSize(8.0, 6.0, 4.0)

    np.testing.assert_allclose(slicer.util.arrayFromMarkupsControlPoints(points),
                               [[10.0, -20.0, 30.0], [-5.0, 0.5, 12.0]])
    assert roi.IsPointInROIWorld([13.9, -17.1, 31.9])
    assert not roi.IsPointInROIWorld([14.1, -20.0, 30.0])


def test_mrml_scene_bundle_round_trip(mrml_scene, ct_path, tmp_path):
    volume = load_volume(ct_path)
    segmentation = add_two_segments(volume)
    voxels = slicer.util.arrayFromVolume(volume).copy()
    liver = slice_mask(voxels.shape, 5, slice(10, 30), slice(10, 40))
    slicer.util.updateSegmentBinaryLabelmapFromArray(liver, segmentation, "liver", volume)
    points = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "include")
    points.AddControlPoint(1.0, 2.0, 3.0)
    roi = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "box")
    roi.SetSize(5.0, 6.0, 7.0)

    save_scene(tmp_path / "session.mrb")
    mrml_scene.Clear(0)
    load_scene(tmp_path / "session.mrb")

    volume = slicer.util.getNode("example_ct_sm")
    segmentation = slicer.util.getNode("segmentation")
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(volume), voxels)
    assert [segmentation.GetSegmentation().GetNthSegmentID(i) for i in range(2)] == ["liver", "spleen"]
    np.testing.assert_array_equal(segment_array(segmentation, "liver", volume), liver)
    assert not segment_array(segmentation, "spleen", volume).any()
    points = slicer.util.getNode("include")
    np.testing.assert_allclose(slicer.util.arrayFromMarkupsControlPoints(points), [[1.0, 2.0, 3.0]])
    np.testing.assert_allclose(slicer.util.getNode("box").GetSize(), [5.0, 6.0, 7.0])


def test_mrml_load_scene_reports_a_broken_bundle_and_keeps_the_working_directory(mrml_scene, tmp_path):
    (tmp_path / "broken.mrb").write_bytes(b"not a zip archive")
    cwd = os.getcwd()
    with pytest.raises(RuntimeError, match="cannot load scene"):
        load_scene(tmp_path / "broken.mrb")
    assert os.getcwd() == cwd


def test_mrml_save_scene_reports_an_unwritable_place(mrml_scene, tmp_path):
    slicer.util.addVolumeFromArray(np.zeros((2, 2, 2)))
    with pytest.raises(RuntimeError, match="cannot save scene"):
        save_scene(tmp_path / "absent-folder" / "session.mrb")


# --- SAMed2SlicerLib.geometry ------------------------------------------------------------

def test_mrml_volume_to_array_of_an_oblique_flipped_volume(mrml_scene):
    voxels = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    ijk_to_ras = rotation([1, 2, 3], 25) @ np.diag([-0.7, 0.9, 2.5, 1.0])
    ijk_to_ras[:3, 3] = [12.0, -40.0, 7.5]
    volume = slicer.util.addVolumeFromArray(voxels, ijk_to_ras)

    array, matrix = volume_to_array(volume)

    np.testing.assert_array_equal(array, voxels)
    np.testing.assert_allclose(matrix, ijk_to_ras, atol=1e-9)
    with pytest.raises(ValueError):
        array[0, 0, 0] = 1.0  # the user's volume is never modified through this view


def test_mrml_volume_to_array_composes_parent_transforms_like_hardening(mrml_scene, ct_path):
    volume = load_volume(ct_path)
    image = sitk.ReadImage(str(ct_path))
    outer = add_linear_transform(rotation([0, 0, 1], 90) @ np.diag([1.0, -1.0, 1.0, 1.0]), "flip")
    inner_matrix = rotation([1, 1, 0], 30)
    inner_matrix[:3, 3] = [5.0, -3.0, 20.0]
    inner = add_linear_transform(inner_matrix, "tilt")
    inner.SetAndObserveTransformNodeID(outer.GetID())
    volume.SetAndObserveTransformNodeID(inner.GetID())

    _, matrix = volume_to_array(volume)

    index = (17, 64, 9)
    lps = np.array([*image.TransformIndexToPhysicalPoint(index), 1.0])
    world = slicer.util.arrayFromTransformMatrix(inner, toWorld=True) @ LPS_TO_RAS @ lps
    np.testing.assert_allclose(matrix @ [*index, 1.0], world, atol=1e-3)
    assert volume.HardenTransform()
    np.testing.assert_allclose(matrix, ijk_to_ras_of(volume), atol=1e-6)


def test_mrml_volume_to_array_refuses_a_non_linear_transform(mrml_scene):
    volume = slicer.util.addVolumeFromArray(np.zeros((2, 3, 4), np.int16))
    warp = vtk.vtkThinPlateSplineTransform()
    source, target = vtk.vtkPoints(), vtk.vtkPoints()
    for point, shift in [((0, 0, 0), 0.0), ((10, 0, 0), 1.0), ((0, 10, 0), 0.0), ((0, 0, 10), 2.0)]:
        source.InsertNextPoint(point)
        target.InsertNextPoint(point[0] + shift, point[1], point[2])
    warp.SetSourceLandmarks(source)
    warp.SetTargetLandmarks(target)
    warp.SetBasisToR()
    transform = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLTransformNode", "warp")
    transform.SetAndObserveTransformToParent(warp)
    volume.SetAndObserveTransformNodeID(transform.GetID())

    with pytest.raises(ValueError, match="non-linear transform 'warp'.*harden"):
        volume_to_array(volume)


def test_mrml_volume_to_array_refuses_vector_and_empty_volumes(mrml_scene):
    vector = slicer.util.addVolumeFromArray(
        np.zeros((2, 3, 4, 3), np.uint8), nodeClassName="vtkMRMLVectorVolumeNode")
    with pytest.raises(ValueError, match="3 components"):
        volume_to_array(vector)
    empty = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty")
    with pytest.raises(ValueError, match="'empty' has no voxel data"):
        volume_to_array(empty)


def test_mrml_describe_volume(mrml_scene):
    volume = slicer.util.addVolumeFromArray(np.zeros((2, 3, 4), np.int16), np.diag([0.5, 0.75, 2.0, 1.0]))
    assert describe_volume(volume) == "4 x 3 x 2 voxels, spacing 0.50 x 0.75 x 2.00 mm"
    assert describe_volume(None) == "Select a CT or MR volume."
    empty = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty")
    assert describe_volume(empty) == "Volume 'empty' has no voxel data."
