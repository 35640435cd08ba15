"""The SAMed-2 Segment Editor effect, laid out as Slicer's ScriptedSegmentEditorEffect template
lays effects out: Slicer's qSlicerSegmentEditorScriptedEffect::setPythonSource takes the module
name from this folder's name and the class name from the file's base name, so the effect class
`SegmentEditorEffect` must be found on this package (or in its file, loaded as this package)."""
from SegmentEditorSAMed2Lib.SegmentEditorEffect import SegmentEditorEffect

__all__ = ["SegmentEditorEffect"]
