"""Propagation through MRML with the model trained in the test session (trained_model.py): one
click on the liver in the red view of the rotated, flipped CT (under a transform), then
propagation both ways within limits fills exactly the slices in the limits, each with the
liver, and stops there."""
import numpy as np
import SimpleITK as sitk

from samed2.choices import PropagationOptions
from SAMed2SlicerLib.segmenter import Segmenter

from ct_scene import add_segmentation, align_view, segment_voxels, world_point
from trained_model import LIVER, build_trained_model

CLICK_SLICE, FIRST, LAST = 15, 5, 25  # the liver spans every axial slice of example_ct_sm


def dice(a, b):
    return 2 * np.count_nonzero(a & b) / max(1, np.count_nonzero(a) + np.count_nonzero(b))


def inner_voxel(mask_2d):
    """The object's voxel nearest to its centroid, as (i, j)."""
    rows, columns = np.nonzero(mask_2d)
    nearest = np.argmin((rows - rows.mean()) ** 2 + (columns - columns.mean()) ** 2)
    return int(columns[nearest]), int(rows[nearest])


def test_mrml_propagation_with_the_trained_model_fills_the_liver_between_the_limits(
        ct, views, trained_model, data_dir):
    liver = sitk.GetArrayFromImage(sitk.ReadImage(str(data_dir / "totalseg" / "example_seg.nii.gz"))) == LIVER
    i, j = inner_voxel(liver[CLICK_SLICE])
    segmentation = add_segmentation(ct, "liver")
    align_view(views["Red"], 2, (i, j, CLICK_SLICE))

    with Segmenter(ct, segmentation, build_trained_model(trained_model), device="cpu") as segmenter:
        assert segmenter.add_point("liver", views["Red"], world_point((i, j, CLICK_SLICE))) == {2: [CLICK_SLICE]}
        options = PropagationOptions("both", start=FIRST, stop=LAST)
        progress = segmenter.propagate(2, options=options).wait(timeout_s=600)

    voxels = segment_voxels(segmentation, "liver", ct).astype(bool)
    assert progress.done == LAST - FIRST, "every slice between the limits but the clicked one, and no more"
    assert np.flatnonzero(voxels.any(axis=(1, 2))).tolist() == list(range(FIRST, LAST + 1))
    per_slice = [dice(voxels[k], liver[k]) for k in range(FIRST, LAST + 1)]
    assert min(per_slice) > 0.4, f"a slice misses the liver: Dice per slice {np.round(per_slice, 2)}"
    assert dice(voxels[FIRST:LAST + 1], liver[FIRST:LAST + 1]) > 0.7
