"""The Segmenter (SAMed2SlicerLib.segmenter) on real MRML with slicer-core and the real CT: prompts
made in the red, yellow and green views of a rotated, flipped, anisotropic volume under a
transform; clicks that write one slice of the selected segment only; propagation, undo,
corrections, and scene bundles that resume.

The model is the golden tiny SAMed-2 (random weights) with its object-score and mask biases
raised so that every decoded mask is present and non-empty: these tests check where results
land, never how good they are (model quality is the engine's trained-model tests' job).
"""
import time

import numpy as np
import pytest
import slicer
import vtk
from vtk.util import numpy_support

from samed2.choices import PropagationOptions
from samed2.errors import InputError
from samed2.session import Session
from SAMed2SlicerLib import prompts as markups
from SAMed2SlicerLib.geometry import engine_volume, view_axis, view_containing
from SAMed2SlicerLib.segmenter import BusyError, Segmenter
from SAMed2SlicerLib.segments import Target, read_slices, write_slices

from ct_scene import (
    CLICK,
    SPACING,
    VIEW_AXES,
    add_segmentation,
    align_view,
    changed_slices,
    expected_slice_coords,
    fill,
    labelmaps,
    parent_matrix,
    slice_of,
    tiny_model,
    volume_matrix,
    world_matrix,
    world_matrix_of,
    world_point,
)
from slicer_harness import load_scene, save_scene

# ---- prompts: geometry ----------------------------------------------------------------


@pytest.mark.parametrize("view", ["Red", "Yellow", "Green"])
def test_mrml_points_made_in_each_view_land_on_the_right_voxels(ct, views, view):
    volume = engine_volume(ct)
    segmentation = add_segmentation(ct, "liver")
    ijk = (70, 33, 12)
    align_view(views[view], VIEW_AXES[view], ijk)
    axis = view_axis(volume, views[view])
    assert axis == VIEW_AXES[view]
    target = Target(segmentation, "liver", ct, axis)
    offsets = {0: (0.0, 0.3, -0.4), 1: (0.3, 0.0, -0.4), 2: (0.3, -0.4, 0.0)}[axis]  # in the view's plane
    include = world_point(np.add(ijk, offsets))
    exclude_ijk = np.add(ijk, [[3, 5, 2], [5, 2, 3], [2, 3, 5]][axis]) * (np.arange(3) != axis) + \
        np.array(ijk) * (np.arange(3) == axis)
    assert view_containing(include, list(views.values())) is views[view]

    markups.add_point(target, include, positive=True)
    markups.add_point(target, world_point(exclude_ijk), positive=False)
    prompts = markups.collect_prompts(volume, target)

    index, x, y = expected_slice_coords(np.add(ijk, offsets), axis)
    _, ex, ey = expected_slice_coords(exclude_ijk, axis)
    assert list(prompts) == [round(index)]
    np.testing.assert_allclose([p[:2] for p in prompts[round(index)].points], [[x, y], [ex, ey]], atol=1e-6)
    assert [p[2] for p in prompts[round(index)].points] == [True, False]


@pytest.mark.parametrize("view", ["Red", "Yellow", "Green"])
def test_mrml_box_dragged_in_each_view_covers_the_right_pixels(ct, views, view):
    volume = engine_volume(ct)
    segmentation = add_segmentation(ct, "liver")
    axis = VIEW_AXES[view]
    first, last = np.array((40, 20, 8)), np.array((75, 60, 22))
    first[axis] = last[axis] = 12
    align_view(views[view], axis, first)
    target = Target(segmentation, "liver", ct, axis)

    roi = markups.add_box(target, views[view], world_point(last), world_point(first), SPACING[axis])
    prompts = markups.collect_prompts(volume, target)

    (_, x0, y0), (_, x1, y1) = expected_slice_coords(first, axis), expected_slice_coords(last, axis)
    assert list(prompts) == [12]
    np.testing.assert_allclose(prompts[12].box, (x0, y0, x1, y1), atol=1e-4)
    assert roi.GetAttribute(markups.ROLE) == markups.BOX and roi.GetAttribute(markups.AXIS) == str(axis)
    assert roi.IsPointInROIWorld(world_point((first + last) / 2))


