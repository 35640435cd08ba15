"""Fine-tuning MedSAM-Lite: single slices prompted with jittered boxes, as MedSAM-Lite was trained.

MedSAM-Lite has no memory, so a training item is one slice with the masks of a few labels (no clips).
Slices are letterboxed as at inference (`Session` with a `letterbox` model). While the image encoder
is frozen (the default: prompt encoder and mask decoder train) each slice's image embedding is
computed once and kept, so a CPU run costs one encoder pass per slice plus decoder steps.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from samed2.model import LiteMedSAM
from samed2.model_coords import logits_to_slice, mask_box, preprocess_slices, slice_box_to_model
from samed2_tools.train.clip import BankCandidates
from samed2_tools.train.data import clip_rng, training_slice
from samed2_tools.train.losses import SegmentationLoss, dice_score
from samed2_tools.train.prompts import jittered_box
from samed2_tools.train.validate import ValidationSet, dice_summary
from samed2_tools.train.volumes import CaseVolume


@dataclass
class SliceItem:
    case: CaseVolume
    slices: list  # [k]: the one slice along the axis
    masks: torch.Tensor  # (K, S, S) float {0, 1}, letterboxed like the image
    values: list
    seed: int


class LiteSlices:
    """Every training slice (of each case, along the axis) that holds a chosen label; one item per slice."""

    def __init__(self, cases: list[CaseVolume], values: list[int], image_size: int, holdout_every: int = 0,
                 holdout_offset: int = 0, chosen: tuple = (), max_objects: int = 3):
        self.cases, self.values, self.image_size, self.max_objects = cases, list(values), image_size, max_objects
        self.presence = [np.stack([case.slices_with(v) for v in self.values]) for case in cases]  # (V, slices)
        self.specs = [(index, k) for index, case in enumerate(cases) for k in range(case.num_slices)
                      if training_slice(k, holdout_every, holdout_offset, chosen) and self.presence[index][:, k].any()]

    def __len__(self) -> int:
        return len(self.specs)

    def clip(self, spec_index: int, seed: int) -> SliceItem:
        index, k = self.specs[spec_index]
        case = self.cases[index]
        present = [v for v, row in zip(self.values, self.presence[index]) if row[k]]
        rng = clip_rng(seed, "data")
        values = sorted(rng.choice(present, size=min(self.max_objects, len(present)), replace=False).tolist())
        masks = np.stack([case.object_slices([k], v)[0] for v in values]).astype(np.float32)
        letterboxed = preprocess_slices(masks, self.image_size, letterbox=True)[:, 0] > 0.5
        return SliceItem(case, [k], letterboxed.float(), values, seed)


class EmbeddingCache:
    """Image embeddings per (case, slice): kept (`keep`, while the encoder is frozen) or computed at every call
    with gradients (while it trains).

    The encoder always runs in eval mode: its batch norms keep their trained statistics (one slice per
    forward pass would make batch statistics meaningless)."""

    def __init__(self, model: LiteMedSAM, keep: bool):
        self.model, self.keep = model, keep
        self._stored = {}

    def __call__(self, case: CaseVolume, k: int) -> torch.Tensor:
        key = (case.name, k)
        if key in self._stored:
            return self._stored[key]
        image = case.image_slices([k])
        images = preprocess_slices(image, self.model.image_size, letterbox=True).to(_device(self.model))
        self.model.image_encoder.eval()
        if not self.keep:
            return self.model.encode_images(images).features
        with torch.no_grad():
            features = self.model.encode_images(images).features
        self._stored[key] = features
        return features


class LiteTrainer(torch.nn.Module):
    """One forward pass over a micro-batch of slices: a jittered box per object, SAM 1 single-mask decoding."""

    def __init__(self, model: LiteMedSAM, loss: SegmentationLoss, embeddings: EmbeddingCache, jitter: int):
        super().__init__()
        self.model, self.loss, self.embeddings, self.jitter = model, loss, embeddings, jitter

    def forward(self, items: list[SliceItem]):
        """(loss, statistics dict, no bank candidates), as ClipTrainer returns them."""
        device = _device(self.model)
        terms, dices = [], []
        for item in items:
            rng = clip_rng(item.seed, "prompts")
            masks = item.masks.to(device)
            boxes = torch.from_numpy(np.stack([jittered_box(m.bool().cpu().numpy(), self.jitter, rng)
                                               for m in masks])).to(device)
            features = self.embeddings(item.case, item.slices[0]).expand(len(masks), -1, -1, -1)
            pred = self.model.decode(features, boxes=boxes)
            terms.append(self.loss(pred.low_res_masks, pred.ious, pred.object_score_logits, masks))
            dices.append(float(dice_score(pred.low_res_masks.detach()[:, 0] > 0, masks).mean()))
        stats = {name: torch.stack([t[name] for t in terms]).mean() for name in terms[0]}
        loss = stats.pop("loss")
        stats = {name: float(value.detach()) for name, value in stats.items()}
        stats["train_dice"], stats["track_dice"] = float(np.mean(dices)), float("nan")
        return loss, stats, BankCandidates.none()


@torch.no_grad()
def slice_box_dice(model: LiteMedSAM, features: torch.Tensor, truth: np.ndarray):
    """Dice of the mask decoded from a tight box around `truth` (one slice), at the slice's resolution;
    None where the slice does not hold the object."""
    box = mask_box(truth)
    if box is None:
        return None
    corners = slice_box_to_model(box, truth.shape, model.image_size, letterbox=True).reshape(1, 4)
    pred = model.decode(features, boxes=corners.to(features.device))
    mask = logits_to_slice(pred.low_res_masks.cpu(), truth.shape, letterbox=True)[0, 0] > 0
    return float(dice_score(mask[None], torch.from_numpy(truth)[None])[0])


@torch.no_grad()
def lite_validation_dice(model: LiteMedSAM, data: ValidationSet, embeddings: EmbeddingCache) -> dict[str, float]:
    """validation_dice's figures for MedSAM-Lite: a tight box on each validation slice and object."""
    was_training = model.training
    model.eval()
    per_value = {v: [] for v in data.values}
    try:
        for case, slices in zip(data.cases, data.slices):
            for k in slices:
                for value in data.values:
                    dice = slice_box_dice(model, embeddings(case, k), case.object_slices([k], value)[0])
                    if dice is not None:
                        per_value[value].append(dice)
    finally:
        model.train(was_training)
    return dice_summary(per_value)


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device
