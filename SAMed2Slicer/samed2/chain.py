"""Box chaining for a memory-less model (MedSAM-Lite): each slice is prompted with the box of the
previous slice's mask, and a rule that needs no object-score head says where the object ends."""
from dataclasses import dataclass

import numpy as np

from samed2.model_io import mask_box


@dataclass(frozen=True)
class BoxChain:
    """margin: model-input pixels added to each side of the previous mask's box (a box drawn tight
    around the mask lets the next mask only shrink; MedSAM was trained on loose boxes).
    The chain stops at a slice whose mask is predicted poor (decoder IoU below `min_iou`), shrinks
    below `min_area_ratio` of the previous mask, or lies mostly outside it (`min_overlap` of its area)."""

    margin: float = 0.0
    min_iou: float = 0.0
    min_area_ratio: float = 0.0
    min_overlap: float = 0.0

    def box(self, previous: np.ndarray, model_scale):
        """The next slice's box (slice pixels) from the previous mask; None when that mask is empty.
        model_scale: (x, y) model-input pixels per slice pixel."""
        box = mask_box(previous, largest_only=True)
        if box is None or not self.margin:
            return box
        dx, dy = (self.margin / float(s) for s in model_scale)
        return box[0] - dx, box[1] - dy, box[2] + dx, box[3] + dy

    def continues(self, previous: np.ndarray, mask: np.ndarray, iou: float) -> bool:
        area = int(mask.sum())
        if area == 0 or iou < self.min_iou:
            return False
        return (area >= self.min_area_ratio * int(previous.sum())
                and int((mask & previous).sum()) >= self.min_overlap * area)
