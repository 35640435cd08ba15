"""Which slices "Fine-tune on my corrections" learns from (Segmenter.corrected_slices), on real MRML: the
slices the user prompted, drew or corrected by hand, never the slices propagation wrote and nobody touched.

The model is the golden tiny SAMed-2 (random weights; see test_slicer_logic): only where results land counts.
"""
import numpy as np
import slicer

from samed2.choices import PropagationOptions
from SAMed2SlicerLib.segments import Target, read_slices, write_slices

from ct_scene import CLICK, world_point


def test_finetune_learns_from_the_prompted_drawn_and_hand_corrected_slices_only(segmenter, ct, abdomen, views):
    segmenter.add_point("liver", views["Red"], world_point(CLICK))  # prompted: slice 15
    segmenter.propagate(2, options=PropagationOptions("both", start=12, stop=19)).wait(timeout_s=120)
    target = Target(abdomen, "liver", ct, 2)
    written = read_slices(target, range(12, 20))
    assert all(mask.any() for mask in written.values())  # propagation wrote 12-19
    corrected = np.zeros(slicer.util.arrayFromVolume(ct).shape[1:], bool)
    corrected[30:45, 40:60] = True
    write_slices(target, {18: corrected})  # as the Paint effect would

    assert segmenter.corrected_slices("liver", 2) == [3, 15, 18]  # 3: drawn before the segmenter came
    assert segmenter.corrected_slices("spleen", 2) == list(range(10, 20))  # all drawn by hand
