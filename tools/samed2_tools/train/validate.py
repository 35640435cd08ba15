"""Validation Dice: a tight box from the ground truth on each validation slice, decoded without memory.

Each slice is encoded with its fixed partner (slices 2p and 2p+1 along the axis; an odd last slice
with itself), exactly as an interactive session encodes it, and the mask is compared with the
truth at the slice's own resolution.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import torch

from samed2.model import SAM2Model
from samed2.model_coords import logits_to_slice, mask_box, preprocess_slices, slice_box_to_model
from samed2_tools.train.data import training_slice
from samed2_tools.train.losses import dice_score
from samed2_tools.train.prompts import BOX_BOTTOM_RIGHT, BOX_TOP_LEFT
from samed2_tools.train.volumes import CaseVolume

MAX_SLICES_PER_CASE = 16


@dataclass
class ValidationSet:
    """Which slices of which cases are validated, and for which label values."""

    cases: list  # CaseVolume
    slices: list  # per case: the slice indices to validate
    values: list

    @classmethod
    def build(cls, train_cases: list[CaseVolume], val_cases: list[CaseVolume], values: list[int],
              holdout_every: int, holdout_offset: int, chosen: tuple = ()) -> "ValidationSet":
        """The training cases' slices that do not train (held out, or not among `chosen`) and slices of the
        validation cases, each with a chosen label, at most MAX_SLICES_PER_CASE per case spread evenly."""
        cases, slices = [], []
        for case, trains in [(c, True) for c in train_cases] + [(c, False) for c in val_cases]:
            candidates = [k for k in _with_objects(case, values)
                          if not (trains and training_slice(k, holdout_every, holdout_offset, chosen))]
            if candidates:
                cases.append(case)
                slices.append(_spread(candidates))
        return cls(cases, slices, list(values))

    def __bool__(self) -> bool:
        return bool(self.cases)


def _spread(candidates: list[int]) -> list[int]:
    picks = np.unique(np.linspace(0, len(candidates) - 1, MAX_SLICES_PER_CASE).round().astype(int))
    return [candidates[i] for i in picks]


def _with_objects(case: CaseVolume, values: list[int]) -> list[int]:
    present = np.zeros(case.num_slices, dtype=bool)
    for value in values:
        present |= case.slices_with(value)
    return [int(k) for k in np.nonzero(present)[0]]


@torch.no_grad()
def validation_dice(model: SAM2Model, data: ValidationSet, normalize: str) -> dict[str, float]:
    """{"val_dice": mean over every (slice, object), "val_dice_<value>": mean per label}."""
    was_training = model.training
    model.eval()
    per_value = defaultdict(list)
    try:
        for case, slices in zip(data.cases, data.slices):
            for k in slices:
                for value, dice in _slice_dice(model, case, k, data.values, normalize):
                    per_value[value].append(dice)
    finally:
        model.train(was_training)
    return dice_summary({v: per_value[v] for v in data.values})


def dice_summary(per_value: dict) -> dict[str, float]:
    """{"val_dice": mean over every (slice, object), "val_dice_<value>": mean per label} of {value: [Dice]}."""
    every = [d for dices in per_value.values() for d in dices]
    result = {"val_dice": float(np.mean(every)) if every else float("nan")}
    result.update({f"val_dice_{v}": float(np.mean(dices)) if dices else float("nan") for v, dices in per_value.items()})
    return result


def _slice_dice(model: SAM2Model, case: CaseVolume, k: int, values: list[int], normalize: str):
    device = model.no_mem_embed.device
    first = k - k % 2
    partner = min(first + 1, case.num_slices - 1)
    images = preprocess_slices(case.image_slices([first, partner]), model.image_size, normalize).to(device)
    image = model.encode_images(images).select(slice(k - first, k - first + 1))
    pix = model.without_memory(image)
    for value in values:
        truth = case.object_slices([k], value)[0]
        box = mask_box(truth)
        if box is None:
            continue
        corners = slice_box_to_model(box, truth.shape, model.image_size).reshape(1, 2, 2).to(device)
        labels = torch.tensor([[BOX_TOP_LEFT, BOX_BOTTOM_RIGHT]], dtype=torch.int32, device=device)
        pred = model.decode(pix, image.high_res, corners, labels, multimask=model.use_multimask(True, 2))
        mask = logits_to_slice(pred.low_res_masks, truth.shape)[0, 0] > 0
        yield value, float(dice_score(mask[None].cpu(), torch.from_numpy(truth)[None])[0])

