"""One training forward pass over a micro-batch of clips, SAM 2-style.

For each clip (all its objects decoded together):
- track mode: the first slice is prompted (a box, or clicks, from the ground truth, then optionally a
  few corrective clicks, each decoded with the previous mask as a dense prompt); every later
  slice is propagated with `track_step` through the memory of the slices before it;
- image mode (a share of clips): every slice is prompted on its own, without memory, which is
  SAMed-2's image mode and gives the prompt path more supervision per encoded slice. Where an
  object ended on the slice before, the slice is prompted with that slice's box, as box-chain
  propagation would prompt it, and learns that the object is absent.
With a confidence bank, a share of clips also attend to the bank's best entry for each slice: on
prompted slices (SAMed-2's selective memory, as a session with a bank prompts) and beside the frame
memories on tracked slices (the session's "hybrid" strategy).
Each prediction (every corrective round included) adds its loss terms; the clip's loss is their mean.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from samed2.bank import ConfidenceBank
from samed2.model import FrameMemory, ImageFeatures, Prediction, SAM2Model
from samed2_tools.train.data import Clip, clip_rng
from samed2_tools.train.losses import SegmentationLoss, dice_score
from samed2_tools.train.prompts import PromptSet


@dataclass(frozen=True)
class PromptSettings:
    box_prob: float = 0.7
    correct_prob: float = 0.3
    correct_rounds: int = 2
    jitter: int = 5  # pixels of the model input
    image_mode_prob: float = 0.25
    bank_prob: float = 0.5  # share of clips whose prompted slices attend to the bank's memory (once it has entries)
    bank_min_iou: float = 0.9  # predictions at least this confident become bank candidates; > 1: none


@dataclass
class BankCandidates:
    """Confident predictions of a step, detached on the CPU: what the confidence bank may take in."""

    features: list
    pos: list
    ious: list
    image_features: list

    @classmethod
    def none(cls) -> "BankCandidates":
        return cls([], [], [], [])

    def add(self, memory: FrameMemory, pred: Prediction, image: ImageFeatures, min_iou: float) -> None:
        iou = pred.ious.detach().float().amax(1)
        keep = (iou >= min_iou) & (pred.object_score_logits.detach()[:, 0] > 0)
        if bool(keep.any()):
            self.features.append(memory.features.detach()[keep].cpu())
            self.pos.append(memory.pos.detach()[keep].cpu())
            self.ious.append(iou[keep].cpu())
            self.image_features.append(image.features.detach()[keep].float().cpu())

    def best(self) -> Optional[tuple]:
        """(features, pos, iou, image_features) of the most confident candidate, each a batch of one; None if none."""
        if not self.ious:
            return None
        pick = int(torch.cat(self.ious).argmax())
        return tuple(torch.cat(part)[pick: pick + 1] for part in (self.features, self.pos, self.ious,
                                                                   self.image_features))


class ClipTrainer(nn.Module):
    """Wraps the model so DistributedDataParallel sees the whole clip computation as one forward."""

    def __init__(self, model: SAM2Model, loss: SegmentationLoss, settings: PromptSettings, train_encoder: bool,
                 bank: Optional[ConfidenceBank] = None):
        super().__init__()
        self.model = model
        self.loss = loss
        self.settings = settings
        self.train_encoder = train_encoder
        self.bank = bank

    def forward(self, clips: list[Clip]):
        """(loss, statistics dict, BankCandidates) for a micro-batch of clips."""
        device = self.model.no_mem_embed.device
        features = self._encode(torch.cat([clip.images for clip in clips]).to(device))
        terms, prompted, tracked, candidates = [], [], [], BankCandidates.none()
        row = 0
        for clip in clips:
            clip_prompted, clip_tracked = self._clip(clip, features, row, candidates, device)
            terms += [self._loss(pred, truth) for pred, truth in clip_prompted + clip_tracked]
            prompted.append(_dice_of(clip_prompted))
            tracked.append(_dice_of(clip_tracked))
            row += len(clip.images)
        stats = {name: torch.stack([t[name] for t in terms]).mean() for name in terms[0]}
        loss = stats.pop("loss")
        stats = {name: float(value.detach()) for name, value in stats.items()}
        stats["train_dice"], stats["track_dice"] = _mean(prompted), _mean(tracked)
        return loss, stats, candidates

    def _loss(self, pred: Prediction, truth: torch.Tensor) -> dict:
        return self.loss(self.model.upsample_logits(pred.low_res_multimasks), pred.ious, pred.object_score_logits,
                         truth)

    def _encode(self, images: torch.Tensor) -> ImageFeatures:
        if self.train_encoder:
            return self.model.encode_images(images)
        with torch.no_grad():
            fpn, pos = self.model.image_encoder(images)
        decoder = self.model.sam_mask_decoder
        high_res = decoder.high_res_features(fpn[0], fpn[1]) if decoder.use_high_res_features else []
        return ImageFeatures(high_res, fpn[-1], pos[-1])

    def _clip(self, clip: Clip, features: ImageFeatures, first_row: int, candidates: BankCandidates, device):
        """([(Prediction, truth)] of prompted slices (every decode), [(Prediction, truth)] of tracked slices)."""
        rng = clip_rng(clip.seed, "prompts")
        s = self.settings
        draws = rng.random(6) < [s.image_mode_prob, s.box_prob, s.correct_prob, 0.5, s.bank_prob, 0.5]
        image_mode, use_box, corrected, box_form, with_bank, with_negative = draws
        rounds = s.correct_rounds if corrected else 0
        masks = clip.masks.to(device)
        bank = self.bank if with_bank and self.bank is not None and len(self.bank) else None
        frame = _FramePrompter(self.model, rng, use_box, box_form, rounds, s.jitter, bank, with_negative)
        if not image_mode:
            return self._tracked(clip, features, first_row, masks, frame, candidates)
        steps = []
        on_slice = masks.flatten(2).amax(2) > 0  # (K, L)
        for t, row in enumerate(clip.frame_rows):
            present = torch.nonzero(on_slice[:, t])[:, 0]
            if len(present):
                image = features.select(torch.full_like(present, first_row + row))
                steps += frame.prompted(image, masks[present, t], with_memory=False)[0]
            ended = torch.nonzero(~on_slice[:, t] & on_slice[:, t - 1])[:, 0] if t else present[:0]
            if len(ended):
                image = features.select(torch.full_like(ended, first_row + row))
                steps.append(frame.carried_box(image, masks[ended, t - 1], masks[ended, t]))
        return steps, []

    def _tracked(self, clip: Clip, features: ImageFeatures, first_row: int, masks, frame, candidates):
        count = len(clip.values)
        images = [features.select(torch.full((count,), first_row + row, dtype=torch.long, device=masks.device))
                  for row in clip.frame_rows]
        prompted, memory = frame.prompted(images[0], masks[:, 0])
        candidates.add(memory, prompted[-1][0], images[0], self.settings.bank_min_iou)
        cond, non_cond, length, tracked = {0: memory}, {}, len(images), []
        for t in range(1, length):
            pred, non_cond[t] = self.model.track_step(t, images[t], cond, non_cond, length,
                                                      extra_memory=frame.bank_memory(images[t]))
            candidates.add(non_cond[t], pred, images[t], self.settings.bank_min_iou)
            tracked.append((pred, masks[:, t]))
        return prompted, tracked


class _FramePrompter:
    """Prompts one slice from the truth, decodes it, then adds corrective clicks round by round."""

    def __init__(self, model: SAM2Model, rng, use_box: bool, box_form: bool, rounds: int, jitter: int,
                 bank: Optional[ConfidenceBank], with_negative: bool):
        self.model, self.rng, self.bank, self.with_negative = model, rng, bank, with_negative
        self.use_box, self.box_form, self.rounds, self.jitter = use_box, box_form, rounds, jitter

    def prompted(self, image: ImageFeatures, truth: torch.Tensor, with_memory: bool = True):
        """([(Prediction, truth)] for the first decode and each correction, FrameMemory of the last or None)."""
        truth_np = truth.cpu().numpy() > 0
        prompts = PromptSet.from_truth(truth_np, self.use_box, self.jitter, self.rng, self.with_negative)
        pix = self._first_prompt_features(image)
        pred = self._decode(pix, image, prompts, None)
        steps = [(pred, truth)]
        for _ in range(self.rounds):
            binary = (self.model.upsample_logits(pred.low_res_masks.detach())[:, 0] > 0).cpu().numpy()
            prompts = prompts.with_corrections(binary, truth_np, self.rng)
            pred = self._decode(pix, image, prompts, pred.low_res_masks.detach())
            steps.append((pred, truth))
        return steps, self.model.frame_memory(image, pred, from_points=True) if with_memory else None

    def carried_box(self, image: ImageFeatures, previous: torch.Tensor, truth: torch.Tensor):
        """(Prediction, truth) for objects that ended on the slice before, prompted with that slice's box
        as box-chain propagation prompts them: the object score learns to say "absent" there."""
        prompts = PromptSet.from_truth(previous.cpu().numpy() > 0, True, self.jitter, self.rng)
        return self._decode(self._first_prompt_features(image), image, prompts, None), truth

    def _first_prompt_features(self, image: ImageFeatures) -> torch.Tensor:
        """A prompted slice's features: without frame memory, attending to the bank's entry if any."""
        return self.model.conditioned_features(0, image, {}, {}, 1, is_init_cond_frame=True,
                                               extra_memory=self.bank_memory(image))

    def bank_memory(self, image: ImageFeatures):
        """The bank's best entry for this slice as memory tokens for every object, as a session picks it."""
        if self.bank is None:
            return None
        chosen = self.bank.select(image.features[:1].detach().float(), k=1)
        tokens, pos = self.bank.memory(chosen, image.features.device)
        count = image.features.shape[0]
        return tokens.expand(count, -1, -1), pos.expand(count, -1, -1)

    def _decode(self, pix, image: ImageFeatures, prompts: PromptSet, mask_inputs) -> Prediction:
        multimask = self.model.use_multimask(True, prompts.num_points)
        device = pix.device
        if self.box_form:
            boxes, points, labels = prompts.as_box_and_points(device)
        else:
            boxes, (points, labels) = None, prompts.as_points(device)
        return self.model.decode(pix, image.high_res, points, labels, boxes, mask_inputs, multimask)


def _mean(dices: list) -> float:
    values = torch.cat(dices)
    return float(values.mean()) if values.numel() else float("nan")


def _dice_of(steps) -> torch.Tensor:
    """Dice of each prediction's chosen mask, for the objects present on its slice."""
    dices = []
    for pred, truth in steps:
        present = truth.flatten(1).amax(1) > 0
        binary = torch.nn.functional.interpolate(pred.low_res_masks.detach().float(), size=truth.shape[-2:],
                                                 mode="bilinear", align_corners=False)[:, 0] > 0
        dices.append(dice_score(binary, truth)[present].cpu())
    return torch.cat(dices) if dices else torch.zeros(0)
