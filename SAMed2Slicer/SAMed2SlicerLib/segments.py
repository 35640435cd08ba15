"""Slice-wise reads and writes of one segment's binary labelmap, and their undo.

Writes touch only the given slices of the given segment: other slices keep their voxels. A
write is at most two merges, as Slicer's Segment Editor effects do them: a minimum that clears
the voxels the new masks drop (Slicer limits it to the segment's own label, so segments sharing
its labelmap layer keep their voxels), then a masked merge that sets the voxels they add; a
merge with nothing to do is skipped (each merge re-converts the segment's other representations,
such as the 3D surface).

Where the SAMed-2 effect is active in a Segment Editor on the segmentation, writes follow that
editor's masking as Slicer's own effects do (qSlicerSegmentEditorAbstractEffect::
modifySegmentByLabelmap): voxels outside the editable area or intensity range keep what they
held, and other segments are overwritten as its "Modify other segments" setting says (Slicer's
default: all of them). Without such an editor (scripts, the web app) other segments are never
modified: Slicer moves the segment to its own layer where they would overlap.

Slices are taken along a voxel axis of the volume the segment is edited on, in the engine's
layout (samed2.volume): axis 2 -> rows j, columns i; axis 1 -> rows k, columns i;
axis 0 -> rows k, columns j.
"""
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

from samed2.choices import EFFECT_NAME
from samed2.volume import slice_selector
from SAMed2SlicerLib.geometry import volume_to_array, world_from_node

UNDO_DEPTH = 20
KEEP, CLEAR = 255, 0


@dataclass(frozen=True)
class Target:
    """A segment of a segmentation, edited slice by slice on a volume along a voxel axis."""

    segmentation: object  # vtkMRMLSegmentationNode
    segment_id: str
    volume: object  # vtkMRMLScalarVolumeNode
    axis: int

    def segment(self):
        segment = self.segmentation.GetSegmentation().GetSegment(self.segment_id)
        if segment is None:
            raise ValueError(f"segment '{self.segment_id}' is not in '{self.segmentation.GetName()}'")
        return segment


def check_editable(segmentation_node):
    """ValueError unless segments can be edited voxel-wise (binary labelmap is the source)."""
    name = slicer.vtkSegmentationConverter.GetSegmentationBinaryLabelmapRepresentationName()
    source = segmentation_node.GetSegmentation().GetSourceRepresentationName()
    if source != name:
        raise ValueError(f"'{segmentation_node.GetName()}' stores {source}, not binary labelmaps: make binary "
                         "labelmap its source representation (Segmentations module) before segmenting")


def _slab(target, low, high, fill):
    """A uint8 image on the volume's grid, slices low..high along the axis, in the
    segmentation's coordinates, filled with `fill`; and its [k, j, i] numpy view."""
    voxels, world_ijk = volume_to_array(target.volume)
    node_ijk = np.linalg.inv(world_from_node(target.segmentation)) @ world_ijk
    extent = [0, voxels.shape[2] - 1, 0, voxels.shape[1] - 1, 0, voxels.shape[0] - 1]
    extent[2 * target.axis], extent[2 * target.axis + 1] = low, high
    image = slicer.vtkOrientedImageData()
    image.SetImageToWorldMatrix(slicer.util.vtkMatrixFromArray(node_ijk))
    image.SetExtent(*extent)
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    shape = (extent[5] - extent[4] + 1, extent[3] - extent[2] + 1, extent[1] - extent[0] + 1)
    array = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(shape)
    array[:] = fill
    return image, array


def read_slab(target, low, high) -> np.ndarray:
    """The segment on slices low..high along the target's axis of the volume's grid: a bool
    [k, j, i] array holding just those slices."""
    reference, empty = _slab(target, low, high, 0)
    labelmap = target.segment().GetRepresentation(
        slicer.vtkSegmentationConverter.GetSegmentationBinaryLabelmapRepresentationName())
    on_grid = slicer.vtkOrientedImageData()
    if labelmap is None or not _has_voxels(labelmap) or not \
            slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(
                labelmap, reference, on_grid):
        return empty.astype(bool)
    shape = tuple(reversed(on_grid.GetDimensions()))
    values = numpy_support.vtk_to_numpy(on_grid.GetPointData().GetScalars()).reshape(shape)
    return values == target.segment().GetLabelValue()


