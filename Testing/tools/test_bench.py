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

from samed2 import backends
from samed2.backends import openvino_version
from samed2.bank import KERNELS
from samed2.device import native_bf16
from samed2.errors import BenchError
from samed2_tools import bench

CPU = torch.device("cpu")

SAMED2 = [str(Path(sys.executable).with_name("samed2"))]
ROW_IDS = ["click", "click_bank", "encode_pair", "bank_retrieval", "fast_mode", "precision", "lite_click",
           "lite_slice", "lite_encoder", "samed2_encoder", "encode_meta",
           "propagation", "peak_rss", "scroll_click"]
META_ROWS = {"encode_meta", "propagation"}
INFO_ROWS = {"click_bank", "fast_mode", "precision", "lite_click", "lite_slice"}


def verdict(row: dict) -> bool:
    """Each target row's result recomputed from its own figures."""
    ours, ratio, details = row["ours"]["value"], row["ratio"], row["details"]
    return {
        "click": lambda: ours <= 0.050,
        "encode_pair": lambda: ratio >= 1.4,
        "bank_retrieval": lambda: ours <= 0.020 and not details["restacked_per_call"],
        "lite_encoder": lambda: ratio >= 2.0 and details["mask_iou"] >= bench.MIN_IOU,
        "samed2_encoder": lambda: ratio >= (1.0 if native_bf16(CPU) else 1.3) and details["mask_iou"] >= bench.MIN_IOU,
        "encode_meta": lambda: ratio >= 1.0,
        "propagation": lambda: ratio >= 1.5 and details["min_iou"] >= bench.MIN_IOU,
        "peak_rss": lambda: max(ours, row["reference"]["value"]) < 6.0 and details["cache_within_budget"],
        "scroll_click": lambda: ours <= 0.050 and details["encoder_runs_in_warm_click"] == 0
        and details["bank_attention_runs_in_warm_click"] == 0,
    }[row["id"]]()


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    run = subprocess.run([*SAMED2, "bench", "--quick", "--device", "cpu", "--json", str(out)],
                         capture_output=True, text=True, timeout=1800)
    assert run.returncode == 0, run.stderr[-3000:]
    return run, json.loads(out.read_text())


def rows_by_id(report) -> dict:
    return {row["id"]: row for row in report["rows"]}


@pytest.mark.slow
def test_bench_quick_reports_every_row_and_the_machine(quick_run):
    _, report = quick_run
    assert [row["id"] for row in report["rows"]] == ROW_IDS
    machine = report["machine"]
    assert machine["cores"] >= 1 and machine["torch_threads"] >= 1 and machine["cpu"]
    assert machine["torch"] == torch.__version__ and machine["device"] == "cpu"
    assert report["quick"] is True and report["settings"]["image_size"] == bench.QUICK.image_size
    assert report["wall_s"] > 0


@pytest.mark.slow
def test_bench_ratios_are_positive_numbers(quick_run):
    _, report = quick_run
    for row in report["rows"]:
        if row["skipped"]:
            assert row["skipped"].startswith("skipped: ") and row["id"] in META_ROWS
            continue
        assert isinstance(row["ratio"], float) and math.isfinite(row["ratio"]) and row["ratio"] > 0, row["id"]
        assert row["ours"]["value"] > 0 and row["reference"]["value"] > 0, row["id"]
        assert row["ours"]["unit"] in ("s", "slices/s", "GB") and row["target"] and row["ratio_meaning"]


@pytest.mark.slow
def test_bench_results_follow_from_the_rows_figures(quick_run):
    _, report = quick_run
    for row in report["rows"]:
        if row["skipped"]:
            continue
        if row["id"] in INFO_ROWS:
            assert row["passed"] is None, row["id"]
        else:
            assert row["passed"] is verdict(row), row["id"]


@pytest.mark.slow
def test_bench_prints_the_table_with_every_row(quick_run):
    run, report = quick_run
    header = run.stdout.splitlines()[0]
    assert all(column in header for column in ("Benchmark", "Ours", "Reference", "Ratio", "Target", "Result"))
    for row in report["rows"]:
        assert row["title"] in run.stdout
    assert "Machine: " in run.stdout and report["machine"]["cpu"] in run.stdout