def test_mrml_rotate_to_volume_plane_views_pick_each_voxel_axis(mrml_scene, ct_voxels, views):
    volume_node = slicer.util.addVolumeFromArray(ct_voxels, volume_matrix(), name="ct")
    volume = engine_volume(volume_node)
    for name, axis in VIEW_AXES.items():
        views[name].RotateToVolumePlane(volume_node)
        assert view_axis(volume, views[name]) == axis


def test_mrml_oblique_view_is_refused_with_what_to_do(ct, views):
    with pytest.raises(InputError, match="oblique.*Rotate to volume plane"):
        view_axis(engine_volume(ct), views["Red"])  # the plain axial view cuts the tilted volume obliquely


def test_mrml_prompt_outside_the_volume_adds_nothing(segmenter, abdomen, views):
    outside = world_point((200, 50, 15))
    with pytest.raises(InputError, match="outside the volume"):
        segmenter.add_point("liver", views["Red"], outside)
    assert markups.prompt_nodes(abdomen) == []


# ---- segment writes -------------------------------------------------------------------


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_mrml_slice_writes_touch_only_their_slices_of_their_segment(ct, axis):
    segmentation = add_segmentation(ct, "liver", "spleen")
    shape = slicer.util.arrayFromVolume(ct).shape
    rng = np.random.default_rng(axis)
    spleen = (rng.random(shape) < 0.3).astype(np.uint8)
    fill(segmentation, "spleen", ct, spleen)
    target = Target(segmentation, "liver", ct, axis)
    count = shape[2 - axis]
    expected = np.zeros(shape, np.uint8)
    for indices in ([1, 4], [count - 1], [4, 2]):
        masks = {i: rng.random(slice_of(expected, axis, i).shape) < 0.5 for i in indices}
        write_slices(target, masks)
        for i, mask in masks.items():
            slice_of(expected, axis, i)[...] = mask
        after = labelmaps(segmentation, ct)
        np.testing.assert_array_equal(after["liver"], expected)
        np.testing.assert_array_equal(after["spleen"], spleen)
    assert all(np.array_equal(read_slices(target, [i])[i], slice_of(expected, axis, i)) for i in range(count))


def test_mrml_slice_writes_never_clear_segments_sharing_a_layer(mrml_scene, ct_voxels):
    ct = slicer.util.addVolumeFromArray(ct_voxels, volume_matrix(), name="ct")
    segmentation = add_segmentation(ct, "liver", "spleen")
    shape = ct_voxels.shape
    spleen = np.zeros(shape, np.uint8)
    spleen[:, :10, :] = 1
    paint(segmentation, "spleen", ct, spleen)  # as the Paint effect adds: into the shared layer
    shared = []
    segmentation.GetSegmentation().GetSegmentIDsSharingBinaryLabelmapRepresentation("liver", shared, False)
    assert shared == ["spleen"]

    write_slices(Target(segmentation, "liver", ct, 2), {5: np.zeros(shape[1:], bool)})
    write_slices(Target(segmentation, "liver", ct, 1), {3: np.ones((shape[0], shape[2]), bool)})

    after = labelmaps(segmentation, ct)
    np.testing.assert_array_equal(after["spleen"], spleen)
    assert after["liver"][:, 3, :].all() and after["liver"].sum() == shape[0] * shape[2]


def paint(segmentation, segment_id, volume, voxels):
    """Add voxels to a segment as Slicer's Segment Editor effects do (merge with mask)."""
    image = slicer.vtkOrientedImageData()
    image.SetImageToWorldMatrix(slicer.util.vtkMatrixFromArray(world_matrix_of(volume)))
    image.SetExtent(0, voxels.shape[2] - 1, 0, voxels.shape[1] - 1, 0, voxels.shape[0] - 1)
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())[:] = voxels.reshape(-1)
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    assert logic.SetBinaryLabelmapToSegment(image, segmentation, segment_id, logic.MODE_MERGE_MASK, image.GetExtent())


