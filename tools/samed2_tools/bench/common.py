"""What every benchmark row shares: settings, the row record, the clock, part timing and the phantom's
slices and prompts."""
import contextlib
import io
import logging
import statistics
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import torch

from samed2.device import synchronize
from samed2.model_coords import logits_to_slice, preprocess_slices, slice_points_to_model
from samed2_tools.bench.phantom import liver_point, liver_slice, phantom_slice, soft_tissue

SAMED2 = "samed2"
SAM2 = "sam2.1-hiera-small"
META_CONFIG = "configs/sam2.1/sam2.1_hiera_s.yaml"
GB = 1e9
RSS_LIMIT = 6 * GB
MIN_IOU = 0.99


@dataclass(frozen=True)
class Settings:
    image_size: int = 1024  # model input of the full-size rows
    fast_size: int = 512  # model input of the CPU fast mode
    frames: int = 8  # frames propagated by Meta's predictor and by ours
    repeats: int = 3  # timed runs per row after a warm-up (medians)
    clicks: int = 10  # timed clicks per row (they are cheap)
    bank_entries: int = 640
    volume_shape: tuple = (300, 512, 512)  # the session's CT, array order (k, j, i)
    precompute_radius: int = 2  # slices encoded in the background around the scrolled-to slice
    propagate_slices: int = 4
    seed: int = 0


FULL = Settings()
QUICK = Settings(image_size=256, fast_size=128, frames=3, repeats=2, clicks=5, precompute_radius=1,
                 propagate_slices=2)


@dataclass
class Measure:
    value: float
    unit: str  # "s", "slices/s", "GB"
    what: str


@dataclass
class Row:
    id: str
    title: str
    ours: Optional[Measure] = None
    reference: Optional[Measure] = None
    ratio: Optional[float] = None
    ratio_meaning: str = ""
    target: str = ""
    passed: Optional[bool] = None  # None: informational
    details: dict = field(default_factory=dict)
    skipped: Optional[str] = None


def skipped_row(row_id: str, title: str, why: str) -> Row:
    return Row(row_id, title, skipped=why)


# ---- timing -------------------------------------------------------------------------------

class Clock:
    def __init__(self, device: torch.device):
        self.device = device

    def sync(self):
        synchronize(self.device)

    def time(self, fn: Callable, *args):
        """(seconds, result) of fn(*args), device work included."""
        self.sync()
        start = time.perf_counter()
        out = fn(*args)
        self.sync()
        return time.perf_counter() - start, out


def median(values) -> float:
    return float(statistics.median(values))


def click_target(device: torch.device) -> float:
    return 0.010 if device.type == "cuda" else 0.050



class PartTimes:
    """Seconds spent in, and calls of, a SAM 2 model's main parts (forward hooks); Meta's model names
    them alike."""

    PARTS = ("image_encoder", "memory_attention", "sam_mask_decoder", "memory_encoder")

    def __init__(self, model, clock: Clock):
        self.clock, self._handles = clock, []
        self.seconds, self.calls = dict.fromkeys(self.PARTS, 0.0), dict.fromkeys(self.PARTS, 0)
        for name in self.PARTS:
            module = getattr(model, name)
            self._handles += [module.register_forward_pre_hook(self._start),
                              module.register_forward_hook(lambda m, a, o, name=name: self._stop(name))]

    def _start(self, module, args):
        self.clock.sync()
        self._began = time.perf_counter()  # the parts never nest

    def _stop(self, name: str):
        self.clock.sync()
        self.seconds[name] += time.perf_counter() - self._began
        self.calls[name] += 1

    def finish(self, per: int = 1) -> dict:
        """Stop timing; seconds per part divided by `per` (e.g. per slice)."""
        for handle in self._handles:
            handle.remove()
        return {name: t / per for name, t in self.seconds.items()}



@contextlib.contextmanager
def quiet():
    """Silence a third-party library's progress bars, warnings and info logs."""
    logging.disable(logging.INFO)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(logging.NOTSET)


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


class Bench:
    """What every row shares: settings, device, clock, the phantom's slices and prompts."""

    def __init__(self, settings: Settings, device: torch.device, precision: str, log: Callable[[str], None],
                 backend: str = "auto"):
        self.settings, self.device, self.precision, self.log, self.backend = settings, device, precision, log, backend
        self.clock = Clock(device)
        self.shape = settings.volume_shape
        self.center = liver_slice(self.shape)

    def slices(self, indices, size: int, normalize: str) -> torch.Tensor:
        window = soft_tissue()
        images = [window.apply(phantom_slice(k, self.shape, self.settings.seed)) for k in indices]
        return preprocess_slices(images, size, normalize).to(self.device)

    def click(self, size: int):
        """A positive click on the liver, in model coordinates (points (1, 1, 2), labels (1, 1))."""
        xy = slice_points_to_model([liver_point(self.shape)], self.shape[1:], size)
        return xy.reshape(1, 1, 2).to(self.device), torch.ones(1, 1, dtype=torch.int32, device=self.device)

    def to_mask(self, pred) -> np.ndarray:
        return (logits_to_slice(pred.low_res_masks.float().cpu(), self.shape[1:])[0, 0] > 0).numpy()
