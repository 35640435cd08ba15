"""What a session keeps for each object and slice (prompts, memories, masks, confidences), what it
streams back, and a tracking step's inputs, batched across objects (samed2.session)."""
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from samed2.model import FrameMemory, Prediction
from samed2.model.prompt_encoder import PAD


@dataclass
class SlicePrompts:
    points: List[Tuple[float, float, bool]] = field(default_factory=list)  # (x, y, positive)
    box: Optional[Tuple[float, float, float, float]] = None  # x0, y0, x1, y1
    # clicks without a box that correct the slice's mask (samed2.correction; every click of a box-only model,
    # a click of another model on a mask it did not decode from prompts there): the chain's box of the
    # slice's mask (a box-only model on an empty slice: of the object's nearest segmented slice)
    mask_box: Optional[Tuple[float, float, float, float]] = None


@dataclass
class TrackedObject:
    prompts: Dict[int, SlicePrompts] = field(default_factory=dict)
    cond: Dict[int, FrameMemory] = field(default_factory=dict)  # prompted or hand-edited slices
    # prompted slices whose memory is not encoded yet: a click runs no memory encoder, propagation does
    pending: Dict[int, Prediction] = field(default_factory=dict)
    non_cond: Dict[int, FrameMemory] = field(default_factory=dict)  # propagated slices
    logits: Dict[int, torch.Tensor] = field(default_factory=dict)  # low-res logits per slice
    masks: Dict[int, np.ndarray] = field(default_factory=dict)  # bool masks at slice size
    confidence: Dict[int, float] = field(default_factory=dict)  # samed2.confidence, per slice with a result
    locked: set = field(default_factory=set)  # hand-edited slices: never recomputed
    dirty: set = field(default_factory=set)  # prompted since the last propagation
    reverse: Dict[int, bool] = field(default_factory=dict)  # direction each slice was tracked in

    def clicks_correct(self, index: int) -> bool:
        """Whether clicks on the slice edit its mask rather than prompt the model afresh: the mask is not
        empty and was propagated, drawn by hand or corrected by clicks before."""
        mask, prompts = self.masks.get(index), self.prompts.get(index)
        return mask is not None and bool(mask.any()) and (
            index in self.non_cond or index in self.locked or (prompts is not None and prompts.mask_box is not None))

    def fixed(self) -> List[int]:
        """Slices propagation must not overwrite."""
        return sorted(set(self.cond) | set(self.pending) | self.locked)


@dataclass
class SliceResult:
    obj_id: int
    index: int
    mask: np.ndarray
    present: bool
    confidence: float  # samed2.confidence.slice_confidence


@dataclass
class StepInput:
    """One object's inputs to a tracking step on a slice."""
    cond: Dict[int, FrameMemory]
    non_cond: Dict[int, FrameMemory]
    reverse: bool = False
    first: bool = False  # a first prompt on the slice: no frame memory (SAM 2's initial conditioning frame)
    prompt: Optional[Tuple[torch.Tensor, torch.Tensor]] = None  # coords (1, k, 2), labels (1, k)
    previous: Optional[torch.Tensor] = None  # logits of the slice's earlier prompts

    def key(self):
        """Steps with equal keys run as one batch."""
        return (frozenset(self.cond), frozenset(self.non_cond), self.reverse, self.first, self.prompt is None,
                self.previous is None)


class StackedMemory(Mapping):
    """Memories of several objects for the same frames, read as one batch (stacked when read)."""

    def __init__(self, memories: List[Dict[int, FrameMemory]]):
        self.memories = memories

    def __getitem__(self, frame: int) -> FrameMemory:
        return FrameMemory.cat([m[frame] for m in self.memories])

    def __iter__(self):
        return iter(self.memories[0])

    def __len__(self):
        return len(self.memories[0])


def grouped(items, key) -> List[list]:
    """Items with equal keys together, groups in order of first appearance."""
    groups = {}
    for item in items:
        groups.setdefault(key(item), []).append(item)
    return list(groups.values())


def pad_prompts(prompts):
    """(coords (1, k, 2), labels (1, k)) prompts as one batch, padded as SAM pads (point (0, 0), label -1),
    and the prompts' lengths (None when all are alike)."""
    lengths = [labels.shape[1] for _, labels in prompts]
    longest = max(lengths)
    coords = torch.cat([F.pad(c, (0, 0, 0, longest - c.shape[1])) for c, _ in prompts])
    labels = torch.cat([F.pad(lab, (0, longest - lab.shape[1]), value=PAD) for _, lab in prompts])
    return coords, labels, lengths if len(set(lengths)) > 1 else None
