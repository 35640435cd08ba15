"""Slice embeddings kept under a byte budget, least recently used evicted first, in half precision."""
from collections import OrderedDict

import torch

from samed2.model import ImageFeatures

STORAGE_DTYPE = torch.float16


def as_stored(x):
    """Features (a tensor or ImageFeatures) at the precision the cache hands them out with: rounded to
    STORAGE_DTYPE, back in float32. A slice's result then never depends on whether it came from the cache."""
    return x.to(dtype=STORAGE_DTYPE).to(dtype=torch.float32)


def _nbytes(features: ImageFeatures) -> int:
    return sum(t.numel() * t.element_size() for t in [*features.high_res, features.features])


class EmbeddingCache:
    """slice index -> ImageFeatures (batch of one). The shared position encoding is stored once.

    The slice read last is also kept as it was handed out (outside the budget: one slice), because
    clicks come in runs on one slice and converting it back from half precision costs a click
    several milliseconds.
    """

    def __init__(self, budget_bytes: int):
        self.budget_bytes = budget_bytes
        self._items: "OrderedDict[int, ImageFeatures]" = OrderedDict()
        self._pos = None
        self.nbytes = 0
        self.item_bytes = 0  # size of one slice's embedding, once one was stored
        self._last = None  # ((index, device, dtype), ImageFeatures) of the last get

    def __contains__(self, index: int) -> bool:
        return index in self._items

    def __len__(self) -> int:
        return len(self._items)

    def get(self, index: int, device, dtype=torch.float32):
        item = self._items.get(index)
        if item is None:
            return None
        self._items.move_to_end(index)
        key = (index, torch.device(device), dtype)
        if self._last is None or self._last[0] != key:
            self._last = key, ImageFeatures([t.to(device=device, dtype=dtype) for t in item.high_res],
                                            item.features.to(device=device, dtype=dtype),
                                            self._pos.to(device=device, dtype=dtype))
        return self._last[1]

    def put(self, index: int, features: ImageFeatures) -> None:
        """Store (evicting the least recently used; an item larger than the whole budget is not kept)."""
        compact = ImageFeatures([t.detach().to(STORAGE_DTYPE) for t in features.high_res],
                                features.features.detach().to(STORAGE_DTYPE), None)
        if self._pos is None:
            self._pos = features.pos.detach().to(STORAGE_DTYPE)
        if index in self._items:
            self.nbytes -= _nbytes(self._items.pop(index))
        self._forget_last(index)
        self._items[index] = compact
        self.item_bytes = _nbytes(compact)
        self.nbytes += self.item_bytes
        while self.nbytes > self.budget_bytes:
            index, evicted = self._items.popitem(last=False)
            self.nbytes -= _nbytes(evicted)
            self._forget_last(index)

    def _forget_last(self, index: int) -> None:
        if self._last is not None and self._last[0][0] == index:
            self._last = None
