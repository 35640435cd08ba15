"""Output files: checked up front, written whole or not at all, with the user's usual permissions."""
import os

import pytest

from samed2.errors import InputError, OutputError
from samed2.files import atomic_output, atomic_write, check_output_path


def test_check_output_path_names_the_formats_and_the_missing_folder(tmp_path):
    assert check_output_path(tmp_path / "Mask.NII.GZ", (".nii.gz", ".nrrd")) == tmp_path / "Mask.NII.GZ"
    with pytest.raises(InputError, match=r"unsupported output format 'mask\.png': use \.nii\.gz, \.nrrd"):
        check_output_path(tmp_path / "mask.png", (".nii.gz", ".nrrd"))
    with pytest.raises(InputError, match="output folder does not exist"):
        check_output_path(tmp_path / "missing" / "mask.nrrd", (".nrrd",))


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_atomic_write_replaces_the_file_with_usual_permissions(tmp_path, umask_022):
    target = tmp_path / "report.json"
    target.write_text("old")
    atomic_write(target, lambda stream: stream.write(b"new"))
    assert target.read_text() == "new"
    assert target.stat().st_mode & 0o777 == 0o644, "readable by others, like any file the user writes"
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_a_failing_writer_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "mask.nrrd"
    target.write_text("old")

    def half_then_crash(stream):
        stream.write(b"partial")
        raise RuntimeError("killed mid-write")
    with pytest.raises(RuntimeError, match="killed"):
        atomic_write(target, half_then_crash)

    def disk_full(stream):
        raise OSError(28, "No space left on device")
    with pytest.raises(OutputError, match="No space left"):
        atomic_write(target, disk_full)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["mask.nrrd"]


def test_atomic_output_gives_writers_the_same_file_ending(tmp_path):
    with atomic_output(tmp_path / "seg.nii.gz") as temporary:
        assert temporary.parent == tmp_path and temporary.name.endswith(".seg.nii.gz")
        assert temporary.name.startswith("."), "hidden while incomplete"
        temporary.write_bytes(b"x")
    assert (tmp_path / "seg.nii.gz").read_bytes() == b"x"
    with pytest.raises(InputError, match="output folder does not exist"):
        with atomic_output(tmp_path / "missing" / "seg.nii.gz"):
            pass
