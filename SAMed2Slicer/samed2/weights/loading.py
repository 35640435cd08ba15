"""Safe loading of checkpoint files and the strict check of their keys and shapes against a model.

Only two readers are used: `torch.load(..., weights_only=True)`, which refuses any pickle that
would build objects other than tensors and plain containers (so no code runs), and safetensors.
"""
import os
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Optional, Union

import torch

from samed2.errors import WeightsError
from samed2.weights.registry import Config

StateDict = dict[str, torch.Tensor]
PathLike = Union[str, os.PathLike]

_SHOWN_KEYS = 10
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTO = 0x80


def load_state_dict_file(path: PathLike) -> StateDict:
    """The state dict in a `{"model": state_dict}` file, a bare state-dict file or a .safetensors file."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    kind = _sniff_format(path)
    if path.suffix == ".safetensors" and kind != "safetensors":
        raise WeightsError(f"{path} is named .safetensors but holds a {kind} file; refusing to read it as a pickle")
    if kind == "safetensors":
        return _load_safetensors(path)
    return _extract_state_dict(_torch_load(path), path)


def _sniff_format(path: Path) -> str:
    with open(path, "rb") as stream:
        head = stream.read(9)
    if not head:
        raise WeightsError(f"{path} is empty (0 bytes): download or copy it again")
    if head.startswith(_ZIP_MAGIC):
        return "PyTorch zip"
    if head[0] == _PICKLE_PROTO:
        return "PyTorch legacy pickle"
    if head[8:9] == b"{":  # safetensors: 8-byte header length, then the JSON header
        return "safetensors"
    raise WeightsError(f"{path} is neither a PyTorch checkpoint nor a safetensors file")


def _torch_load(path: Path) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        refusal = _unsafe_content(str(exc))
        if refusal is None:
            raise _corrupt(path, exc) from None
        raise WeightsError(
            f"refused to load {path}: {refusal}; unpickling it fully could run code, so that is never tried. "
            "Re-save only the state dict (torch.save({'model': model.state_dict()}, ...)) or use safetensors."
        ) from None
    except (RuntimeError, EOFError, ValueError, KeyError, OSError) as exc:
        raise _corrupt(path, exc) from None


def _unsafe_content(message: str) -> Optional[str]:
    """What the weights-only unpickler refused, from its message; None if it failed for another reason."""
    objects = re.findall(r"Unsupported global: GLOBAL (\S+)", message)
    if objects:
        return f"it holds Python objects other than tensors ({', '.join(objects)})"
    detail = re.search(r"WeightsUnpickler error:\s*(.+)", message)
    if detail:
        return f"its pickle uses features the safe loader does not accept ({detail.group(1).strip()})"
    return None


def _corrupt(path: Path, exc: BaseException) -> WeightsError:
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return WeightsError(f"cannot read {path}: the file is truncated or corrupt ({reason}); download or copy it again")


def _load_safetensors(path: Path) -> StateDict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise _corrupt(path, exc) from None


def _extract_state_dict(content: object, path: Path) -> StateDict:
    if isinstance(content, Mapping) and isinstance(content.get("model"), Mapping):
        content = content["model"]
    if not isinstance(content, Mapping) or not content:
        raise WeightsError(f"{path} holds no state dict (expected {{'model': state_dict}} or a bare state dict)")
    not_tensors = [key for key, value in content.items() if not isinstance(value, torch.Tensor)]
    if not_tensors:
        raise WeightsError(
            f"{path} is not a state dict: {len(not_tensors)} entries are not tensors ({_first(not_tensors)})"
        )
    return dict(content)


def check_state_dict(
    state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Size], label: str = "checkpoint",
) -> None:
    """Raise a WeightsError naming every missing, unexpected or wrongly shaped key; return quietly on a match."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = [
        f"{key} {tuple(state[key].shape)} vs model {tuple(expected[key])}"
        for key in sorted(set(state) & set(expected))
        if tuple(state[key].shape) != tuple(expected[key])
    ]
    problems = [
        f"{len(keys)} {what}: {_first(keys)}"
        for what, keys in (
            ("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", wrong_shape),
        )
        if keys
    ]
    if problems:
        raise WeightsError(
            f"{label} does not match the model ({'; '.join(problems)}); "
            "it was probably made for another architecture or config"
        )


def _first(items: list) -> str:
    shown = ", ".join(items[:_SHOWN_KEYS])
    return shown if len(items) <= _SHOWN_KEYS else f"{shown}, ... and {len(items) - _SHOWN_KEYS} more"


def load_weights(
    model: torch.nn.Module, source: Union[PathLike, Mapping[str, torch.Tensor]], label: str = "",
) -> torch.nn.Module:
    """Load a file or state dict into `model` after the strict key and shape check; returns `model`."""
    state = source if isinstance(source, Mapping) else load_state_dict_file(source)
    label = label or (f"checkpoint {source}" if not isinstance(source, Mapping) else "state dict")
    check_state_dict(state, {key: value.shape for key, value in model.state_dict().items()}, label)
    model.load_state_dict(state, strict=True)
    return model


def build_and_load(config: Config, path: PathLike) -> torch.nn.Module:
    """A model built from `config` (a config name or dict) with the weights in `path`, in eval mode."""
    model = build_config(config)
    load_weights(model, path, label=f"checkpoint {path} for config {_config_label(config)}")
    return model.eval()


def build_config(config: Config) -> torch.nn.Module:
    """A freshly initialised model for a config name or dict; a WeightsError for an unknown name."""
    from samed2.model import CONFIG_NAMES, build_model

    if isinstance(config, str) and config not in CONFIG_NAMES:
        raise WeightsError(f"unknown model config {config!r}; known: {', '.join(CONFIG_NAMES)}")
    return build_model(config)


def _config_label(config: Config) -> str:
    return config if isinstance(config, str) else "(custom config dict)"
