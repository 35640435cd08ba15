"""SAMed-2 / SAM 2 engine: model, weights, sessions, DICOM-SEG, training."""
__version__ = "0.1.0"
