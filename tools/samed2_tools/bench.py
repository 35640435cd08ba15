"""`samed2 bench`: the project's performance targets (README, "Benchmarks"), measured side by side in one run.

Every row times our path and a reference path on the same machine, in the same process, with the
same random weights (full-size configs) and the same inputs (a synthetic CT phantom), and reports
absolute times, their ratio, the target and pass/fail. Times are medians of `repeats` runs after a
warm-up; reference and ours alternate run by run so that background load hits both alike.

References:
- "reference": the SAMed-2 reference code's inference flow, rebuilt from this project's modules
  (whose numerics the golden parity tests hold to the reference): every click encodes its image as
  a duplicated pair, and bank retrieval re-stacks and re-normalises every stored key per call.
- "Meta": Meta's `sam2` package, loaded with the same state dict. Optional: without it those rows
  say "skipped: sam2 not installed".
The session rows (peak RSS, scroll-then-click) run in a fresh process, so the other rows' tensors
do not count in its peak.
"""
import contextlib
import io
import logging
import multiprocessing
import os
import platform
import statistics
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F

from samed2.bank import ConfidenceBank, fastest_kernel, image_key
from samed2.device import autocast, native_bf16, pick_device, pick_precision, precision_probe, synchronize
from samed2.embedding_cache import EmbeddingCache, as_stored
from samed2.errors import BenchError
from samed2.model import ImageFeatures, SAM2Model, build_model, get_config
from samed2.model_io import logits_to_slice, preprocess_slices, slice_box_to_model, slice_points_to_model
from samed2.presets import CT_WINDOWS, IntensityWindow, ct_window
from samed2.session import DEFAULT_CACHE_BYTES, Session
from samed2.volume import Volume

try:
    import resource
except ImportError:  # Windows
    resource = None

SAMED2 = "samed2"
SAM2 = "sam2.1-hiera-small"
META_CONFIG = "configs/sam2.1/sam2.1_hiera_s.yaml"
OBJ_SCORE_BIAS = "sam_mask_decoder.pred_obj_score_head.layers.2.bias"
GB = 1e9
RSS_LIMIT = 6 * GB
MIN_IOU = 0.99
# phantom organs: centre x, y in [-1, 1] of the slice, centre z in [0, 1] of the volume, radii, HU
LIVER = (-0.3, 0.0, 0.45, 0.35, 0.3, 0.2, 65.0)
ORGANS = [
    (-0.4, -0.1, 0.85, 0.3, 0.35, 0.2, -850.0), (0.4, -0.1, 0.85, 0.3, 0.35, 0.2, -850.0),  # lungs
    LIVER,
    (0.45, 0.35, 0.4, 0.12, 0.14, 0.12, 30.0), (-0.5, 0.4, 0.4, 0.1, 0.12, 0.12, 30.0),  # kidneys
    (0.0, 0.5, 0.5, 0.09, 0.09, 2.0, 700.0),  # spine
]


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


# ---- inputs and weights -------------------------------------------------------------------

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


def soft_tissue() -> IntensityWindow:
    width, level = CT_WINDOWS["soft_tissue"]
    return IntensityWindow(level - width / 2, level + width / 2)


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


class Bench:
    """What every row shares: settings, device, clock, the phantom's slices and prompts."""

    def __init__(self, settings: Settings, device: torch.device, precision: str, log: Callable[[str], None]):
        self.settings, self.device, self.precision, self.log = settings, device, precision, log
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


# ---- clicks, encoding, bank and fast mode (SAMed-2) ---------------------------------------

def our_click(b: Bench, model: SAM2Model, image: ImageFeatures, prompt):
    """Prompt encoder + mask decoder on a cached embedding, mask at slice size."""
    pred = model.decode(model.without_memory(image), image.high_res, *prompt, multimask=True)
    return b.to_mask(pred)


def our_retrieval(b: Bench, bank: ConfidenceBank, pair: ImageFeatures) -> float:
    """Seconds per slice of bank retrieval as a session does it: when a pair is encoded, one pass over
    the keys chooses both slices' entries; a click then gathers its slice's chosen memory."""
    select_s, chosen = b.clock.time(bank.select, pair.features, 1)
    gather_s, _ = b.clock.time(bank.memory, chosen[:1], b.device)
    return select_s / len(chosen) + gather_s


