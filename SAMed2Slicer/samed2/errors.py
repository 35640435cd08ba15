"""Errors the engine raises for bad input: each message says what is wrong and what to do."""


class Samed2Error(Exception):
    """Base class: the command line prints these as one-line errors, without a traceback."""


class WeightsError(Samed2Error):
    """Missing, corrupt, unsafe or mismatched model weights."""


class DownloadError(WeightsError):
    """A download failed (network, HTTP status, size or checksum)."""


class InputError(Samed2Error):
    """An image, label map, prompt or other user input that cannot be used."""


class DicomError(InputError):
    """DICOM input that cannot be used, or a DICOM-SEG that cannot be written."""


class OutputError(Samed2Error):
    """An output file that could not be written (full disk, permissions); nothing partial is left."""


class BenchError(Samed2Error):
    """`samed2 bench` cannot run as asked (e.g. CI without Meta's sam2)."""
