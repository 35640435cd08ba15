"""What runs a model's image encoder on the CPU: torch, or a converted copy run by OpenVINO.

OpenVINO is optional (`pip install samed2[cpu]`). "auto" converts the encoder at its first use for the
input shape met, times both backends on that input and keeps OpenVINO only where it is at least
MIN_SPEEDUP faster and its outputs agree with torch's; without OpenVINO, off the CPU, or where the
conversion fails, torch runs. Converted models are cached in the weights cache (`openvino/`), one folder
per weights hash, input shape, precision and OpenVINO version, with the timings, so later sessions
neither convert nor time again. A folder is written whole or not at all; a damaged one is rebuilt.
"""
import hashlib
import json
import logging
import os
import secrets
import shutil
import time
import warnings
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn

import samed2
from samed2.choices import BACKENDS, check_choice
from samed2.errors import InputError
from samed2.files import atomic_write
from samed2.weights.cache import cache_dir, sha256_file

log = logging.getLogger(__name__)
MIN_SPEEDUP = 1.1  # "auto" keeps torch unless OpenVINO is at least this much faster
TOLERANCE = {"fp32": 1e-3, "bf16": 5e-2}  # largest relative error (of norms) of OpenVINO's outputs against torch's
OV_PRECISION = {"fp32": "f32", "bf16": "bf16"}  # OpenVINO computes in bf16 by default where the CPU has it
ENTRY = "entry.json"


def openvino_version() -> Optional[str]:
    """The installed OpenVINO's version; None where it is not installed or does not import."""
    try:
        import openvino
    except Exception:  # a broken install raises more than ImportError
        return None
    return openvino.__version__


def check_backend(name: str) -> None:
    check_choice("backend", name, BACKENDS)


def converted_cache(weights_cache=None) -> Path:
    """Where converted encoders are kept: beside the weights (samed2.weights.cache_dir)."""
    return cache_dir(weights_cache) / "openvino"


def image_encoder(module: nn.Module, backend: str, device: torch.device, precision: str,
                  cache: Optional[Path] = None) -> Callable:
    """What a session encodes images with: `module` itself, or a ChosenEncoder running OpenVINO where it
    was asked for, or where it measures faster ("auto"). `cache` defaults to converted_cache()."""
    check_backend(backend)
    if backend == "torch" or (backend == "auto" and (device.type != "cpu" or openvino_version() is None)):
        return module
    if device.type != "cpu":
        raise InputError(f"the OpenVINO backend runs on the CPU, not on {device}: use --device cpu or another backend")
    if openvino_version() is None:
        raise InputError("the OpenVINO backend needs the openvino package: pip install 'samed2[cpu]' "
                         "(or choose the backend auto or torch)")
    return ChosenEncoder(module, precision, Path(cache) if cache is not None else converted_cache(),
                         measure=backend == "auto")


class ChosenEncoder:
    """A module's outputs computed by OpenVINO or torch, chosen per input shape at its first use."""

    def __init__(self, module: nn.Module, precision: str, cache: Path, measure: bool):
        self.module, self.precision, self.cache, self.measure = module, precision, cache, measure
        self.chosen = {}  # input shape -> the module or a ConvertedEncoder
        self.timings = {}  # input shape -> what "auto" chose by (see compare)

    def __call__(self, images: torch.Tensor):
        shape = tuple(images.shape)
        if shape not in self.chosen:
            self.chosen[shape] = self._choose(images)
        run = self.chosen[shape]
        if run is self.module or not self.measure:
            return run(images)
        try:
            return run(images)
        except RuntimeError as exc:
            log.warning("OpenVINO failed to encode (%s): torch encodes from now on", exc)
            self.chosen[shape] = self.module
            return self.module(images)

    def _choose(self, images: torch.Tensor):
        try:
            converted = converted_encoder(self.module, images, self.precision, self.cache)
        except Exception as exc:  # the converter fails in many ways on an unsupported graph
            if not self.measure:
                raise InputError(f"OpenVINO could not convert the image encoder ({exc}); "
                                 "choose the backend auto or torch") from exc
            log.warning("OpenVINO could not convert the image encoder (%s): torch runs it", exc)
            return self.module
        if not self.measure:
            return converted
        if converted.timing is None:
            log.info("timing the image encoder in torch and OpenVINO (first use)")
            converted.record_timing(compare(self.module, converted, images))
        timing = self.timings[tuple(images.shape)] = converted.timing
        faster = timing["torch_s"] >= MIN_SPEEDUP * timing["openvino_s"]
        agrees = timing["relative_error"] <= TOLERANCE[self.precision]
        log.info("image encoder for %s: %s (torch %.3f s, OpenVINO %.3f s, relative error %.1e)", list(images.shape),
                 "OpenVINO" if faster and agrees else "torch", timing["torch_s"], timing["openvino_s"],
                 timing["relative_error"])
        return converted if faster and agrees else self.module


