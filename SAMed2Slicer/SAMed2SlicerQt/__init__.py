"""The Qt side of the SAMed-2 module: the controller the panel and the Segment Editor effect share
(timers, dialogs, the install prompt around SAMed2SlicerLib.interaction) and the panel's fine-tuning
section. The effect itself is in SegmentEditorSAMed2Lib/; only these, SAMed2Slicer.py and the effect
import qt."""
