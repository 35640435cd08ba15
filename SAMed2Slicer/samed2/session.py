"""The interactive session: prompts on slices, masks, propagation through the volume with memory.

One session = one (volume, slicing axis, model, intensity preset). Coordinates are slice pixels:
(x, y) = (column, row) of `volume.get_slice(axis, index)` (see samed2.volume). The slices' image
features, and the worker thread every torch call runs on, are the session's SliceFeatures
(samed2.slice_features).
"""
import threading
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch

from samed2.bank import ConfidenceBank
from samed2.chain import BoxChain, IntensityBand
from samed2.choices import SESSION_BACKEND, SESSION_PRECISION, STRATEGIES, PropagationOptions, check_choice
from samed2.confidence import slice_confidence
from samed2.correction import LocalCorrection
from samed2.errors import InputError
from samed2.model import FrameMemory, ImageFeatures, Prediction, SAM2Model
from samed2.model.prompt_encoder import BOX_BOTTOM_RIGHT, BOX_TOP_LEFT, NEGATIVE, POSITIVE
from samed2.model.sam2 import NO_OBJECT_SCORE
from samed2.model_coords import (
    logits_to_slice,
    model_scale,
    preprocess_slices,
    slice_box_to_model,
    slice_points_to_model,
)
from samed2.presets import IntensityPreset, default_preset, get_preset
from samed2.session_state import (
    SlicePrompts,
    SliceResult,
    StackedMemory,
    StepInput,
    TrackedObject,
    grouped,
    pad_prompts,
)
from samed2.slice_features import SliceFeatures
from samed2.strategy import NEEDS_BANK, resolve
from samed2.volume import Volume, checked_axis, put_slice

DEFAULT_CACHE_BYTES = 1024 ** 3
CLICK_CORRECTION = LocalCorrection()


def checked_strategy(strategy: Optional[str], model, bank: Optional[ConfidenceBank]) -> str:
    """The strategy to use: a memory-less model (MedSAM-Lite) can only chain boxes, without a bank."""
    if not getattr(model, "has_memory", True):
        if bank is not None:
            raise InputError("a confidence bank needs a model with memory (SAMed-2); this model has none")
        if strategy not in (None, "box-chain"):
            raise InputError(f"strategy {strategy!r} needs a model with memory; "
                             "this model propagates by box-chain only")
        return "box-chain"
    strategy = resolve(strategy, bank is not None)
    check_choice("strategy", strategy, STRATEGIES)
    if strategy in NEEDS_BANK and bank is None:
        raise InputError(f"strategy {strategy!r} needs SAMed-2's confidence memory bank")
    return strategy


