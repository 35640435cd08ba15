"""`samed2 segment` end to end through the console script, on the real CT."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

SAMED2 = [str(Path(sys.executable).with_name("samed2"))]


def segment(*args):
    return subprocess.run([*SAMED2, "segment", *map(str, args)], capture_output=True, text=True)


def test_session_cli_segment_writes_a_label_map_on_the_input_grid(checkpoint, data_dir, tmp_path):
    image = data_dir / "totalseg" / "example_ct_sm.nii.gz"
    run = segment(image, *checkpoint, "--box", "30,30,80,70,15", "--point", "55,50,15,+", "--coords", "voxel",
                  "--propagate", "up", "--range", "15:19", "--stop-after-absent", "0",
                  "--out", tmp_path / "mask.nrrd", "--overlay", tmp_path / "mask.png")
    assert run.returncode == 0, run.stderr
    source, written = sitk.ReadImage(str(image)), sitk.ReadImage(str(tmp_path / "mask.nrrd"))
    assert written.GetSize() == source.GetSize()
    assert np.allclose(written.GetDirection(), source.GetDirection())
    assert np.allclose(written.GetOrigin(), source.GetOrigin())
    assert np.allclose(written.GetSpacing(), source.GetSpacing())
    mask = sitk.GetArrayFromImage(written)
    assert not mask[:15].any() and not mask[20:].any(), "nothing written outside the prompted slice and the range"
    assert (tmp_path / "mask.png").stat().st_size > 1000
    assert "propagating" in run.stderr


def test_session_cli_segment_takes_physical_coordinates(checkpoint, data_dir, tmp_path):
    image = data_dir / "totalseg" / "example_ct_sm.nii.gz"
    reference = sitk.ReadImage(str(image))
    lps = reference.TransformContinuousIndexToPhysicalPoint((55.0, 50.0, 12.0))
    ras = (-lps[0], -lps[1], lps[2])
    run = segment(image, *checkpoint, "--point", ",".join(f"{v:.3f}" for v in ras) + ",+", "--coords", "ras",
                  "--propagate", "none", "--out", tmp_path / "m.nii.gz")
    assert run.returncode == 0, run.stderr
    assert "slice 12" in run.stderr


@pytest.mark.parametrize("args, message", [
    (["--point", "500,20,10,+", "--coords", "voxel"], "outside"),
    (["--box", "10,10,10,40,12", "--coords", "voxel"], "zero"),
    ([], "at least one --point or --box"),
    (["--point", "1,2", "--coords", "voxel"], "expected 3"),
])
def test_session_cli_segment_bad_input_is_a_clear_error(checkpoint, data_dir, tmp_path, args, message):
    run = segment(data_dir / "totalseg" / "example_ct_sm.nii.gz", *checkpoint, *args, "--out", tmp_path / "m.nii.gz")
    assert run.returncode == 2
    assert message in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "m.nii.gz").exists()


@pytest.mark.parametrize("outputs, message", [
    (["--out", "{tmp}/missing/m.nii.gz"], "output folder does not exist"),
    (["--out", "{tmp}/m.png"], "unsupported output format 'm.png'"),
    (["--out", "{tmp}/m.nrrd", "--overlay", "{tmp}/m.jpg"], "unsupported output format 'm.jpg'"),
])
def test_session_cli_segment_refuses_bad_output_paths_before_any_work(data_dir, tmp_path, outputs, message):
    """A typo in an output name is reported first: the model named here does not exist, so reaching
    it (or the propagation) would give another error."""
    outputs = [arg.format(tmp=tmp_path) for arg in outputs]
    run = segment(data_dir / "totalseg" / "example_ct_sm.nii.gz", "--model", "no-such-model", "--box", "30,30,80,70,15",
                  "--coords", "voxel", *outputs)
    assert run.returncode == 2
    assert message in run.stderr and "no-such-model" not in run.stderr and "Traceback" not in run.stderr
    assert list(tmp_path.iterdir()) == []


def test_session_cli_segment_logs_non_finite_voxels_as_a_warning_line(checkpoint, data_dir, tmp_path):
    source = sitk.ReadImage(str(data_dir / "totalseg" / "example_ct_sm.nii.gz"))
    array = sitk.GetArrayFromImage(source).astype(np.float32)
    array[16, 10:20, 10:20] = np.nan
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(source)
    sitk.WriteImage(image, str(tmp_path / "nan.nrrd"))  # NRRD keeps NaN (SimpleITK's NIfTI writer does not)
    run = segment(tmp_path / "nan.nrrd", *checkpoint, "--box", "30,30,80,70,15", "--coords", "voxel",
                  "--propagate", "up", "--range", "15:17", "--stop-after-absent", "0", "--out", tmp_path / "m.nrrd")
    assert run.returncode == 0, run.stderr
    warning = [line for line in run.stderr.replace("\r", "\n").splitlines() if line.startswith("WARNING:")]
    assert warning and "100 voxel(s) are NaN or infinite" in warning[0], run.stderr
    assert "session.py" not in run.stderr, "a log line, not Python's warning with its source line"
