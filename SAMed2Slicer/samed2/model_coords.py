"""The model's input and output in slice terms: slices to model input, prompts in slice pixels to
model coordinates, mask logits back onto the slice, and the box of a mask (the next prompt)."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from samed2.errors import InputError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NORMALIZATIONS = ("none", "imagenet")


def preprocess_slices(slices, image_size: int, normalize: str = "none", antialias: bool = True,
                      letterbox: bool = False) -> torch.Tensor:
    """Slices in [0, 1] (after an intensity preset) to the model's input, (N, 3, S, S) float32.

    ``slices``: one 2D slice, an (N, H, W) array/tensor, or a sequence of equal-shape 2D
    slices. Each is resized to ``image_size`` x ``image_size`` (bilinear, half-pixel centres,
    ``align_corners=False``), repeated into 3 identical channels, and for
    ``normalize="imagenet"`` (SAM 2 / 2.1) normalised with ImageNet mean/std; SAMed-2 uses
    ``"none"``. ``antialias=True`` matches Meta's SAM 2 image predictor (torchvision
    ``Resize`` on tensors, whose default is antialias=True since torchvision 0.17); it only
    matters when shrinking. ``letterbox`` (MedSAM-Lite, SAM 1) keeps the aspect ratio instead: the
    longer side becomes ``image_size`` and the rest is zero-padded at the bottom and right. Tensors
    stay on their device.
    """
    if normalize not in NORMALIZATIONS:
        raise InputError(f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}")
    if int(image_size) != image_size or image_size <= 0:
        raise InputError(f"image_size must be a positive integer, got {image_size!r}")
    batch = stack_slices(slices)
    size = letterbox_size(batch.shape[-2:], image_size) if letterbox else (int(image_size),) * 2
    resized = F.interpolate(batch, size=size, mode="bilinear", align_corners=False, antialias=antialias)
    if letterbox:
        resized = F.pad(resized, (0, int(image_size) - size[1], 0, int(image_size) - size[0]))
    rgb = resized.expand(-1, 3, -1, -1)
    if normalize == "none":
        return rgb.contiguous()
    mean = torch.tensor(IMAGENET_MEAN, dtype=rgb.dtype, device=rgb.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=rgb.dtype, device=rgb.device).view(1, 3, 1, 1)
    return (rgb - mean) / std


def stack_slices(slices) -> torch.Tensor:
    """(N, 1, H, W) float32 tensor from 2D slices in [0, 1]; InputError outside that range."""
    if isinstance(slices, (list, tuple)):
        shapes = {tuple(np.shape(s)) for s in slices}
        if len(shapes) != 1:
            raise ValueError(f"slices must all have one shape, got {sorted(shapes)}")
        batch = torch.stack([as_float_tensor(s) for s in slices])
    else:
        batch = as_float_tensor(slices)
    if batch.dim() == 2:
        batch = batch[None]
    if batch.dim() != 3 or batch.numel() == 0:
        raise ValueError(f"expected 2D slices, got a batch of shape {tuple(batch.shape)}")
    if not bool(torch.isfinite(batch).all()) or float(batch.min()) < 0.0 or float(batch.max()) > 1.0:
        raise InputError("model input must be finite and within [0, 1]: apply an intensity preset first")
    return batch[:, None]


def as_float_tensor(values) -> torch.Tensor:
    """float32 tensor; numpy input is copied (it may be a read-only view of the volume)."""
    if torch.is_tensor(values):
        return values.to(torch.float32)
    return torch.from_numpy(np.array(values, dtype=np.float32))


def letterbox_size(shape, image_size: int) -> tuple[int, int]:
    """(rows, columns) a slice of `shape` takes in a letterboxed model input of `image_size`
    (the longer side becomes `image_size`; rounded as SAM 1 rounds)."""
    scale = image_size / max(int(shape[0]), int(shape[1]))
    return int(int(shape[0]) * scale + 0.5), int(int(shape[1]) * scale + 0.5)


def logits_to_slice(low_res_logits: torch.Tensor, slice_shape: tuple[int, int],
                    letterbox: bool = False) -> torch.Tensor:
    """Upsample mask logits (N, C, h, w), e.g. the decoder's 256x256, straight to the slice
    size (N, C, H, W): bilinear, ``align_corners=False``, as SAM 2's postprocessing does
    (with ``letterbox``, the slice's part of the logits, as SAM 1 crops them).
    Threshold the result at 0 for a mask."""
    if low_res_logits.dim() != 4:
        raise ValueError(f"expected logits of shape (N, C, h, w), got {tuple(low_res_logits.shape)}")
    if letterbox:
        rows, cols = letterbox_size(slice_shape, low_res_logits.shape[-1])
        low_res_logits = low_res_logits[..., :rows, :cols]
    return F.interpolate(low_res_logits.float(), size=tuple(int(s) for s in slice_shape),
                         mode="bilinear", align_corners=False)


def model_scale(slice_shape: tuple[int, int], image_size: int, letterbox: bool = False) -> torch.Tensor:
    """(x, y) factors from slice pixels to model input pixels: S / W and S / H, or S / max(H, W) for both
    when letterboxed."""
    rows, columns = slice_shape
    if letterbox:
        return torch.tensor([image_size / max(rows, columns)] * 2)
    return torch.tensor([image_size / columns, image_size / rows])


def slice_points_to_model(points_xy, slice_shape: tuple[int, int], image_size: int,
                          letterbox: bool = False) -> torch.Tensor:
    """Point prompts (..., 2) in slice pixels (x = column, y = row) to model input coordinates:
    x * S / W, y * S / H (SAM 2's convention; its prompt encoder adds the half pixel), or both times
    S / max(H, W) when letterboxed.
    InputError for points outside the slice."""
    points = torch.as_tensor(np.asarray(points_xy, dtype=np.float32))
    if points.shape[-1:] != (2,):
        raise InputError(f"points must be (x, y) pairs, got shape {tuple(points.shape)}")
    rows, columns = slice_shape
    outside = ~torch.isfinite(points).all(-1) | (points[..., 0] < -0.5) | (points[..., 0] >= columns - 0.5) \
        | (points[..., 1] < -0.5) | (points[..., 1] >= rows - 0.5)
    if bool(outside.any()):
        x, y = points[outside][0].tolist()
        raise InputError(f"point (x={x:.1f}, y={y:.1f}) is outside the slice of {columns} x {rows} pixels")
    return points * model_scale(slice_shape, image_size, letterbox)


def slice_box_to_model(box_xyxy, slice_shape: tuple[int, int], image_size: int,
                       letterbox: bool = False) -> torch.Tensor:
    """Box prompts (..., 4) = (x0, y0, x1, y1) in slice pixels to model coordinates.

    Corners may come in any order (they are sorted); the box is clipped to the slice's pixel
    centres. InputError for zero-size boxes and boxes that miss the slice.
    """
    boxes = torch.as_tensor(np.asarray(box_xyxy, dtype=np.float32))
    if boxes.shape[-1:] != (4,) or not bool(torch.isfinite(boxes).all()):
        raise InputError(f"boxes must be finite (x0, y0, x1, y1), got shape {tuple(boxes.shape)}")
    x0, x1 = torch.minimum(boxes[..., 0], boxes[..., 2]), torch.maximum(boxes[..., 0], boxes[..., 2])
    y0, y1 = torch.minimum(boxes[..., 1], boxes[..., 3]), torch.maximum(boxes[..., 1], boxes[..., 3])
    if bool(((x1 == x0) | (y1 == y0)).any()):
        raise InputError("a box has zero width or height: drag a box over the object")
    rows, columns = slice_shape
    misses = (x1 < -0.5) | (x0 >= columns - 0.5) | (y1 < -0.5) | (y0 >= rows - 0.5)
    if bool(misses.any()):
        raise InputError(f"a box lies outside the slice of {columns} x {rows} pixels")
    clipped = torch.stack([x0.clamp(0, columns - 1), y0.clamp(0, rows - 1),
                           x1.clamp(0, columns - 1), y1.clamp(0, rows - 1)], dim=-1)
    return clipped * model_scale(slice_shape, image_size, letterbox).repeat(2)


def mask_box(mask2d: np.ndarray, largest_only: bool = False):
    """(x0, y0, x1, y1) of a 2D mask: its first and last column and row; None when it is empty.

    A mask one pixel thin gets a box out to that pixel's edges (half a pixel each side) rather
    than a zero-size one. `largest_only` boxes the largest 8-connected component only, so that
    stray specks do not widen the box.
    """
    mask2d = np.asarray(mask2d, dtype=bool)
    if largest_only and mask2d.any():
        components, count = ndimage.label(mask2d, structure=np.ones((3, 3)))
        if count > 1:
            mask2d = components == 1 + int(np.argmax(ndimage.sum_labels(mask2d, components, range(1, count + 1))))
    rows, cols = np.nonzero(mask2d)
    if rows.size == 0:
        return None
    (x0, x1), (y0, y1) = (_widened(cols.min(), cols.max()), _widened(rows.min(), rows.max()))
    return x0, y0, x1, y1


def _widened(low, high):
    return (int(low), int(high)) if high > low else (float(low) - 0.5, float(high) + 0.5)
