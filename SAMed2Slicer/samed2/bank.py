"""SAMed-2's confidence memory bank: stored (memory, IoU, key) entries retrieved by similarity + confidence.

Layout (also the safetensors file layout):
  keys      (N, D) unit-normalised retrieval keys, D = C * h * w, in half precision (float16) or, where
            a short measurement at load finds bfloat16 products faster, bfloat16 (one copy either way)
  features  (N, C_mem, h, w) memory features (a bank built here keeps them in bfloat16, as the
            reference does; an imported bank keeps the precision it came with)
  pos       (N, C_mem, h, w) their position encodings
  ious      (N,) predicted IoU of each entry (float32)
Keys are the flattened stride-16 image features in token order (h*w, C), the order the reference
uses for its query, so retrieval for a batch is one matmul and nothing is re-stacked per call.

Retrieval reads few bytes: a compact index of the keys (KeyIndex, 1/16 of their size, built when the
bank is made) finds the entries that can be among the best; only those keys are read, and re-scored in
float32, so the choice is the float32 choice whenever the index errs by less than its margin.
"""
import contextlib
import functools
import io
import math
import pickle
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from scipy.linalg import hadamard

from samed2.device import synchronize
from samed2.errors import WeightsError
from samed2.files import atomic_output, check_output_path

DEFAULT_CAPACITY = 640
ROUGH_ERROR = {torch.float16: 2e-3, torch.bfloat16: 5e-3}
"""Bounds on the error of the rough similarity of unit keys against float32 on the same stored keys. It
comes from rounding the query and the result (relative 2^-11 each in float16, 2^-9 in bfloat16; the
stored keys are what float32 re-scores too), so at most 9.8e-4 and 3.9e-3 plus float32 accumulation.
A kernel whose error on the probe exceeds a quarter of its bound is not used."""
PROBE_ENTRIES = 48  # keys of the bank's width timed per kernel when a bank loads (96 MB at 1024 px: beyond caches)