def test_mrml_writes_follow_a_transformed_segmentation(ct):
    segmentation = add_segmentation(ct, "liver")
    shift = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "shift")
    slicer.util.updateTransformMatrixFromArray(shift, np.linalg.inv(parent_matrix()))
    segmentation.SetAndObserveTransformNodeID(shift.GetID())  # segmentation and volume disagree
    mask = np.zeros(slicer.util.arrayFromVolume(ct).shape[1:], bool)
    mask[20:40, 30:70] = True
    write_slices(Target(segmentation, "liver", ct, 2), {7: mask})
    # the voxel at the centre of the written block, found in world coordinates
    centre_world = world_point((50, 30, 7))
    labelmap = slicer.vtkOrientedImageData()
    slicer.vtkSlicerSegmentationsModuleLogic.GetSegmentBinaryLabelmapRepresentation(segmentation, "liver", labelmap)
    to_ijk = np.linalg.inv(slicer.util.arrayFromVTKMatrix(_image_to_world(labelmap)))
    i, j, k = np.rint(to_ijk @ [*centre_world, 1.0])[:3].astype(int)
    assert labelmap.GetScalarComponentAsDouble(i, j, k, 0) == 1
    assert read_slices(Target(segmentation, "liver", ct, 2), [7])[7].sum() == mask.sum()


def _image_to_world(image):
    import vtk

    matrix = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(matrix)
    return matrix


# ---- clicks ---------------------------------------------------------------------------


@pytest.mark.parametrize("view", ["Red", "Yellow", "Green"])
def test_mrml_click_writes_its_slice_of_the_selected_segment_only(segmenter, ct, abdomen, views, model, view):
    axis = VIEW_AXES[view]
    before = labelmaps(abdomen, ct)

    written = segmenter.add_point("liver", views[view], world_point(CLICK))

    index, x, y = expected_slice_coords(CLICK, axis)
    assert written == {axis: [index]}
    after = labelmaps(abdomen, ct)
    np.testing.assert_array_equal(after["spleen"], before["spleen"])
    assert changed_slices(before["liver"], after["liver"], axis) == [index]
    with Session(engine_volume(ct), model, axis=axis, device="cpu") as reference:
        expected = reference.add_prompt(1, index, points=[(x, y, True)])
    assert expected.any()
    np.testing.assert_array_equal(slice_of(after["liver"], axis, index), expected)
    (node,) = markups.prompt_nodes(abdomen, "liver")
    assert node.GetAttribute(markups.ROLE) == markups.INCLUDE and node.GetAttribute(markups.AXIS) == str(axis)


def test_mrml_moving_or_deleting_prompts_reruns_only_their_slices(segmenter, ct, abdomen, views, model):
    segmenter.add_point("liver", views["Red"], world_point(CLICK))
    node = markups.prompt_nodes(abdomen, "liver")[0]
    before = labelmaps(abdomen, ct)
    assert segmenter.apply_prompts() == {}, "nothing changed, nothing is run"

    moved_to = (50, 45, 15)
    node.SetNthControlPointPositionWorld(0, world_point(moved_to))
    assert segmenter.pending_prompts() == {("liver", 2): [15]}
    assert segmenter.apply_prompts() == {2: [15]}
    assert segmenter.pending_prompts() == {}
    moved = labelmaps(abdomen, ct)
    assert changed_slices(before["liver"], moved["liver"], 2) == [15]
    _, x, y = expected_slice_coords(moved_to, 2)
    with Session(engine_volume(ct), model, axis=2, device="cpu") as reference:
        expected = reference.add_prompt(1, 15, points=[(x, y, True)])
    np.testing.assert_array_equal(moved["liver"][15], expected)  # the slice is the moved point's result

    node.SetNthControlPointPositionWorld(0, world_point((50, 45, 18)))  # to another slice
    assert segmenter.apply_prompts() == {2: [15, 18]}
    node.RemoveAllControlPoints()
    assert segmenter.apply_prompts() == {2: [18]}
    after = labelmaps(abdomen, ct)
    assert not after["liver"][15].any() and not after["liver"][18].any()
    np.testing.assert_array_equal(after["spleen"], before["spleen"])


