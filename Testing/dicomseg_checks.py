"""Independent checks for DICOM-SEG tests: dicom3tools' validators, dcmqi's reader, and
reference grids built with SimpleITK's own DICOM reader."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk


def _tool(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if path is None:
        pytest.fail(f"{name} not found: install dicom3tools (apt) and dcmqi==1.5.7 (pip), see .ci/install")
    return path


def _run(command: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def assert_dciodvfy_clean(path: Path) -> None:
    """dicom3tools' IOD validator: exit code 0 and no "Error" line."""
    result = _run([_tool("dciodvfy"), str(path)])
    output = result.stdout + result.stderr
    errors = [line for line in output.splitlines() if line.startswith("Error")]
    assert result.returncode == 0 and not errors, f"dciodvfy {path}:\n{output}"


def assert_dcentvfy_clean(seg: Path, sources: list[Path]) -> None:
    """dicom3tools' entity validator over the SEG and its source slices: patient, study and
    series attributes agree across the files."""
    result = _run([_tool("dcentvfy"), *map(str, sources), str(seg)])
    output = result.stdout + result.stderr
    errors = [line for line in output.splitlines() if line.startswith("Error")]
    assert result.returncode == 0 and not errors, f"dcentvfy {seg}:\n{output}"


def assert_seg_valid(seg: Path, sources: list[Path]) -> None:
    assert_dciodvfy_clean(seg)
    assert_dcentvfy_clean(seg, sources)


def dcmqi_masks(seg: Path, workdir: Path) -> dict[str, sitk.Image]:
    """Segment label -> binary mask, as dcmqi's segimage2itkimage reads the SEG."""
    workdir.mkdir(parents=True, exist_ok=True)
    result = _run([_tool("segimage2itkimage"), "--inputDICOM", str(seg), "--outputDirectory", str(workdir),
                   "-p", "seg", "-t", "nrrd"])
    assert result.returncode == 0, f"segimage2itkimage {seg}:\n{result.stdout}{result.stderr}"
    meta = json.loads((workdir / "seg-meta.json").read_text())
    masks = {}
    for number, group in enumerate(meta["segmentAttributes"], 1):
        image = sitk.ReadImage(str(workdir / f"seg-{number}.nrrd"))
        masks[group[0]["SegmentLabel"]] = image != 0
    return masks


def series_grid(folder: Path) -> sitk.Image:
    """The series as SimpleITK (GDCM) reads and orders it: an independent reference grid."""
    (series_id,) = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series_id))
    return reader.Execute()


def on_grid(image: sitk.Image, grid: sitk.Image) -> np.ndarray:
    """`image` sampled at `grid`'s voxels in physical space (nearest neighbour), as an array."""
    resampled = sitk.Resample(image, grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0, image.GetPixelID())
    return sitk.GetArrayFromImage(resampled)


def no_leftovers(folder: Path, name: str) -> bool:
    """Neither `name` nor a temporary file for it exists in `folder`."""
    return not any(p.name == name or p.name.startswith(f".{name}.") for p in folder.iterdir())
