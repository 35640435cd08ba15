"""DICOM series in a folder: what each is, and choosing one."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import SimpleITK as sitk

from samed2.errors import DicomError


@dataclass(frozen=True)
class DicomSeries:
    """One DICOM series found in a folder (``uid`` may be empty in defective files)."""

    uid: str
    files: tuple[str, ...]
    description: str
    modality: str
    derived_uid: bool = False  # `uid` made from the files because their SeriesInstanceUID is empty

    def summary(self) -> str:
        uid = self.uid or "(empty SeriesInstanceUID)"
        derived = " (UID derived: the files' SeriesInstanceUID is empty)" if self.derived_uid else ""
        return f"{uid}{derived}: {self.modality or '?'} '{self.description}', {len(self.files)} file(s)"


def list_dicom_series(folder) -> list[DicomSeries]:
    """The DICOM series directly inside ``folder``, files sorted by slice position."""
    found = []
    for uid in sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)):
        files = tuple(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid))
        header = sitk.ImageFileReader()
        header.SetFileName(files[0])
        header.ReadImageInformation()
        found.append(DicomSeries(uid, files, dicom_tag(header, "0008|103e"), dicom_tag(header, "0008|0060")))
    return found


def choose_series(series: list[DicomSeries], folder: Path, series_uid: str | None = None,
                  preferred_uid: str | None = None) -> DicomSeries:
    """The series `series_uid` names; else the only one, else `preferred_uid`'s; DicomError listing
    the series when that does not decide."""
    if not series:
        raise DicomError(f"no DICOM series found in {folder} (for a NIfTI/NRRD/MHA file, give the file itself)")
    listing = "; ".join(s.summary() for s in series)
    by_uid = {s.uid: s for s in series}
    if series_uid is not None:
        if series_uid not in by_uid:
            raise DicomError(f"no DICOM series with SeriesInstanceUID {series_uid!r} in {folder}; found: {listing}")
        return by_uid[series_uid]
    if len(series) == 1:
        return series[0]
    if preferred_uid in by_uid:
        return by_uid[preferred_uid]
    raise DicomError(f"{folder} holds {len(series)} DICOM series; choose one by SeriesInstanceUID (--series): "
                     f"{listing}")


def dicom_tag(reader: sitk.ImageFileReader, key: str) -> str:
    return reader.GetMetaData(key).strip() if reader.HasMetaDataKey(key) else ""


