"""Device choice, mixed precision and out-of-memory fallback."""
import contextlib
import functools
import logging
import time

import torch

from samed2.choices import PRECISIONS, check_choice, check_device

log = logging.getLogger(__name__)


def pick_device(name: str = "auto") -> torch.device:
    """"auto" = CUDA, else Apple MPS, else CPU; an explicit device that is absent is an error."""
    from samed2.errors import InputError

    check_device(name)
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("CUDA was asked for but no CUDA device is available (use --device auto or cpu)")
    if name == "mps" and not torch.backends.mps.is_available():
        raise InputError("Apple MPS was asked for but is not available (use --device auto or cpu)")
    return torch.device(name)


def native_bf16(device: torch.device) -> bool:
    """Whether the device computes bfloat16 products natively (x86: AVX512-BF16 or AMX)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return False


@functools.lru_cache(maxsize=None)
def precision_probe(device: torch.device) -> tuple:
    """Seconds (fp32, bf16 autocast) of a linear layer of the size the encoders run (best of 3 each)."""
    gen = torch.Generator().manual_seed(0)
    x, w = (torch.randn(2048, 768, generator=gen).to(device), torch.randn(768, 768, generator=gen).to(device))

    def best(precision):
        times = []
        with torch.no_grad(), autocast(device, precision):
            for _ in range(4):  # the first run warms up
                start = time.perf_counter()
                torch.nn.functional.linear(x, w)
                synchronize(device)
                times.append(time.perf_counter() - start)
        return min(times[1:])
    return best("fp32"), best("bf16")


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA and MPS run asynchronously), so a timing measures it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def pick_precision(name: str, device: torch.device) -> str:
    """"auto" = bf16 where the device has native bf16 and it measures at least 1.2x faster, else fp32;
    "fp32" and "bf16" as asked (bf16 runs everywhere, slowly where it is not native)."""
    check_choice("precision", name, PRECISIONS)
    if name == "auto":
        if not native_bf16(device):
            return "fp32"
        fp32_s, bf16_s = precision_probe(device)
        return "bf16" if fp32_s >= 1.2 * bf16_s else "fp32"
    return name


def autocast(device: torch.device, precision: str = "fp32"):
    """bfloat16 autocast for "bf16"; full precision for "fp32". Inference only, so without autocast's
    weight cache: it keeps a bfloat16 copy of each weight until the outermost autocast exits, which saves
    nothing here (each weight is used once per call) and raised a SAMed-2 session's peak RSS by 0.5 GB."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=False)
    return contextlib.nullcontext()


def is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()
