"""MRML volume access for the engine and the panel: voxels, voxel-to-world geometry, summary."""
import numpy as np
import slicer
import vtk


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
    return voxels, _world_from_parent(volume_node) @ _ijk_to_ras(volume_node)


def _ijk_to_ras(volume_node):
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    return slicer.util.arrayFromVTKMatrix(matrix)


def _world_from_parent(volume_node):
    """4x4 matrix of the node's parent transforms, identity when it has none."""
    parent = volume_node.GetParentTransformNode()
    if parent is None:
        return np.eye(4)
    if not parent.IsTransformToWorldLinear():
        raise ValueError(
            f"volume '{volume_node.GetName()}' is under the non-linear transform "
            f"'{parent.GetName()}': harden the transform (Transforms module) or resample "
            "the volume, then segment it")
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
