"""Reading volumes: image files SimpleITK reads (NIfTI, NRRD, MHA, ...) and DICOM series folders.

Sizes are checked from the header before any pixel data is read (see ``MAX_VOXELS``).
"""
from __future__ import annotations

from pathlib import Path

import SimpleITK as sitk

from samed2.dicom_series import choose_series, list_dicom_series
from samed2.errors import InputError
from samed2.volume import MAX_VOXELS, Volume, check_array_layout, check_components, check_dimension


def load_volume(path, series_uid: str | None = None, max_voxels: int | None = MAX_VOXELS) -> Volume:
    """Load a NIfTI, NRRD, MHA (any SimpleITK-readable file) or a DICOM series folder.

    A folder holding several series needs ``series_uid`` (InputError lists them otherwise).
    The size limit is checked from the header before any pixel data is read.
    """
    path = Path(path)
    if path.is_dir():
        return load_dicom_series(path, series_uid, max_voxels)
    if not path.is_file():
        raise InputError(f"no such image file or DICOM folder: {path}")
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as error:
        raise InputError(f"cannot read {path} as an image: {first_line(error)}") from error
    check_header(reader, max_voxels, str(path))
    modality = reader.GetMetaData("0008|0060").strip() if reader.HasMetaDataKey("0008|0060") else None
    return Volume.from_sitk(read_pixels(reader, str(path)), modality, max_voxels)


def load_dicom_series(folder: Path, series_uid: str | None = None,
                      max_voxels: int | None = MAX_VOXELS) -> Volume:
    """Load one DICOM series from a folder (see :func:`load_volume`)."""
    series = choose_series(list_dicom_series(folder), folder, series_uid)
    first = sitk.ImageFileReader()
    first.SetFileName(series.files[0])
    first.ReadImageInformation()
    if len(series.files) == 1:
        check_header(first, max_voxels, series.files[0])
        return Volume.from_sitk(read_pixels(first, series.files[0]), series.modality, max_voxels)
    columns, rows = first.GetSize()[:2]
    check_array_layout((len(series.files), rows, columns), None, max_voxels)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(list(series.files))
    return Volume.from_sitk(read_pixels(reader, str(folder)), series.modality, max_voxels)


def read_pixels(reader, source: str) -> sitk.Image:
    try:
        return reader.Execute()
    except RuntimeError as error:
        raise InputError(f"cannot read the pixel data of {source}: {first_line(error)}") from error


def check_header(reader: sitk.ImageFileReader, max_voxels: int | None, source: str) -> None:
    """Dimension, components and size checks from an image header, before reading pixels."""
    size = reader.GetSize()
    check_dimension(len(size), size, source)
    check_components(reader.GetNumberOfComponents(), source)
    check_array_layout(tuple(reversed(size[:3])), None, max_voxels)


def first_line(error: Exception) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


