"""The machine a run measured on, and the printed table."""
import os
import platform
from pathlib import Path
from typing import Optional

import torch

from samed2_tools.bench.common import GB


def cpuinfo(key: str) -> str:
    """The first value of `key` in /proc/cpuinfo ("" where there is none)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return ""
    for line in lines:
        name, _, value = line.partition(":")
        if name.strip() == key:
            return value.strip()
    return ""


def cpu_flags() -> set:
    return set(cpuinfo("flags").split())


def cpu_model() -> str:
    return cpuinfo("model name") or platform.processor() or platform.machine()


def machine(device: torch.device) -> dict:
    info = {"cpu": cpu_model(), "cpu_family_model": f"{cpuinfo('cpu family')}/{cpuinfo('model')}",
            "cores": os.cpu_count(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
            "os": platform.platform(), "device": str(device),
            "cpu_features": sorted(cpu_flags() & {"avx2", "avx512f", "avx512_fp16", "avx512_bf16", "amx_bf16",
                                                  "amx_tile"})}
    if hasattr(os, "sysconf") and "SC_PHYS_PAGES" in os.sysconf_names:
        info["memory_gb"] = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / GB
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def load_average() -> Optional[list]:
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


# ---- the printed table ----------------------------------------------------------------------

def format_measure(m: Optional[dict]) -> str:
    if not m:
        return "-"
    value, unit = m["value"], m["unit"]
    if unit == "s":
        return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"
    return f"{value:.2f} {unit}"


def format_row(row: dict) -> list:
    if row["skipped"]:
        return [row["title"], "-", "-", "-", "-", row["skipped"]]
    result = {True: "PASS", False: "FAIL", None: "info"}[row["passed"]]
    return [row["title"], format_measure(row["ours"]), format_measure(row["reference"]),
            f"{row['ratio']:.2f}x", row["target"], result]


def format_table(report: dict) -> str:
    lines = [["Benchmark", "Ours", "Reference", "Ratio", "Target", "Result"]]
    lines += [format_row(row) for row in report["rows"]]
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    text = [" | ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in lines]
    text.insert(1, "-+-".join("-" * w for w in widths))
    m = report["machine"]
    text.append(f"Machine: {m['cpu']} (family/model {m['cpu_family_model']}; {', '.join(m['cpu_features'])}), "
                f"{m['cores']} cores, torch {m['torch']} ({m['torch_threads']} threads), "
                f"device {m['device']}{', ' + m['gpu'] if 'gpu' in m else ''}, precision {m['precision']} "
                f"(asked: {m['precision_asked']}), backend asked: {m.get('backend_asked', 'auto')}; load average "
                f"{fmt_load(m['load_average_start'])} -> {fmt_load(m['load_average_end'])}; "
                f"wall {report['wall_s']:.0f} s")
    loads = [load[0] for load in (m["load_average_start"], m["load_average_end"]) if load]
    if loads and max(loads) > m["cores"] + 1:  # this run itself keeps up to `cores` threads busy
        text.append("Note: other processes competed for the CPU during the run; absolute times are inflated, "
                    "ratios (ours and reference interleaved) less so.")
    return "\n".join(text)


def fmt_load(load: Optional[list]) -> str:
    return "n/a" if load is None else f"{load[0]:.2f}"
