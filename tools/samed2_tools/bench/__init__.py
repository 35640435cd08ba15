"""`samed2 bench`: the project's performance targets (docs/BENCHMARKS.md), measured side by side in one run.

Every row times our path and a reference path on the same machine, in the same process, with the
same random weights (full-size configs) and the same inputs (a synthetic CT phantom), and reports
absolute times, their ratio, the target and pass/fail. Times are medians of `repeats` runs after a
warm-up; reference and ours alternate run by run so that background load hits both alike.

References:
- "reference": the SAMed-2 reference code's inference flow, rebuilt from this project's modules
  (whose numerics the golden parity tests hold to the reference): every click encodes its image as
  a duplicated pair, and bank retrieval re-stacks and re-normalises every stored key per call.
- "Meta": Meta's `sam2` package, loaded with the same state dict. Optional: without it those rows
  say "skipped: sam2 not installed".
The session rows (peak RSS, scroll-then-click) run in a fresh process, so the other rows' tensors
do not count in its peak.

Rows: `engine_rows` (against the reference flow), `backend_rows` (OpenVINO or torch for the image
encoders, against torch fp32), `meta_rows` (against Meta's sam2), `session_rows`
(a whole session in a fresh process); their inputs in `phantom`, what they share in `common`, the
machine and the table in `report`.
"""
import time
from dataclasses import asdict
from typing import Callable

import torch

from samed2.backends import check_backend
from samed2.device import autocast, pick_device, pick_precision
from samed2_tools.bench.backend_rows import backend_rows
from samed2_tools.bench.common import FULL, MIN_IOU, QUICK, Bench, Settings
from samed2_tools.bench.engine_rows import samed2_rows
from samed2_tools.bench.meta_rows import meta_rows
from samed2_tools.bench.phantom import LIVER, liver_box, liver_slice, phantom_slice
from samed2_tools.bench.report import format_table, load_average, machine
from samed2_tools.bench.session_rows import session_rows

__all__ = ["FULL", "LIVER", "MIN_IOU", "QUICK", "Bench", "Settings", "format_table", "liver_box", "liver_slice",
           "meta_rows", "phantom_slice", "run"]


def run(settings: Settings, device_name: str = "auto", precision: str = "auto",
        log: Callable[[str], None] = print, backend: str = "auto") -> dict:
    """Every row; returns the JSON-ready report."""
    device = pick_device(device_name)
    check_backend(backend)
    bench = Bench(settings, device, pick_precision(precision, device), log, backend)
    started, load = time.perf_counter(), load_average()
    with torch.inference_mode():
        with autocast(device, bench.precision):  # as a session runs; Meta's rows stay in fp32
            rows = samed2_rows(bench)
        rows += backend_rows(bench)  # the reference in fp32, ours as the run's precision says
        rows += meta_rows(bench)
    rows += session_rows(bench)
    info = machine(device)
    info.update(load_average_start=load, load_average_end=load_average(), precision_asked=precision,
                precision=bench.precision, backend_asked=backend)
    return {"machine": info, "settings": asdict(settings), "rows": [asdict(row) for row in rows],
            "wall_s": time.perf_counter() - started}