def our_bank_click(b: Bench, model, bank: ConfidenceBank, image: ImageFeatures, prompt) -> Dict[str, float]:
    """A first click with SAMed-2's bank on a cached embedding, nothing prepared: its best entry,
    memory attention, decoder."""
    clock, stages = b.clock, {}
    stages["retrieve"], memory = clock.time(lambda: bank.memory(bank.select(image.features, k=1), b.device))
    stages["attend"], pix = clock.time(model.conditioned_features, 0, image, {}, {}, 1, False, True, memory)
    stages["decode"], _ = clock.time(
        lambda: b.to_mask(model.decode(pix, image.high_res, *prompt, multimask=True)))
    return stages


def reference_retrieve(key_list: List[torch.Tensor], ious: torch.Tensor, features: torch.Tensor, k: int):
    """The reference's retrieval: every stored key re-stacked and re-normalised, then one matmul."""
    keys = torch.stack(key_list).float()
    keys /= keys.norm(dim=1, keepdim=True)
    score = (image_key(features) @ keys.t()).clamp(min=0) + ious.sigmoid().to(keys.device)
    return score.topk(k, dim=1).indices.cpu()


def reference_click(b: Bench, model, bank, key_list, image: torch.Tensor, prompt) -> Dict[str, float]:
    """The reference's click: the image encoded as a duplicated pair, the bank searched for the pair
    (k = batch size = 2), memory attention and decoding for the first of the pair."""
    clock, stages = b.clock, {}
    stages["encode"], pair = clock.time(model.encode_images, image.expand(2, -1, -1, -1))
    first = pair.select(slice(0, 1))

    def retrieve():
        memory, pos = bank.memory(reference_retrieve(key_list, bank.ious, pair.features, 2), b.device)
        return memory[:1], pos[:1]
    stages["retrieve"], memory = clock.time(retrieve)
    stages["attend"], pix = clock.time(model.conditioned_features, 0, first, {}, {}, 1, False, True, memory)
    stages["decode"], _ = clock.time(
        lambda: b.to_mask(model.decode(pix, first.high_res, *prompt, multimask=True)))
    return stages


@dataclass
class Case:
    """A model with its inputs: two adjacent slices, their cached embeddings, a click."""

    model: SAM2Model
    pair: torch.Tensor
    pair_features: ImageFeatures  # both slices, as cached
    prompt: tuple

    @property
    def image(self) -> ImageFeatures:
        """The first slice's cached embedding."""
        return self.pair_features.select(slice(0, 1))


def make_case(b: Bench, model: SAM2Model) -> Case:
    size = model.image_size
    pair = b.slices([b.center, b.center + 1], size, "none")
    return Case(model, pair, as_stored(model.encode_images(pair)), b.click(size))  # also the warm-up


def samed2_rows(b: Bench) -> List[Row]:
    s = b.settings
    b.log(f"SAMed-2 at {s.image_size} (and {s.fast_size}, the fast mode): clicks, pair encoding, "
          f"bank of {s.bank_entries}")
    model = sized_model(SAMED2, s.image_size, seed=s.seed).to(b.device)
    full = make_case(b, model)
    fast = make_case(b, sized_model(SAMED2, s.fast_size, state=model.state_dict()).to(b.device))
    bank = random_bank(s.bank_entries, model, s.seed, b.device)
    keys_at = bank.keys.data_ptr()
    med = time_samed2(b, full, fast, bank)
    restacked = bank.keys.data_ptr() != keys_at
    rows = [click_row(b, med), bank_click_row(b, med), pair_row(med), bank_row(b, bank, med, restacked)]
    del bank
    return rows + [fast_mode_row(b, full, fast, med), precision_row(b)] + lite_rows(b, med)


