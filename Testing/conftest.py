"""Fixtures shared by every test suite: where the shared real data and golden vectors live."""
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
DATA = SHARED / "data"
GOLDEN = SHARED / "golden"


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
