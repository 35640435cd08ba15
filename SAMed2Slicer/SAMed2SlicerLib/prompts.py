"""Prompts as markups in the scene, and their conversion to engine prompts on voxel slices.

Each object (a segment) has, per slicing axis, an include and an exclude point list
(vtkMRMLMarkupsFiducialNode) and one ROI node per box. Attributes on each node say what it is
(role, segment, axis); node references name its segmentation and volume. All of it is saved
with the scene, so a reopened scene resumes with its prompts.

A point is on the slice nearest to it along its node's axis; a box is on the slice nearest to
its centre and covers the in-plane extent of its eight corners, so ROIs of any orientation,
and volumes rotated or flipped in any way, give the right voxels.
"""
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
import slicer

from samed2.choices import PROMPT_TOOLS
from SAMed2SlicerLib.geometry import slice_to_ras

ROLE = "SAMed2.Role"
SEGMENT = "SAMed2.SegmentID"
AXIS = "SAMed2.Axis"
SEGMENTATION_REFERENCE = "SAMed2Segmentation"
VOLUME_REFERENCE = "SAMed2Volume"
INCLUDE, EXCLUDE, BOX = ROLES = PROMPT_TOOLS  # a prompt markup's role is the tool that placed it
AXIS_NAMES = ("i", "j", "k")
COLORS = {INCLUDE: (0.1, 0.9, 0.2), EXCLUDE: (0.95, 0.15, 0.15), BOX: (1.0, 0.85, 0.1)}
LABELS = {INCLUDE: "+", EXCLUDE: "-", BOX: "box"}
NODE_CLASSES = {INCLUDE: "vtkMRMLMarkupsFiducialNode", EXCLUDE: "vtkMRMLMarkupsFiducialNode",
                BOX: "vtkMRMLMarkupsROINode"}


@dataclass(frozen=True)
class SlicePrompt:
    """The prompts of one object on one slice, in slice pixels (x = column, y = row)."""

    points: Tuple[Tuple[float, float, bool], ...] = ()
    box: Optional[Tuple[float, float, float, float]] = None

    def is_empty(self):
        return not self.points and self.box is None


def prompt_nodes(segmentation_node, segment_id=None, role=None, axis=None):
    """The prompt markups of a segmentation, optionally only one segment's, role's or axis'."""
    found = []
    for node in slicer.util.getNodesByClass("vtkMRMLMarkupsNode"):
        if node.GetAttribute(ROLE) not in ROLES:
            continue
        if node.GetNodeReference(SEGMENTATION_REFERENCE) is not segmentation_node:
            continue
        if segment_id is not None and node.GetAttribute(SEGMENT) != segment_id:
            continue
        if role is not None and node.GetAttribute(ROLE) != role:
            continue
        if axis is not None and node.GetAttribute(AXIS) != str(axis):
            continue
        found.append(node)
    return found


def hovered_prompt(segmentation_node):
    """The prompt markup the mouse is over (its display node has an active component for the
    mouse, which the Markups displayable manager sets on hover), else None: a press there is for
    Markups, to drag the point or the box outline or handle. A box's centre, where a point prompt
    is often clicked, holds its one control point and its in-plane move handle: a press there
    makes a point, not a drag (the box still moves by its outline and resizes by its handles)."""
    for node in prompt_nodes(segmentation_node):
        display = node.GetDisplayNode()
        if display is not None and grabs_press(node, display.GetActiveComponentType(),
                                               display.GetActiveComponentIndex()):
            return node
    return None


BOX_CENTRE_MOVE_HANDLE = 3  # translation handle components: x, y, z, then the view plane (the centre)


def grabs_press(node, component, index) -> bool:
    """Whether Markups should take a press on this component of a prompt node."""
    display = slicer.vtkMRMLMarkupsDisplayNode
    if component == display.ComponentNone:
        return False
    if node.GetAttribute(ROLE) != BOX:
        return True
    at_centre = component == display.ComponentControlPoint or (
        component == display.ComponentTranslationHandle and index == BOX_CENTRE_MOVE_HANDLE)
    return not at_centre


def prompted_axes(segmentation_node, segment_id):
    """The slicing axes a segment has prompts on."""
    return sorted({int(n.GetAttribute(AXIS)) for n in prompt_nodes(segmentation_node, segment_id)})


def create_prompt_node(target, role):
    """A new, empty prompt node of `role` for `target`, named and coloured for the views."""
    segment = target.segmentation.GetSegmentation().GetSegment(target.segment_id)
    if segment is None:
        raise ValueError(f"segment '{target.segment_id}' is not in '{target.segmentation.GetName()}'")
    name = f"SAMed-2 {role} {segment.GetName()} ({AXIS_NAMES[target.axis]} slices)"
    with active_place_node_kept():  # Markups makes every added list the one "Place" adds to
        node = slicer.mrmlScene.AddNewNodeByClass(NODE_CLASSES[role], slicer.mrmlScene.GenerateUniqueName(name))
    node.SetAttribute(ROLE, role)
    node.SetAttribute(SEGMENT, target.segment_id)
    node.SetAttribute(AXIS, str(target.axis))
    node.SetNodeReferenceID(SEGMENTATION_REFERENCE, target.segmentation.GetID())
    node.SetNodeReferenceID(VOLUME_REFERENCE, target.volume.GetID())
    node.SetMarkupLabelFormat(LABELS[role])
    node.CreateDefaultDisplayNodes()
    node.GetDisplayNode().SetSelectedColor(*COLORS[role])
    node.GetDisplayNode().SetColor(*COLORS[role])
    return node


