"""MRML geometry for the engine: volume voxels and their voxel-to-world matrix, transforms,
slice views and which voxel axis a view slices along.

Conventions are the engine's (see samed2.volume): arrays are [k, j, i], "axis" is a voxel
axis (0 = i, 1 = j, 2 = k), world coordinates are Slicer's RAS with every linear parent
transform applied.
"""
import numpy as np
import slicer
import vtk

from samed2.volume import Volume

VIEW_PLANE_TOLERANCE_MM = 1e-3
"""A point placed in a slice view lies on its plane; farther than this it does not."""


def volume_to_array(volume_node):
    """Return (voxels, ijk_to_ras) of a scalar volume node, in world RAS.

    voxels: read-only view of the node's voxels, indexed [k, j, i] as Slicer stores them.
    ijk_to_ras: 4x4 float64 matrix mapping (i, j, k, 1) to world RAS; a linear parent
    transform is composed in, as hardening it would do, without modifying the node.
    Raises ValueError when the node has no voxels, more than one component per voxel,
    or a non-linear parent transform (harden or resample it first).
    """
    image = volume_node.GetImageData()
    if image is None or image.GetPointData().GetScalars() is None:
        raise ValueError(f"volume '{volume_node.GetName()}' has no voxel data")
    if image.GetNumberOfScalarComponents() != 1:
        raise ValueError(f"volume '{volume_node.GetName()}' is not a scalar volume "
                         f"({image.GetNumberOfScalarComponents()} components per voxel)")
    voxels = slicer.util.arrayFromVolume(volume_node).view()
    voxels.flags.writeable = False
    return voxels, world_from_node(volume_node) @ local_ijk_to_ras(volume_node)


def engine_volume(volume_node):
    """The volume node as a `samed2.volume.Volume` (a read-only view, no copy), in world RAS."""
    voxels, ijk_to_ras = volume_to_array(volume_node)
    return Volume(voxels, ijk_to_ras)


def local_ijk_to_ras(volume_node):
    """The volume's own IJK-to-RAS matrix, without its parent transforms."""
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    return slicer.util.arrayFromVTKMatrix(matrix)


def world_from_node(node):
    """4x4 matrix of a transformable node's parent transforms (identity when it has none).

    Raises ValueError for a non-linear transform: the engine needs a voxel grid that stays a
    grid in world coordinates.
    """
    parent = node.GetParentTransformNode()
    if parent is None:
        return np.eye(4)
    if not parent.IsTransformToWorldLinear():
        raise ValueError(
            f"'{node.GetName()}' is under the non-linear transform '{parent.GetName()}': harden "
            "the transform (Transforms module) or resample the volume, then segment it")
    matrix = vtk.vtkMatrix4x4()
    parent.GetMatrixTransformToWorld(matrix)
    return slicer.util.arrayFromVTKMatrix(matrix)


def describe_volume(volume_node):
    """One line for the panel: grid size and spacing of the volume, or what is missing."""
    if volume_node is None:
        return "Select a CT or MR volume."
    image = volume_node.GetImageData()
    if image is None:
        return f"Volume '{volume_node.GetName()}' has no voxel data."
    size = " x ".join(str(n) for n in image.GetDimensions())
    spacing = " x ".join(f"{s:.2f}" for s in volume_node.GetSpacing())
    return f"{size} voxels, spacing {spacing} mm"


def slice_to_ras(slice_node):
    """The slice view's SliceToRAS 4x4 matrix: columns x, y (in-plane), normal, origin."""
    return slicer.util.arrayFromVTKMatrix(slice_node.GetSliceToRAS())


def view_normal(slice_node):
    """Unit normal (RAS) of a slice view's plane."""
    normal = slice_to_ras(slice_node)[:3, 2]
    return normal / np.linalg.norm(normal)


def view_axis(volume, slice_node):
    """The voxel axis an engine `volume` is sliced along in this view; the engine's
    InputError (which says how to fix it) when the view is oblique to the volume."""
    return volume.slicing_axis(view_normal(slice_node), space="RAS")


def distance_to_view(point_ras, slice_node):
    """Distance in mm from a world point to a slice view's plane."""
    matrix = slice_to_ras(slice_node)
    return abs(float(view_normal(slice_node) @ (np.asarray(point_ras, float) - matrix[:3, 3])))


def view_containing(point_ras, slice_nodes):
    """The first slice view whose plane holds the point (where it was placed), else None."""
    for slice_node in slice_nodes:
        if distance_to_view(point_ras, slice_node) <= VIEW_PLANE_TOLERANCE_MM:
            return slice_node
    return None

