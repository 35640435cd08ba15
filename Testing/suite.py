"""What the tests of every layer share besides fixtures (those are in the conftest files): where the
shared data and golden vectors live, the golden tiny SAMed-2, and `require_module`."""
import importlib
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
DATA = SHARED / "data"
GOLDEN = SHARED / "golden"


def golden_tiny_config() -> dict:
    """The SAMed-2 reference's shrunk config (512 px, temporal adapters and the unused fusion blocks)
    from ../shared/golden, as a model config taking [0, 1] input like SAMed-2."""
    import json

    cfg = json.loads((GOLDEN / "samed2_tiny_config.json").read_text())["model"]
    cfg["image_encoder"]["trunk"].update(temporal_adapter=True, fusion_blocks=True)
    cfg["preprocess"] = "unit"
    return cfg


def golden_tiny_model():
    """A small SAMed-2 with the golden (random, perturbed) weights: real layout, meaningless masks."""
    from safetensors.torch import load_file

    from samed2.model import build_model

    model = build_model(golden_tiny_config())
    model.load_state_dict(load_file(str(GOLDEN / "samed2_tiny_state.safetensors")), strict=True)
    return model


def object_score_says(model, present: bool) -> None:
    """Make the mask decoder's object-score head answer `present` on every slice (a constant logit of +-20)."""
    import torch

    last = model.sam_mask_decoder.pred_obj_score_head.layers[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.fill_(20.0 if present else -20.0)


def require_module(name: str, why: str):
    """The module, or a skip where it is not installed; in CI (CI=true), where .ci/install installs
    it, its absence is a failure, never a silent skip."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{name} is missing in CI ({why}): {exc}", pytrace=False)
        pytest.skip(f"{name} is not installed ({why})", allow_module_level=True)
