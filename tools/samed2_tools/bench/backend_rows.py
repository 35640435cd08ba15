"""Rows on the image encoders' backend (samed2.backends): the backend chosen as a session chooses it
(in the run's precision) against torch eager fp32, same weights and input: MedSAM-Lite's TinyViT and
SAMed-2's Hiera, with the decoder's masks from both compared. The choice is made from scratch (an empty
converted-model cache), so a row also reports the first use's cost (conversion and timing)."""
import tempfile
from pathlib import Path
from typing import Callable, List

import torch

from samed2.backends import ChosenEncoder, ConvertedEncoder, image_encoder, openvino_version
from samed2.device import autocast, native_bf16
from samed2.model import build_model
from samed2.model_coords import logits_to_slice, preprocess_slices, slice_box_to_model
from samed2_tools.bench.common import MIN_IOU, SAMED2, Bench, Measure, Row, mask_iou, median
from samed2_tools.bench.engine_rows import our_click
from samed2_tools.bench.phantom import liver_box, phantom_slice, sized_model, soft_tissue

LITE_TARGET = 2.0
SAMED2_TARGET = 1.3  # on hosts without native bf16; where it is native: not slower (1.0)


def backend_rows(b: Bench) -> List[Row]:
    b.log(f"image encoders, backend {b.backend} in {b.precision} against torch fp32: MedSAM-Lite, SAMed-2 at "
          f"{b.settings.image_size}")
    with tempfile.TemporaryDirectory(prefix="samed2-bench-") as cache:
        return [lite_encoder_row(b, Path(cache)), samed2_encoder_row(b, Path(cache))]


def lite_encoder_row(b: Bench, cache: Path) -> Row:
    torch.manual_seed(b.settings.seed)
    model = build_model("medsam-lite").to(b.device).eval()
    size, shape = model.image_size, b.shape[1:]
    image = soft_tissue().apply(phantom_slice(b.center, b.shape, b.settings.seed))
    images = preprocess_slices([image], size, letterbox=True).to(b.device)
    box = slice_box_to_model(liver_box(b.center, b.shape), shape, size, letterbox=True)[None].to(b.device)

    def mask(encoder):
        features = model.encode_images(images, encoder).features
        logits = model.decode(features, boxes=box).low_res_masks
        return (logits_to_slice(logits.float().cpu(), shape, letterbox=True)[0, 0] > 0).numpy()
    return encoder_row(b, "lite_encoder", "MedSAM-Lite image encoder (256 px): chosen backend vs torch fp32",
                       model.image_encoder, images, mask, LITE_TARGET, cache)


def samed2_encoder_row(b: Bench, cache: Path) -> Row:
    s = b.settings
    model = sized_model(SAMED2, s.image_size, seed=s.seed).to(b.device)
    pair = b.slices([b.center, b.center + 1], s.image_size, "none")
    prompt = b.click(s.image_size)

    def mask(encoder):
        return our_click(b, model, model.encode_images(pair, encoder).select(slice(0, 1)), prompt)
    native = native_bf16(b.device)
    return encoder_row(b, "samed2_encoder", f"SAMed-2 image encoder ({s.image_size} px, a slice pair): chosen "
                       "backend vs torch fp32", model.image_encoder, pair, mask, 1.0 if native else SAMED2_TARGET,
                       cache)


def encoder_row(b: Bench, row_id: str, title: str, module, images: torch.Tensor, mask: Callable, target: float,
                cache: Path) -> Row:
    """Our encoder (the backend chosen as a session chooses it, in the run's precision) against torch
    eager fp32, interleaved run by run. Masks: ours against torch's in the same precision (the backend's
    effect; precision's own is the precision tests'), and against torch fp32 (information)."""
    chosen = image_encoder(module, b.backend, b.device, b.precision, cache)

    def ours(x):
        with autocast(b.device, b.precision):
            return chosen(x)
    first_use_s, _ = b.clock.time(ours, images)  # conversion and timing where OpenVINO is a candidate
    torch_s, ours_s = [], []
    for _ in range(b.settings.repeats):
        torch_s.append(b.clock.time(module, images)[0])
        ours_s.append(b.clock.time(ours, images)[0])
    with autocast(b.device, b.precision):
        our_mask, torch_mask = mask(chosen), mask(module)
    iou = mask_iou(our_mask, torch_mask)
    used = chosen.chosen[tuple(images.shape)] if isinstance(chosen, ChosenEncoder) else module
    backend = "openvino" if isinstance(used, ConvertedEncoder) else "torch"
    ratio = median(torch_s) / median(ours_s)
    details = {"backend_asked": b.backend, "backend": backend, "precision": b.precision, "mask_iou": iou,
               "mask_iou_vs_torch_fp32": mask_iou(our_mask, mask(module)), "mask_pixels": int(our_mask.sum()),
               "first_use_s": first_use_s, "openvino": openvino_version()}
    if isinstance(chosen, ChosenEncoder):
        details["auto_timing"] = chosen.timings.get(tuple(images.shape))
    return Row(row_id, title, Measure(median(ours_s), "s", f"{backend} in {b.precision}"),
               Measure(median(torch_s), "s", "torch eager fp32"), ratio, "torch fp32 / ours (speed-up)",
               f">= {target:.1f}x, masks IoU >= {MIN_IOU} (vs torch, same precision)",
               ratio >= target and iou >= MIN_IOU, details=details)
