"""Training checkpoints (atomic, resumable, safe to load) and the final export.

A checkpoint holds the model, optimizer, scheduler, step, the data sampler's state, the RNG states
of torch (CPU and CUDA), numpy and Python, the metrics history, the confidence bank and the
model config. Everything is stored as tensors and plain Python values, so it loads with
`torch.load(weights_only=True)`: no code in a checkpoint file ever runs.

The export is what inference uses: `<name>.pt` in the official layout (`{"model": state_dict}`),
`<name>.config.json` (the model config, for `samed2 weights import <name>.pt --config ...`), and
`<name>.bank.safetensors` (the confidence memory bank), all in the run folder.
"""
from __future__ import annotations

import json
import pickle
import random
from pathlib import Path

import numpy as np
import torch

from samed2.bank import ConfidenceBank
from samed2.errors import InputError
from samed2.files import atomic_write

FORMAT = "samed2-train"
VERSION = 1
CHECKPOINT_NAME = "last.pt"


def checkpoint_path(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints" / CHECKPOINT_NAME


def capture_rng() -> dict:
    """Every RNG state the run uses, as tensors and plain values."""
    _, keys, position, has_gauss, cached = np.random.get_state()
    version, python_state, gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(position),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": version, "state": list(python_state), "gauss": gauss},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    np.random.set_state(("MT19937", numpy_state["keys"].numpy().astype(np.uint32), numpy_state["pos"],
                         numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    python_state = state["python"]
    random.setstate((python_state["version"], tuple(python_state["state"]), python_state["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def bank_state(bank: ConfidenceBank | None):
    if bank is None:
        return None
    return {"keys": bank.keys.cpu(), "features": bank.features, "pos": bank.pos, "ious": bank.ious,
            "capacity": bank.capacity}


def bank_from_state(state) -> ConfidenceBank | None:
    if state is None:
        return None
    return ConfidenceBank(state["keys"], state["features"], state["pos"], state["ious"], state["capacity"])


def save_checkpoint(path: Path, payload: dict) -> None:
    """torch.save to a temporary file beside `path`, flushed to disk, then renamed over it."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(Path(path), lambda stream: torch.save({"format": FORMAT, "version": VERSION, **payload}, stream))


def load_checkpoint(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"no training checkpoint at {path}: nothing to resume")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as exc:
        raise InputError(f"cannot read the training checkpoint {path}: {str(exc).splitlines()[0]}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise InputError(f"{path} is not a samed2 training checkpoint")
    if payload.get("version") != VERSION:
        raise InputError(f"{path} is a version {payload.get('version')} checkpoint; "
                         f"this samed2 reads version {VERSION}")
    return payload


def export_model(run_dir: Path, name: str, state_dict: dict, config: dict, bank: ConfidenceBank | None) -> Path:
    """Write <name>.pt ({"model": state_dict}), <name>.config.json and, if any, <name>.bank.safetensors."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    weights = run_dir / f"{name}.pt"
    cpu_state = {key: value.detach().cpu() for key, value in state_dict.items()}
    atomic_write(weights, lambda stream: torch.save({"model": cpu_state}, stream))
    text = json.dumps(config, indent=1).encode("utf-8")
    atomic_write(run_dir / f"{name}.config.json", lambda stream: stream.write(text))
    if bank is not None and len(bank):
        bank.save(run_dir / f"{name}.bank.safetensors")
    return weights

