"""`samed2 bench --quick` through the real CLI: the report's structure, never its speed.

Timed assertions are forbidden here: the benchmark prints ratios, the tests check that every row is
there, that ratios are positive numbers and that the non-timing facts it reports hold (masks agree
with Meta's, the cache stays within its budget, a precomputed click runs no encoder).
"""
import json
import math
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from samed2 import bench

SAMED2 = [str(Path(sys.executable).with_name("samed2"))]
ROW_IDS = ["click", "click_bank", "encode_pair", "bank_retrieval", "fast_mode", "bf16", "lite_click", "lite_slice",
           "encode_meta",
           "propagation", "peak_rss", "scroll_click"]
META_ROWS = {"encode_meta", "propagation"}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    run = subprocess.run([*SAMED2, "bench", "--quick", "--device", "cpu", "--json", str(out)],
                         capture_output=True, text=True, timeout=1800)
    assert run.returncode == 0, run.stderr[-3000:]
    return run, json.loads(out.read_text())


def rows_by_id(report) -> dict:
    return {row["id"]: row for row in report["rows"]}


def test_bench_quick_reports_every_row_and_the_machine(quick_run):
    _, report = quick_run
    assert [row["id"] for row in report["rows"]] == ROW_IDS
    machine = report["machine"]
    assert machine["cores"] >= 1 and machine["torch_threads"] >= 1 and machine["cpu"]
    assert machine["torch"] == torch.__version__ and machine["device"] == "cpu"
    assert report["quick"] is True and report["settings"]["image_size"] == bench.QUICK.image_size
    assert report["wall_s"] > 0


def test_bench_ratios_are_positive_numbers(quick_run):
    _, report = quick_run
    for row in report["rows"]:
        if row["skipped"]:
            assert row["skipped"].startswith("skipped: ") and row["id"] in META_ROWS | {"bf16"}
            continue
        assert isinstance(row["ratio"], float) and math.isfinite(row["ratio"]) and row["ratio"] > 0, row["id"]
        assert row["ours"]["value"] > 0 and row["reference"]["value"] > 0, row["id"]
        assert row["ours"]["unit"] in ("s", "slices/s", "GB") and row["target"] and row["ratio_meaning"]
        assert row["passed"] in (True, False, None)


def test_bench_prints_the_table_with_every_row(quick_run):
    run, report = quick_run
    header = run.stdout.splitlines()[0]
    assert all(column in header for column in ("Benchmark", "Ours", "Reference", "Ratio", "Target", "Result"))
    for row in report["rows"]:
        assert row["title"] in run.stdout
    assert "Machine: " in run.stdout and report["machine"]["cpu"] in run.stdout


def test_bench_facts_that_are_not_timings(quick_run):
    _, report = quick_run
    rows = rows_by_id(report)
    assert rows["bank_retrieval"]["details"]["restacked_per_call"] is False
    assert rows["peak_rss"]["details"]["cache_within_budget"] is True
    assert rows["scroll_click"]["details"]["encoder_runs_in_warm_click"] == 0
    assert rows["scroll_click"]["details"]["bank_attention_runs_in_warm_click"] == 0
    assert 0.0 <= rows["fast_mode"]["details"]["mask_iou_vs_full"] <= 1.0
    propagation = rows["propagation"]
    if not propagation["skipped"]:
        details = propagation["details"]
        assert len(details["ious"]) == bench.QUICK.frames
        assert details["min_iou"] >= bench.MIN_IOU, "our propagated masks must agree with Meta's"
        assert all(0 < fraction < 1 for fraction in details["mask_fraction"]), "masks must not be trivial"


def test_bench_refuses_a_json_path_it_cannot_write_before_running(tmp_path):
    run = subprocess.run([*SAMED2, "bench", "--quick", "--device", "cpu", "--json", str(tmp_path / "no" / "b.json")],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "output folder does not exist" in run.stderr
    assert "bench:" not in run.stderr, "refused before the first benchmark"


def test_bench_without_meta_sam2_skips_its_rows(monkeypatch):
    monkeypatch.setitem(sys.modules, "sam2.build_sam", None)  # import fails as if not installed
    b = bench.Bench(bench.QUICK, torch.device("cpu"), log=lambda message: None)
    rows = bench.meta_rows(b)
    assert [row.id for row in rows] == ["encode_meta", "propagation"]
    assert all(row.skipped == "skipped: sam2 not installed" for row in rows)
    report = {"rows": [asdict(row) for row in rows], "wall_s": 1.0,
              "machine": {"cpu": "test", "cores": 1, "torch": torch.__version__, "torch_threads": 1,
                          "device": "cpu", "load_average_start": None, "load_average_end": None}}
    assert bench.format_table(report).count("skipped: sam2 not installed") == 2


def test_bench_phantom_is_a_ct_with_the_liver_in_its_box():
    shape = (40, 64, 64)
    k = bench.liver_slice(shape)
    ct = bench.phantom_slice(k, shape)
    assert ct.dtype.name == "int16" and ct.min() < -900 and ct.max() > 500
    x0, y0, x1, y1 = (round(v) for v in bench.liver_box(k, shape))
    liver = ct[y0 + 3: y1 - 3, (x0 + x1) // 2]
    assert abs(float(liver.mean()) - bench.LIVER[-1]) < 15
