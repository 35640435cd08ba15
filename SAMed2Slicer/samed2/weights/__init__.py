"""Checkpoints: the registry of known weights, the cache, downloads, local imports and safe, strict loading.

Nothing here touches the network except `download()`. The names below are imported on first use, so
the torch-free parts (`registry`, `cache`, `choice`) can be read where torch is not installed yet.
"""
import importlib

_MODULE_OF = {
    "cache_dir": "cache", "sha256_file": "cache",
    "ProgressCallback": "download", "download": "download",
    "build_and_load": "loading", "check_state_dict": "loading", "load_state_dict_file": "loading",
    "load_weights": "loading",
    "VerifyResult": "manage", "WeightsStatus": "manage", "cached_checkpoint": "manage",
    "checkpoint_config": "manage", "import_checkpoint": "manage", "list_weights": "manage",
    "load_model": "manage", "verify": "manage",
    "REGISTRY": "registry", "CheckpointInfo": "registry", "get_checkpoint": "registry",
    "best_model": "choice",
}


def __getattr__(name):
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = importlib.import_module(f"{__name__}.{_MODULE_OF[name]}")
    # bind all of the module's names here: loading `download.py` set `download` to the module itself
    globals().update({n: getattr(module, n) for n, m in _MODULE_OF.items() if m == _MODULE_OF[name]})
    return globals()[name]
