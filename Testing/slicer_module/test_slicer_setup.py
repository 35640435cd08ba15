"""The Qt-free parts of the module's first-run flow: what the install plan asks for, and the
weights glue (cache under Slicer's cache folder, background download with progress, cancel
and resume, status lines), with the engine's weights manager and a local HTTP server."""
import hashlib
import importlib
import importlib.metadata
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import slicer

from samed2.weights import CheckpointInfo
from SAMed2SlicerLib import install, model_weights
from SAMed2SlicerLib.install import (
    DICOM_REQUIREMENTS,
    ENGINE_REQUIREMENTS,
    SLICER_PYTHONS,
    TORCH_REQUIREMENT,
    InstallPlan,
    install_function,
    planned_requirements,
    satisfied,
)
from SAMed2SlicerLib.jobs import JobCancelled

from http_server import FileServer

PAYLOAD = os.urandom(300_000)  # a few 64 KiB chunks: the first one lands before a cancel


# ---- install plan ---------------------------------------------------------------------


def test_slicer_installs_what_the_package_declares():
    """One list each: what the module installs into Slicer's Python is what pyproject.toml declares
    (the installed samed2's metadata), torch and the engine packages as dependencies, the DICOM
    packages as the `dicom` extra."""
    declared = set(importlib.metadata.requires("samed2"))
    assert {TORCH_REQUIREMENT, *ENGINE_REQUIREMENTS} <= declared
    assert {f'{r}; extra == "dicom"' for r in DICOM_REQUIREMENTS} <= declared


def test_slicer_install_plan_lists_only_what_is_missing():
    plan = InstallPlan.for_this_python(requirements=("numpy>=1.0", "numpy<1.0", "samed2-no-such-package>=1"))
    assert plan.packages == ["numpy<1.0", "samed2-no-such-package>=1"]
    assert not plan.torch, "torch is installed in this environment"
    assert plan.needed and plan.blocker() is None
    assert "samed2-no-such-package>=1" in plan.message() and "PyTorch" not in plan.message()
    assert not InstallPlan.for_this_python(requirements=("numpy>=1.0",)).needed


def test_slicer_install_plan_needs_the_pytorch_extension_for_torch():
    plan = InstallPlan(torch=True, packages=["safetensors>=0.4"], pytorch_extension=False)
    assert "Extensions Manager" in plan.blocker() and "restart Slicer" in plan.blocker()
    assert "CUDA, Apple MPS or CPU build" in plan.message()
    assert InstallPlan(torch=True, pytorch_extension=True).blocker() is None


def test_slicer_dicom_packages_are_planned_only_for_dicom_seg(monkeypatch):
    monkeypatch.setattr(install, "satisfied", lambda requirement: requirement.startswith("torch"))
    assert InstallPlan.for_this_python().packages == list(ENGINE_REQUIREMENTS)
    assert InstallPlan.for_this_python(dicom=True, python=(3, 12)).packages == [*ENGINE_REQUIREMENTS,
                                                                                *DICOM_REQUIREMENTS]


def test_slicer_dicom_seg_on_python_3_9_is_refused_with_what_to_do():
    plan = InstallPlan.for_this_python(dicom=True, python=(3, 9))
    assert plan.needed and plan.dicom_refused and not set(DICOM_REQUIREMENTS) & set(plan.packages)
    assert "Slicer 5.10 or later" in plan.blocker() and "NIfTI" in plan.blocker()
    assert not InstallPlan.for_this_python(dicom=False, python=(3, 9)).dicom_refused


def test_slicer_install_plan_says_what_it_replaces_and_that_slicer_restarts():
    """Slicer 5.10 ships pydicom 2.4: a plan that upgrades an installed package says so."""
    plan = InstallPlan.for_this_python(requirements=("numpy>=999",))
    assert plan.replaces == [f"numpy {importlib.metadata.version('numpy')}"]
    assert "This replaces numpy" in plan.message() and "restart Slicer" in plan.message()


def test_slicer_requirement_versions_are_checked():
    assert satisfied("numpy>=1.0") and not satisfied("numpy>=999") and not satisfied("samed2-no-such-package")


def test_slicer_core_offers_pip_install_only(slicer_app):
    """slicer-core has no slicer.packaging (Slicer >= 5.12 has): the older installer is chosen."""
    _, name = install_function(slicer)
    assert name == "slicer.util.pip_install"


