"""Where training starts (`--init`) and which parameters train (`--train`).

`--init` accepts, in this order of precedence:
- ``random:CONFIG``: random initialisation of a config name or JSON config file;
- an existing file: a ``.json`` config (random initialisation), or a checkpoint (``.pt``, ``.pth``,
  ``.safetensors``) whose config is `--config`, else ``<stem>.config.json`` beside it (what
  `samed2 train` exports);
- a checkpoint name known to the weights cache (a registry entry or an imported checkpoint):
  its cached weights, loaded strictly (`samed2 weights download NAME` first);
- a model config name that is not a checkpoint name (e.g. ``sam2-hiera-large``): random init.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch

from samed2.errors import InputError, WeightsError
from samed2.model import CONFIG_NAMES, SAM2Model, build_model, get_config
from samed2.weights import REGISTRY, build_and_load, cached_checkpoint, checkpoint_config
from samed2.weights.cache import cache_dir as resolve_cache_dir
from samed2.weights.cache import read_manifest

RANDOM_PREFIX = "random:"

# parameter name prefixes of each trainable part
_PART_PREFIXES = {
    "image_encoder": ("image_encoder.",),
    "prompt_encoder": ("sam_prompt_encoder.", "prompt_encoder."),  # SAM 2, MedSAM-Lite
    "mask_decoder": ("sam_mask_decoder.", "mask_decoder."),
    "memory": ("memory_attention.", "memory_encoder.", "obj_ptr_proj.", "obj_ptr_tpos_proj.", "mask_downsample.",
               "maskmem_tpos_enc", "no_mem_embed", "no_mem_pos_enc", "no_obj_ptr", "no_obj_embed_spatial"),
}
_NEVER_TRAINED = ".fancy_fusion."  # SAMed-2's fusion blocks: in its checkpoint, unused by the forward pass


def initial_model(init: str, config: Optional[str], cache_dir: Optional[str], seed: int) -> tuple[SAM2Model, dict, str]:
    """(model, its config as {"model": {...}}, a description of where it came from)."""
    if not init:
        raise InputError("--init is required: a checkpoint name, a checkpoint file, a config name or random:CONFIG")
    if init.startswith(RANDOM_PREFIX):
        return _random(read_config(init[len(RANDOM_PREFIX):]), seed, init)
    path = Path(init).expanduser()
    if path.is_file():
        if path.suffix == ".json":
            return _random(read_config(str(path)), seed, f"random init of {path}")
        cfg = read_config(config) if config else _sidecar_config(path)
        return build_and_load(cfg, path), cfg, f"checkpoint {path}"
    if _is_checkpoint_name(init, cache_dir):
        cfg = _as_config_dict(checkpoint_config(init, cache_dir))
        return build_and_load(cfg, cached_checkpoint(init, cache_dir)), cfg, f"cached weights {init}"
    if init in CONFIG_NAMES:
        return _random(get_config(init), seed, f"random init of config {init}")
    raise InputError(f"--init {init!r} is not a file, a checkpoint name or a config name; "
                     f"checkpoints: {', '.join(REGISTRY)}; configs: {', '.join(CONFIG_NAMES)}")


def _random(cfg: dict, seed: int, description: str):
    torch.manual_seed(seed)
    return build_model(cfg), cfg, description


def _is_checkpoint_name(name: str, cache_dir: Optional[str]) -> bool:
    return name in REGISTRY or name in read_manifest(resolve_cache_dir(cache_dir))


def _sidecar_config(path: Path) -> dict:
    sidecar = path.with_name(path.name.rsplit(".", 1)[0] + ".config.json")
    if not sidecar.is_file():
        raise InputError(f"give the model config of {path} with --config (a config name or JSON file); "
                         f"no {sidecar.name} beside it")
    return read_config(str(sidecar))


def read_config(value: str) -> dict:
    """A config name or JSON file, as {"model": {...}}."""
    if value.endswith(".json"):
        try:
            return _as_config_dict(json.loads(Path(value).expanduser().read_text(encoding="utf-8")))
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot read the model config {value}: {exc}") from None
    if value not in CONFIG_NAMES:
        raise InputError(f"unknown model config {value!r}; known: {', '.join(CONFIG_NAMES)}")
    return get_config(value)


def _as_config_dict(config) -> dict:
    if isinstance(config, str):
        return get_config(config)
    if not isinstance(config, dict):
        raise WeightsError(f"a model config must be a name or a dict, got {type(config).__name__}")
    return config if "model" in config else {"model": config}


def set_trainable(model: SAM2Model, parts: list[str]) -> list[str]:
    """Freeze every parameter outside `parts` ("all" = every part); returns the trainable names."""
    chosen = set(_PART_PREFIXES) | {"adapters"} if "all" in parts else set(parts)
    names = []
    for name, parameter in model.named_parameters():
        trainable = _NEVER_TRAINED not in name and _in_parts(name, chosen)
        parameter.requires_grad_(trainable)
        if trainable:
            names.append(name)
    if not names:
        raise InputError(f"--train {','.join(parts)} selects no parameter of this model")
    return names


def _in_parts(name: str, chosen: set) -> bool:
    if "adapters" in chosen and _is_adapter(name):
        return True
    return any(name.startswith(prefix) for part in chosen - {"adapters"} for prefix in _PART_PREFIXES[part])


def part_of(name: str) -> str:
    """The trainable part a parameter belongs to ("adapters" before "image_encoder"); "other" if none."""
    if _is_adapter(name):
        return "adapters"
    return next((part for part, prefixes in _PART_PREFIXES.items() if name.startswith(prefixes)), "other")


def _is_adapter(name: str) -> bool:
    return name.startswith("image_encoder.") and ".adapter." in name


def lr_factor(name: str, scales: dict) -> float:
    """The --lr-scale factor of a parameter: its longest matching key (a part name or a name prefix), else 1."""
    matches = [key for key in scales if key == part_of(name) or name.startswith(key)]
    return scales[max(matches, key=len)] if matches else 1.0


def check_lr_scales(model: SAM2Model, scales: dict) -> None:
    names = [name for name, _ in model.named_parameters()]
    unmatched = [key for key in scales if not any(key == part_of(n) or n.startswith(key) for n in names)]
    if unmatched:
        raise InputError(f"--lr-scale key(s) {unmatched} match no part and no parameter name of this model")
