"""Fixtures of the engine's tests: the shared data's small abdominal CT as an engine volume."""
import pytest


@pytest.fixture(scope="session")
def ct_volume(data_dir):
    from samed2.volume_files import load_volume

    return load_volume(data_dir / "totalseg" / "example_ct_sm.nii.gz")
