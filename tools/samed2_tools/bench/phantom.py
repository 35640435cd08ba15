"""The benchmark's inputs: a synthetic abdominal CT phantom with a liver to prompt, and full-size
models and banks with random weights."""
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from samed2.bank import ConfidenceBank, fastest_kernel
from samed2.model import SAM2Model, build_model, get_config
from samed2.presets import CT_WINDOWS, IntensityWindow

OBJ_SCORE_BIAS = "sam_mask_decoder.pred_obj_score_head.layers.2.bias"
# phantom organs: centre x, y in [-1, 1] of the slice, centre z in [0, 1] of the volume, radii, HU
LIVER = (-0.3, 0.0, 0.45, 0.35, 0.3, 0.2, 65.0)
ORGANS = [
    (-0.4, -0.1, 0.85, 0.3, 0.35, 0.2, -850.0), (0.4, -0.1, 0.85, 0.3, 0.35, 0.2, -850.0),  # lungs
    LIVER,
    (0.45, 0.35, 0.4, 0.12, 0.14, 0.12, 30.0), (-0.5, 0.4, 0.4, 0.1, 0.12, 0.12, 30.0),  # kidneys
    (0.0, 0.5, 0.5, 0.09, 0.09, 2.0, 700.0),  # spine
]




def phantom_slice(k: int, shape: tuple, seed: int = 0) -> np.ndarray:
    """Slice k of a synthetic abdominal CT (HU, int16): air, body, lungs, liver, kidneys, spine, noise."""
    depth, rows, cols = shape
    y, x = np.mgrid[-1:1:rows * 1j, -1:1:cols * 1j]
    z = k / max(depth - 1, 1)
    hu = np.where((x / 0.9) ** 2 + (y / 0.7) ** 2 < 1, 40.0, -1000.0)
    for cx, cy, cz, rx, ry, rz, value in ORGANS:
        scale = 1 - ((z - cz) / rz) ** 2
        if scale > 0:
            hu[((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 < scale] = value
    hu += np.random.default_rng((seed, k)).normal(0.0, 12.0, hu.shape)
    return hu.astype(np.int16)


def phantom_ct(shape: tuple, seed: int = 0) -> np.ndarray:
    out = np.empty(shape, np.int16)
    for k in range(shape[0]):
        out[k] = phantom_slice(k, shape, seed)
    return out


def liver_slice(shape: tuple) -> int:
    return round(LIVER[2] * (shape[0] - 1))


def liver_box(k: int, shape: tuple) -> tuple:
    """The liver's bounding box (x0, y0, x1, y1) in slice pixels on slice k."""
    depth, rows, cols = shape
    cx, cy, cz, rx, ry, rz, _ = LIVER
    s = np.sqrt(max(1 - ((k / max(depth - 1, 1) - cz) / rz) ** 2, 1e-3))
    to_col, to_row = (lambda v: (v + 1) / 2 * (cols - 1)), (lambda v: (v + 1) / 2 * (rows - 1))
    return (to_col(cx - rx * s), to_row(cy - ry * s), to_col(cx + rx * s), to_row(cy + ry * s))


def liver_point(shape: tuple) -> tuple:
    x0, y0, x1, y1 = liver_box(liver_slice(shape), shape)
    return ((x0 + x1) / 2, (y0 + y1) / 2)


def random_weights(model: SAM2Model, seed: int) -> dict:
    """The model's initial weights plus N(0, 0.05) noise (so zero- or constant-initialised parameters
    count too), with the object-score head biased to "present" so masks are never trivially empty."""
    gen = torch.Generator().manual_seed(seed)
    state = {k: v + 0.05 * torch.randn(v.shape, generator=gen) if v.is_floating_point() else v
             for k, v in model.state_dict().items()}
    state[OBJ_SCORE_BIAS] = state[OBJ_SCORE_BIAS] + 10.0
    return state


def sized_model(name: str, image_size: int, state: Optional[dict] = None, seed: int = 0) -> SAM2Model:
    """A model of config `name` at `image_size` with `state`, or with random weights."""
    cfg = get_config(name)
    cfg["model"]["image_size"] = image_size
    torch.manual_seed(seed)
    model = build_model(cfg)
    model.load_state_dict(state if state is not None else random_weights(model, seed), strict=True)
    return model.eval()


def random_bank(entries: int, model: SAM2Model, seed: int, device: torch.device) -> ConfidenceBank:
    """A full-size bank of random entries as one loads: unit keys (C*h*w, on `device`, in the precision of
    the kernel fastest here), bfloat16 memories."""
    gen = torch.Generator().manual_seed(seed)
    side, distinct = model.embedding_size, 16
    copies = -(-entries // distinct)
    kernel = fastest_kernel(model.hidden_dim * side * side, str(device))
    keys = F.normalize(torch.randn(distinct, model.hidden_dim * side * side, generator=gen), dim=1)
    memory = torch.randn(distinct, model.mem_dim, side, side, generator=gen).bfloat16()
    return ConfidenceBank(keys.to(kernel.dtype).repeat(copies, 1)[:entries], memory.repeat(copies, 1, 1, 1)[:entries],
                          memory.flip(0).repeat(copies, 1, 1, 1)[:entries], torch.randn(entries, generator=gen),
                          key_device=device, kernel=kernel)



def soft_tissue() -> IntensityWindow:
    width, level = CT_WINDOWS["soft_tissue"]
    return IntensityWindow(level - width / 2, level + width / 2)
