"""Segment writes follow the Segment Editor's masking and "Modify other segments" setting where
the SAMed-2 effect is active on the segmentation, as Slicer's own effects do; a write converts
the segment's other representations (the 3D surface) once, not twice; propagation writes in
batches. Real MRML (slicer-core): a volume, a segmentation, a vtkMRMLSegmentEditorNode."""
import time

import numpy as np
import pytest
import slicer
import vtk

from samed2.choices import EFFECT_NAME, PropagationOptions
from SAMed2SlicerLib import segments
from SAMed2SlicerLib.segmenter import WRITE_INTERVAL_S
from SAMed2SlicerLib.segments import Target, read_segment, write_slices

from ct_scene import CLICK, world_point

SHAPE = (6, 40, 50)  # k, j, i


@pytest.fixture
def scene(mrml_scene):
    voxels = np.tile(np.arange(SHAPE[2], dtype=np.int16) * 10, (SHAPE[0], SHAPE[1], 1))  # i * 10
    volume = slicer.util.addVolumeFromArray(voxels, name="ct")
    segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "segmentation")
    segmentation.CreateDefaultDisplayNodes()
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    for name in ("liver", "spleen", "body"):
        segmentation.GetSegmentation().AddEmptySegment(name, name)
    return volume, segmentation


def fill(volume, segmentation, segment_id, voxels):
    write_slices(Target(segmentation, segment_id, volume, 2), {k: voxels[k] for k in range(SHAPE[0])})


def editor_for(segmentation, active=EFFECT_NAME):
    editor = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentEditorNode")
    editor.SetAndObserveSegmentationNode(segmentation)
    editor.SetActiveEffectName(active)
    return editor


def full_slice():
    return np.ones(SHAPE[1:], bool)