def time_samed2(b: Bench, full: Case, fast: Case, bank: ConfidenceBank) -> Dict[str, float]:
    """Medians of the reference's click stages, our bank click stages, pair encoding and plain clicks,
    full size and fast mode, interleaved run by run."""
    model, image, prompt = full.model, full.image, full.prompt
    key_list = list(bank.keys.unbind(0))  # the reference keeps one key per entry (views here: no copy)
    reference_retrieve(key_list, bank.ious, image.features, 1)  # warm-up
    our_bank_click(b, model, bank, image, prompt)
    times: Dict[str, list] = {}
    for _ in range(b.settings.repeats):
        for name, t in reference_click(b, model, bank, key_list, full.pair[:1], prompt).items():
            times.setdefault("ref_" + name, []).append(t)
        times.setdefault("pair", []).append(b.clock.time(model.encode_images, full.pair)[0])
        times.setdefault("fast_pair", []).append(b.clock.time(fast.model.encode_images, fast.pair)[0])
        for name, t in our_bank_click(b, model, bank, image, prompt).items():
            times.setdefault(name, []).append(t)
        times.setdefault("retrieve_per_slice", []).append(our_retrieval(b, bank, full.pair_features))
    for _ in range(b.settings.clicks):
        for name, case in (("click", full), ("fast_click", fast)):
            times.setdefault(name, []).append(b.clock.time(our_click, b, case.model, case.image, case.prompt)[0])
    return {name: median(values) for name, values in times.items()}


def lite_rows(b: Bench, med: dict) -> List[Row]:
    """MedSAM-Lite (256 px, letterboxed) beside SAMed-2: a box click on a cached embedding, and one slice
    of box-chain propagation (encode + box decode). SAMed-2's slice: half a pair encoding + a click."""
    torch.manual_seed(b.settings.seed)
    model = build_model("medsam-lite").to(b.device)  # timing does not depend on the weights
    size, shape = model.image_size, b.shape[1:]
    image = soft_tissue().apply(phantom_slice(b.center, b.shape, b.settings.seed))
    box = slice_box_to_model(liver_box(b.center, b.shape), shape, size, letterbox=True)[None].to(b.device)

    def encode():
        return model.encode_images(preprocess_slices([image], size, letterbox=True).to(b.device)).features

    def click(features):
        logits = model.decode(features, boxes=box).low_res_masks
        return (logits_to_slice(logits.float().cpu(), shape, letterbox=True)[0, 0] > 0).numpy()

    def propagated_slice():
        return click(encode())

    features = as_stored(encode())  # also the warm-up
    clicks = median(b.clock.time(click, features)[0] for _ in range(b.settings.clicks))
    slices = median(b.clock.time(propagated_slice)[0] for _ in range(b.settings.repeats))
    samed2_slice = med["pair"] / 2 + med["click"]
    return [Row("lite_click", "Click latency, cached embedding: MedSAM-Lite (256 px) vs SAMed-2",
                Measure(clicks, "s", "MedSAM-Lite box decode"), Measure(med["click"], "s", "SAMed-2 click"),
                med["click"] / clicks, "SAMed-2 / MedSAM-Lite", "informational (another model)"),
            Row("lite_slice", "Propagation per slice: MedSAM-Lite box chain vs SAMed-2",
                Measure(slices, "s", "MedSAM-Lite: encode + box decode"),
                Measure(samed2_slice, "s", "SAMed-2: half a pair encoding + a click"),
                samed2_slice / slices, "SAMed-2 / MedSAM-Lite", "informational (another model)")]


def click_row(b: Bench, med: dict) -> Row:
    target = click_target(b.device)
    reference = med["ref_encode"] + med["ref_decode"]
    return Row("click", f"Click latency, cached embedding (SAMed-2, {b.settings.image_size} px)",
               Measure(med["click"], "s", "prompt encoder + mask decoder"),
               Measure(reference, "s", "reference: encode duplicated pair + decode"),
               reference / med["click"], "reference / ours (speed-up)", f"<= {target * 1000:.0f} ms",
               med["click"] <= target)


def bank_click_row(b: Bench, med: dict) -> Row:
    stages = ("retrieve", "attend", "decode")
    ours = sum(med[name] for name in stages)
    reference = med["ref_encode"] + sum(med["ref_" + name] for name in stages)
    return Row("click_bank", f"Click with the {b.settings.bank_entries}-entry bank, nothing prepared (SAMed-2)",
               Measure(ours, "s", "bank retrieval (k=1) + memory attention + decoder"),
               Measure(reference, "s", "reference: encode pair + re-stacked retrieval (k=2) + attention + decode"),
               reference / ours, "reference / ours (speed-up)",
               "info: a session prepares this in the background (scroll, then click)",
               details={"ours_s": {n: med[n] for n in stages},
                        "reference_s": {n: med["ref_" + n] for n in ("encode",) + stages}})


