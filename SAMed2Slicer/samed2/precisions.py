"""The arithmetic a session's model can run in ("auto" picks one by measurement, see samed2.device),
importable without torch: the command line and the Slicer panel offer these names."""
PRECISIONS = ("auto", "fp32", "bf16")
