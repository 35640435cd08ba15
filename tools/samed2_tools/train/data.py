"""Training clips: runs of consecutive slices along the slicing axis, with the masks of a few labels.

A clip of L slices is tracked in one direction (up or down the axis): its first slice is prompted
and the rest are propagated through memory. Every clip starts on a slice that contains at least
one chosen label, so slices with objects are oversampled; slices without the object enter as later
frames of a clip, where they teach the object score that the object ended. Clips in which a label
ends are listed `end_repeat` times per epoch, so propagation learns to stop.

The encoder sees the clip's slices in volume order, in adjacent pairs (the temporal adapter's
T = 2); an odd last slice is paired with itself, as at inference.

Held-out slices (every N-th, see --holdout-every) and, with --slices, every slice not listed are
removed from the training stack, so a clip steps over them; they are used for validation only.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DistributedSampler

from samed2.model_coords import IMAGENET_MEAN, IMAGENET_STD, preprocess_slices
from samed2_tools.train.augment import augment_clip
from samed2_tools.train.volumes import CaseVolume


@dataclass(frozen=True)
class ClipSpec:
    case: int  # index of the case
    start: int  # first position in the case's training stack
    reverse: bool  # tracked from the last slice to the first


@dataclass
class Clip:
    case: str
    slices: list  # volume slice indices in tracking order
    images: torch.Tensor  # (2 * ceil(L / 2), 3, S, S) model input, volume order, adjacent pairs
    frame_rows: list  # tracking step t -> row of `images`
    masks: torch.Tensor  # (K, L, S, S) float {0, 1}, tracking order
    values: list  # label value of each of the K objects
    seed: int  # seeds this clip's prompts, dropout and augmentation


def held_out(index: int, every: int, offset: int) -> bool:
    return every > 0 and index % every == offset


def training_slice(index: int, every: int, offset: int, chosen=()) -> bool:
    """Does slice `index` train: not held out, and among the `chosen` slices (--slices) when there are any."""
    return (not chosen or index in chosen) and not held_out(index, every, offset)


class TrainingClips:
    """Every clip start of the training cases whose first tracked slice holds a chosen label."""

    def __init__(self, cases: list[CaseVolume], values: list[int], clip_length: int, image_size: int,
                 normalize: str, holdout_every: int = 0, holdout_offset: int = 0, max_objects: int = 3,
                 augment: bool = False, end_repeat: int = 1, chosen: tuple = ()):
        self.cases, self.values = cases, list(values)
        self.length, self.image_size, self.normalize = clip_length, image_size, normalize
        self.max_objects, self.augment, self.end_repeat = max_objects, augment, end_repeat
        self.stacks = [np.array([k for k in range(c.num_slices)
                                 if training_slice(k, holdout_every, holdout_offset, chosen)], dtype=int)
                       for c in cases]
        self.presence = [np.stack([c.slices_with(v) for v in self.values]) for c in cases]  # (V, slices)
        self.specs = [spec for index in range(len(cases)) for spec in self._case_specs(index)]

    def _case_specs(self, index: int) -> list[ClipSpec]:
        stack, presence = self.stacks[index], self.presence[index]
        specs = []
        for start in range(len(stack) - self.length + 1):
            for reverse in (False, True):
                frames = stack[start: start + self.length][:: -1 if reverse else 1]
                starting = presence[:, frames[0]]
                if starting.any():
                    ends = (starting & ~presence[:, frames].all(axis=1)).any()
                    specs += [ClipSpec(index, start, reverse)] * (self.end_repeat if ends else 1)
        return specs

    def __len__(self) -> int:
        return len(self.specs)

    def clip(self, spec_index: int, seed: int) -> Clip:
        spec = self.specs[spec_index]
        case = self.cases[spec.case]
        rng = clip_rng(seed, "data")
        volume_order = [int(k) for k in self.stacks[spec.case][spec.start: spec.start + self.length]]
        order = list(range(self.length))[::-1] if spec.reverse else list(range(self.length))
        first = volume_order[order[0]]
        present = [v for v, row in zip(self.values, self.presence[spec.case]) if row[first]]
        values = sorted(rng.choice(present, size=min(self.max_objects, len(present)), replace=False).tolist())
        images = self._resize_images(case.image_slices(volume_order))
        masks = self._resize_masks(np.stack([case.object_slices(volume_order, v) for v in values]))
        if self.augment:
            images, masks, values = _augmented(images, masks, values, order[0], rng)
        last = len(volume_order) - 1
        images = images[list(range(last + 1)) + [last] * (len(volume_order) % 2)]  # odd: last slice paired with itself
        return Clip(case.name, [volume_order[t] for t in order], self._model_input(images), order,
                    masks[:, order], values, seed)

    def _resize_images(self, slices01: np.ndarray) -> torch.Tensor:
        return preprocess_slices(slices01, self.image_size)[:, :1]

    def _resize_masks(self, masks: np.ndarray) -> torch.Tensor:
        k, length = masks.shape[:2]
        flat = torch.from_numpy(masks.reshape(k * length, 1, *masks.shape[2:]).astype(np.float32))
        resized = F.interpolate(flat, size=(self.image_size, self.image_size), mode="bilinear",
                                align_corners=False, antialias=True)
        return (resized >= 0.5).float().reshape(k, length, self.image_size, self.image_size)

    def _model_input(self, images: torch.Tensor) -> torch.Tensor:
        rgb = images.expand(-1, 3, -1, -1)
        if self.normalize != "imagenet":
            return rgb.contiguous()
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        return (rgb - mean) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def _augmented(images, masks, values, first_row: int, rng):
    """Augment; objects pushed off the first tracked slice are dropped (all kept if none would remain)."""
    new_images, new_masks = augment_clip(images, masks, rng)
    visible = new_masks[:, first_row].flatten(1).amax(1) > 0
    if not bool(visible.any()):
        return images, masks, values
    return new_images, new_masks[visible], [v for v, keep in zip(values, visible.tolist()) if keep]


class ClipSampler:
    """Which clips this process trains on: torch's DistributedSampler over the clip list, epoch after epoch.

    Its whole state is (seed, epoch, position in the epoch): saved in checkpoints, so a resumed run
    continues with exactly the clips (and clip seeds) the interrupted one would have used.
    """

    def __init__(self, size: int, seed: int, rank: int = 0, world: int = 1):
        self.seed, self.epoch, self.position = seed, 0, 0
        self._sampler = DistributedSampler(range(size), num_replicas=world, rank=rank, shuffle=True, seed=seed)
        self._order = None

    def next(self) -> tuple[int, int]:
        """(clip index, clip seed) of the next clip; the epoch advances when the order is used up."""
        if self._order is None:
            self._sampler.set_epoch(self.epoch)
            self._order = list(self._sampler)
        if self.position >= len(self._order):
            self.epoch, self.position, self._order = self.epoch + 1, 0, None
            return self.next()
        index = self._order[self.position]
        self.position += 1
        return index, clip_seed(self.seed, self.epoch, index)

    @property
    def epoch_finished(self) -> bool:
        """True once every clip of the current epoch has been drawn."""
        return self._order is not None and self.position >= len(self._order)

    def state_dict(self) -> dict:
        return {"seed": self.seed, "epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.seed, self.epoch, self.position = int(state["seed"]), int(state["epoch"]), int(state["position"])
        self._order = None


_STREAMS = {"data": 0, "prompts": 1}


def clip_rng(seed: int, purpose: str) -> np.random.Generator:
    """An independent random stream of a clip for one purpose ("data": labels and augmentation; "prompts")."""
    return np.random.default_rng([seed, _STREAMS[purpose]])


def clip_seed(seed: int, epoch: int, index: int) -> int:
    """A seed for one clip that depends on the clip, not on which process draws it."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])
