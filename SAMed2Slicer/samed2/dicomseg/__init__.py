"""DICOM Segmentation (SEG): export from label maps, and import back onto the source series.

One module per job: `source` reads and repairs the source series, `export` writes a SEG,
`reading` reads one back.
"""
from samed2.dicomseg.export import ExportedSegment, ExportReport, export_seg
from samed2.dicomseg.reading import ImportedSegment, SegImport, read_seg
from samed2.dicomseg.source import Report, SourceSeries, load_series, write_repaired_series

__all__ = ["ExportReport", "ExportedSegment", "ImportedSegment", "Report", "SegImport", "SourceSeries",
           "export_seg", "load_series", "read_seg", "write_repaired_series"]