class Session:
    """Interactive segmentation of one volume along one axis: objects prompted with points and boxes on
    slices, their masks, and propagation from the prompted slices through the volume (SAM 2's memory
    tracking, SAMed-2's box chain, or both). Each object is tracked with its own memories; objects
    prompted on the same slices are run together, one batched model call per slice.

    `features` (a SliceFeatures) holds the slices' encodings, the device and the precision that run;
    `precision` and `backend` default to samed2.choices' SESSION_PRECISION and SESSION_BACKEND.
    """

    def __init__(self, volume: Volume, model: SAM2Model, axis: int = 2, preset=None, device: str = "auto",
                 cache_bytes: int = DEFAULT_CACHE_BYTES, bank: Optional[ConfidenceBank] = None,
                 strategy: Optional[str] = None, encode_batch: Optional[int] = None,
                 precision: str = SESSION_PRECISION, backend: str = SESSION_BACKEND, converted_cache=None):
        self.strategy = checked_strategy(strategy, model, bank)
        self.volume, self.axis, self.model = volume, checked_axis(axis), model
        self.window = self._resolve_preset(preset).resolve(volume.array)
        self.features = SliceFeatures(volume, model, self.axis, self.window, device, precision, backend,
                                      converted_cache, cache_bytes, encode_batch, bank)
        self.image_size = model.image_size
        self.letterbox = model.preprocess == "letterbox"  # MedSAM-Lite keeps the slice's aspect ratio
        self.chain = getattr(model, "box_chain", BoxChain())
        self.calibration = getattr(model, "iou_calibration", None)
        self.num_slices = volume.num_slices(self.axis)
        self.slice_shape = volume.slice_shape(self.axis)
        self.objects: Dict[int, TrackedObject] = {}

    def _resolve_preset(self, preset) -> IntensityPreset:
        if isinstance(preset, IntensityPreset):
            return preset
        if preset in (None, "auto"):
            return default_preset(self.volume.array, self.volume.modality)
        return get_preset(preset, self.volume.array, self.volume.modality)

    def close(self) -> None:
        self.features.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def precompute(self, center: int, radius: int = 4) -> None:
        """Encode the slices around `center` in the background (SliceFeatures.precompute)."""
        self._check_index(center)
        self.features.precompute(center, radius)

    def wait_idle(self) -> None:
        """Wait until the background work (precompute) is done."""
        self.features.wait_idle()

    # ---- prompts --------------------------------------------------------------------------

    def _object(self, obj_id: int) -> TrackedObject:
        return self.objects.setdefault(obj_id, TrackedObject())

    def _check_index(self, index: int) -> None:
        if not 0 <= index < self.num_slices:
            raise InputError(f"slice {index} is outside the volume (0..{self.num_slices - 1} along axis {self.axis})")

    def add_prompt(self, obj_id: int, index: int, points=(), box=None, replace: bool = False) -> np.ndarray:
        """Add clicks (x, y, positive) and/or a box (x0, y0, x1, y1) on a slice; returns the new mask.

        Points accumulate per slice; a box replaces the slice's box; `replace` starts the slice over.
        """
        return self.add_prompts(index, {obj_id: (points, box)}, replace)[obj_id]

    def add_prompts(self, index: int, prompts: Dict[int, tuple], replace: bool = False) -> Dict[int, np.ndarray]:
        """Prompts of several objects on one slice, {obj_id: (points, box)} as in add_prompt, decoded
        together; returns each object's new mask. If any prompt is invalid, nothing changes."""
        self._check_index(index)
        if not prompts:
            raise InputError("no prompts given")
        merged = {obj_id: self._merged_prompts(obj_id, index, points, box, replace)
                  for obj_id, (points, box) in prompts.items()}
        objs = {obj_id: self._object(obj_id) for obj_id in merged}
        for obj_id, slice_prompts in merged.items():
            objs[obj_id].prompts[index] = slice_prompts
        return self.features.call(self._predict_prompted, objs, index, replace)

    def _merged_prompts(self, obj_id: int, index: int, points, box, replace: bool) -> SlicePrompts:
        """The object's prompts on the slice with these added (checked; the object is not changed)."""
        obj = self.objects.get(obj_id)
        old = None if replace or obj is None else obj.prompts.get(index)
        merged = SlicePrompts() if old is None else SlicePrompts(list(old.points), old.box)
        for x, y, positive in points:
            self._check_point(x, y)
            merged.points.append((float(x), float(y), bool(positive)))
        if box is not None:
            slice_box_to_model(box, self.slice_shape, self.image_size)  # validates the box
            merged.box = tuple(float(v) for v in box)
        if not merged.points and merged.box is None:
            raise InputError("a prompt needs at least one point or a box")
        if merged.box is None and (getattr(self.model, "needs_box", False) or
                                   (obj is not None and obj.clicks_correct(index))):
            merged.mask_box = self._box_for_clicks(obj, index)
        return merged

    def _box_for_clicks(self, obj: Optional[TrackedObject], index: int) -> Tuple[float, ...]:
        """A box-only model's box for clicks on a slice without one: the chain's box of the slice's mask,
        else of the object's nearest segmented slice."""
        masks = {} if obj is None else {k: m for k, m in obj.masks.items() if m.any()}
        if not masks:
            raise InputError("this model (MedSAM-Lite) was trained with box prompts only: draw a box around the "
                             "object first; clicks then correct the slices it segments")
        nearest = min(masks, key=lambda k: (abs(k - index), k))
        return self.chain.box(masks[nearest], model_scale(self.slice_shape, self.image_size, self.letterbox))

    def _check_point(self, x: float, y: float) -> None:
        rows, cols = self.slice_shape
        if not (-0.5 <= x <= cols - 0.5 and -0.5 <= y <= rows - 0.5):
            raise InputError(f"point ({x:.1f}, {y:.1f}) is outside the {cols}x{rows} slice")

    def _prompt_tensors(self, prompts: SlicePrompts):
        coords, labels = [], []
        if prompts.box is not None:
            box = slice_box_to_model(prompts.box, self.slice_shape, self.image_size, self.letterbox).reshape(2, 2)
            coords += box.tolist()
            labels += [BOX_TOP_LEFT, BOX_BOTTOM_RIGHT]
        if prompts.points:
            xy = slice_points_to_model([p[:2] for p in prompts.points], self.slice_shape, self.image_size,
                                           self.letterbox)
            coords += xy.reshape(-1, 2).tolist()
            labels += [POSITIVE if p[2] else NEGATIVE for p in prompts.points]
        return (torch.tensor([coords], dtype=torch.float32, device=self.features.device),
                torch.tensor([labels], dtype=torch.int32, device=self.features.device))

    def _predict_prompted(self, objs: Dict[int, TrackedObject], index: int, restart: bool) -> Dict[int, np.ndarray]:
        image = self.features.embedding(index)
        self._encode_pending([obj for obj in objs.values() if index in obj.non_cond])  # tracked: reads memory
        corrected = {obj_id: self._corrected_by_clicks(obj, index, image) for obj_id, obj in objs.items()
                     if obj.prompts[index].mask_box is not None}
        decoded = {obj_id: obj for obj_id, obj in objs.items() if obj_id not in corrected}
        steps = [self._prompted_step(obj, index, restart) for obj in decoded.values()]
        with torch.no_grad(), self.features.autocast():
            outputs = self._track(index, image, steps, encode_memory=False)
        masks = {}
        for (obj_id, obj), (pred, _) in zip(decoded.items(), outputs):
            masks[obj_id] = self._store(obj, index, pred)
            self._mark_prompted(obj, index, pred)
        return {obj_id: corrected[obj_id] if obj_id in corrected else masks[obj_id] for obj_id in objs}

    @staticmethod
    def _mark_prompted(obj: TrackedObject, index: int, pred: Prediction) -> None:
        obj.non_cond.pop(index, None)
        obj.cond.pop(index, None)
        obj.locked.discard(index)
        obj.pending[index] = pred
        obj.dirty.add(index)

    def _corrected_by_clicks(self, obj: TrackedObject, index: int, image: ImageFeatures) -> np.ndarray:
        """Clicks that correct the slice's mask (SlicePrompts.mask_box): local edits (samed2.correction); a
        box-only model's clicks on a slice without a mask: decoded with the nearest slice's box."""
        prompts, current = obj.prompts[index], obj.masks.get(index)

        def decode(box, points) -> np.ndarray:
            step = StepInput({}, {}, first=True, prompt=self._prompt_tensors(SlicePrompts(list(points), box)))
            pred, _ = self._track_batch(index, image, [step], encode_memory=False)[0]
            logits = logits_to_slice(pred.low_res_masks.float().cpu(), self.slice_shape, self.letterbox)
            return (logits[0, 0] > 0).numpy()

        with torch.no_grad(), self.features.autocast():
            if current is None or not current.any():
                mask = decode(prompts.mask_box, prompts.points)
            else:
                scale = model_scale(self.slice_shape, self.image_size, self.letterbox)
                mask = CLICK_CORRECTION.corrected(current, prompts.points, decode, scale, prompts.mask_box)
            pred = self._mask_as_output(image, mask)
        obj.logits[index] = pred.low_res_masks.float()
        obj.masks[index] = mask
        self._mark_prompted(obj, index, pred)
        return mask

    def _prompted_step(self, obj: TrackedObject, index: int, restart: bool) -> StepInput:
        def others(frames):
            return {t: m for t, m in frames.items() if t != index}
        return StepInput(others(obj.cond), others(obj.non_cond), obj.reverse.get(index, False),
                         first=index not in obj.non_cond, prompt=self._prompt_tensors(obj.prompts[index]),
                         previous=None if restart else obj.logits.get(index))

    def _track(self, index: int, image: ImageFeatures, steps: List[StepInput],
               encode_memory: bool = True) -> List[Tuple[Prediction, Optional[FrameMemory]]]:
        """Each step's (Prediction, FrameMemory or None), with one model call per group of steps with equal keys."""
        outputs = {}
        for group in grouped(range(len(steps)), lambda i: steps[i].key()):
            outputs.update(zip(group, self._track_batch(index, image, [steps[i] for i in group], encode_memory)))
        return [outputs[i] for i in range(len(steps))]

    def _track_batch(self, index: int, image: ImageFeatures, steps: List[StepInput], encode_memory: bool = True):
        """One model call for steps with equal keys: each step's (Prediction, FrameMemory or None)."""
        n, like = len(steps), steps[0]
        points = labels = lengths = None
        if like.prompt is not None:
            points, labels, lengths = pad_prompts([s.prompt for s in steps])
        previous = None if like.previous is None else torch.cat([s.previous for s in steps])
        conditioned = self.features.bank_conditioned(index, image) if like.first else None
        extra = self.features.bank_memory(index, image) if not like.first and self.strategy == "hybrid" else None
        pred, memory = self.model.track_step(
            index, image.expand(n), StackedMemory([s.cond for s in steps]), StackedMemory([s.non_cond for s in steps]),
            self.num_slices, points, labels, prev_mask_logits=previous, reverse=like.reverse,
            is_init_cond_frame=like.first, num_points=lengths, run_memory_encoder=encode_memory,
            extra_memory=None if extra is None else tuple(x.expand(n, -1, -1) for x in extra),
            conditioned=None if conditioned is None else conditioned.expand(n, -1, -1, -1))
        return [(pred.select(slice(i, i + 1)), memory and memory.select(slice(i, i + 1))) for i in range(n)]

    def frame_memory(self, obj_id: int, index: int) -> FrameMemory:
        """The stored memory of an object's prompted, hand-edited or tracked slice (encoded now if pending)."""
        obj = self.objects[obj_id]
        if index in obj.pending:
            self.features.call(self._encode_pending, [obj])
        memory = obj.cond.get(index) or obj.non_cond.get(index)
        if memory is None:
            raise InputError(f"object {obj_id} has no result on slice {index}")
        return memory

    def _encode_pending(self, objs) -> None:
        """Encode the memories of prompted slices, which tracking reads. Worker thread only."""
        for obj in objs:
            for index, pred in list(obj.pending.items()):
                with torch.no_grad(), self.features.autocast():
                    memory = self.model.frame_memory(self.features.embedding(index), pred, from_points=True)
                obj.cond[index] = memory.stored()
                del obj.pending[index]

    def _store(self, obj: TrackedObject, index: int, pred: Prediction) -> np.ndarray:
        present = bool((pred.object_score_logits > 0).all())
        logits = pred.low_res_masks.float()
        mask = (logits_to_slice(logits.cpu(), self.slice_shape, self.letterbox)[0, 0] > 0).numpy() if present else \
            np.zeros(self.slice_shape, dtype=bool)
        obj.logits[index] = logits
        obj.masks[index] = mask
        obj.confidence[index] = slice_confidence(float(pred.ious.max()), float(pred.object_score_logits.min()),
                                                 bool(mask.any()), self.calibration)
        return mask

    def set_mask(self, obj_id: int, index: int, mask: np.ndarray) -> None:
        """A hand-edited slice: kept as drawn, used as a conditioning frame, never recomputed."""
        self._check_index(index)
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != self.slice_shape:
            raise InputError(f"mask shape {mask.shape} does not match the slice shape {self.slice_shape}")
        obj = self._object(obj_id)
        self.features.call(self._condition_on_mask, obj, index, mask)
        obj.masks[index] = mask.copy()
        obj.confidence[index] = 1.0
        obj.locked.add(index)
        obj.dirty.add(index)
        obj.prompts.pop(index, None)

    def _condition_on_mask(self, obj: TrackedObject, index: int, mask: np.ndarray) -> None:
        image = self.features.embedding(index)
        with torch.no_grad(), self.features.autocast():
            pred = self._mask_as_output(image, mask)
            memory = self.model.frame_memory(image, pred, from_points=False)
        obj.non_cond.pop(index, None)
        obj.pending.pop(index, None)
        obj.cond[index] = memory.stored()
        obj.logits[index] = pred.low_res_masks.float()

    def _mask_as_output(self, image: ImageFeatures, mask: np.ndarray) -> Prediction:
        """A slice-size mask as the model's output for the slice."""
        big = preprocess_slices([mask.astype(np.float32)], self.image_size, letterbox=self.letterbox)[:, :1] > 0.5
        return self.model.mask_as_output(image, big.to(self.features.device))

    def clear_slice(self, obj_id: int, index: int) -> None:
        """Forget the prompts, edits and result of one slice of an object."""
        obj = self._object(obj_id)
        for store in (obj.prompts, obj.cond, obj.pending, obj.non_cond, obj.logits, obj.masks, obj.confidence):
            store.pop(index, None)
        obj.locked.discard(index)
        obj.dirty.discard(index)

    # ---- propagation ----------------------------------------------------------------------

    def propagate(self, obj_ids=None, options: PropagationOptions = PropagationOptions(),
                  cancel: Optional[threading.Event] = None) -> Iterator[SliceResult]:
        """Propagate from the prompted slices, streaming each slice's result as it is computed.

        Runs from the slices prompted since the last propagation (all prompted slices the first
        time) outward in `options.direction`, up to the limits [options.start, options.stop], the next
        prompted or hand-edited slice (half way to it when going both ways), or `options.stop_after_absent`
        consecutive slices where the object is predicted absent. `cancel` is checked between slices;
        results so far are kept.
        Objects with the same walks (prompted on the same slices) are tracked together, one batched
        model call per slice, so their results interleave slice by slice.
        """
        low, high = self._limits(options.start, options.stop)
        ids = list(self.objects) if obj_ids is None else list(obj_ids)
        for obj_id in ids:
            obj = self.objects.get(obj_id)
            if obj is None or not any(low <= f <= high for f in obj.fixed()):
                raise InputError(f"object {obj_id} has no prompted slice between slices {low} and {high} "
                                 "to propagate from")
        walks = {obj_id: self._walks(self.objects[obj_id], options.direction, low, high) for obj_id in ids}
        for group in grouped(ids, lambda obj_id: tuple(walks[obj_id])):  # objects with the same walks in lockstep
            objs = {obj_id: self.objects[obj_id] for obj_id in group}
            for walk in walks[group[0]]:
                yield from self._run_walk(objs, walk, options.stop_after_absent, cancel)
                if cancel is not None and cancel.is_set():
                    return
            for obj in objs.values():
                obj.dirty.clear()

    def _limits(self, start, stop) -> Tuple[int, int]:
        low = 0 if start is None else start
        high = self.num_slices - 1 if stop is None else stop
        if low > high:
            low, high = high, low
        self._check_index(low)
        self._check_index(high)
        return low, high

    def _walks(self, obj: TrackedObject, direction: str, low: int, high: int):
        """(seed, step, last slice) for each walk; neighbours of fixed slices split the gap between them."""
        fixed = obj.fixed()
        seeds = sorted(obj.dirty & set(fixed)) or fixed
        walks = []
        for seed in seeds:
            if not low <= seed <= high:
                continue
            above = [f for f in fixed if f > seed]
            below = [f for f in fixed if f < seed]
            if direction in ("up", "both"):
                end = high if not above else above[0] - 1
                if above and direction == "both":
                    end = (seed + above[0]) // 2
                walks.append((seed, 1, min(end, high)))
            if direction in ("down", "both"):
                end = low if not below else below[-1] + 1
                if below and direction == "both":
                    end = (below[-1] + seed) // 2 + 1
                walks.append((seed, -1, max(end, low)))
        return walks

    def _run_walk(self, objs: Dict[int, TrackedObject], walk, stop_after_absent, cancel) -> Iterator[SliceResult]:
        """One walk of several objects together, one job per slice; each object stops on its own."""
        seed, step, last = walk
        active, absent = dict(objs), dict.fromkeys(objs, 0)
        bands = {obj_id: self._intensity_band(obj, seed) for obj_id, obj in objs.items()}
        for index in range(seed + step, last + step, step):
            if not active or (cancel is not None and cancel.is_set()):
                return
            results = self.features.call(self._track_slice, list(active.values()), index, step,
                                 [bands[obj_id] for obj_id in active])
            for obj_id, (mask, present, confidence) in zip(list(active), results):
                yield SliceResult(obj_id, index, mask, present, confidence)
                absent[obj_id] = 0 if present else absent[obj_id] + 1
                if (stop_after_absent and absent[obj_id] >= stop_after_absent) or \
                        (self.strategy == "box-chain" and not mask.any()):
                    del active[obj_id]

    def _intensity_band(self, obj: TrackedObject, seed: int) -> Optional[IntensityBand]:
        """The intensities of the object on the walk's seed slice, which box-chaining checks slices against."""
        if self.strategy != "box-chain" or not self.chain.min_in_band or seed not in obj.masks:
            return None
        return IntensityBand.of(self.volume.get_slice(self.axis, seed), obj.masks[seed])

    def _track_slice(self, objs: List[TrackedObject], index: int, step: int,
                     bands: List[Optional[IntensityBand]]) -> List[Tuple[np.ndarray, bool, float]]:
        """Track objects onto a slice: each one's (mask, present, confidence)."""
        reverse = step < 0
        self._encode_pending(objs)
        image = self.features.embedding(index)
        self.features.encode_soon(index + step)
        with torch.no_grad(), self.features.autocast():
            if self.strategy == "box-chain":
                outputs = [self._box_chain_step(obj, index, step, image) for obj in objs]
            else:
                outputs = self._track(index, image, [StepInput(obj.cond, obj.non_cond, reverse) for obj in objs])
        results = []
        for obj, band, (pred, memory) in zip(objs, bands, outputs):
            obj.non_cond[index] = memory.stored()
            obj.reverse[index] = reverse
            mask = self._store(obj, index, pred)
            if self.strategy == "box-chain" and not self._chain_continues(obj, index, step, pred, band):
                mask = self._chain_end(obj, index, pred)
            results.append((mask, bool((pred.object_score_logits > 0).all()) and mask.any(), obj.confidence[index]))
        return results

    def _chain_continues(self, obj: TrackedObject, index: int, step: int, pred: Prediction,
                         band: Optional[IntensityBand]) -> bool:
        mask = obj.masks[index]
        image = self.volume.get_slice(self.axis, index) if band is not None else None
        check = self.chain.check(obj.masks[index - step], mask, float(pred.ious.max()), image, band)
        return self.chain.continues(mask, check)

    def _chain_end(self, obj: TrackedObject, index: int, pred: Prediction) -> np.ndarray:
        """The object ended before this slice: its result there is empty."""
        obj.logits[index] = torch.full_like(obj.logits[index], NO_OBJECT_SCORE)
        obj.masks[index] = np.zeros(self.slice_shape, dtype=bool)
        obj.confidence[index] = slice_confidence(float(pred.ious.max()), float(pred.object_score_logits.min()),
                                                 False, self.calibration)
        return obj.masks[index]

    def _box_chain_step(self, obj: TrackedObject, index: int, step: int, image: ImageFeatures):
        """SAMed-2's image mode: the previous slice's mask box as the prompt, with bank memory (MedSAM-Lite:
        the box widened by each of the model's margins, without memory; the best predicted mask is kept)."""
        previous = obj.masks.get(index - step)
        scale = model_scale(self.slice_shape, self.image_size, self.letterbox)
        boxes = [] if previous is None else self.chain.boxes(previous, scale)
        if not boxes:
            pred = self.model.mask_as_output(image, torch.zeros(1, 1, self.image_size, self.image_size,
                                                                  device=self.features.device))
            return pred, self.model.frame_memory(image, pred, from_points=False)
        steps = [StepInput({}, {}, first=True, prompt=self._prompt_tensors(SlicePrompts(box=box))) for box in boxes]
        outputs = self._track_batch(index, image, steps)
        return max(outputs, key=lambda output: float(output[0].ious.max()))

    # ---- results --------------------------------------------------------------------------

    def confidences(self, obj_id: int) -> Dict[int, float]:
        """slice -> confidence of the object's result there (prompted, hand-edited, propagated, or where
        propagation stopped), in slice order."""
        return dict(sorted(self.objects[obj_id].confidence.items()))

    def prompted_slices(self, obj_id: int) -> List[int]:
        """The object's slices with prompts or hand edits (not propagated)."""
        return self.objects[obj_id].fixed()

    def mask_volume(self, obj_id: int) -> np.ndarray:
        """The object's mask on the volume grid, array order [k, j, i]."""
        out = np.zeros(self.volume.array.shape, dtype=bool)
        for index, mask in self.objects[obj_id].masks.items():
            put_slice(out, self.axis, index, mask)
        return out

    def label_volume(self) -> np.ndarray:
        """All objects as one label map (object id per voxel; later objects win overlaps)."""
        out = np.zeros(self.volume.array.shape, dtype=np.uint16)
        for obj_id in sorted(self.objects):
            out[self.mask_volume(obj_id)] = obj_id
        return out
