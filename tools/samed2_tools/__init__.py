"""Tools built on the samed2 engine, outside what 3D Slicer installs: the `samed2` command line,
fine-tuning (`train`), evaluation (`evaluate`), benchmarks (`bench`), the demo's sample data and
PNG overlays. The engine never imports this package."""
