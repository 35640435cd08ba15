"""The page's "Save to PACS": the DICOM-SEG exported beside the other exports, then stored (STOW-RS) on
the DICOMweb server the series came from."""
from __future__ import annotations

from dataclasses import dataclass

import requests

from samed2.errors import DicomError
from samed2_tools.dicomweb import SeriesURL, is_url, open_session, store
from SAMed2SlicerLib.logic import EXPORT_SUFFIXES, with_suffix


@dataclass
class Pacs:
    root: str
    session: requests.Session

    @classmethod
    def of_series(cls, image, ca_bundle=None) -> Pacs | None:
        """The server of a series URL; None for files and folders (the page then has no Save to PACS)."""
        if not is_url(image):
            return None
        return cls(SeriesURL.parse(str(image)).root, open_session(ca_bundle))

    def save(self, logic, volume, segmentation, dicom_folder, path) -> str:
        """Export the DICOM-SEG to `path` and store it; the status line. When the server refuses it, the
        DicomError says so and where the SEG is kept."""
        written = logic.export(volume, segmentation, "DICOM-SEG", path, dicom_folder)
        path = with_suffix(path, EXPORT_SUFFIXES["DICOM-SEG"])
        try:
            store(path, self.root, self.session)
        except DicomError as error:
            raise DicomError(f"{error} The DICOM-SEG is kept in {path}.") from None
        return f"{written} Stored it on {self.root}."
