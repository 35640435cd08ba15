"""Scores of a predicted mask against the truth: Dice and normalised surface Dice (MONAI's
`compute_dice`, `compute_surface_dice` with surface elements as in DeepMind's surface-distance code,
which the challenge uses), Dice per slice, the area under a score curve, and how well the session's
confidence flags bad slices."""
from __future__ import annotations

import warnings
from typing import Optional

import numpy as np

from samed2.volume import get_slice

NSD_TOLERANCE_MM = 2.0
NSD_MIN_DSC = 0.2
BAD_SLICE_DICE = 0.8


def _tensor(mask: np.ndarray):
    import torch

    return torch.from_numpy(np.array(mask, dtype=bool))[None, None]


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two boolean masks (1.0 when both are empty)."""
    from monai.metrics import compute_dice

    return float(compute_dice(_tensor(pred), _tensor(truth), include_background=True, ignore_empty=False))


def surface_dice(pred: np.ndarray, truth: np.ndarray, spacing_kji, tolerance_mm: float = NSD_TOLERANCE_MM) -> float:
    """Normalised surface Dice of two boolean [k, j, i] masks at a tolerance in mm (0 when one is empty)."""
    from monai.metrics import compute_surface_dice

    if not pred.any() or not truth.any():
        return 0.0 if pred.any() or truth.any() else 1.0
    crop = _union_box(pred, truth)
    with warnings.catch_warnings():  # MONAI's own use of an argument it deprecated
        warnings.simplefilter("ignore", FutureWarning)
        value = compute_surface_dice(_tensor(pred[crop]), _tensor(truth[crop]), class_thresholds=[tolerance_mm],
                                     include_background=True, spacing=[float(s) for s in spacing_kji],
                                     use_subvoxels=True)
    return float(value)


def _union_box(a: np.ndarray, b: np.ndarray) -> tuple:
    """Slices of the bounding box of both masks, one voxel wider on each side (surfaces stay the same)."""
    from scipy import ndimage

    box = ndimage.find_objects((a | b).astype(np.uint8))[0]
    return tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in box)


def scores(pred: np.ndarray, truth: np.ndarray, spacing_kji) -> tuple[float, float]:
    """(DSC, NSD) as the challenge reports them: NSD is 0 when DSC <= 0.2."""
    dsc = dice(pred, truth)
    return dsc, surface_dice(pred, truth, spacing_kji) if dsc > NSD_MIN_DSC else 0.0


def slice_dice(pred: np.ndarray, truth: np.ndarray, axis: int) -> list[tuple[int, float]]:
    """(slice index, Dice) for every slice along `axis` where the truth or the prediction is non-empty."""
    array_axis = 2 - axis
    others = tuple(a for a in range(3) if a != array_axis)
    used = np.nonzero((pred | truth).any(axis=others))[0]
    return [(int(k), dice(get_slice(pred, axis, k), get_slice(truth, axis, k))) for k in used]


def auc(values) -> float:
    """Area under the values at x = 0, 1, 2, ... by the trapezoid rule."""
    values = np.asarray(values, dtype=float)
    return float(np.sum((values[1:] + values[:-1]) / 2))


def confidence_auroc(results: list, bad_below: float = BAD_SLICE_DICE) -> Optional[float]:
    """How well low confidence flags bad slices, over all slices of all propagation results: the chance
    that a bad slice has a lower confidence than a good one (ties count half); None without both kinds."""
    from scipy.stats import rankdata

    pairs = [pair for r in results for pair in r.flagged(bad_below)]
    bad = np.array([b for _, b in pairs], dtype=bool)
    if bad.all() or not bad.any():
        return None
    ranks = rankdata([-c for c, _ in pairs])  # low confidence ranks high
    n_bad, n_good = int(bad.sum()), int((~bad).sum())
    return float((ranks[bad].sum() - n_bad * (n_bad + 1) / 2) / (n_bad * n_good))