@dataclass(frozen=True)
class KeyKernel:
    """How the rough similarity is computed: the stored keys' dtype, and the query rows in one product
    (one pass over the keys) or one matrix-vector product per row (torch's kernels differ by CPU)."""

    dtype: torch.dtype
    per_row: bool = False

    @property
    def name(self) -> str:
        return f"{str(self.dtype).removeprefix('torch.')}-{'rows' if self.per_row else 'batch'}"

    @property
    def error(self) -> float:
        return ROUGH_ERROR[self.dtype]

    def __call__(self, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        query = query.to(self.dtype)
        if self.per_row:
            return torch.stack([keys @ row for row in query]).float()
        return (query @ keys.t()).float()


FILE_KERNEL = KeyKernel(torch.float16)  # the precision of the keys in files
KERNELS = (FILE_KERNEL, KeyKernel(torch.float16, per_row=True), KeyKernel(torch.bfloat16))


@functools.lru_cache(maxsize=None)
def fastest_kernel(key_dim: int, device: str = "cpu", queries: int = 2) -> KeyKernel:
    """The kernel that scores `queries` unit keys (a pair of slices) fastest against PROBE_ENTRIES random
    stored keys of width key_dim on this device (best of 3 rounds, candidates interleaved), among those
    accurate to their error bound here."""
    gen = torch.Generator().manual_seed(0)
    stored = F.normalize(torch.randn(PROBE_ENTRIES, key_dim, generator=gen), dim=1).to(device)
    query = F.normalize(torch.randn(queries, key_dim, generator=gen), dim=1).to(device)
    by_dtype = {kernel.dtype: stored.to(kernel.dtype) for kernel in KERNELS}
    del stored
    keys = {kernel: by_dtype[kernel.dtype] for kernel in KERNELS}
    seconds = {}
    for kernel in KERNELS:  # the first run also warms up
        seconds[kernel], rough = _timed(kernel, query, keys[kernel])
        checked = 8  # the accuracy check needs only a few of the probe's keys in float32
        if (rough[:, :checked] - query @ keys[kernel][:checked].float().t()).abs().max() > kernel.error / 4:
            del seconds[kernel]
    for _ in range(2):
        for kernel in [k for k in seconds if seconds[k] < 20 * min(seconds.values())]:  # 20x slower: not again
            seconds[kernel] = min(seconds[kernel], _timed(kernel, query, keys[kernel])[0])
    return min(seconds, key=seconds.get, default=FILE_KERNEL)


def _timed(kernel: KeyKernel, query, keys):
    synchronize(keys.device)
    start = time.perf_counter()
    out = kernel(query, keys)
    synchronize(keys.device)
    return time.perf_counter() - start, out


INDEX_REDUCTION = 16  # the index holds 1/16 of the keys' numbers
INDEX_SIGMAS = 4.0  # the index's margin, in standard deviations of its error on unit keys
INDEX_ROWS = 16  # keys turned into index rows at a time (bounds the float32 copy)


class KeyIndex:
    """A compact index of unit keys (a subsampled randomized Hadamard transform, per token): each token's
    C channels, with fixed random signs, are mapped by C/16 of the columns of a C x C Hadamard matrix. The
    dot product of two index rows estimates the cosine of their keys without bias, with a standard
    deviation of at most about sqrt(2 / m) for an index of width m, whatever the keys hold."""

    def __init__(self, tokens: int, channels: int):
        gen = torch.Generator().manual_seed(0)
        width = channels // INDEX_REDUCTION
        columns = torch.randperm(channels, generator=gen)[:width]
        self.mix = torch.from_numpy(hadamard(channels)).float()[:, columns] / math.sqrt(width)
        self.signs = torch.randint(0, 2, (tokens, channels), generator=gen).float() * 2 - 1
        self.width = tokens * width
        self.margin = INDEX_SIGMAS * math.sqrt(2 / self.width)

    @classmethod
    def for_keys(cls, key_dim: int, tokens: int):
        """The index for keys of `tokens` tokens, or None where their channels are too few or not a power of 2."""
        channels = key_dim // max(tokens, 1)
        if channels * tokens != key_dim or channels < INDEX_REDUCTION or channels & (channels - 1):
            return None
        return cls(tokens, channels)

    def rows(self, keys: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Index rows (N, m) in `dtype` of unit keys (N, D), a few keys at a time."""
        out = torch.empty(len(keys), self.width, dtype=dtype, device=keys.device)
        signs, mix = self.signs.to(keys.device), self.mix.to(keys.device)
        for start in range(0, len(keys), INDEX_ROWS):
            chunk = keys[start: start + INDEX_ROWS].float().reshape(-1, *signs.shape)
            out[start: start + INDEX_ROWS] = ((chunk * signs) @ mix).reshape(len(chunk), -1)
        return out


def image_key(features: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) stride-16 features -> (B, h*w*C) unit vectors in the reference's token order."""
    return F.normalize(features.flatten(2).transpose(1, 2).reshape(features.shape[0], -1).float(), dim=1)


class ConfidenceBank:
    def __init__(self, keys, features, pos, ious, capacity: int = DEFAULT_CAPACITY, key_device="cpu",
                 kernel: KeyKernel = FILE_KERNEL):
        self.kernel = kernel
        self.keys = keys.to(device=key_device, dtype=kernel.dtype)
        self.features = features
        self.pos = pos
        self.ious = ious.float().reshape(-1)
        self.capacity = capacity
        if not (len(self.keys) == len(self.features) == len(self.pos) == len(self.ious)):
            raise WeightsError("memory bank tensors disagree in their number of entries")
        self.index = KeyIndex.for_keys(self.keys.shape[1], features.shape[-2] * features.shape[-1])
        self.index_rows = None if self.index is None else self.index.rows(self.keys, kernel.dtype)

    @classmethod
    def empty(cls, key_dim: int, mem_shape, capacity: int = DEFAULT_CAPACITY) -> "ConfidenceBank":
        none = torch.zeros(0, *mem_shape, dtype=torch.bfloat16)
        return cls(torch.zeros(0, key_dim), none, none.clone(), torch.zeros(0), capacity)

    def __len__(self) -> int:
        return len(self.ious)

    # ---- retrieval ------------------------------------------------------------------------

    def similarity(self, keys: torch.Tensor) -> torch.Tensor:
        """Cosine similarity (B, N) of unit keys (B, D) with every stored key by the bank's kernel,
        with errors below kernel.error."""
        return self.kernel(keys.to(self.keys.device), self.keys)

    def exact_similarity(self, keys: torch.Tensor, entries: torch.Tensor) -> torch.Tensor:
        """Cosine similarity (B, len(entries)) in float32 with the chosen stored keys only."""
        keys = keys.to(self.keys.device)
        return (keys @ self.keys[entries.to(self.keys.device)].float().t())

    def select(self, features: torch.Tensor, k: int = None) -> torch.Tensor:
        """Indices (B, k) of the entries scoring highest by max(0, cos) + sigmoid(IoU); k defaults to B."""
        if len(self) == 0:
            raise ValueError("the memory bank is empty")
        k = min(k or features.shape[0], len(self))
        confidence = self.ious.sigmoid().to(self.keys.device)
        return self._top(image_key(features), k, lambda cos, entries: cos.clamp(min=0) + confidence[entries])

    def _top(self, query: torch.Tensor, k: int, score) -> torch.Tensor:
        """Indices (B, k) of the best score(cos, entries): the float32 choice on the stored keys. With an
        index, the entries whose index score is within twice its margin of the k-th best are re-scored
        in float32 (only their keys are read); without one, all entries are scored by the fast
        reduced-precision similarity and those within its error of the k-th best are re-scored."""
        everything = torch.arange(len(self), device=self.keys.device)
        if self.index is not None:
            rough = score(self.kernel(self.index.rows(query, torch.float32), self.index_rows), everything)
            kth = rough.topk(k, dim=1).values[:, -1:]
            candidates = torch.nonzero((rough >= kth - 2 * self.index.margin).any(dim=0))[:, 0]
            exact = score(self.exact_similarity(query, candidates), candidates)
            return candidates[exact.topk(k, dim=1).indices].cpu()
        rough = score(self.similarity(query), everything)
        kth = rough.topk(k, dim=1).values[:, -1:]
        close = torch.nonzero((rough >= kth - 2 * self.kernel.error).any(dim=0))[:, 0]
        rough[:, close] = score(self.exact_similarity(query, close), close)
        return rough.topk(k, dim=1).indices.cpu()

    def memory(self, indices: torch.Tensor, device, dtype=torch.float32):
        """Memory tokens and positions (B, k*h*w, C_mem) for selections made for a batch of B images.

        Reproduces the reference's layout: image b attends to the b-th choice of every image in the
        batch, interleaved token by token (so k must equal B, as in the reference).
        """
        b, k = indices.shape
        if b != k:
            raise ValueError(f"bank memory needs as many choices as images (got {k} for {b})")

        def gather(stack):
            chosen = stack[indices.reshape(-1)].to(device=device, dtype=dtype)  # only these move
            tokens = chosen.flatten(2).transpose(1, 2).reshape(b, k, -1, chosen.shape[1])  # (B, k, hw, C)
            return tokens.permute(1, 2, 0, 3).reshape(k, -1, chosen.shape[1])
        return gather(self.features), gather(self.pos)

    # ---- update ---------------------------------------------------------------------------

    def update(self, features, pos, ious, image_features) -> None:
        """Add new entries: below capacity they are appended; at capacity each replaces its most
        similar stored entry (by retrieval key) if its IoU is higher."""
        keys = image_key(image_features)
        for i in range(len(ious)):
            iou = float(ious[i])
            if len(self) < self.capacity:
                self._append(keys[i], features[i], pos[i], iou)
                continue
            nearest = int(self._top(keys[i: i + 1], 1, lambda cos, entries: cos)[0, 0])
            if iou > float(self.ious[nearest]):
                self._drop(nearest)
                self._append(keys[i], features[i], pos[i], iou)

    def _append(self, key, features, pos, iou):
        self.keys = torch.cat([self.keys, key[None].to(self.keys)])
        if self.index is not None:
            self.index_rows = torch.cat([self.index_rows, self.index.rows(self.keys[-1:], self.index_rows.dtype)])
        self.features = torch.cat([self.features, features[None].to(self.features)])
        self.pos = torch.cat([self.pos, pos[None].to(self.pos)])
        self.ious = torch.cat([self.ious, torch.tensor([iou])])

    def _drop(self, index: int):
        keep = torch.arange(len(self)) != index
        self.keys, self.features, self.pos, self.ious = (
            self.keys[keep.to(self.keys.device)], self.features[keep], self.pos[keep], self.ious[keep])
        if self.index is not None:
            self.index_rows = self.index_rows[keep.to(self.keys.device)]

    # ---- files ----------------------------------------------------------------------------

    def save(self, path) -> None:
        """Write the bank as safetensors (never a partial file)."""
        with atomic_output(path) as temporary:
            save_file({"keys": self.keys.cpu().contiguous(), "features": self.features.contiguous(),
                       "pos": self.pos.contiguous(), "ious": self.ious.contiguous()}, str(temporary),
                      metadata={"format": "samed2-bank", "capacity": str(self.capacity)})

    @classmethod
    def load(cls, path, key_device="cpu") -> "ConfidenceBank":
        """A saved bank, its keys in the precision of the kernel fastest here (see fastest_kernel)."""
        with _readable(path):
            with safe_open(str(path), "pt") as f:
                capacity = int((f.metadata() or {}).get("capacity", DEFAULT_CAPACITY))
                missing = {"keys", "features", "pos", "ious"} - set(f.keys())
                key_dim = None if missing else f.get_slice("keys").get_shape()[-1]
        if missing:
            raise WeightsError(f"{path} lacks the memory bank tensors {sorted(missing)}")
        kernel = fastest_kernel(key_dim, str(key_device))  # before the bank's tensors exist: no extra peak
        with _readable(path):
            tensors = load_file(str(path))
        keys = converted_in_place(tensors.pop("keys"), kernel.dtype)
        return cls(keys, tensors["features"], tensors["pos"], tensors["ious"], capacity, key_device, kernel)

    @classmethod
    def from_entries(cls, entries, capacity: int = DEFAULT_CAPACITY) -> "ConfidenceBank":
        """From the reference's list of [memory features, position encoding, IoU, image embedding]."""
        if not entries:
            raise WeightsError("the memory bank file holds no entries")
        try:
            features = torch.cat([_as_map(e[0]) for e in entries])
            pos = torch.cat([_as_map(e[1]) for e in entries])
            ious = torch.stack([torch.as_tensor(e[2]).float().reshape(()) for e in entries])
            keys = F.normalize(torch.stack([torch.as_tensor(e[3]).float().reshape(-1) for e in entries]), dim=1)
        except (TypeError, IndexError, RuntimeError, ValueError) as exc:
            raise WeightsError(f"the memory bank entries do not have the reference's layout: {exc}") from exc
        return cls(keys, features, pos, ious, max(capacity, len(entries)))


@contextlib.contextmanager
def _readable(path):
    try:
        yield
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise WeightsError(f"{path} is not a readable safetensors memory bank ({exc}); "
                           "import the official bank with `samed2 bank import FILE` first") from exc


def converted_in_place(keys: torch.Tensor, dtype: torch.dtype, rows: int = PROBE_ENTRIES) -> torch.Tensor:
    """Keys in `dtype`, written over the given 2-byte float keys a few rows at a time, so converting the
    bank's largest tensor never holds two copies."""
    if keys.dtype == dtype or keys.element_size() != torch.finfo(dtype).bits // 8 or not keys.is_contiguous():
        return keys.to(dtype)
    out = keys.view(dtype)
    for start in range(0, len(keys), rows):
        out[start: start + rows] = keys[start: start + rows].to(dtype)  # converted before written back
    return out


def _as_map(x) -> torch.Tensor:
    x = torch.as_tensor(x)
    return x if x.dim() == 4 else x.unsqueeze(0)


# ---- importing the official pickle ---------------------------------------------------------

class _RestrictedUnpickler(pickle.Unpickler):
    """Rebuilds tensors and plain containers only; any other global is refused, never imported."""

    _ALLOWED = {
        ("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_tensor"),
        ("collections", "OrderedDict"), ("torch", "Size"),
    }

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        if (module, name) == ("torch.storage", "_load_from_bytes"):
            return _storage_from_bytes
        if module == "torch" and name.endswith("Storage"):
            return super().find_class(module, name)
        raise WeightsError(f"refusing to load the memory bank: it asks to run {module}.{name}, which a "
                           "memory bank never needs (the file may be malicious)")


def _storage_from_bytes(data: bytes):
    return torch.load(io.BytesIO(data), weights_only=True)


def read_reference_bank(path) -> list:
    """Read the official bank file (torch.save or plain pickle) without running any code it holds."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"memory bank file not found: {path}")
    if zipfile.is_zipfile(path):
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            raise WeightsError(f"refusing to load the memory bank {path}: {exc}") from exc
        except (RuntimeError, EOFError, ValueError, KeyError, OSError) as exc:
            raise WeightsError(f"{path} is not a readable memory bank: {exc}") from exc
    with open(path, "rb") as f:
        try:
            return _RestrictedUnpickler(f).load()
        except WeightsError:
            raise
        except Exception as exc:  # malformed pickle bytes raise any of a dozen error types
            raise WeightsError(f"{path} is not a readable memory bank pickle "
                               f"({type(exc).__name__}: {exc})") from exc


def import_reference_bank(path, out_path, capacity: int = DEFAULT_CAPACITY) -> ConfidenceBank:
    """Convert the official pickled bank to this project's safetensors bank, once."""
    check_output_path(out_path, (".safetensors",))
    entries = read_reference_bank(path)
    try:
        bank = ConfidenceBank.from_entries(entries, capacity)
    except WeightsError as exc:
        raise WeightsError(f"{path} is not a SAMed-2 memory bank: {exc}") from None
    bank.save(out_path)
    return bank
