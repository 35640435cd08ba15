"""Training losses: Dice + focal on masks, L1 regression of the predicted IoU, BCE on the object score.

Weights default to the SAMed-2 reference's 1.0 (Dice) / 0.5 (focal) / 0.5 (IoU). With several
candidate masks (multimask output), the mask losses take the best candidate only (SAM 2's
rule) while every candidate's IoU prediction is supervised. Mask and IoU losses count only
where the object is present; the object score is supervised everywhere.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

LOGIT_LIMIT = 20.0
"""Logits are clamped to +-20 for the losses: the decoder writes -1024 where it predicts no object,
which carries no gradient and would only swamp the focal loss's value."""
FOCAL_ALPHA, FOCAL_GAMMA = 0.25, 2.0


@dataclass(frozen=True)
class LossWeights:
    dice: float = 1.0
    focal: float = 0.5
    iou: float = 0.5
    score: float = 1.0


class SegmentationLoss:
    def __init__(self, weights: LossWeights):
        from monai.losses import DiceLoss, FocalLoss  # importing monai takes seconds: only when training

        self.weights = weights
        self.dice = DiceLoss(sigmoid=True, reduction="none")
        self.focal = FocalLoss(gamma=FOCAL_GAMMA, alpha=FOCAL_ALPHA, use_softmax=False, reduction="none")

    def __call__(self, logits: torch.Tensor, ious: torch.Tensor, score_logits: torch.Tensor,
                 truth: torch.Tensor) -> dict[str, torch.Tensor]:
        """Loss terms for N objects on one slice.

        logits (N, M, S, S) candidate mask logits at input size, ious (N, M) predicted IoUs,
        score_logits (N, 1), truth (N, S, S) float {0, 1}. Returns each term and "loss", their
        weighted sum, each a scalar tensor (terms averaged over the objects present).
        """
        n, m = logits.shape[:2]
        logits = logits.float().clamp(-LOGIT_LIMIT, LOGIT_LIMIT)
        target = truth[:, None].expand(-1, m, -1, -1).reshape(n * m, 1, *truth.shape[-2:])
        flat = logits.reshape(n * m, 1, *logits.shape[-2:])
        dice = self.dice(flat, target).reshape(n, m)
        focal = self.focal(flat, target).reshape(n, m, -1).mean(-1)
        best = (self.weights.dice * dice + self.weights.focal * focal).argmin(dim=1, keepdim=True)
        present = (truth.flatten(1).amax(1) > 0).float()
        iou_error = (ious.float() - mask_iou(logits.detach() > 0, truth)).abs().mean(1)
        terms = {
            "dice": _mean_over(dice.gather(1, best)[:, 0], present),
            "focal": _mean_over(focal.gather(1, best)[:, 0], present),
            "iou": _mean_over(iou_error, present),
            "score": F.binary_cross_entropy_with_logits(score_logits.float()[:, 0], present),
        }
        terms["loss"] = sum(getattr(self.weights, name) * value for name, value in terms.items())
        return terms


def mask_iou(predicted: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """IoU (N, M) of binary candidates (N, M, S, S) with truth (N, S, S); 1 where both are empty."""
    truth = truth[:, None].bool()
    inter = (predicted & truth).flatten(2).sum(-1).float()
    union = (predicted | truth).flatten(2).sum(-1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def dice_score(predicted: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Dice (N,) of binary masks (N, ...) with truth (N, ...); 1 where both are empty."""
    predicted, truth = predicted.flatten(1).bool(), truth.flatten(1).bool()
    inter = (predicted & truth).sum(1).float()
    total = predicted.sum(1).float() + truth.sum(1).float()
    return torch.where(total > 0, 2 * inter / total.clamp(min=1), torch.ones_like(total))


def _mean_over(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Mean of values where weights are 1; zero (with a gradient path) when none is."""
    return (values * weights).sum() / weights.sum().clamp(min=1)