def left_half():
    voxels = np.zeros(SHAPE, bool)
    voxels[:, :, : SHAPE[2] // 2] = True
    return voxels


def test_slicer_writes_stay_inside_the_editable_area(scene):
    volume, segmentation = scene
    fill(volume, segmentation, "body", left_half())
    editor = editor_for(segmentation)
    editor.SetMaskMode(slicer.vtkMRMLSegmentationNode.EditAllowedInsideSingleSegment)
    editor.SetMaskSegmentID("body")
    write_slices(Target(segmentation, "liver", volume, 2), {2: full_slice()})
    liver = read_segment(segmentation, "liver", volume)
    np.testing.assert_array_equal(liver[2], left_half()[2])
    assert not liver[[0, 1, 3, 4, 5]].any()


def test_slicer_writes_keep_voxels_outside_the_editable_area_when_clearing(scene):
    volume, segmentation = scene
    fill(volume, segmentation, "liver", np.ones(SHAPE, bool))
    editor = editor_for(segmentation)
    editor.SetSourceVolumeIntensityMask(True)
    editor.SetSourceVolumeIntensityMaskRange(0, 240)  # i < 25 editable
    write_slices(Target(segmentation, "liver", volume, 2), {3: np.zeros(SHAPE[1:], bool)})
    liver = read_segment(segmentation, "liver", volume)
    assert not liver[3, :, :25].any() and liver[3, :, 25:].all() and liver[[0, 1, 2, 4, 5]].all()


def test_slicer_writes_ignore_editors_where_the_effect_is_not_active(scene):
    volume, segmentation = scene
    fill(volume, segmentation, "body", left_half())
    editor = editor_for(segmentation, active="Paint")
    editor.SetMaskMode(slicer.vtkMRMLSegmentationNode.EditAllowedInsideSingleSegment)
    editor.SetMaskSegmentID("body")
    write_slices(Target(segmentation, "liver", volume, 2), {2: full_slice()})
    assert read_segment(segmentation, "liver", volume)[2].all()


@pytest.mark.parametrize("mode, spleen_kept", [("OverwriteAllSegments", False), ("OverwriteNone", True), (None, True)])
def test_slicer_writes_overwrite_other_segments_as_the_editor_says(scene, mode, spleen_kept):
    """Slicer's default (all segments) takes the voxels from the spleen; "none", and writes made
    without an editor (scripts, the web app), leave them overlapping."""
    volume, segmentation = scene
    spleen = np.zeros(SHAPE, bool)
    spleen[2] = True
    fill(volume, segmentation, "spleen", spleen)
    if mode is not None:
        editor_for(segmentation).SetOverwriteMode(getattr(slicer.vtkMRMLSegmentEditorNode, mode))
    write_slices(Target(segmentation, "liver", volume, 2), {2: left_half()[2]})
    assert read_segment(segmentation, "liver", volume)[2].sum() == left_half()[2].sum()
    after = read_segment(segmentation, "spleen", volume)[2]
    assert after.all() if spleen_kept else np.array_equal(after, ~left_half()[2])


def representation_events(segmentation, write):
    """How many RepresentationModified events `write()` causes (each merge into a segment that
    has other representations re-converts them and says so)."""
    events = []
    tag = segmentation.GetSegmentation().AddObserver(slicer.vtkSegmentation.RepresentationModified,
                                                     lambda caller, event: events.append(event))
    write()
    segmentation.GetSegmentation().RemoveObserver(tag)
    return len(events)


def one_merge(volume, segmentation, k):
    """One merge of a slice into the liver, as Slicer's Paint effect adds voxels."""
    image = slicer.vtkOrientedImageData()
    image.SetExtent(0, SHAPE[2] - 1, 0, SHAPE[1] - 1, k, k)
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    image.GetPointData().GetScalars().Fill(1)
    matrix = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(matrix)
    image.SetImageToWorldMatrix(matrix)
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    assert logic.SetBinaryLabelmapToSegment(image, segmentation, "liver", logic.MODE_MERGE_MASK, image.GetExtent())


def test_slicer_a_write_that_only_adds_converts_the_3d_surface_once(scene):
    """Propagation writes new slices: one merge, so one surface rebuild (it was a clearing merge
    and a setting merge, two rebuilds, per write)."""
    volume, segmentation = scene
    fill(volume, segmentation, "liver", left_half() & (np.arange(SHAPE[0]) < 2)[:, None, None])
    segmentation.CreateClosedSurfaceRepresentation()
    single = representation_events(segmentation, lambda: one_merge(volume, segmentation, 3))
    target = Target(segmentation, "liver", volume, 2)
    assert representation_events(segmentation, lambda: write_slices(target, {4: left_half()[4]})) == single
    assert representation_events(segmentation, lambda: write_slices(target, {4: left_half()[4]})) == 0
    surface = vtk.vtkPolyData()
    segmentation.GetClosedSurfaceRepresentation("liver", surface)
    assert surface.GetBounds()[5] > 3  # the surface reaches slice 4


def test_mrml_propagation_writes_at_most_every_half_second(segmenter, ct, abdomen, views, monkeypatch):
    """Each write rebuilds the 3D surface: propagation batches its slices (WRITE_INTERVAL_S)."""
    segmenter.add_point("liver", views["Red"], world_point(CLICK))
    writes, write = [], segments.write_slices
    monkeypatch.setattr(segments, "write_slices", lambda target, masks: (writes.append(time.monotonic()),
                                                                         write(target, masks))[1])
    started = time.monotonic()
    run = segmenter.propagate(2, ["liver"], PropagationOptions("up", start=12, stop=29, stop_after_absent=0))
    progress = run.wait(timeout_s=300)
    elapsed = time.monotonic() - started
    assert progress.finished and progress.done >= 10
    print(f"\n{progress.done} slices in {elapsed:.1f} s: {len(writes)} writes")
    gaps = np.diff(writes[:-1])  # the last write flushes at the end, whenever that comes
    assert len(writes) <= elapsed / WRITE_INTERVAL_S + 2 and (gaps >= WRITE_INTERVAL_S * 0.99).all()
    liver = read_segment(abdomen, "liver", ct)
    assert all(liver[k].any() for k in range(30 - progress.done, 30))


def test_slicer_masked_writes_remember_what_they_wrote_and_undo_exactly(scene):
    """A masked write returns the slice as it is now; undoing it restores the slice whatever the
    editable area (Slicer's own undo restores the whole segmentation)."""
    volume, segmentation = scene
    fill(volume, segmentation, "body", left_half())
    before = np.zeros(SHAPE[1:], bool)
    before[:, 40:] = True  # outside the editable area
    write_slices(Target(segmentation, "liver", volume, 2), {2: before})
    editor = editor_for(segmentation)
    editor.SetMaskMode(slicer.vtkMRMLSegmentationNode.EditAllowedInsideSingleSegment)
    editor.SetMaskSegmentID("body")
    step = segments.EditStep("click")
    held = step.write(Target(segmentation, "liver", volume, 2), {2: np.zeros(SHAPE[1:], bool)})
    np.testing.assert_array_equal(held[2], before)  # nothing editable held voxels
    held = step.write(Target(segmentation, "liver", volume, 2), {2: full_slice()})
    np.testing.assert_array_equal(held[2], before | left_half()[2])
    np.testing.assert_array_equal(read_segment(segmentation, "liver", volume)[2], held[2])
    step.undo()
    np.testing.assert_array_equal(read_segment(segmentation, "liver", volume)[2], before)
