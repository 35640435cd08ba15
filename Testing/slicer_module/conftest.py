"""Fixtures of the Slicer layer: slicer-core started once for the session, a scene emptied around each
test, and the CT scene of ct_scene.py with its slice views, its segmentation and a Segmenter on it."""
import numpy as np
import pytest
import slicer

from SAMed2SlicerLib.segmenter import Segmenter

import slicer_harness
from ct_scene import CLICK, VIEW_AXES, add_segmentation, align_view, fill, parent_matrix, tiny_model, volume_matrix


@pytest.fixture(scope="session")
def slicer_app():
    """The started slicer-core (a SlicerCore), shared by the whole test session."""
    return slicer_harness.start()


@pytest.fixture
def mrml_scene(slicer_app):
    """slicer.mrmlScene, emptied before and after the test (singletons are reset)."""
    slicer_app.scene.Clear(0)
    yield slicer_app.scene
    slicer_app.scene.Clear(0)


@pytest.fixture(scope="module")
def ct_voxels(data_dir):
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(sitk.ReadImage(str(data_dir / "totalseg" / "example_ct_sm.nii.gz")))


@pytest.fixture
def ct(mrml_scene, ct_voxels):
    """The CT's voxels on the rotated/flipped/anisotropic grid, under a linear transform."""
    volume = slicer.util.addVolumeFromArray(ct_voxels, volume_matrix(), name="ct")
    transform = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "tilt")
    slicer.util.updateTransformMatrixFromArray(transform, parent_matrix())
    volume.SetAndObserveTransformNodeID(transform.GetID())
    return volume


@pytest.fixture
def views(mrml_scene):
    return slicer_harness.add_slice_views()


@pytest.fixture(scope="module")
def model(golden_dir):
    return tiny_model(golden_dir)


@pytest.fixture
def abdomen(ct, views):
    """The CT with a segmentation: 'liver' (to segment; voxels drawn on slice k=3) and
    'spleen' (another segment, overlapping the click's slice)."""
    segmentation = add_segmentation(ct, "liver", "spleen")
    shape = slicer.util.arrayFromVolume(ct).shape
    liver = np.zeros(shape, np.uint8)
    liver[3, 40:60, 50:80] = 1
    spleen = np.zeros(shape, np.uint8)
    spleen[10:20, 30:70, 40:90] = 1
    fill(segmentation, "liver", ct, liver)
    fill(segmentation, "spleen", ct, spleen)
    for name, axis in VIEW_AXES.items():
        align_view(views[name], axis, CLICK)
    return segmentation


@pytest.fixture
def segmenter(ct, abdomen, model):
    with_segmenter = Segmenter(ct, abdomen, model, device="cpu")
    yield with_segmenter
    with_segmenter.close()