def test_mrml_box_and_exclude_point_on_one_slice_make_one_prompt(segmenter, ct, abdomen, views):
    segmenter.add_box("liver", views["Red"], world_point((40, 30, 15)), world_point((90, 80, 15)))
    written = segmenter.add_point("liver", views["Red"], world_point((60, 50, 15)), positive=False)
    assert written == {2: [15]}
    prompt = markups.collect_prompts(segmenter.volume, Target(abdomen, "liver", ct, 2))[15]
    np.testing.assert_allclose(prompt.box, (40, 30, 90, 80), atol=1e-4)
    np.testing.assert_allclose(prompt.points, [(60, 50, False)], atol=1e-6)
    with pytest.raises(InputError, match="drag a box"):
        segmenter.add_box("liver", views["Red"], world_point((40, 30, 15)), world_point((40.4, 80, 15)))


# ---- propagation ----------------------------------------------------------------------


def test_mrml_propagation_fills_the_slices_within_its_limits_and_stops(segmenter, ct, abdomen, views):
    segmenter.add_point("liver", views["Red"], world_point(CLICK))
    before = labelmaps(abdomen, ct)

    run = segmenter.propagate(2, ["liver"], PropagationOptions("both", start=12, stop=18))
    progress = run.wait(timeout_s=120)

    after = labelmaps(abdomen, ct)
    assert progress.finished and not progress.cancelled and progress.done == 6
    assert changed_slices(before["liver"], after["liver"], 2) == [12, 13, 14, 16, 17, 18]
    assert all(after["liver"][k].any() for k in range(12, 19))
    np.testing.assert_array_equal(after["liver"][3], before["liver"][3])
    np.testing.assert_array_equal(after["spleen"], before["spleen"])


def test_mrml_confidence_per_slice_and_the_view_moved_to_the_least_confident_slice(segmenter, views):
    from SAMed2SlicerLib.confidence import least_confident

    segmenter.add_point("liver", views["Red"], world_point(CLICK))
    segmenter.propagate(2, ["liver"], PropagationOptions("both", start=12, stop=18)).wait(timeout_s=120)
    confidences = segmenter.confidences("liver", 2)
    assert sorted(confidences) == list(range(12, 19)), "the prompted slice and the six propagated ones"
    assert all(0.0 <= c <= 1.0 for c in confidences.values())
    assert segmenter.confidences("spleen", 2) == {} and segmenter.confidences("liver", 1) == {}
    segmenter.show_slice(views["Red"], 3)
    assert segmenter.view_slice_index(views["Red"]) == 3
    segmenter.show_slice(views["Red"], least_confident(confidences))
    assert segmenter.view_slice_index(views["Red"]) == least_confident(confidences)


def test_mrml_propagation_stops_where_the_object_is_absent(ct, abdomen, views, golden_dir):
    with Segmenter(ct, abdomen, tiny_model(golden_dir, present=False), device="cpu") as segmenter:
        segmenter.add_point("liver", views["Red"], world_point(CLICK))
        before = labelmaps(abdomen, ct)
        reference = Session(engine_volume(ct), segmenter.model, axis=2, device="cpu")
        reference.add_prompt(1, CLICK[2], points=[expected_slice_coords(CLICK, 2)[1:] + (True,)])
        expected = [r for r in reference.propagate(options=PropagationOptions("up", stop_after_absent=1))]
        reference.close()

        progress = segmenter.propagate(2, options=PropagationOptions("up", stop_after_absent=1)).wait(timeout_s=120)

    assert not expected[-1].present and all(r.present for r in expected[:-1])
    assert progress.done == len(expected) < ct.GetImageData().GetDimensions()[2] - CLICK[2] - 1
    after = labelmaps(abdomen, ct)
    last = expected[-1].index
    np.testing.assert_array_equal(after["liver"][last + 1:], before["liver"][last + 1:])