def pair_row(med: dict) -> Row:
    ours, reference = 2 / med["pair"], 1 / med["ref_encode"]
    return Row("encode_pair", "Slice encoding throughput (SAMed-2 pairs)",
               Measure(ours, "slices/s", "fixed pairs (2p, 2p+1): 2 slices per forward"),
               Measure(reference, "slices/s", "reference: duplicated pair (s, s), 1 slice per forward"),
               ours / reference, "ours / reference (throughput)", ">= 1.4x", ours / reference >= 1.4,
               details={"pair_forward_s": med["pair"], "duplicated_pair_forward_s": med["ref_encode"]})


def bank_row(b: Bench, bank: ConfidenceBank, med: dict, restacked: bool) -> Row:
    ours = med["retrieve_per_slice"]
    return Row("bank_retrieval", f"Bank retrieval per slice, {len(bank)} entries (select + memory gather)",
               Measure(ours, "s", f"keys stacked once [N, D], kernel {bank.kernel.name} (measured fastest "
                                  "here); one pass chooses for an encoded pair; only chosen memories move"),
               Measure(med["ref_retrieve"], "s", "reference: re-stack + normalise all keys for each slice"),
               med["ref_retrieve"] / ours, "reference / ours (speed-up)", "<= 50 ms, no re-stacking",
               ours <= 0.050 and not restacked,
               details={"restacked_per_call": restacked, "key_dim": bank.keys.shape[1],
                        "keys_gb": bank.keys.numel() * bank.keys.element_size() / GB,
                        "one_slice_alone_s": med["retrieve"],
                        "key_device": str(bank.keys.device), "kernel": bank.kernel.name})


def fast_mode_row(b: Bench, full: Case, fast: Case, med: dict) -> Row:
    """The CPU fast mode: the same weights at a smaller input (MedSAM2's 512 px)."""
    s = b.settings
    iou = mask_iou(our_click(b, fast.model, fast.image, fast.prompt), our_click(b, full.model, full.image, full.prompt))
    return Row("fast_mode", f"CPU fast mode: {s.fast_size} px input instead of {s.image_size} px",
               Measure(med["fast_pair"], "s", f"pair encoding at {s.fast_size} px"),
               Measure(med["pair"], "s", f"pair encoding at {s.image_size} px"),
               med["pair"] / med["fast_pair"], "full / fast (encoder speed-up)", "documented speed and mask agreement",
               details={"click_s": med["fast_click"], "full_click_s": med["click"], "mask_iou_vs_full": iou,
                        "note": "native for models trained at 512 (MedSAM2); for 1024-trained models the mask "
                                "IoU here (random weights) is no accuracy figure: measure with samed2 eval"})


def precision_row(b: Bench) -> Row:
    """The precision our rows ran in, and the measurement `auto` chose it by."""
    native = native_bf16(b.device)
    fp32, bf16 = precision_probe(b.device)
    return Row("precision", f"Precision chosen: {b.precision} (native bf16: {'yes' if native else 'no'})",
               Measure(bf16, "s", "2048x768 @ 768x768 linear in bf16 autocast (best of 3)"),
               Measure(fp32, "s", "the same in fp32"), fp32 / bf16, "fp32 / bf16 (speed-up)",
               "auto: bf16 if native bf16 and >= 1.2x, else fp32",
               details={"precision": b.precision, "native_bf16": native})


# ---- Meta's sam2: encoder and propagation -------------------------------------------------

