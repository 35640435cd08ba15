"""The scene most Slicer tests segment, and how they read it back: the real CT on a rotated, flipped,
anisotropic grid under a linear transform (world_point; align_view turns a view to its slices), its
segmentations and their voxels on the volume grid, and the golden tiny model made to find the object on
every slice (tiny_model). The fixtures built from these are in conftest.py."""
import numpy as np
import slicer
import torch
import vtk
from vtk.util import numpy_support

from SAMed2SlicerLib.segments import Target, write_slices

from suite import golden_tiny_model, object_score_says

SPACING = (0.8, 1.3, 2.5)
VIEW_AXES = {"Red": 2, "Yellow": 0, "Green": 1}
CLICK = (60, 50, 15)  # (i, j, k) voxel of the CT inside the abdomen


def rotation(axis, degrees):
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    angle = np.radians(degrees)
    cross = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * cross + (1 - np.cos(angle)) * cross @ cross


def volume_matrix():
    """IJK-to-RAS of the test volume: anisotropic, i flipped, rotated 20 degrees obliquely."""
    matrix = np.eye(4)
    matrix[:3, :3] = rotation((1, 2, 3), 20) @ np.diag([-1.0, 1.0, 1.0]) @ np.diag(SPACING)
    matrix[:3, 3] = (40.0, -70.0, 120.0)
    return matrix


def parent_matrix():
    matrix = np.eye(4)
    matrix[:3, :3] = rotation((0, 0, 1), 5)
    matrix[:3, 3] = (10.0, -20.0, 5.0)
    return matrix


def world_matrix():
    return parent_matrix() @ volume_matrix()


def world_point(ijk):
    return (world_matrix() @ [*ijk, 1.0])[:3]


def align_view(slice_node, axis, through_ijk):
    """Turn a view to the volume's slices along `axis` (Slicer's "rotate to volume plane"),
    through the voxel `through_ijk`."""
    directions = world_matrix()[:3, :3] / np.linalg.norm(world_matrix()[:3, :3], axis=0)
    in_plane = [a for a in (0, 1, 2) if a != axis]
    x = directions[:, in_plane[0]]
    normal = np.cross(directions[:, in_plane[0]], directions[:, in_plane[1]])
    normal /= np.linalg.norm(normal)
    slice_to_ras = np.eye(4)
    slice_to_ras[:3, :3] = np.c_[x, np.cross(normal, x), normal]
    slice_to_ras[:3, 3] = world_point(through_ijk)
    slice_node.GetSliceToRAS().DeepCopy(slicer.util.vtkMatrixFromArray(slice_to_ras))
    slice_node.UpdateMatrices()


def expected_slice_coords(ijk, axis):
    """(slice index, x, y) of a voxel index on slices along `axis` (samed2.volume layout)."""
    i, j, k = ijk
    return {2: (k, i, j), 1: (j, i, k), 0: (i, j, k)}[axis]


def add_segmentation(volume, *segments):
    """A segmentation for the volume, under the volume's transform as a study moved as a whole
    is (Slicer resamples segments off their reference grid when saving the scene)."""
    segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "segmentation")
    segmentation.SetAndObserveTransformNodeID(volume.GetTransformNodeID())
    segmentation.CreateDefaultDisplayNodes()
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    for segment_id in segments:
        segmentation.GetSegmentation().AddEmptySegment(segment_id, segment_id.capitalize())
    return segmentation


def segment_voxels(segmentation, segment_id, volume):
    """A segment's voxels on the volume's grid [k, j, i], sampled in world coordinates by this
    test's own code from the segment's labelmap (slicer.util's array helpers ignore the
    volume's parent transform)."""
    image = slicer.vtkOrientedImageData()
    assert slicer.vtkSlicerSegmentationsModuleLogic.GetSegmentBinaryLabelmapRepresentation(
        segmentation, segment_id, image, False)
    shape = slicer.util.arrayFromVolume(volume).shape
    extent = np.array(image.GetExtent())
    if np.any(extent[1::2] < extent[::2]):
        return np.zeros(shape, np.uint8)
    values = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(
        tuple(extent[5::-2] - extent[4::-2] + 1))
    image_to_world = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(image_to_world)
    image_to_world = parent_to_world(segmentation) @ slicer.util.arrayFromVTKMatrix(image_to_world)
    to_image = np.linalg.inv(image_to_world) @ world_matrix_of(volume)
    kji = np.indices(shape).reshape(3, -1)
    ijk = np.rint(to_image[:3, :3] @ kji[::-1] + to_image[:3, 3:]).astype(int) - extent[::2, None]
    inside = np.all((ijk >= 0) & (ijk < np.array(values.shape[::-1])[:, None]), axis=0)
    found = np.zeros(kji.shape[1], np.uint8)
    label = segmentation.GetSegmentation().GetSegment(segment_id).GetLabelValue()
    found[inside] = values[ijk[2, inside], ijk[1, inside], ijk[0, inside]] == label
    return found.reshape(shape)


def parent_to_world(node):
    parent = node.GetParentTransformNode()
    return np.eye(4) if parent is None else slicer.util.arrayFromTransformMatrix(parent, toWorld=True)


def world_matrix_of(volume):
    matrix = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(matrix)
    return parent_to_world(volume) @ slicer.util.arrayFromVTKMatrix(matrix)


def labelmaps(segmentation, volume):
    """Every segment's voxels on the volume grid."""
    ids = [segmentation.GetSegmentation().GetNthSegmentID(i)
           for i in range(segmentation.GetSegmentation().GetNumberOfSegments())]
    return {i: segment_voxels(segmentation, i, volume) for i in ids}


def fill(segmentation, segment_id, volume, voxels):
    """Set a whole segment from a [k, j, i] array (slice writes along k)."""
    write_slices(Target(segmentation, segment_id, volume, 2), {k: voxels[k] > 0 for k in range(voxels.shape[0])})


def tiny_model(golden_dir, present=True):
    """The golden tiny model; `present`: it finds the object on every slice, with larger masks."""
    model = golden_tiny_model()
    if present:
        object_score_says(model, present=True)
        with torch.no_grad():
            for mlp in model.sam_mask_decoder.output_hypernetworks_mlps:
                mlp.layers[-1].bias += 0.3
    return model


def changed_slices(before, after, axis):
    """Slices along `axis` where two [k, j, i] arrays differ."""
    other = tuple(a for a in (0, 1, 2) if a != 2 - axis)
    return sorted(np.flatnonzero((before != after).any(axis=other)).tolist())


def slice_of(array, axis, index):
    selector = [slice(None)] * 3
    selector[2 - axis] = index
    return array[tuple(selector)]
