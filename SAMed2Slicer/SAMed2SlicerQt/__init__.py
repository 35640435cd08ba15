"""The Qt side of the SAMed-2 module: the controller shared by the panel and the Segment Editor
effect, and the effect itself. Only this package and SAMed2Slicer.py import qt."""