def test_mrml_propagation_without_a_prompt_in_its_limits_says_so(segmenter, ct, abdomen, views):
    segmenter.add_point("liver", views["Red"], world_point(CLICK))
    before = labelmaps(abdomen, ct)
    run = segmenter.propagate(2, options=PropagationOptions("up", start=20, stop=25))
    with pytest.raises(InputError, match="no prompted slice between slices 20 and 25"):
        run.wait(timeout_s=60)
    np.testing.assert_array_equal(labelmaps(abdomen, ct)["liver"], before["liver"])
    assert segmenter.running is None, "the failed run does not block the next action"


def test_mrml_propagation_cancel_keeps_what_was_written(segmenter, ct, abdomen, views):
    segmenter.add_point("liver", views["Red"], world_point(CLICK))
    before = labelmaps(abdomen, ct)
    run = segmenter.propagate(2, options=PropagationOptions("up", stop_after_absent=0))
    with pytest.raises(BusyError, match="propagation is running"):
        segmenter.add_point("liver", views["Red"], world_point((50, 50, 20)))
    while run.poll().done == 0:
        time.sleep(0.01)
    run.cancel()
    progress = run.wait(timeout_s=60)
    assert progress.cancelled and 1 <= progress.done < 14
    changed = changed_slices(before["liver"], labelmaps(abdomen, ct)["liver"], 2)
    assert changed == list(range(16, 16 + progress.done))


def test_mrml_repropagation_keeps_hand_corrections_and_earlier_drawings(segmenter, ct, abdomen, views):
    segmenter.add_point("liver", views["Red"], world_point(CLICK))
    segmenter.propagate(2, options=PropagationOptions("both", start=12, stop=19)).wait(timeout_s=120)
    target = Target(abdomen, "liver", ct, 2)
    corrected = np.zeros(slicer.util.arrayFromVolume(ct).shape[1:], bool)
    corrected[30:45, 40:60] = True
    write_slices(target, {19: corrected})  # as the Paint effect would
    segmenter.add_point("liver", views["Red"], world_point((45, 40, 13)))
    before = labelmaps(abdomen, ct)

    segmenter.propagate(2, options=PropagationOptions("both", start=3, stop=19)).wait(timeout_s=120)

    after = labelmaps(abdomen, ct)
    np.testing.assert_array_equal(after["liver"][19], corrected)
    changed = changed_slices(before["liver"], after["liver"], 2)
    assert changed and 3 not in changed and 19 not in changed, "drawn before and corrected by hand: kept"
    np.testing.assert_array_equal(after["spleen"], before["spleen"])


# ---- undo -----------------------------------------------------------------------------


def test_mrml_undo_restores_the_exact_previous_labelmaps(segmenter, ct, abdomen, views):
    initial = labelmaps(abdomen, ct)
    segmenter.add_point("liver", views["Red"], world_point(CLICK))
    after_click = labelmaps(abdomen, ct)
    segmenter.propagate(2, options=PropagationOptions("both", start=11, stop=19)).wait(timeout_s=120)
    assert changed_slices(after_click["liver"], labelmaps(abdomen, ct)["liver"], 2)
    assert len(segmenter.undo_stack) == 2, "one step per click, one per propagation run"

    assert segmenter.undo()
    for segment_id, voxels in labelmaps(abdomen, ct).items():
        np.testing.assert_array_equal(voxels, after_click[segment_id])
    assert segmenter.undo()
    for segment_id, voxels in labelmaps(abdomen, ct).items():
        np.testing.assert_array_equal(voxels, initial[segment_id])
    assert not segmenter.undo()


@pytest.mark.parametrize("undo_by", ["segmenter", "segment editor"])
def test_mrml_undone_propagation_can_run_again(segmenter, ct, abdomen, views, undo_by):
    segmenter.add_point("liver", views["Red"], world_point(CLICK))
    before = labelmaps(abdomen, ct)["liver"]
    segmenter.propagate(2, options=PropagationOptions("up", stop=18)).wait(timeout_s=120)
    first = labelmaps(abdomen, ct)["liver"]
    if undo_by == "segmenter":
        assert segmenter.undo()
    else:  # the Segment Editor's undo puts the segmentation back behind the segmenter's back
        fill(abdomen, "liver", ct, before)
    segmenter.propagate(2, options=PropagationOptions("up", stop=18)).wait(timeout_s=120)
    np.testing.assert_array_equal(labelmaps(abdomen, ct)["liver"], first)


