"""A confidence for each slice's result: how likely it is right (a mask with Dice >= 0.8, or no mask
where the object is absent), from the decoder's predicted IoU and the object score."""
import math
from dataclasses import dataclass
from typing import Optional


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, x))))


@dataclass(frozen=True)
class IouCalibration:
    """The chance a mask is good given its predicted IoU: sigmoid(offset + scale * IoU), fitted on
    labelled propagations (docs/ACCURACY.md, "Confidence")."""

    offset: float
    scale: float

    def __call__(self, iou: float) -> float:
        return sigmoid(self.offset + self.scale * iou)


def slice_confidence(iou: float, object_score: float, has_mask: bool,
                     calibration: Optional[IouCalibration] = None) -> float:
    """0..1 for a slice's result. A mask: the chance it is good (present x good when present; the
    predicted IoU itself without a calibration). No mask: the chance the object is really not there,
    one minus the chance the mask that was (or would have been) shown is good."""
    good = sigmoid(object_score) * (iou if calibration is None else calibration(iou))
    return float(good if has_mask else 1.0 - good)