def compare(module: nn.Module, converted: "ConvertedEncoder", images: torch.Tensor) -> dict:
    """Seconds of torch and of OpenVINO on `images`, and the largest relative error of OpenVINO's
    outputs against torch's."""
    with torch.no_grad():
        torch_s, expected = second_run(module, images)
        openvino_s, got = second_run(converted, images)
    error = max(float((g.float() - e.float()).norm() / e.float().norm().clamp(min=1e-12))
                for g, e in zip(flat(got), flat(expected)))
    return {"torch_s": torch_s, "openvino_s": openvino_s, "relative_error": error}


def second_run(encode: Callable, images: torch.Tensor):
    """Seconds and outputs of the second of two runs (the first warms up)."""
    encode(images)
    start = time.perf_counter()
    outputs = encode(images)
    return time.perf_counter() - start, outputs


# ---- converted models on disk -----------------------------------------------------------------

class ConvertedEncoder:
    """A cached OpenVINO model of an encoder, compiled for the CPU in the session's precision."""

    def __init__(self, folder: Path, precision: str):
        import openvino as ov

        self.folder = folder
        self.entry = json.loads((folder / ENTRY).read_text(encoding="utf-8"))
        if sha256_file(folder / "encoder.bin") != self.entry["bin_sha256"]:
            raise ValueError("its weights file does not match the checksum recorded when it was written")
        core = ov.Core()
        self.compiled = core.compile_model(core.read_model(str(folder / "encoder.xml")), "CPU",
                                           {"INFERENCE_PRECISION_HINT": OV_PRECISION[precision]})

    @property
    def timing(self) -> Optional[dict]:
        return self.entry.get("timing")

    def record_timing(self, timing: dict) -> None:
        self.entry["timing"] = timing
        text = json.dumps(self.entry, indent=1).encode("utf-8")
        atomic_write(self.folder / ENTRY, lambda stream: stream.write(text))

    def __call__(self, images: torch.Tensor):
        outputs = self.compiled(images.detach().float().cpu().numpy())
        tensors = (torch.from_numpy(outputs[i]) for i in range(len(self.compiled.outputs)))
        return rebuilt(self.entry["structure"], tensors)


def converted_encoder(module: nn.Module, images: torch.Tensor, precision: str, cache: Path) -> ConvertedEncoder:
    """The cached conversion of `module` for inputs shaped like `images` (converted now if missing or damaged)."""
    key = {"weights_sha256": weights_hash(module), "module": type(module).__name__, "input": list(images.shape),
           "precision": precision, "openvino": openvino_version(), "samed2": samed2.__version__}
    folder = cache / hashlib.sha256(json.dumps(key, sort_keys=True).encode("utf-8")).hexdigest()[:32]
    if folder.is_dir():
        try:
            return ConvertedEncoder(folder, precision)
        except Exception as exc:  # a truncated or edited file fails in OpenVINO's reader or the checksum
            log.warning("the converted encoder in %s is damaged (%s): converting again", folder, exc)
            shutil.rmtree(folder, ignore_errors=True)
    convert(module, images, key, folder)
    return ConvertedEncoder(folder, precision)


def convert(module: nn.Module, images: torch.Tensor, key: dict, folder: Path) -> None:
    """Convert `module` for inputs shaped like `images` into `folder`, whole or not at all."""
    import openvino as ov

    log.info("converting the image encoder to OpenVINO for input %s (first use: up to a minute)", key["input"])
    # no_grad: kept position embeddings trace as constants; no autocast: OpenVINO sets the precision itself
    with torch.no_grad(), torch.autocast(images.device.type, enabled=False), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shape checks become constants: the shape is fixed
        structure_of = structure(module(images))
        model = ov.convert_model(module, example_input=images.float(), input=[tuple(images.shape)])
    folder.parent.mkdir(parents=True, exist_ok=True)
    temporary = folder.with_name(f".{secrets.token_hex(4)}.partial")
    try:
        temporary.mkdir()
        ov.save_model(model, str(temporary / "encoder.xml"), compress_to_fp16=False)
        entry = {"key": key, "structure": structure_of, "bin_sha256": sha256_file(temporary / "encoder.bin")}
        (temporary / ENTRY).write_text(json.dumps(entry, indent=1), encoding="utf-8")
        try:
            os.rename(temporary, folder)
        except OSError:
            if not folder.is_dir():  # else another session converted it meanwhile
                raise
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def weights_hash(module: nn.Module) -> str:
    """SHA-256 of a module's state (names, dtypes, shapes and bytes)."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode("utf-8"))
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def structure(outputs):
    """The nesting of an encoder's outputs: None for a tensor, else a list of its items' structures."""
    return None if isinstance(outputs, torch.Tensor) else [structure(item) for item in outputs]


def flat(outputs) -> list:
    return [outputs] if isinstance(outputs, torch.Tensor) else [t for item in outputs for t in flat(item)]


def rebuilt(structure_of, tensors):
    """Tensors (an iterator, in flat order) nested as `structure_of` says."""
    return next(tensors) if structure_of is None else [rebuilt(item, tensors) for item in structure_of]