# ---- several objects ------------------------------------------------------------------


def test_mrml_several_objects_are_several_segments(segmenter, ct, abdomen, views):
    before = labelmaps(abdomen, ct)
    segmenter.add_point("liver", views["Red"], world_point(CLICK))
    segmenter.add_point("spleen", views["Red"], world_point((80, 40, 15)))
    run = segmenter.propagate(2, options=PropagationOptions("up", stop=17))
    assert run.wait(timeout_s=120).done == 4
    after = labelmaps(abdomen, ct)
    assert changed_slices(before["liver"], after["liver"], 2) == [15, 16, 17]
    assert set(changed_slices(before["spleen"], after["spleen"], 2)) <= {15, 16, 17}
    assert segmenter.object_id("liver") != segmenter.object_id("spleen")


# ---- scene bundles --------------------------------------------------------------------


def test_mrml_saved_scene_reopens_with_prompts_and_segments_and_continues(segmenter, ct, abdomen, views,
                                                                          model, tmp_path):
    segmenter.add_point("liver", views["Red"], world_point(CLICK))
    segmenter.add_box("liver", views["Red"], world_point((40, 30, 17)), world_point((90, 80, 17)))
    segmenter.propagate(2, options=PropagationOptions("both", start=13, stop=19)).wait(timeout_s=120)
    saved = labelmaps(abdomen, ct)
    saved_points = markups.node_points_world(markups.prompt_nodes(abdomen, "liver", markups.INCLUDE)[0])
    segmenter.close()
    save_scene(tmp_path / "session.mrb")
    slicer.mrmlScene.Clear(0)
    load_scene(tmp_path / "session.mrb")

    volume, segmentation = slicer.util.getNode("ct"), slicer.util.getNode("segmentation")
    # Slicer reads a left-handed volume back with its k axis reversed: compare in world space
    saved = {segment_id: regrid(voxels, world_matrix(), world_matrix_of(volume))
             for segment_id, voxels in saved.items()}
    for segment_id, voxels in labelmaps(segmentation, volume).items():
        np.testing.assert_array_equal(voxels, saved[segment_id])
    (include,) = markups.prompt_nodes(segmentation, "liver", markups.INCLUDE)
    (box,) = markups.prompt_nodes(segmentation, "liver", markups.BOX)
    assert include.GetNodeReference(markups.VOLUME_REFERENCE) is volume and box.GetAttribute(markups.AXIS) == "2"
    np.testing.assert_allclose(markups.node_points_world(include), saved_points, atol=1e-4)
    red = slicer.util.getNode("Red")
    align_view(red, 2, (60, 50, 21))
    new_index = int(np.rint(np.linalg.solve(world_matrix_of(volume), [*world_point((60, 50, 21)), 1.0])[2]))
    with Segmenter(volume, segmentation, model, device="cpu") as resumed:
        assert resumed.apply_prompts() == {}, "prompts whose results are in the segment are not run again"
        assert resumed.add_point("liver", red, world_point((60, 50, 21))) == {2: [new_index]}
    after = labelmaps(segmentation, volume)
    assert changed_slices(saved["liver"], after["liver"], 2) == [new_index]
    np.testing.assert_array_equal(after["spleen"], saved["spleen"])


def regrid(voxels, from_world, to_world):
    """A [k, j, i] array moved from one voxel grid to another on the same lattice."""
    kji = np.indices(voxels.shape).reshape(3, -1)
    to_old = np.linalg.solve(from_world, to_world)
    old = np.rint(to_old[:3, :3] @ kji[::-1] + to_old[:3, 3:]).astype(int)
    return voxels[old[2], old[1], old[0]].reshape(voxels.shape)
