"""Optional augmentation of a clip at model size, the same transform for every slice of the clip.

Random flips (left-right, up-down), intensity jitter (contrast, brightness, gamma on the [0, 1]
image) and a small affine (rotation up to 10 degrees, scale 0.9-1.1, shift up to 5 %), drawn from
the clip's own seeded generator so a run is reproducible.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

MAX_ROTATION_DEG = 10.0
SCALE_RANGE = (0.9, 1.1)
MAX_SHIFT = 0.05
CONTRAST_RANGE = (0.9, 1.1)
MAX_BRIGHTNESS = 0.05
GAMMA_RANGE = (0.8, 1.25)


def augment_clip(images: torch.Tensor, masks: torch.Tensor, rng: np.random.Generator):
    """images (L, 1, S, S) in [0, 1], masks (K, L, S, S) in {0, 1} -> augmented copies of both."""
    theta = torch.from_numpy(_random_affine(rng)).float()
    flip_x, flip_y = rng.random(2) < 0.5
    images = _warp(images, theta, "bilinear")
    masks = (_warp(masks.flatten(0, 1)[:, None], theta, "bilinear") >= 0.5).float().reshape(masks.shape)
    dims = [d for d, flip in ((-1, flip_x), (-2, flip_y)) if flip]
    if dims:
        images, masks = images.flip(dims), masks.flip(dims)
    return _jitter_intensity(images, rng), masks


def _random_affine(rng: np.random.Generator) -> np.ndarray:
    """A 2x3 matrix for F.affine_grid (output -> input coordinates, normalised to [-1, 1])."""
    angle = math.radians(rng.uniform(-MAX_ROTATION_DEG, MAX_ROTATION_DEG))
    scale = rng.uniform(*SCALE_RANGE)
    shift = rng.uniform(-MAX_SHIFT, MAX_SHIFT, size=2) * 2
    cos, sin = math.cos(angle) / scale, math.sin(angle) / scale
    return np.array([[cos, -sin, shift[0]], [sin, cos, shift[1]]])


def _warp(batch: torch.Tensor, theta: torch.Tensor, mode: str) -> torch.Tensor:
    grid = F.affine_grid(theta[None].expand(batch.shape[0], -1, -1), list(batch.shape), align_corners=False)
    return F.grid_sample(batch, grid, mode=mode, padding_mode="zeros", align_corners=False)


def _jitter_intensity(images: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    contrast = rng.uniform(*CONTRAST_RANGE)
    brightness = rng.uniform(-MAX_BRIGHTNESS, MAX_BRIGHTNESS)
    gamma = rng.uniform(*GAMMA_RANGE)
    return ((images * contrast + brightness).clamp(0, 1) ** gamma).clamp(0, 1)