@contextmanager
def active_place_node_kept():
    """Keep the selection node's active place list and class (what the Markups toolbar places
    into) as they were before the block."""
    selection = slicer.mrmlScene.GetNodeByID("vtkMRMLSelectionNodeSingleton")
    if selection is None:
        yield
        return
    node_id, class_name = selection.GetActivePlaceNodeID(), selection.GetActivePlaceNodeClassName()
    try:
        yield
    finally:
        if selection.GetActivePlaceNodeClassName() != class_name:
            selection.SetReferenceActivePlaceNodeClassName(class_name)
        if selection.GetActivePlaceNodeID() != node_id:
            selection.SetReferenceActivePlaceNodeID(node_id)


def point_node(target, positive):
    """The include (positive) or exclude point list of `target`, created when missing."""
    role = INCLUDE if positive else EXCLUDE
    existing = prompt_nodes(target.segmentation, target.segment_id, role, target.axis)
    return existing[0] if existing else create_prompt_node(target, role)


def add_point(target, point_ras, positive):
    """Add an include or exclude point (world RAS) to `target`'s point list; returns the node."""
    node = point_node(target, positive)
    node.AddControlPointWorld(*[float(v) for v in point_ras])
    return node


def add_box(target, slice_node, corner_ras, opposite_ras, thickness_mm):
    """Add a box dragged from one corner to the opposite one in a slice view, as an ROI
    aligned with the view (thickness `thickness_mm` across it); returns the ROI node."""
    view = slice_to_ras(slice_node)
    rotation = view[:3, :3] / np.linalg.norm(view[:3, :3], axis=0)
    corner, opposite = np.asarray(corner_ras, float), np.asarray(opposite_ras, float)
    object_to_world = np.eye(4)
    object_to_world[:3, :3] = rotation
    object_to_world[:3, 3] = (corner + opposite) / 2
    extent = np.abs(rotation.T @ (opposite - corner))
    node = create_prompt_node(target, BOX)
    display = node.GetDisplayNode()
    display.SetFillVisibility(False)  # an outline: the segment inside the box stays visible
    display.SetPropertiesLabelVisibility(False)  # the name would lie across the image
    display.SetPointLabelsVisibility(False)
    node.SetAndObserveObjectToNodeMatrix(slicer.util.vtkMatrixFromArray(object_to_world))
    node.SetSize(float(extent[0]), float(extent[1]), float(thickness_mm))
    return node


def box_corners_world(roi_node):
    """The eight corners of an ROI in world RAS, shape (8, 3)."""
    half = np.asarray(roi_node.GetSize(), float) / 2
    signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], float)
    corners = np.c_[signs * half, np.ones(8)]
    matrix = slicer.util.arrayFromVTKMatrix(roi_node.GetObjectToWorldMatrix())
    return (corners @ matrix.T)[:, :3]


def node_points_world(node):
    """The control points of a point list, world RAS, shape (N, 3)."""
    return slicer.util.arrayFromMarkupsControlPoints(node, world=True).reshape(-1, 3)


def collect_prompts(volume, target):
    """{slice index: SlicePrompt} of `target` on the engine `volume`, from the markups.

    A point or box centre outside the volume raises the engine's InputError, which names the
    point; with several boxes on one slice, the last one counts.
    """
    prompts = {}
    for node in prompt_nodes(target.segmentation, target.segment_id, axis=target.axis):
        role = node.GetAttribute(ROLE)
        if role == BOX:
            index, box = box_on_slice(volume, target.axis, node)
            previous = prompts.get(index, SlicePrompt())
            prompts[index] = SlicePrompt(previous.points, box)
            continue
        for point in node_points_world(node):
            spot = volume.to_slice_point(point, target.axis)
            previous = prompts.get(spot.index, SlicePrompt())
            prompts[spot.index] = SlicePrompt(previous.points + ((spot.x, spot.y, role == INCLUDE),), previous.box)
    return prompts


def box_on_slice(volume, axis, roi_node):
    """(slice index, (x0, y0, x1, y1)) of an ROI node on the engine volume's slices."""
    center = volume.to_slice_point(np.asarray(roi_node.GetCenterWorld(), float), axis)
    coords = volume.to_slice_coords(box_corners_world(roi_node), axis)
    x, y = coords[:, 1], coords[:, 2]
    return center.index, (float(x.min()), float(y.min()), float(x.max()), float(y.max()))
