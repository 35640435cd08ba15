"""Correcting with MedSAM-Lite (box prompts only) through the Slicer logic, on real MRML with slicer-core
and the real CT of test_slicer_logic.py (rotated, flipped, anisotropic, under a transform): an include
click on a propagated slice refines that slice, the next propagation runs from it and keeps it, and a
saved scene with such a click resumes."""
import numpy as np
import pytest

from samed2.choices import PropagationOptions
from samed2.model_coords import mask_box, model_scale
from samed2.session import Session
from samed2_tools.evaluate.clicks import slice_click
from SAMed2SlicerLib.geometry import engine_volume
from SAMed2SlicerLib.segmenter import Segmenter

from ct_scene import add_segmentation, align_view, changed_slices, labelmaps, world_point

LIVER = 5


@pytest.fixture(scope="module")
def liver(data_dir):
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(sitk.ReadImage(str(data_dir / "totalseg" / "example_seg.nii.gz"))) == LIVER


@pytest.mark.slow
def test_mrml_lite_click_corrects_a_propagated_slice_which_the_next_run_keeps(ct, views, lite_model, liver):
    segmentation = add_segmentation(ct, "liver")
    red = views["Red"]
    x0, y0, x1, y1 = mask_box(liver[15])
    with Segmenter(ct, segmentation, lite_model, device="cpu") as segmenter:
        align_view(red, 2, (60, 50, 15))
        segmenter.add_box("liver", red, world_point((x0, y0, 15)), world_point((x1, y1, 15)))
        segmenter.propagate(2, ["liver"], PropagationOptions("up", start=15, stop=18)).wait(timeout_s=300)
        propagated = labelmaps(segmentation, ct)["liver"]
        column, row, positive = click = slice_click(propagated[17].astype(bool), liver[17])
        align_view(red, 2, (column, row, 17))

        assert segmenter.add_point("liver", red, world_point((column, row, 17)), positive) == {2: [17]}

        clicked = labelmaps(segmentation, ct)["liver"]
        assert set(changed_slices(propagated, clicked, 2)) <= {17}
        with Session(engine_volume(ct), lite_model, axis=2, device="cpu") as reference:
            reference.set_mask(1, 17, propagated[17])  # the clicks correct the slice's mask
            np.testing.assert_array_equal(clicked[17], reference.add_prompt(1, 17, points=[click]))

            segmenter.propagate(2, ["liver"], PropagationOptions("up", start=15, stop=18)).wait(timeout_s=300)

            rerun = labelmaps(segmentation, ct)["liver"]
            np.testing.assert_array_equal(rerun[17], clicked[17])
            scale = model_scale(reference.slice_shape, reference.image_size, reference.letterbox)
            chained = reference.add_prompt(2, 18, box=reference.chain.box(clicked[17].astype(bool), scale))
            np.testing.assert_array_equal(rerun[18], chained)  # propagated from the corrected slice

    with Segmenter(ct, segmentation, lite_model, device="cpu") as resumed:  # the scene's click replays
        assert resumed.apply_prompts() == {}
        align_view(red, 2, (column, row, 17))
        assert resumed.add_point("liver", red, world_point((column, row + 2, 17))) == {2: [17]}
