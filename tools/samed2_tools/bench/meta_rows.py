"""Rows against Meta's sam2 package (optional outside CI): the image encoder and propagation with
`SAM2VideoPredictor`, same weights, same frames."""
import os
import tempfile
from pathlib import Path
from typing import List

import numpy as np
import torch

from samed2.choices import PropagationOptions
from samed2.device import autocast
from samed2.errors import BenchError
from samed2.model import SAM2Model
from samed2.presets import ct_window
from samed2.session import Session
from samed2.volume import Volume
from samed2_tools.bench.common import (
    META_CONFIG,
    MIN_IOU,
    SAM2,
    Bench,
    Measure,
    PartTimes,
    Row,
    mask_iou,
    median,
    quiet,
    skipped_row,
)
from samed2_tools.bench.phantom import liver_box, phantom_slice, sized_model, soft_tissue


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
        our_steps = session.propagate([1], PropagationOptions("up", stop_after_absent=0))
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