@pytest.mark.slow
def test_bench_facts_that_are_not_timings(quick_run):
    _, report = quick_run
    rows = rows_by_id(report)
    assert rows["bank_retrieval"]["details"]["restacked_per_call"] is False
    assert rows["bank_retrieval"]["details"]["identical_to_float32"] == 1.0, "the index keeps float32's choices"
    assert rows["peak_rss"]["details"]["cache_within_budget"] is True
    assert rows["peak_rss"]["passed"] is True, "measured and projected peak RSS under 6 GB"
    assert "projected" in rows["peak_rss"]["title"] and "not measured" in rows["peak_rss"]["reference"]["what"]
    assert rows["scroll_click"]["details"]["encoder_runs_in_warm_click"] == 0
    assert rows["scroll_click"]["details"]["bank_attention_runs_in_warm_click"] == 0
    assert rows["bank_retrieval"]["details"]["kernel"] in [kernel.name for kernel in KERNELS]
    machine, precision = report["machine"], rows["precision"]
    assert machine["precision_asked"] == "auto" and machine["precision"] == precision["details"]["precision"]
    chose_bf16 = precision["details"]["native_bf16"] and precision["ratio"] >= 1.2  # the run's own probe
    assert machine["precision"] == ("bf16" if chose_bf16 else "fp32")
    assert precision["details"]["native_bf16"] == native_bf16(CPU)
    for row_id in ("lite_encoder", "samed2_encoder"):  # the backend chosen by the run's own measurement
        details = rows[row_id]["details"]
        assert details["backend_asked"] == "auto" and details["mask_pixels"] > 0, row_id
        if machine["precision"] == "fp32":  # in bf16, two implementations round differently: the row reports it
            assert details["mask_iou"] >= bench.MIN_IOU, f"{row_id}: the chosen backend's masks must agree with torch's"
        if openvino_version() is not None:
            timing = details["auto_timing"]
            faster = timing["torch_s"] >= backends.MIN_SPEEDUP * timing["openvino_s"] and \
                timing["relative_error"] <= backends.TOLERANCE[machine["precision"]]
            assert details["backend"] == ("openvino" if faster else "torch"), row_id
        else:
            assert details["backend"] == "torch"
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


def test_bench_without_meta_sam2_fails_in_ci(monkeypatch):
    monkeypatch.setitem(sys.modules, "sam2.build_sam", None)  # import fails as if not installed
    monkeypatch.setenv("CI", "true")
    with pytest.raises(BenchError, match="Meta's sam2 is not installed"):
        bench.meta_rows(bench.Bench(bench.QUICK, CPU, "fp32", log=lambda message: None))


def test_bench_without_meta_sam2_skips_its_rows(monkeypatch):
    monkeypatch.setitem(sys.modules, "sam2.build_sam", None)  # import fails as if not installed
    monkeypatch.delenv("CI", raising=False)
    b = bench.Bench(bench.QUICK, CPU, "fp32", log=lambda message: None)
    rows = bench.meta_rows(b)
    assert [row.id for row in rows] == ["encode_meta", "propagation"]
    assert all(row.skipped == "skipped: sam2 not installed" for row in rows)
    report = {"rows": [asdict(row) for row in rows], "wall_s": 1.0,
              "machine": {"cpu": "test", "cpu_family_model": "0/0", "cpu_features": [], "cores": 1,
                          "torch": torch.__version__, "torch_threads": 1, "device": "cpu", "precision": "fp32",
                          "precision_asked": "fp32", "load_average_start": None, "load_average_end": None}}
    assert bench.format_table(report).count("skipped: sam2 not installed") == 2


def test_bench_phantom_is_a_ct_with_the_liver_in_its_box():
    shape = (40, 64, 64)
    k = bench.liver_slice(shape)
    ct = bench.phantom_slice(k, shape)
    assert ct.dtype.name == "int16" and ct.min() < -900 and ct.max() > 500
    x0, y0, x1, y1 = (round(v) for v in bench.liver_box(k, shape))
    liver = ct[y0 + 3: y1 - 3, (x0 + x1) // 2]
    assert abs(float(liver.mean()) - bench.LIVER[-1]) < 15
