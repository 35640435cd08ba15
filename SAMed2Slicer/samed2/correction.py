"""Clicks that correct a slice's mask: every click of a model trained on boxes only (MedSAM-Lite), and
a click of any model on a mask it did not decode from prompts on that slice (samed2.session_state's
TrackedObject.clicks_correct; the test-trained SAMed-2, decoding such a click with memory, jumped from
a kidney to the liver).

A box-only model never saw clicks: decoded with the box of the slice's mask and the click, an exclude click
cuts away far more than the error it sits in and an include click is mostly ignored (a click lowered
the slice's Dice on average on every tuning organ: liver -0.15, spleen -0.04, kidneys -0.06 and -0.13;
docs/ACCURACY.md, "Correcting with clicks"). So each click is a local edit: the model is asked about the
click's neighbourhood (include: a box around the click; exclude: the mask's box and the click), and
only the part of its answer that touches the click is taken, and only when that part is no wider than
the click's distance from the mask's edge makes plausible (a click 1 pixel from the edge of a
hundred-pixel organ does not remove half of it).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

Box = tuple[float, float, float, float]
Decode = Callable[[Box, Sequence[tuple[float, float, bool]]], np.ndarray]  # (box, clicks) -> slice mask


@dataclass(frozen=True)
class LocalCorrection:
    """click_box: half the side, in model-input pixels, of the box an include click is decoded with;
    reach: a change is taken when no larger than a disc of radius reach x (the click's distance from the
    mask's edge) + 1 pixel."""

    click_box: float = 16.0
    reach: float = 1.0

    def corrected(self, mask: np.ndarray, clicks, decode: Decode, model_scale, mask_box: Box) -> np.ndarray:
        """`mask` after each click in turn. model_scale: (x, y) model-input pixels per slice pixel;
        mask_box: the box an exclude click is decoded with (the chain's box of `mask`)."""
        for x, y, positive in clicks:
            if positive:
                hx, hy = (self.click_box / float(s) for s in model_scale)
                answer = decode((x - hx, y - hy, x + hx, y + hy), [])
                mask = mask | self._local_change(answer & ~mask, mask, x, y, positive)
            else:
                answer = decode(mask_box, [(x, y, False)])
                mask = mask & ~self._local_change(mask & ~answer, mask, x, y, positive)
        return mask

    def _local_change(self, change: np.ndarray, mask: np.ndarray, x: float, y: float, positive: bool) -> np.ndarray:
        """The connected part of `change` at the click, if no larger than the click's reach; else nothing."""
        row, column = round(y), round(x)
        labels, _ = ndimage.label(change, structure=np.ones((3, 3), dtype=bool))
        region = labels == labels[row, column] if labels[row, column] else np.zeros_like(change)
        edge = _distance_to_edge(mask, row, column, inside=not positive)
        if edge is not None and region.sum() > np.pi * (self.reach * edge + 1) ** 2:
            return np.zeros_like(change)
        return region


def _distance_to_edge(mask: np.ndarray, row: int, column: int, inside: bool) -> float | None:
    """Pixels from (row, column) to the nearest pixel outside the mask (`inside`) or in it; None when
    there is no such pixel."""
    target = ~mask if inside else mask
    if not target.any():
        return None
    return float(ndimage.distance_transform_edt(~target)[row, column])