def meta_rows(b: Bench) -> List[Row]:
    try:
        with quiet():
            from sam2.build_sam import build_sam2_video_predictor
    except ImportError as exc:
        if os.environ.get("CI") == "true":
            raise BenchError("Meta's sam2 is not installed: CI (CI=true) runs the Meta rows, never skips them") from exc
        why = "skipped: sam2 not installed"
        return [skipped_row("encode_meta", "Slice encoding vs Meta's sam2", why),
                skipped_row("propagation", "Propagation per slice vs Meta's SAM2VideoPredictor", why)]
    s = b.settings
    b.log(f"{SAM2} at {s.image_size}: encoder and {s.frames}-frame propagation, ours and Meta's")
    model = sized_model(SAM2, s.image_size, seed=s.seed).to(b.device)
    with tempfile.TemporaryDirectory() as tmp:
        torch.save({"model": model.state_dict()}, Path(tmp) / "weights.pt")
        with quiet():
            meta = build_sam2_video_predictor(META_CONFIG, str(Path(tmp) / "weights.pt"), device=str(b.device),
                                              hydra_overrides_extra=[f"++model.image_size={s.image_size}"])
        rows = [meta_encoder_row(b, model, meta)]
        rows.append(propagation_row(b, model, meta, Path(tmp)))
    return rows


def meta_encoder_row(b: Bench, model: SAM2Model, meta) -> Row:
    image = b.slices([b.center], b.settings.image_size, "imagenet")
    ours, theirs = [], []

    def encode(images):
        with autocast(b.device, b.precision):  # as a session runs
            return model.encode_images(images)
    for run in (encode, meta.forward_image):  # warm-up
        run(image)
    for _ in range(b.settings.repeats):
        theirs.append(b.clock.time(meta.forward_image, image)[0])
        ours.append(b.clock.time(encode, image)[0])
    ratio = median(theirs) / median(ours)
    return Row("encode_meta", f"Slice encoding, {SAM2} (batch of 1)",
               Measure(median(ours), "s", f"our image encoder ({b.precision})"),
               Measure(median(theirs), "s", "Meta: forward_image (fp32)"),
               ratio, "Meta / ours (speed-up)", ">= 1.0x", ratio >= 1.0)


def write_frames(b: Bench, folder: Path) -> np.ndarray:
    """The frames as JPEGs for Meta's predictor; returns what both read back (N, S, S) uint8."""
    from PIL import Image

    size, window = b.settings.image_size, soft_tissue()
    frames = []
    for t in range(b.settings.frames):
        pixels = (window.apply(phantom_slice(b.center + t, b.shape, b.settings.seed)) * 255).astype(np.uint8)
        path = folder / f"{t:05d}.jpg"
        Image.fromarray(pixels).resize((size, size), Image.BILINEAR).save(path, quality=95)
        frames.append(np.asarray(Image.open(path).convert("L")))
    return np.stack(frames)


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


def propagation_row(b: Bench, model: SAM2Model, meta, tmp: Path) -> Row:
    """Box on frame 0, then frame by frame: Meta's SAM2VideoPredictor and our Session, interleaved."""
    folder = tmp / "frames"
    folder.mkdir()
    frames = write_frames(b, folder)
    scale = b.settings.image_size / b.shape[2]
    box = [v * scale for v in liver_box(b.center, b.shape)]
    with quiet():
        state = meta.init_state(str(folder))
        meta.add_new_points_or_box(state, frame_idx=0, obj_id=1, box=box)
        meta_steps = meta.propagate_in_video(state)
        meta_masks = [next(meta_steps)[2][0, 0].cpu().numpy() > 0]
    volume, preset = Volume(frames, np.eye(4)), ct_window(255.0, 127.5)  # uint8 / 255, as Meta reads them
    with Session(volume, model, axis=2, preset=preset, device=str(b.device), precision=b.precision) as session:
        our_masks = [session.add_prompt(1, 0, box=box)]
        our_steps = session.propagate([1], direction="up", stop_after_absent=0)
        times = {"meta": [], "ours": []}
        parts = {"meta": PartTimes(meta, b.clock), "ours": PartTimes(model, b.clock)}
        for _ in range(1, b.settings.frames):
            with quiet():
                t, (_, _, masks) = b.clock.time(next, meta_steps)
            times["meta"].append(t)
            meta_masks.append(masks[0, 0].cpu().numpy() > 0)
            t, result = b.clock.time(lambda: (next(our_steps), session.wait_idle())[0])
            times["ours"].append(t)
            our_masks.append(result.mask)
    parts = {who: p.finish(per=b.settings.frames - 1) for who, p in parts.items()}
    return propagation_result(b, times, parts, meta_masks, our_masks)


