"""Qt-free Slicer logic of the SAMed-2 module: MRML nodes <-> the `samed2` engine.

Imports only `slicer`, `vtk`, numpy and the engine, so it runs inside Slicer and on
`slicer-core` in tests.
"""