def read_segment(segmentation_node, segment_id, volume_node) -> np.ndarray:
    """The whole segment on the volume's grid, a bool [k, j, i] array."""
    last = volume_node.GetImageData().GetDimensions()[2] - 1
    return read_slab(Target(segmentation_node, segment_id, volume_node, 2), 0, last)


def read_slices(target, indices) -> Dict[int, np.ndarray]:
    """{index: bool mask} of the segment on those slices of the volume's grid."""
    indices = sorted(set(int(i) for i in indices))
    if not indices:
        return {}
    low = indices[0]
    slab = read_slab(target, low, indices[-1])
    return {index: slab[slice_selector(slab, target.axis, index - low)].copy() for index in indices}


def _has_voxels(image):
    extent = image.GetExtent()
    return extent[0] <= extent[1] and extent[2] <= extent[3] and extent[4] <= extent[5]


def active_editor(segmentation_node):
    """The Segment Editor parameter node in which the SAMed-2 effect is active on this
    segmentation (None when there is none)."""
    scene = segmentation_node.GetScene()
    editors = scene.GetNodesByClass("vtkMRMLSegmentEditorNode") if scene is not None else None
    for index in range(editors.GetNumberOfItems() if editors is not None else 0):
        editor = editors.GetItemAsObject(index)
        if editor.GetSegmentationNode() is segmentation_node and editor.GetActiveEffectName() == EFFECT_NAME:
            return editor
    return None


def _editable(target, editor, reference) -> np.ndarray:
    """Where the editor lets a segment be modified on the reference slab: a bool [k, j, i] array."""
    source = None
    if editor.GetSourceVolumeIntensityMask():
        source = slicer.vtkSlicerSegmentationsModuleLogic.CreateOrientedImageDataFromVolumeNode(
            target.volume, target.segmentation.GetParentTransformNode())
    mask = slicer.vtkOrientedImageData()
    if not target.segmentation.GenerateEditMask(
            mask, editor.GetMaskMode(), reference, target.segment_id, editor.GetMaskSegmentID() or "", source,
            editor.GetSourceVolumeIntensityMaskRange() if source is not None else None):
        raise RuntimeError("Slicer could not compute the Segment Editor's editable area")
    shape = tuple(reversed(mask.GetDimensions()))
    return numpy_support.vtk_to_numpy(mask.GetPointData().GetScalars()).reshape(shape) == 0  # 0: editable


def _overwritten(target, editor) -> List[str]:
    """The other segments a write may take voxels from, by the editor's "Modify other segments"."""
    if editor is None or editor.GetOverwriteMode() == editor.OverwriteNone:
        return []
    ids = [i for i in target.segmentation.GetSegmentation().GetSegmentIDs() if i != target.segment_id]
    display = target.segmentation.GetDisplayNode()
    if editor.GetOverwriteMode() == editor.OverwriteVisibleSegments and display is not None:
        ids = [i for i in ids if display.GetSegmentVisibility(i)]
    return ids


def write_slices(target, masks: Dict[int, np.ndarray], masked: bool = True) -> Dict[int, np.ndarray]:
    """Set the segment on each slice `index` to `masks[index]`, within the editable area of the
    Segment Editor the SAMed-2 effect is active in (if any, and `masked`: an undo restores exactly);
    nothing else of the segment changes. Returns what each slice holds now."""
    if not masks:
        return {}
    check_editable(target.segmentation)
    target.segment()
    low, high = min(masks), max(masks)
    keep, keep_array = _slab(target, low, high, KEEP)
    add, add_array = _slab(target, low, high, CLEAR)
    old = read_slab(target, low, high)
    new = old.copy()
    for index, mask in masks.items():
        selector = slice_selector(new, target.axis, index - low)
        if np.shape(mask) != new[selector].shape:
            raise ValueError(f"mask of shape {np.shape(mask)} does not fit slice {index} "
                             f"{new[selector].shape} along axis {target.axis}")
        new[selector] = np.asarray(mask, bool)
    editor = active_editor(target.segmentation) if masked else None
    if editor is not None:
        new = np.where(_editable(target, editor, keep), new, old)
    keep_array[old & ~new] = CLEAR
    add_array[new & ~old] = 1
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    overwritten = _overwritten(target, editor)
    with slicer.util.NodeModify(target.segmentation):
        for image, mode, needed in ((keep, logic.MODE_MERGE_MIN, (old & ~new).any()),
                                    (add, logic.MODE_MERGE_MASK, (new & ~old).any())):
            if needed and not logic.SetBinaryLabelmapToSegment(image, target.segmentation, target.segment_id, mode,
                                                               image.GetExtent(), False, overwritten):
                raise RuntimeError(f"Slicer could not write segment '{target.segment_id}'")
    return {index: new[slice_selector(new, target.axis, index - low)] for index in masks}