def propagation_result(b: Bench, times: dict, parts: dict, meta_masks, our_masks) -> Row:
    ious = [mask_iou(m, o) for m, o in zip(meta_masks, our_masks)]
    ours, theirs = (sum(times[who]) / len(times[who]) for who in ("ours", "meta"))
    ratio = theirs / ours
    return Row("propagation", f"Propagation per slice, {SAM2}, {b.settings.frames} frames",
               Measure(ours, "s", "our Session (encoder + memory attention + decoder + memory encoder)"),
               Measure(theirs, "s", "Meta: SAM2VideoPredictor.propagate_in_video (fp32)"),
               ratio, "Meta / ours (speed-up)", f">= 1.5x, every mask IoU >= {MIN_IOU}",
               ratio >= 1.5 and min(ious) >= MIN_IOU,
               details={"min_iou": min(ious), "ious": ious, "ours_s": times["ours"], "meta_s": times["meta"],
                        "ours_parts_s_per_slice": parts["ours"], "meta_parts_s_per_slice": parts["meta"],
                        "mask_fraction": [float(m.mean()) for m in meta_masks]})


# ---- a whole session in a fresh process: peak RSS, cache budget, scroll then click ---------

def peak_rss_bytes() -> int:
    """This process's peak RSS. Linux: VmHWM, which (unlike ru_maxrss) does not inherit the parent's
    peak through fork + exec."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # macOS: bytes


def tracked_bytes(session: Session, obj_id: int) -> tuple:
    """(bytes, slices) of an object's per-slice state: memories, pointers, logits, masks."""
    obj = session.objects[obj_id]
    tensors = [t for m in [*obj.cond.values(), *obj.non_cond.values()] for t in (m.features, m.pos, m.obj_ptr)]
    tensors += list(obj.logits.values())
    total = sum(t.numel() * t.element_size() for t in tensors) + sum(m.nbytes for m in obj.masks.values())
    return total, len(set(obj.logits) | set(obj.masks))


def cache_keeps_budget(session: Session) -> bool:
    """The session's cache is within its budget, and a cache with room for 4.5 of its embeddings
    keeps exactly the 4 most recent when given all of them."""
    cached = [i for i in range(session.num_slices) if i in session.cache]
    small = EmbeddingCache(int(session.cache.item_bytes * 4.5))
    for i in cached:
        small.put(i, session.cache.get(i, "cpu"))
    return (session.cache.nbytes <= session.cache.budget_bytes and small.nbytes <= small.budget_bytes
            and len(small) == min(4, len(cached)))


def measure_session(settings: Settings, device_name: str, precision: str) -> dict:
    """Run in a fresh process: a SAMed-2 session with a full confidence bank on a synthetic CT under
    the default cache budget."""
    device = pick_device(device_name)
    clock, shape = Clock(device), settings.volume_shape
    volume = Volume(phantom_ct(shape, settings.seed), np.diag([0.8, 0.8, 1.5, 1.0]), modality="CT")
    model, center = sized_model(SAMED2, settings.image_size, seed=settings.seed), liver_slice(shape)
    bank = random_bank(settings.bank_entries, model, settings.seed, device)
    out = {}
    with Session(volume, model, axis=2, preset="soft_tissue", device=device_name,
                 cache_bytes=DEFAULT_CACHE_BYTES, bank=bank, precision=precision) as session:
        out["precompute_s"], _ = clock.time(lambda: (session.precompute(center, settings.precompute_radius),
                                                     session.wait_idle()))
        # object 1 is propagated below; 3 and 4 are new objects on the neighbouring slices
        clicks = [(obj_id, center + offset, [(*liver_point(shape), True)]) for obj_id, offset in ((1, 0), (3, -1), (4, 1))]
        out.update(scroll_then_click(session, model, clock, clicks, settings.precompute_radius))
        cold = center - 2 * (settings.precompute_radius + 4)
        out["cold_click_s"], _ = clock.time(session.add_prompt, 2, cold, [(*liver_point(shape), True)])
        steps = list(session.propagate([1], direction="up", stop=center + settings.propagate_slices,
                                       stop_after_absent=0))
        session.wait_idle()
        out["peak_rss_bytes"] = peak_rss_bytes()
        out["state_bytes"], out["state_slices"] = tracked_bytes(session, 1)
        out.update(cache_bytes=session.cache.nbytes, cache_budget=session.cache.budget_bytes,
                   cached_slices=len(session.cache), slices=session.num_slices, propagated=len(steps),
                   cache_ok=cache_keeps_budget(session))
    return out


