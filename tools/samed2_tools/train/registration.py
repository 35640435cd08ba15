"""`--register NAME`: the trained model into the weights cache, with its provenance, so `--model NAME` works.

The name is checked before training starts (a registry name is refused; an imported name is refused
unless --replace), and the model enters the cache only after the run has finished and exported: a
cancelled or killed run registers nothing. The import itself is the cache's (copy, hash check, rename).
"""
from __future__ import annotations

import time
from pathlib import Path

from samed2.errors import InputError
from samed2.weights import REGISTRY, import_checkpoint
from samed2.weights.cache import cache_dir as resolve_cache_dir
from samed2.weights.cache import read_manifest
from samed2.weights.manage import check_name
from samed2_tools.train.options import TrainOptions


def check_free(name: str, cache_dir, replace: bool) -> None:
    """InputError if `name` cannot be registered: malformed, a published checkpoint's, or taken (without replace)."""
    check_name(name)
    if name in REGISTRY:
        raise InputError(f"{name} is a published checkpoint's name; register the fine-tuned model under another")
    if name in read_manifest(resolve_cache_dir(cache_dir)) and not replace:
        raise InputError(f"a model named {name} is already in the weights cache: choose another name, "
                         "or replace it (--replace)")


def register(weights: Path, options: TrainOptions, config: dict, cases: list, values: list, parts: list,
             steps: int) -> Path:
    """Import the exported `weights` under options.register; returns the cached file."""
    check_free(options.register, options.cache_dir, options.replace)
    provenance = {"base_model": options.init, "data": str(Path(options.data).resolve()), "cases": cases,
                  "labels": values, "axis": options.axis, "slices": list(options.slices), "train": parts,
                  "steps": steps, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    return import_checkpoint(weights, options.register, config, options.cache_dir, provenance)
