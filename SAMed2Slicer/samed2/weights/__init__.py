"""Checkpoints: the registry of known weights, the cache, downloads, local imports and safe, strict loading.

Nothing here touches the network except `download()`.
"""
from samed2.weights.cache import cache_dir, sha256_file
from samed2.weights.download import ProgressCallback, download
from samed2.weights.loading import build_and_load, check_state_dict, load_state_dict_file, load_weights
from samed2.weights.manage import (
    VerifyResult,
    WeightsStatus,
    cached_checkpoint,
    checkpoint_config,
    import_checkpoint,
    list_weights,
    load_model,
    verify,
)
from samed2.weights.registry import REGISTRY, CheckpointInfo, get_checkpoint

__all__ = [
    "REGISTRY",
    "CheckpointInfo",
    "ProgressCallback",
    "VerifyResult",
    "WeightsStatus",
    "build_and_load",
    "cache_dir",
    "cached_checkpoint",
    "check_state_dict",
    "checkpoint_config",
    "download",
    "get_checkpoint",
    "import_checkpoint",
    "list_weights",
    "load_model",
    "load_state_dict_file",
    "load_weights",
    "sha256_file",
    "verify",
]
