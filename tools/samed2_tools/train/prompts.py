"""Prompts simulated from ground-truth masks, in model-input pixels (x = column, y = row).

- Boxes: the mask's bounding box, each side moved outwards by a random 0..jitter pixels (the
  reference's jitter is 0-20 px at 1024; callers scale it to the model size), clipped to the image.
- Clicks: a positive click on a random pixel of the object, optionally with a negative click on a
  random background pixel near it (inside its bounding box grown by a quarter on each side).
- Corrective clicks: a random pixel of the larger error region of a prediction, positive where
  the object was missed, negative where the prediction spilled over.

Point prompts use the prompt encoder's labels: 1 positive, 0 negative, 2 and 3 box corners.
"""
from __future__ import annotations

import numpy as np
import torch

from samed2.model.prompt_encoder import BOX_BOTTOM_RIGHT, BOX_TOP_LEFT, NEGATIVE, POSITIVE


def scaled_jitter(jitter_at_1024: float, image_size: int) -> int:
    """The largest box jitter in pixels of an `image_size` input."""
    return int(round(jitter_at_1024 * image_size / 1024))


def jittered_box(mask: np.ndarray, jitter: int, rng: np.random.Generator) -> np.ndarray:
    """(x0, y0, x1, y1) of a non-empty (S, S) mask, each side pushed out by 0..jitter pixels."""
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        raise ValueError("cannot draw a box around an empty mask")
    size = mask.shape[0]
    grow = rng.integers(0, jitter + 1, size=4)
    x0, y0 = max(cols.min() - grow[0], 0), max(rows.min() - grow[1], 0)
    x1, y1 = min(cols.max() + grow[2], size - 1), min(rows.max() + grow[3], size - 1)
    return np.array([x0, y0, x1, y1], dtype=np.float32)


def random_click(region: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(x, y) of a random pixel of a non-empty region."""
    rows, cols = np.nonzero(region)
    pick = rng.integers(rows.size)
    return np.array([cols[pick], rows[pick]], dtype=np.float32)


def negative_click(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(x, y) of a random background pixel near the object (anywhere outside it if its surroundings are empty)."""
    rows, cols = np.nonzero(mask)
    grow_y, grow_x = (rows.max() - rows.min()) // 4 + 1, (cols.max() - cols.min()) // 4 + 1
    near = np.zeros_like(mask)
    near[max(rows.min() - grow_y, 0): rows.max() + grow_y + 1,
         max(cols.min() - grow_x, 0): cols.max() + grow_x + 1] = True
    background = near & ~mask
    return random_click(background if background.any() else ~mask, rng)


def corrective_click(prediction: np.ndarray, truth: np.ndarray, rng: np.random.Generator):
    """((x, y), label) fixing the larger error of a binary prediction; None when it has no error."""
    missed = truth & ~prediction
    spilled = prediction & ~truth
    if not missed.any() and not spilled.any():
        return None
    if missed.sum() >= spilled.sum():
        return random_click(missed, rng), POSITIVE
    return random_click(spilled, rng), NEGATIVE


class PromptSet:
    """The prompts of N objects on one slice: optional boxes and any number of clicks (the same count for all)."""

    def __init__(self, boxes=None, points=None, labels=None):
        self.boxes = boxes  # (N, 4) float32 numpy or None
        self.points = points if points is not None else np.zeros((0 if boxes is None else len(boxes), 0, 2), np.float32)
        self.labels = labels if labels is not None else np.zeros(self.points.shape[:2], np.int64)

    @classmethod
    def from_truth(cls, masks: np.ndarray, use_box: bool, jitter: int, rng: np.random.Generator,
                   with_negative: bool = False) -> "PromptSet":
        """A jittered box, or a positive click (and a negative one), per (S, S) mask of `masks` (N, S, S)."""
        if use_box:
            return cls(boxes=np.stack([jittered_box(m, jitter, rng) for m in masks]))
        clicks = [[random_click(m, rng)] + ([negative_click(m, rng)] if with_negative else []) for m in masks]
        labels = [POSITIVE, NEGATIVE] if with_negative else [POSITIVE]
        return cls(points=np.array(clicks, dtype=np.float32), labels=np.tile(labels, (len(masks), 1)))

    def with_corrections(self, predictions: np.ndarray, masks: np.ndarray, rng: np.random.Generator) -> "PromptSet":
        """One more click per object, at an error of its prediction (at its first click where it has none)."""
        clicks, labels = [], []
        for index, (prediction, truth) in enumerate(zip(predictions, masks)):
            click = corrective_click(prediction, truth, rng)
            if click is None:
                click = (self.points[index, 0] if self.points.shape[1] else random_click(truth, rng), POSITIVE)
            clicks.append(click[0])
            labels.append(click[1])
        points = np.concatenate([self.points, np.stack(clicks)[:, None]], axis=1)
        return PromptSet(self.boxes, points, np.concatenate([self.labels, np.array(labels)[:, None]], axis=1))

    @property
    def num_points(self) -> int:
        """Prompt points as SAM 2 counts them (a box is two corner points)."""
        return self.points.shape[1] + (2 if self.boxes is not None else 0)

    def as_points(self, device) -> tuple[torch.Tensor, torch.Tensor]:
        """Everything as point prompts, the box as its two corners first (SAM 2's video predictor form)."""
        points, labels = self.points, self.labels
        if self.boxes is not None:
            corners = self.boxes.reshape(-1, 2, 2)
            corner_labels = np.tile([BOX_TOP_LEFT, BOX_BOTTOM_RIGHT], (len(corners), 1))
            points = np.concatenate([corners, points], axis=1)
            labels = np.concatenate([corner_labels, labels], axis=1)
        return torch.from_numpy(points).to(device), torch.from_numpy(labels).to(device=device, dtype=torch.int32)

    def as_box_and_points(self, device):
        """(boxes (N, 4) or None, points (N, P, 2) or None, labels or None): the box as a box prompt."""
        boxes = None if self.boxes is None else torch.from_numpy(self.boxes).to(device)
        if self.points.shape[1] == 0:
            return boxes, None, None
        return (boxes, torch.from_numpy(self.points).to(device),
                torch.from_numpy(self.labels).to(device=device, dtype=torch.int32))