def scroll_then_click(session: Session, model, clock: Clock, clicks, radius: int) -> dict:
    """For each (object, slice, points): scroll there (the session prepares the slice in the background,
    waited for), then click. The median click, each click's decoder time, and the encoder and bank
    attention runs inside the clicks (none is the target)."""
    seconds, decoder, encodes, attends = [], [], 0, 0
    for obj_id, index, points in clicks:
        session.precompute(index, radius)
        session.wait_idle()
        parts = PartTimes(model, clock)
        seconds.append(clock.time(session.add_prompt, obj_id, index, points)[0])
        decoder.append(parts.finish()["sam_mask_decoder"])
        encodes, attends = encodes + parts.calls["image_encoder"], attends + parts.calls["memory_attention"]
    return {"warm_click_s": median(seconds), "warm_clicks_s": seconds, "warm_click_decoder_s": decoder,
            "warm_click_encodes": encodes, "warm_click_attends": attends}


def session_rows(b: Bench) -> List[Row]:
    s = b.settings
    if resource is None:
        why = "skipped: peak RSS needs the resource module (Linux, macOS)"
        return [skipped_row("peak_rss", "Peak RSS of a CT session", why),
                skipped_row("scroll_click", "Scroll, then click", why)]
    b.log(f"session on a {'x'.join(map(str, s.volume_shape[::-1]))} CT in a fresh process")
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        out = pool.apply(measure_session, (s, str(b.device), b.precision))
    return [rss_row(b, out), scroll_row(b, out)]


def rss_row(b: Bench, out: dict) -> Row:
    per_slice = out["state_bytes"] / max(out["state_slices"], 1)
    projected = (out["peak_rss_bytes"] + out["cache_budget"] - out["cache_bytes"]
                 + per_slice * (out["slices"] - out["state_slices"]))
    peak = out["peak_rss_bytes"]
    ni, nj, nk = b.settings.volume_shape[::-1]
    return Row("peak_rss", f"Peak RSS, {ni}x{nj}x{nk} CT session (SAMed-2, {b.settings.image_size} px, "
                           f"{b.settings.bank_entries}-entry bank): measured part-way, full session projected",
               Measure(peak / GB, "GB", f"measured: {out['cached_slices']} slices cached, "
                                        f"{out['propagated']} propagated"),
               Measure(projected / GB, "GB", "projected, not measured: measured peak + the rest of the cache "
                                             "budget + every slice tracked (one object)"),
               RSS_LIMIT / max(projected, peak), "limit / max(measured, projected) (headroom)",
               "< 6 GB; cache within budget", max(projected, peak) < RSS_LIMIT and out["cache_ok"],
               details={"cache_gb": out["cache_bytes"] / GB, "cache_budget_gb": out["cache_budget"] / GB,
                        "cache_within_budget": out["cache_ok"], "state_mb_per_slice": per_slice / 1e6})


def scroll_row(b: Bench, out: dict) -> Row:
    warm, cold, target = out["warm_click_s"], out["cold_click_s"], click_target(b.device)
    prepared = out["warm_click_encodes"] == 0 and out["warm_click_attends"] == 0
    return Row("scroll_click", f"Scroll, then click, with the {b.settings.bank_entries}-entry bank "
                               "(background encoding, bank choice and attention)",
               Measure(warm, "s", f"Session.add_prompt on a slice prepared in the background "
                                  f"(median of {len(out['warm_clicks_s'])} slices)"),
               Measure(cold, "s", "the same click on a slice not yet encoded (cold)"),
               cold / warm, "cold / warm (speed-up)",
               f"no encoder or bank attention in the click; <= {target * 1000:.0f} ms", prepared and warm <= target,
               details={"encoder_runs_in_warm_click": out["warm_click_encodes"],
                        "bank_attention_runs_in_warm_click": out["warm_click_attends"],
                        "warm_clicks_s": out["warm_clicks_s"], "warm_click_decoder_s": out["warm_click_decoder_s"],
                        "background_precompute_s": out["precompute_s"]})


