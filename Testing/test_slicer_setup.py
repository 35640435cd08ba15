"""The Qt-free parts of the module's first-run flow: what the install plan asks for, and the
weights glue (cache under Slicer's cache folder, background download with progress, cancel
and resume, status lines), with the engine's weights manager and a local HTTP server."""
import hashlib
import os
from pathlib import Path

import pytest
import slicer
from http_server import FileServer
from slicer_harness import slicer_app  # noqa: F401 (pytest fixture)

from samed2.weights import CheckpointInfo
from SAMed2SlicerLib import models
from SAMed2SlicerLib.install import InstallPlan, pip_install_function, satisfied

PAYLOAD = os.urandom(300_000)  # a few 64 KiB chunks: the first one lands before a cancel


# ---- install plan ---------------------------------------------------------------------


def test_slicer_install_plan_lists_only_what_is_missing():
    plan = InstallPlan.for_this_python(requirements=("numpy>=1.0", "numpy<1.0", "samed2-no-such-package>=1"))
    assert plan.packages == ["numpy<1.0", "samed2-no-such-package>=1"]
    assert not plan.torch, "torch is installed in this environment"
    assert plan.needed and plan.blocker() is None
    assert "samed2-no-such-package>=1" in plan.message() and "PyTorch" not in plan.message()
    assert not InstallPlan.for_this_python(requirements=("numpy>=1.0",)).needed


def test_slicer_install_plan_needs_the_pytorch_extension_for_torch():
    plan = InstallPlan(torch=True, packages=["highdicom>=0.25"], pytorch_extension=False)
    assert "Extensions Manager" in plan.blocker() and "restart Slicer" in plan.blocker()
    assert "CUDA, Apple MPS or CPU build" in plan.message()
    assert InstallPlan(torch=True, pytorch_extension=True).blocker() is None


def test_slicer_requirement_versions_are_checked():
    assert satisfied("numpy>=1.0") and not satisfied("numpy>=999") and not satisfied("samed2-no-such-package")


def test_slicer_core_offers_pip_install_only(slicer_app):
    """slicer-core has no slicer.packaging (Slicer >= 5.12 has): the older installer is chosen."""
    _, name = pip_install_function(slicer)
    assert name == "slicer.util.pip_install"


# ---- weights --------------------------------------------------------------------------


@pytest.fixture
def server():
    with FileServer() as running:
        yield running


def checkpoint(url, name="tiny-test"):
    return CheckpointInfo(name=name, config="samed2", filename=f"{name}.pt", url=url, page=url,
                          licence="test-only", size=len(PAYLOAD), sha256=hashlib.sha256(PAYLOAD).hexdigest())


def test_mrml_weights_cache_is_under_slicers_cache_folder(slicer_app):
    assert models.weights_cache_dir() == Path(slicer.app.cachePath) / "SAMed2" / "weights"


def test_slicer_weights_download_runs_in_the_background_with_progress(server, tmp_path):
    info = checkpoint(server.add("/tiny-test.pt", PAYLOAD))
    download = models.WeightsDownload(info, tmp_path).start()
    progress = download.wait(timeout_s=60)
    assert progress.finished and progress.error is None
    assert progress.path == tmp_path / "tiny-test.pt" and progress.path.read_bytes() == PAYLOAD
    assert progress.done == progress.total == len(PAYLOAD) and progress.fraction == 1.0
    assert models.status_line("tiny-test", tmp_path).startswith("Ready: tiny-test.pt")


def test_slicer_weights_download_cancel_keeps_the_part_and_resumes(server, tmp_path):
    info = checkpoint(server.add("/tiny-test.pt", PAYLOAD))
    cancelled = models.WeightsDownload(info, tmp_path)
    cancelled.cancel()
    progress = cancelled.start().wait(timeout_s=60)
    assert progress.finished and isinstance(progress.error, models.DownloadCancelled)
    held = (tmp_path / "tiny-test.pt.part").stat().st_size
    assert 0 < held < len(PAYLOAD)

    resumed = models.WeightsDownload(info, tmp_path).start().wait(timeout_s=60)
    assert resumed.error is None and resumed.path.read_bytes() == PAYLOAD
    assert server.requests[-1].headers.get("Range") == f"bytes={held}-"


def test_slicer_weights_status_lines_say_what_to_do(tmp_path):
    assert models.status_line("samed2", tmp_path).startswith("Not downloaded")
    assert "Import" in models.status_line("samed2", tmp_path)
    assert models.status_line("no-such-model", tmp_path).startswith("Unknown model")
    assert "samed2" in models.model_names(tmp_path) and not models.is_cached("samed2", tmp_path)
    (tmp_path / "latest_epoch_0217.pth.part").write_bytes(b"x" * 10)
    assert models.status_line("samed2", tmp_path).startswith("Partly downloaded")
