"""What `samed2 eval` writes: results.json (settings, summary, every object), objects.csv (one row per
object), steps.csv (cvpr25) or slices.csv (propagation), and a PNG plot of the scores."""
from __future__ import annotations

import csv
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from samed2.files import atomic_output
from samed2_tools.evaluate.metrics import confidence_auroc
from samed2_tools.evaluate.protocols import EvalSettings, InteractiveResult, PropagationResult


def summary(results: list) -> dict:
    """Means over all objects of every numeric column of their rows."""
    rows = [r.row() for r in results]
    if not rows:
        return {}
    numeric = [k for k, v in rows[0].items() if isinstance(v, float)]
    means = {k: float(np.mean([row[k] for row in rows])) for k in numeric}
    if isinstance(results[0], PropagationResult):
        means["confidence_auroc"] = confidence_auroc(results)
    return means


def write_outputs(results: list, out_dir, settings: EvalSettings, info: dict) -> list[Path]:
    """results.json, objects.csv (one row per object), steps.csv or slices.csv, and a plot (PNG)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = {"protocol": settings.protocol, "settings": asdict(settings), **info,
              "summary": summary(results), "objects": [asdict(r) | r.row() for r in results]}
    paths = [_write_text(out / "results.json", json.dumps(report, indent=2, default=_plain) + "\n"),
             _write_csv(out / "objects.csv", [r.row() for r in results])]
    if settings.protocol == "cvpr25":
        paths.append(_write_csv(out / "steps.csv", _step_rows(results)))
        paths.append(_plot_steps(results, out / "cvpr25.png"))
    else:
        paths.append(_write_csv(out / "slices.csv", _slice_rows(results)))
        paths.append(_plot_slices(results, out / "propagation.png"))
    return paths


def _plain(value):
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def _step_rows(results: list[InteractiveResult]) -> list[dict]:
    rows = []
    for r in results:
        for s in r.steps:
            click = s.click
            rows.append({"case": r.case, "label": r.label, "step": s.prompt, "slice": s.slice, "dsc": s.dsc,
                         "nsd": s.nsd, "seconds": s.seconds,
                         "click_kji": " ".join(map(str, click.kji)) if click else "",
                         "click_sign": ("+" if click.positive else "-") if click else ""})
    return rows


def _slice_rows(results: list[PropagationResult]) -> list[dict]:
    return [{"case": r.case, "label": r.label, "slice": k, "offset": k - r.prompt_slice, "dice": d}
            for r in results for k, d in r.slices]


def _write_text(path: Path, text: str) -> Path:
    with atomic_output(path) as temporary:
        temporary.write_text(text, encoding="utf-8")
    return path


def _write_csv(path: Path, rows: list[dict]) -> Path:
    with atomic_output(path) as temporary, open(temporary, "w", newline="", encoding="utf-8") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(rows[0]) if rows else ["case"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def _figure(columns: int):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5 * columns, 4), dpi=100)
    return fig, fig.subplots(1, columns, squeeze=False)[0]


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    with atomic_output(path) as temporary:
        fig.savefig(temporary, format="png")
    return path


def _plot_steps(results: list[InteractiveResult], path: Path) -> Path:
    fig, axes = _figure(2)
    for ax, metric in zip(axes, ("dsc", "nsd")):
        for r in results:
            ax.plot(range(len(r.steps)), [getattr(s, metric) for s in r.steps], marker="o",
                    label=f"{r.case}: {r.name}")
        ax.set_xticks(range(len(results[0].steps)) if results else [])
        ax.set_xticklabels([s.prompt for s in results[0].steps] if results else [])
        ax.set(ylim=(-0.02, 1.02), ylabel=metric.upper(), title=f"{metric.upper()} after each interaction")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    return _save(fig, path)


def _plot_slices(results: list[PropagationResult], path: Path) -> Path:
    fig, axes = _figure(1)
    for r in results:
        ax_x = [k - r.prompt_slice for k, _ in r.slices]
        axes[0].plot(ax_x, [d for _, d in r.slices], marker=".", label=f"{r.case}: {r.name} (DSC {r.dsc:.3f})")
    axes[0].axvline(0, color="gray", linestyle="--", linewidth=1)
    axes[0].set(ylim=(-0.02, 1.02), xlabel="slices from the prompted slice", ylabel="Dice",
                title="Dice per slice after propagation")
    axes[0].grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    return _save(fig, path)