# ---- the run, its machine and its report -----------------------------------------------------

def cpuinfo(key: str) -> str:
    """The first value of `key` in /proc/cpuinfo ("" where there is none)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return ""
    for line in lines:
        name, _, value = line.partition(":")
        if name.strip() == key:
            return value.strip()
    return ""


def cpu_flags() -> set:
    return set(cpuinfo("flags").split())


def cpu_model() -> str:
    return cpuinfo("model name") or platform.processor() or platform.machine()


def machine(device: torch.device) -> dict:
    info = {"cpu": cpu_model(), "cpu_family_model": f"{cpuinfo('cpu family')}/{cpuinfo('model')}",
            "cores": os.cpu_count(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
            "os": platform.platform(), "device": str(device),
            "cpu_features": sorted(cpu_flags() & {"avx2", "avx512f", "avx512_fp16", "avx512_bf16", "amx_bf16",
                                                  "amx_tile"})}
    if hasattr(os, "sysconf") and "SC_PHYS_PAGES" in os.sysconf_names:
        info["memory_gb"] = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / GB
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def run(settings: Settings, device_name: str = "auto", precision: str = "auto",
        log: Callable[[str], None] = print) -> dict:
    """Every row; returns the JSON-ready report."""
    device = pick_device(device_name)
    bench = Bench(settings, device, pick_precision(precision, device), log)
    started, load = time.perf_counter(), load_average()
    with torch.inference_mode():
        with autocast(device, bench.precision):  # as a session runs; Meta's rows stay in fp32
            rows = samed2_rows(bench)
        rows += meta_rows(bench)
    rows += session_rows(bench)
    info = machine(device)
    info.update(load_average_start=load, load_average_end=load_average(), precision_asked=precision,
                precision=bench.precision)
    return {"machine": info, "settings": asdict(settings), "rows": [asdict(row) for row in rows],
            "wall_s": time.perf_counter() - started}


def load_average() -> Optional[list]:
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


# ---- the printed table ----------------------------------------------------------------------

def format_measure(m: Optional[dict]) -> str:
    if not m:
        return "-"
    value, unit = m["value"], m["unit"]
    if unit == "s":
        return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"
    return f"{value:.2f} {unit}"


def format_row(row: dict) -> list:
    if row["skipped"]:
        return [row["title"], "-", "-", "-", "-", row["skipped"]]
    result = {True: "PASS", False: "FAIL", None: "info"}[row["passed"]]
    return [row["title"], format_measure(row["ours"]), format_measure(row["reference"]),
            f"{row['ratio']:.2f}x", row["target"], result]


def format_table(report: dict) -> str:
    lines = [["Benchmark", "Ours", "Reference", "Ratio", "Target", "Result"]]
    lines += [format_row(row) for row in report["rows"]]
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    text = [" | ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in lines]
    text.insert(1, "-+-".join("-" * w for w in widths))
    m = report["machine"]
    text.append(f"Machine: {m['cpu']} (family/model {m['cpu_family_model']}; {', '.join(m['cpu_features'])}), "
                f"{m['cores']} cores, torch {m['torch']} ({m['torch_threads']} threads), "
                f"device {m['device']}{', ' + m['gpu'] if 'gpu' in m else ''}, precision {m['precision']} "
                f"(asked: {m['precision_asked']}); load average "
                f"{fmt_load(m['load_average_start'])} -> {fmt_load(m['load_average_end'])}; "
                f"wall {report['wall_s']:.0f} s")
    loads = [load[0] for load in (m["load_average_start"], m["load_average_end"]) if load]
    if loads and max(loads) > m["cores"] + 1:  # this run itself keeps up to `cores` threads busy
        text.append("Note: other processes competed for the CPU during the run; absolute times are inflated, "
                    "ratios (ours and reference interleaved) less so.")
    return "\n".join(text)


def fmt_load(load: Optional[list]) -> str:
    return "n/a" if load is None else f"{load[0]:.2f}"
