"""The image features of a volume's slices, for one model: what a Session's prompts and propagation read.

Every torch call runs on one worker thread (samed2.worker), in the session's device and precision; a
device out-of-memory retries in smaller batches, then moves everything to the CPU. Features are cached
under a byte budget (samed2.embedding_cache) and encoded ahead of the user in the background. With
SAMed-2's confidence bank, each slice's bank entry is chosen when the slice is encoded, and its
bank-attended features are kept for the slice's next clicks.
"""
import logging
from collections import OrderedDict
from typing import Dict, List, Optional

import numpy as np
import torch

from samed2.backends import image_encoder
from samed2.bank import ConfidenceBank
from samed2.device import autocast, is_out_of_memory, pick_device, pick_precision
from samed2.embedding_cache import EmbeddingCache, as_stored
from samed2.model import ImageFeatures, SAM2Model
from samed2.model_coords import preprocess_slices
from samed2.worker import BACKGROUND, TorchWorker

log = logging.getLogger(__name__)

BANK_ATTENDED_SLICES = 16  # slices whose bank-attended features are kept (4 MB each at 1024 px)


class SliceFeatures:
    """Encoded slices of one (volume, axis, intensity window) for one model, and the worker that runs it.

    `device` and `precision` are the asked-for names ("auto" included); the attributes of the same names
    are what runs, and change to the CPU's after a device out-of-memory.
    """

    def __init__(self, volume, model: SAM2Model, axis: int, window, device: str, precision: str, backend: str,
                 converted_cache, cache_bytes: int, encode_batch: Optional[int], bank: Optional[ConfidenceBank]):
        self.volume, self.axis, self.window, self.bank = volume, axis, window, bank
        self.device = pick_device(device)
        self._precision_asked = precision
        self.precision = pick_precision(precision, self.device)  # "fp32" or "bf16" (autocast)
        self.model = model.to(self.device).eval()
        # torch, or OpenVINO on the CPU ("auto": where it measures faster); converted_cache: see samed2.backends
        self.image_encoder = image_encoder(model.image_encoder, backend, self.device, self.precision, converted_cache)
        self.letterbox = model.preprocess == "letterbox"  # MedSAM-Lite keeps the slice's aspect ratio
        self.num_slices = volume.num_slices(axis)
        self._pair = 2 if model.needs_pairs else 1
        self.encode_batch = max(self._pair, encode_batch or (8 if self.device.type == "cuda" else self._pair))
        self.cache = EmbeddingCache(cache_bytes)
        self._bank_attended: "OrderedDict[int, torch.Tensor]" = OrderedDict()
        self._bank_choice: Dict[int, int] = {}  # slice -> its bank entry, chosen when the slice is encoded
        self._worker = TorchWorker()

    def close(self) -> None:
        self._worker.close()

    def autocast(self):
        return autocast(self.device, self.precision)

    # ---- the worker -----------------------------------------------------------------------

    def call(self, fn, *args):
        """Run a job on the worker and wait for it; a device out-of-memory moves to the CPU and retries."""
        return self._worker.run(self._guarded, fn, *args)

    def _guarded(self, fn, *args):
        try:
            return fn(*args)
        except RuntimeError as exc:
            if not is_out_of_memory(exc) or self.device.type == "cpu":
                raise
            self._fall_back_to_cpu()
            return fn(*args)

    def _fall_back_to_cpu(self) -> None:
        log.warning("out of memory on %s: continuing on the CPU (slower)", self.device)
        self._bank_attended.clear()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        self.device = torch.device("cpu")
        self.precision = pick_precision(self._precision_asked, self.device)
        self.model.to(self.device)
        self.encode_batch = self._pair

    def wait_idle(self) -> None:
        self._worker.drain()

    # ---- encoding -------------------------------------------------------------------------

    def group(self, index: int) -> List[int]:
        """Slices encoded together with `index`: SAMed-2's fixed pair (2p, 2p+1), else a batch of one."""
        if self._pair == 1:
            return [index]
        first = index - index % 2
        return [first, min(first + 1, self.num_slices - 1)]

    def _encode(self, indices: List[int]) -> List[ImageFeatures]:
        """Encode slices; on device out-of-memory retry in smaller batches, then on the CPU."""
        try:
            return self._encode_now(indices)
        except RuntimeError as exc:
            if not is_out_of_memory(exc):
                raise
            if len(indices) <= self._pair:
                if self.device.type == "cpu":
                    raise
                self._fall_back_to_cpu()
                return self._encode_now(indices)
            half = max(self._pair, len(indices) // 2 // self._pair * self._pair)
            self.encode_batch = half
            log.warning("out of memory encoding %d slices on %s: retrying %d at a time",
                        len(indices), self.device, half)
            return self._encode(indices[:half]) + self._encode(indices[half:])

    def _encode_now(self, indices: List[int]) -> List[ImageFeatures]:
        normalize = "imagenet" if self.model.preprocess == "imagenet" else "none"
        images = preprocess_slices([self._slice_image(i) for i in indices], self.model.image_size, normalize,
                                   letterbox=self.letterbox)
        with torch.no_grad(), self.autocast():
            features = self.model.encode_images(images.to(self.device), self.image_encoder)
        return [features.select(slice(n, n + 1)) for n in range(len(indices))]

    def _slice_image(self, index: int) -> np.ndarray:
        return self.window.apply(self.volume.get_slice(self.axis, index))

    def embedding(self, index: int) -> ImageFeatures:
        """Cached features of one slice (encoding its group now if needed). Worker thread only."""
        cached = self.cache.get(index, self.device)
        if cached is not None:
            return cached
        group = self.group(index)
        features = self._encode(group)
        self._remember(group, features)
        return as_stored(features[group.index(index)])

    def _remember(self, indices: List[int], features: List[ImageFeatures]) -> None:
        """Cache encoded slices and, with a bank, choose each one's entry (from the features as the cache
        gives them back): one pass over the bank's keys for the whole batch."""
        for i, f in zip(indices, features):
            self.cache.put(i, f)
        if self.bank is not None and len(self.bank):
            stored = as_stored(torch.cat([f.features for f in features]))
            self._bank_choice.update(zip(indices, self.bank.select(stored, k=1)[:, 0].tolist()))

    # ---- ahead of the user ----------------------------------------------------------------

    def _encode_ahead(self, groups: List[List[int]]) -> None:
        todo = [i for group in groups if any(g not in self.cache for g in group) for i in group]
        for start in range(0, len(todo), self.encode_batch):
            batch = todo[start: start + self.encode_batch]
            self._remember(batch, self._encode(batch))

    def encode_soon(self, index: int) -> None:
        """Queue the encoding of `index`'s group in the background, if it is a slice and not cached."""
        if 0 <= index < self.num_slices and index not in self.cache:
            self._worker.submit(self._encode_ahead, [self.group(index)], priority=BACKGROUND)

    def _attend_bank_ahead(self, index: int) -> None:
        with torch.no_grad(), self.autocast():
            self.bank_conditioned(index, self.embedding(index))

    def precompute(self, center: int, radius: int = 4) -> None:
        """Encode slices around `center` in the background, nearest first, in whole encoder groups,
        no more than the cache can hold (so the nearest are not evicted by farther ones). With a bank,
        `center`'s bank attention is computed too, so a first click there is a decoder run."""
        order = sorted(range(max(0, center - radius), min(self.num_slices, center + radius + 1)),
                       key=lambda i: abs(i - center))
        groups, room = [], self._cache_room()
        for i in order:
            group = self.group(i)
            if group in groups:
                continue
            room -= len(set(group))
            if room < 0:
                break
            groups.append(group)
        per_job = max(1, self.encode_batch // len(groups[0])) if groups else 1
        for start in range(0, len(groups), per_job):
            self._worker.submit(self._encode_ahead, groups[start: start + per_job], priority=BACKGROUND)
            if start == 0 and self.bank is not None:  # right after the slice's own group
                self._worker.submit(self._attend_bank_ahead, center, priority=BACKGROUND)

    def _cache_room(self) -> int:
        """How many slices the cache holds (unknown until one was cached: then assume all)."""
        if not self.cache.item_bytes:
            return self.num_slices
        return self.cache.budget_bytes // self.cache.item_bytes

    # ---- the confidence bank ---------------------------------------------------------------

    def bank_conditioned(self, index: int, image: ImageFeatures) -> Optional[torch.Tensor]:
        """A slice's features after attending to its bank entry (SAMed-2's image mode), kept for the
        slice's next clicks: they depend on the slice and the bank only. None without a bank."""
        if self.bank is None or len(self.bank) == 0:
            return None
        if index in self._bank_attended:
            self._bank_attended.move_to_end(index)
            return self._bank_attended[index]
        attended = self.model.conditioned_features(index, image, {}, {}, self.num_slices, is_init_cond_frame=True,
                                                   extra_memory=self.bank_memory(index, image))
        self._bank_attended[index] = attended
        while len(self._bank_attended) > BANK_ATTENDED_SLICES:
            self._bank_attended.popitem(last=False)
        return attended

    def bank_memory(self, index: int, image: ImageFeatures):
        """SAMed-2's bank memory for one slice: its best entry by similarity + confidence."""
        if self.bank is None or len(self.bank) == 0:
            return None
        if index not in self._bank_choice:
            self._bank_choice[index] = int(self.bank.select(image.features, k=1)[0, 0])
        return self.bank.memory(torch.tensor([[self._bank_choice[index]]]), self.device)
