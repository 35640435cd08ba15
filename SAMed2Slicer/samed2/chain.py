"""Box chaining for a memory-less model (MedSAM-Lite): each slice is prompted with the box of the
previous slice's mask, and a rule that needs no object-score head says where the object ends."""
from dataclasses import dataclass
from typing import List, Optional, Sequence

import numpy as np

from samed2.model_coords import mask_box

BAND_PERCENTILES = (10, 90)


@dataclass(frozen=True)
class IntensityBand:
    """The prompted slice's object intensities (raw voxel values, 10th to 90th percentile): past an
    object's end the chain tends to follow a neighbour of another intensity (fat, bone, air)."""

    low: float
    high: float

    @classmethod
    def of(cls, image: np.ndarray, mask: np.ndarray) -> Optional["IntensityBand"]:
        """The band of the pixels of `image` under `mask`; None for an empty mask."""
        values = image[mask]
        if values.size == 0:
            return None
        low, high = np.percentile(values, BAND_PERCENTILES)
        return cls(float(low), float(high))

    def fraction_inside(self, image: np.ndarray, mask: np.ndarray) -> float:
        values = image[mask]
        return float(((values >= self.low) & (values <= self.high)).mean()) if values.size else 0.0


@dataclass(frozen=True)
class SliceCheck:
    """What the chain knows about one slice's mask."""

    iou: float  # the decoder's predicted IoU
    area_ratio: float  # mask area / previous mask area
    overlap: float  # share of the mask inside the previous mask
    in_band: float  # share of the mask's pixels inside the prompted slice's intensity band (1 without a band)


@dataclass(frozen=True)
class BoxChain:
    """margins: model-input pixels added to each side of the previous mask's box, one candidate box
    each (a box drawn tight around the mask lets the next mask only shrink; MedSAM was trained on
    loose boxes); the session keeps the candidate whose mask the decoder predicts best.
    The chain stops at a slice whose mask is predicted poor (decoder IoU below `min_iou`), shrinks
    below `min_area_ratio` of the previous mask, lies mostly outside it (`min_overlap` of its area),
    or has less than `min_in_band` of its pixels in the prompted slice's intensity band."""

    margins: Sequence[float] = (0.0,)
    min_iou: float = 0.0
    min_area_ratio: float = 0.0
    min_overlap: float = 0.0
    min_in_band: float = 0.0

    def boxes(self, previous: np.ndarray, model_scale) -> List[tuple]:
        """The next slice's candidate boxes (slice pixels) from the previous mask, one per margin; none
        when that mask is empty. model_scale: (x, y) model-input pixels per slice pixel."""
        box = mask_box(previous, largest_only=True)
        if box is None:
            return []
        widened = []
        for margin in self.margins:
            dx, dy = (margin / float(s) for s in model_scale)
            widened.append((box[0] - dx, box[1] - dy, box[2] + dx, box[3] + dy) if margin else box)
        return widened

    def box(self, mask: np.ndarray, model_scale) -> Optional[tuple]:
        """One box for a mask (the box a box-only model's clicks are decoded with): the middle
        candidate; None for an empty mask."""
        boxes = self.boxes(mask, model_scale)
        return boxes[len(boxes) // 2] if boxes else None

    def check(self, previous: np.ndarray, mask: np.ndarray, iou: float, image: np.ndarray,
              band: Optional[IntensityBand]) -> SliceCheck:
        area = int(mask.sum())
        return SliceCheck(iou, area / max(int(previous.sum()), 1), int((mask & previous).sum()) / max(area, 1),
                          1.0 if band is None else band.fraction_inside(image, mask))

    def continues(self, mask: np.ndarray, check: SliceCheck) -> bool:
        return (bool(mask.any()) and check.iou >= self.min_iou and check.area_ratio >= self.min_area_ratio
                and check.overlap >= self.min_overlap and check.in_band >= self.min_in_band)
