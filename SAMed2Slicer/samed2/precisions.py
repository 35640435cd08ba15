"""How a session's model runs, importable without torch: the command line and the Slicer panel offer
these names. PRECISIONS: the arithmetic ("auto" picks one by measurement, see samed2.device);
BACKENDS: what runs the image encoder on the CPU ("auto" picks one by measurement, see samed2.backends)."""
PRECISIONS = ("auto", "fp32", "bf16")
BACKENDS = ("auto", "torch", "openvino")