# ---- undo --------------------------------------------------------------------------------


@dataclass
class SliceEdit:
    """What a target's slices held before an edit (bit-packed)."""

    target: Target
    before: Dict[int, tuple] = field(default_factory=dict)  # index -> (packed bits, shape)

    def remember(self, masks: Dict[int, np.ndarray]) -> None:
        for index, mask in masks.items():
            self.before.setdefault(index, (np.packbits(mask), mask.shape))

    def restore(self) -> None:
        write_slices(self.target, {index: np.unpackbits(bits, count=int(np.prod(shape))).reshape(shape)
                                   for index, (bits, shape) in self.before.items()}, masked=False)


class EditStep:
    """One undoable step (an interaction or a propagation run): writes through it remember
    what each slice held before its first write in the step. `before_write` runs just before
    the step's first write (the Segment Editor saves its undo state there: a step that writes
    nothing leaves no undo state)."""

    def __init__(self, label: str, before_write: Optional[Callable[[], None]] = None):
        self.label = label
        self.memo: dict = {}  # the caller's own bookkeeping, undone with the step
        self._edits: Dict[Target, SliceEdit] = {}
        self._before_write = before_write  # called once, before the step's first write

    def write(self, target: Target, masks: Dict[int, np.ndarray]) -> Dict[int, np.ndarray]:
        """write_slices through this step; returns what each slice holds now."""
        if self._before_write is not None and masks:
            before_write, self._before_write = self._before_write, None
            before_write()
        edit = self._edits.setdefault(target, SliceEdit(target))
        edit.remember(read_slices(target, [i for i in masks if i not in edit.before]))
        return write_slices(target, masks)

    def is_empty(self) -> bool:
        return not any(edit.before for edit in self._edits.values())

    def undo(self) -> None:
        for edit in reversed(list(self._edits.values())):
            edit.restore()

    def was_undone(self) -> bool:
        """Whether every slice this step wrote holds its voxels from before the step again
        (the step was undone elsewhere, e.g. by the Segment Editor's undo)."""
        for target, edit in self._edits.items():
            now = read_slices(target, edit.before)
            for index, (bits, _) in edit.before.items():
                if not np.array_equal(np.packbits(now[index]), bits):
                    return False
        return True

    def slices(self) -> Dict[Target, List[int]]:
        """The slices this step wrote, per target."""
        return {target: sorted(edit.before) for target, edit in self._edits.items()}


class UndoStack:
    """The last `depth` steps, most recent last."""

    def __init__(self, depth: int = UNDO_DEPTH):
        self.depth = depth
        self._steps: List[EditStep] = []

    def push(self, step: EditStep) -> None:
        if step.is_empty():
            return
        self._steps.append(step)
        del self._steps[:-self.depth]

    def undo(self):
        """Undo the most recent step and return it (None when there is nothing to undo)."""
        if not self._steps:
            return None
        step = self._steps.pop()
        step.undo()
        return step

    def pop_undone(self):
        """Remove and return the most recent step if it was undone elsewhere, else None."""
        if self._steps and self._steps[-1].was_undone():
            return self._steps.pop()
        return None

    def __len__(self) -> int:
        return len(self._steps)

    def clear(self) -> None:
        self._steps.clear()