def test_slicer_packaging_is_imported_before_it_is_found_absent(tmp_path, monkeypatch):
    """`import slicer` does not import slicer.packaging: install_function imports it itself."""
    package = tmp_path / "slicerlike"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "packaging.py").write_text("calls = []\n"
                                          "def pip_ensure(requirements, **options):\n"
                                          "    calls.append(([str(r) for r in requirements], options))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    slicerlike = importlib.import_module("slicerlike")
    assert not hasattr(slicerlike, "packaging")
    ensure, name = install_function(slicerlike)
    ensure(["safetensors>=0.4"])
    assert name == "slicer.packaging.pip_ensure"
    assert slicerlike.packaging.calls == [(["safetensors>=0.4"], {"prompt_install": False, "requester": "SAMed-2"})]


def resolve(python, requirements):
    """pip's own resolver, for `python`, binary wheels only, from PyPI; (ok, {name: version})."""
    with tempfile.TemporaryDirectory() as folder:
        report = Path(folder) / "report.json"
        result = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
                                 "--python-version", python, "--only-binary=:all:", "--report", str(report),
                                 *requirements], capture_output=True, text=True, timeout=300)
        if result.returncode != 0:
            return False, result.stderr
        return True, {item["metadata"]["name"].lower(): item["metadata"]["version"]
                      for item in json.loads(report.read_text())["install"]}


@pytest.mark.parametrize("python", sorted(SLICER_PYTHONS))
def test_slicer_install_plans_resolve_on_each_slicers_python(python):
    """Every plan the module can make on a supported Slicer installs there; the DICOM plan is
    refused exactly where pip cannot satisfy it."""
    version = tuple(int(part) for part in python.split("."))
    ok, found = resolve(python, planned_requirements(dicom=False))
    assert ok, f"the segmenting plan does not install on {SLICER_PYTHONS[python]}: {found}"
    dicom_ok, dicom_found = resolve(python, planned_requirements(dicom=True))
    refused = InstallPlan.for_this_python(dicom=True, python=version).dicom_refused
    assert dicom_ok != refused, f"{SLICER_PYTHONS[python]}: pip says {dicom_ok}, the plan refuses: {refused}"
    if dicom_ok:
        assert int(dicom_found["pydicom"].split(".")[0]) >= 3


# ---- weights --------------------------------------------------------------------------


@pytest.fixture
def server():
    with FileServer() as running:
        yield running


def checkpoint(url, name="tiny-test"):
    return CheckpointInfo(name=name, config="samed2", filename=f"{name}.pt", url=url, page=url,
                          licence="test-only", size=len(PAYLOAD), sha256=hashlib.sha256(PAYLOAD).hexdigest())


def test_mrml_weights_cache_is_under_slicers_cache_folder(slicer_app):
    assert model_weights.weights_cache_dir() == Path(slicer.app.cachePath) / "SAMed2" / "weights"


def test_slicer_weights_download_runs_in_the_background_with_progress(server, tmp_path):
    info = checkpoint(server.add("/tiny-test.pt", PAYLOAD))
    download = model_weights.download_job(info, tmp_path).start()
    progress = download.wait(timeout_s=60)
    assert progress.finished and download.error is None
    assert download.result == tmp_path / "tiny-test.pt" and download.result.read_bytes() == PAYLOAD
    assert progress.done == progress.total == len(PAYLOAD) and progress.fraction == 1.0
    assert model_weights.status_line("tiny-test", tmp_path).startswith("Ready: tiny-test.pt")


def test_slicer_weights_download_cancel_keeps_the_part_and_resumes(server, tmp_path):
    info = checkpoint(server.add("/tiny-test.pt", PAYLOAD))
    cancelled = model_weights.download_job(info, tmp_path)
    cancelled.cancel()
    progress = cancelled.start().wait(timeout_s=60)
    assert progress.finished and progress.cancelled and isinstance(cancelled.error, JobCancelled)
    held = (tmp_path / "tiny-test.pt.part").stat().st_size
    assert 0 < held < len(PAYLOAD)

    resumed = model_weights.download_job(info, tmp_path).start()
    resumed.wait(timeout_s=60)
    assert resumed.error is None and resumed.result.read_bytes() == PAYLOAD
    assert server.requests[-1].headers.get("Range") == f"bytes={held}-"


def test_slicer_weights_status_lines_say_what_to_do(tmp_path):
    assert model_weights.status_line("samed2", tmp_path).startswith("Not downloaded")
    assert "Import" in model_weights.status_line("samed2", tmp_path)
    assert model_weights.status_line("no-such-model", tmp_path).startswith("Unknown model")
    assert "samed2" in model_weights.model_names(tmp_path) and not model_weights.is_cached("samed2", tmp_path)
    (tmp_path / "latest_epoch_0217.pth.part").write_bytes(b"x" * 10)
    assert model_weights.status_line("samed2", tmp_path).startswith("Partly downloaded")
