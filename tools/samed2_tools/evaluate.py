"""Evaluation protocols for interactive 3D segmentation with a session (`samed2 eval`).

Two protocols, each object (one label value of a label map) evaluated on its own:

- ``cvpr25``: the interactive protocol of the CVPR 2025 challenge "Foundation Models for Interactive
  3D Biomedical Image Segmentation". Step 0: a box on the middle slice of the object (the slice of
  its median voxel along the slicing axis, as the challenge's box file chooses it; tight, without the
  challenge's random 0-5 pixel enlargement), propagated through the object's extent along that axis
  (the challenge's box also gives that extent). Steps 1-5: a corrective click at the voxel deepest
  inside the largest 3D error component (26-connected; depth = Euclidean distance in voxels to the
  nearest voxel outside the component, the volume's border included; ties go to the first voxel in
  [k, j, i] order), positive where the object was missed and negative where it was over-segmented,
  placed on its slice and propagated again. After each step: DSC and NSD (2 mm tolerance in physical
  space; NSD = 0 when DSC <= 0.2) and the seconds the session took. DSC_AUC and NSD_AUC are the
  trapezoid areas under the scores of the 5 click steps at x = 0..4 (range 0-4; the box step is not
  included, as in the challenge's evaluation code).
- ``propagation``: a box on the middle slice, propagated both ways without limits (the session stops
  where the object ends); Dice per slice (every slice where the truth or the prediction has the
  object), the 3D DSC and NSD, the slices filled past the object's ends, and the session's confidence
  per slice with how well it flags bad slices (AUROC, `confidence_auroc`).

Metrics are MONAI's (`compute_dice`, `compute_surface_dice` with surface elements as in DeepMind's
surface-distance code, which the challenge uses); error components and depths are SciPy's.
"""
from __future__ import annotations

import csv
import json
import logging
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from samed2.errors import InputError
from samed2.files import atomic_output
from samed2.model_io import mask_box
from samed2.volume import Volume, get_slice, ijk_to_slice_coords

log = logging.getLogger(__name__)

PROTOCOLS = ("cvpr25", "propagation")
CLICKS = 5
NSD_TOLERANCE_MM = 2.0
NSD_MIN_DSC = 0.2
BAD_SLICE_DICE = 0.8
AXIAL_NORMAL_RAS = (0.0, 0.0, 1.0)


# ---------------------------------------------------------------- metrics


def _tensor(mask: np.ndarray):
    import torch

    return torch.from_numpy(np.array(mask, dtype=bool))[None, None]


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two boolean masks (1.0 when both are empty)."""
    from monai.metrics import compute_dice

    return float(compute_dice(_tensor(pred), _tensor(truth), include_background=True, ignore_empty=False))


def surface_dice(pred: np.ndarray, truth: np.ndarray, spacing_kji, tolerance_mm: float = NSD_TOLERANCE_MM) -> float:
    """Normalised surface Dice of two boolean [k, j, i] masks at a tolerance in mm (0 when one is empty)."""
    from monai.metrics import compute_surface_dice

    if not pred.any() or not truth.any():
        return 0.0 if pred.any() or truth.any() else 1.0
    crop = _union_box(pred, truth)
    with warnings.catch_warnings():  # MONAI's own use of an argument it deprecated
        warnings.simplefilter("ignore", FutureWarning)
        value = compute_surface_dice(_tensor(pred[crop]), _tensor(truth[crop]), class_thresholds=[tolerance_mm],
                                     include_background=True, spacing=[float(s) for s in spacing_kji],
                                     use_subvoxels=True)
    return float(value)


def _union_box(a: np.ndarray, b: np.ndarray) -> tuple:
    """Slices of the bounding box of both masks, one voxel wider on each side (surfaces stay the same)."""
    from scipy import ndimage

    box = ndimage.find_objects((a | b).astype(np.uint8))[0]
    return tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in box)


def scores(pred: np.ndarray, truth: np.ndarray, spacing_kji) -> tuple[float, float]:
    """(DSC, NSD) as the challenge reports them: NSD is 0 when DSC <= 0.2."""
    dsc = dice(pred, truth)
    return dsc, surface_dice(pred, truth, spacing_kji) if dsc > NSD_MIN_DSC else 0.0


def slice_dice(pred: np.ndarray, truth: np.ndarray, axis: int) -> list[tuple[int, float]]:
    """(slice index, Dice) for every slice along `axis` where the truth or the prediction is non-empty."""
    array_axis = 2 - axis
    others = tuple(a for a in range(3) if a != array_axis)
    used = np.nonzero((pred | truth).any(axis=others))[0]
    return [(int(k), dice(get_slice(pred, axis, k), get_slice(truth, axis, k))) for k in used]


def auc(values) -> float:
    """Area under the values at x = 0, 1, 2, ... by the trapezoid rule."""
    values = np.asarray(values, dtype=float)
    return float(np.sum((values[1:] + values[:-1]) / 2))


# ---------------------------------------------------------------- prompts from the truth


@dataclass(frozen=True)
class Click:
    kji: tuple[int, int, int]
    positive: bool  # True: the object was missed here; False: over-segmented here
    depth: float  # voxels from the error component's edge


def largest_error_component(pred: np.ndarray, truth: np.ndarray) -> Optional[np.ndarray]:
    """The largest fully connected (26 in 3D, 8 in 2D) component of the voxels where `pred` and `truth`
    differ (None if none)."""
    from scipy import ndimage

    errors = pred != truth
    if not errors.any():
        return None
    labels, _ = ndimage.label(errors, structure=np.ones((3,) * errors.ndim, dtype=bool))
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def deepest_voxel(component: np.ndarray) -> tuple[tuple[int, ...], float]:
    """(index ([k, j, i], or [row, column] in 2D) of the voxel farthest from the component's edge (the
    array's border counts as edge), depth)."""
    from scipy import ndimage

    box = ndimage.find_objects(component.astype(np.uint8))[0]
    depth = ndimage.distance_transform_edt(np.pad(component[box], 1))[(slice(1, -1),) * component.ndim]
    local = np.unravel_index(int(np.argmax(depth)), depth.shape)
    voxel = tuple(int(s.start + v) for s, v in zip(box, local))
    return voxel, float(depth[local])


def corrective_click(pred: np.ndarray, truth: np.ndarray) -> Optional[Click]:
    """The challenge's simulated click: the deepest voxel of the largest error component (None when perfect)."""
    component = largest_error_component(pred, truth)
    if component is None:
        return None
    voxel, depth = deepest_voxel(component)
    return Click(voxel, bool(truth[voxel]), depth)


def slice_click(pred: np.ndarray, truth: np.ndarray) -> Optional[tuple[float, float, bool]]:
    """The same rule on one slice: (x, y, positive) at the pixel deepest inside the largest 8-connected
    error region of the slice (None when the slice is right)."""
    component = largest_error_component(pred, truth)
    if component is None:
        return None
    (row, column), _ = deepest_voxel(component)
    return float(column), float(row), bool(truth[row, column])


def click_on_slice(click: Click, axis: int) -> tuple[int, tuple[float, float, bool]]:
    """(slice index, (x, y, positive)) of a click for a session slicing along `axis`."""
    k, j, i = click.kji
    index, x, y = ijk_to_slice_coords((i, j, k), axis)
    return int(index), (float(x), float(y), click.positive)


def middle_slice(truth: np.ndarray, axis: int) -> int:
    """The slice along `axis` holding the object's median voxel (never an empty slice)."""
    positions = np.sort(np.nonzero(truth)[2 - axis])
    return int(positions[len(positions) // 2])


def extent(truth: np.ndarray, axis: int) -> tuple[int, int]:
    """First and last slice along `axis` holding the object."""
    positions = np.nonzero(truth)[2 - axis]
    return int(positions.min()), int(positions.max())


# ---------------------------------------------------------------- protocols


@dataclass
class Step:
    prompt: str  # "box", "click1", ...
    slice: Optional[int]  # None: no click (nothing left to correct)
    dsc: float
    nsd: float
    seconds: float
    box: Optional[tuple] = None
    click: Optional[Click] = None


@dataclass
class InteractiveResult:
    """The cvpr25 protocol's outcome for one object."""

    case: str
    label: int
    name: str
    axis: int
    steps: list[Step] = field(default_factory=list)

    @property
    def click_steps(self) -> list[Step]:
        return self.steps[1:]

    def row(self) -> dict:
        row = {"case": self.case, "label": self.label, "name": self.name,
               "dsc_auc": auc([s.dsc for s in self.click_steps]), "nsd_auc": auc([s.nsd for s in self.click_steps]),
               "dsc_final": self.steps[-1].dsc, "nsd_final": self.steps[-1].nsd,
               "seconds_total": sum(s.seconds for s in self.steps)}
        for metric in ("dsc", "nsd", "seconds"):
            row.update({f"{metric}_{s.prompt}": getattr(s, metric) for s in self.steps})
        return row


@dataclass
class PropagationResult:
    """The propagation protocol's outcome for one object."""

    case: str
    label: int
    name: str
    axis: int
    prompt_slice: int
    box: tuple
    dsc: float
    nsd: float
    seconds: float
    slices: list[tuple[int, float]] = field(default_factory=list)  # (slice, Dice)
    past_ends: int = 0  # slices with a mask beyond the object's first or last slice
    confidence: dict = field(default_factory=dict)  # slice -> the session's confidence there

    def row(self) -> dict:
        per_slice = [d for _, d in self.slices]
        return {"case": self.case, "label": self.label, "name": self.name, "prompt_slice": self.prompt_slice,
                "dsc": self.dsc, "nsd": self.nsd, "slice_dice_mean": float(np.mean(per_slice)),
                "slices": len(per_slice), "past_ends": self.past_ends, "seconds": self.seconds}

    def flagged(self, bad_below: float = BAD_SLICE_DICE) -> list[tuple[float, bool]]:
        """(confidence, bad) of each slice with a result: bad when its Dice is below `bad_below` (a mask
        where there is no object has Dice 0; no mask where there is none, Dice 1)."""
        dice_of = dict(self.slices)
        return [(c, dice_of.get(k, 1.0) < bad_below) for k, c in self.confidence.items()]


def _prompt_and_propagate(session, obj_id: int, index: int, limits, points=(), box=None) -> float:
    """Prompt one slice, re-propagate the object (within `limits`); the seconds it took."""
    start = time.perf_counter()
    session.add_prompt(obj_id, index, points=points, box=box)
    for _ in session.propagate([obj_id], direction="both", start=limits[0], stop=limits[1]):
        pass
    return time.perf_counter() - start


def _box_step(session, obj_id: int, truth: np.ndarray, spacing_kji, limits) -> tuple[Step, np.ndarray]:
    index = middle_slice(truth, session.axis)
    box = mask_box(get_slice(truth, session.axis, index))
    seconds = _prompt_and_propagate(session, obj_id, index, limits, box=box)
    pred = session.mask_volume(obj_id)
    return Step("box", index, *scores(pred, truth, spacing_kji), seconds, box=box), pred


def _click_step(session, obj_id: int, truth: np.ndarray, spacing_kji, limits, pred: np.ndarray,
                prompt: str) -> tuple[Step, np.ndarray]:
    click = corrective_click(pred, truth)
    if click is None:  # perfect: nothing to correct, the scores stay
        return Step(prompt, None, *scores(pred, truth, spacing_kji), 0.0), pred
    index, point = click_on_slice(click, session.axis)
    seconds = _prompt_and_propagate(session, obj_id, index, limits, points=[point])
    pred = session.mask_volume(obj_id)
    return Step(prompt, index, *scores(pred, truth, spacing_kji), seconds, click=click), pred


def run_cvpr25(session, obj_id: int, truth: np.ndarray, spacing_kji, case: str = "", name: str = "",
               clicks: int = CLICKS) -> InteractiveResult:
    """Box, then `clicks` corrective clicks, each re-propagated within the object's extent."""
    limits = extent(truth, session.axis)
    result = InteractiveResult(case, obj_id, name, session.axis)
    step, pred = _box_step(session, obj_id, truth, spacing_kji, limits)
    result.steps.append(step)
    for number in range(1, clicks + 1):
        step, pred = _click_step(session, obj_id, truth, spacing_kji, limits, pred, f"click{number}")
        result.steps.append(step)
        log.debug("%s label %d %s on slice %s: DSC %.4f", case, obj_id, step.prompt, step.slice, step.dsc)
    return result


def run_propagation(session, obj_id: int, truth: np.ndarray, spacing_kji, case: str = "",
                    name: str = "") -> PropagationResult:
    """A box on the middle slice, propagated both ways until the object ends."""
    step, pred = _box_step(session, obj_id, truth, spacing_kji, (None, None))
    return PropagationResult(case, obj_id, name, session.axis, step.slice, step.box, step.dsc, step.nsd,
                             step.seconds, slice_dice(pred, truth, session.axis),
                             slices_past_ends(pred, truth, session.axis), session.confidences(obj_id))


def slices_past_ends(pred: np.ndarray, truth: np.ndarray, axis: int) -> int:
    """Slices along `axis` with a predicted mask before the object's first or after its last slice."""
    low, high = extent(truth, axis)
    others = tuple(a for a in range(3) if a != 2 - axis)
    filled = np.nonzero(pred.any(axis=others))[0]
    return int(np.sum((filled < low) | (filled > high)))


def confidence_auroc(results: list[PropagationResult], bad_below: float = BAD_SLICE_DICE) -> Optional[float]:
    """How well low confidence flags bad slices, over all slices of all results: the chance that a bad
    slice has a lower confidence than a good one (ties count half); None without both kinds."""
    from scipy.stats import rankdata

    pairs = [pair for r in results for pair in r.flagged(bad_below)]
    bad = np.array([b for _, b in pairs], dtype=bool)
    if bad.all() or not bad.any():
        return None
    ranks = rankdata([-c for c, _ in pairs])  # low confidence ranks high
    n_bad, n_good = int(bad.sum()), int((~bad).sum())
    return float((ranks[bad].sum() - n_bad * (n_bad + 1) / 2) / (n_bad * n_good))


def click_each_slice(session, obj_id: int, truth: np.ndarray, slices) -> list[tuple[int, float, float]]:
    """After a propagation: one corrective click (`slice_click`) on each of `slices` whose mask has an
    error, one slice after the other, without propagating again; (slice, Dice before, Dice after) of
    each slice clicked."""
    changes = []
    for index in slices:
        right = get_slice(truth, session.axis, index)
        mask = session.objects[obj_id].masks.get(index, np.zeros_like(right))
        click = slice_click(mask, right)
        if click is not None:
            after = session.add_prompt(obj_id, index, points=[click])
            changes.append((index, dice(mask, right), dice(after, right)))
    return changes


# ---------------------------------------------------------------- cases


@dataclass
class EvalSettings:
    protocol: str = "cvpr25"
    labels: Optional[list[int]] = None  # None: every label of each case
    axis: Optional[int] = None  # None: the voxel axis closest to axial
    preset: Optional[str] = None
    device: str = "auto"
    strategy: Optional[str] = None  # None: the default for the bank given (samed2.strategy)
    clicks: int = CLICKS
    precision: str = "fp32"  # samed2.precisions.PRECISIONS
    backend: str = "torch"  # samed2.precisions.BACKENDS
    converted_cache: Optional[str] = None  # OpenVINO's converted encoders (samed2.backends)

    def __post_init__(self):
        if self.protocol not in PROTOCOLS:
            raise InputError(f"unknown protocol {self.protocol!r}; choose one of {', '.join(PROTOCOLS)}")
        if self.clicks < 2:
            raise InputError("the cvpr25 protocol needs at least 2 clicks (its AUC is over the click steps)")


def list_cases(data: list) -> list[tuple[str, Path, Path]]:
    """(name, image, label map) of each case: from [IMAGE, LABELMAP], [CSV file] or [folder] (the layouts
    `samed2 train` reads, see samed2_tools.cases)."""
    from samed2_tools.cases import find_cases

    paths = [Path(p).expanduser() for p in data]
    for path in paths:
        if not path.exists():
            raise InputError(f"--data: {path} does not exist")
    if len(paths) == 2:
        name = paths[0].name if paths[0].is_dir() else paths[0].name.split(".")[0]  # a DICOM folder: whole
        return [(name, paths[0], paths[1])]
    if len(paths) != 1 or (paths[0].is_file() and paths[0].suffix.lower() != ".csv"):
        raise InputError("--data takes IMAGE LABELMAP, a .csv file listing cases, or a folder of cases")
    return [(case.name, case.image, case.label) for case in find_cases(paths[0])]


@dataclass
class LoadedCase:
    name: str
    volume: Volume
    labels: np.ndarray  # label values on the volume's grid, [k, j, i]
    names: dict


def load_case(name: str, image, label) -> LoadedCase:
    """An image and its label map on the image's grid (resampled in physical space, with a warning, if needed)."""
    from samed2.labelmap import labels_on_grid, read_labelmap
    from samed2.volume_files import load_volume

    volume = load_volume(image)
    labelmap = read_labelmap(label)
    if labelmap.is_probability:
        raise InputError(f"{label} is a probability map; evaluation needs a label map with integer labels")
    labels = labels_on_grid(labelmap, volume.grid_image(), f"the image of case {name}")
    return LoadedCase(name, volume, labels, dict(labelmap.names))


def slicing_axis(volume: Volume, axis: Optional[int]) -> int:
    """The given axis, or the voxel axis whose slices are closest to axial."""
    return int(np.argmin(volume.view_angles(AXIAL_NORMAL_RAS))) if axis is None else axis


def chosen_labels(case: LoadedCase, wanted: Optional[list[int]]) -> list[int]:
    present = [int(v) for v in np.unique(case.labels) if v != 0]
    if wanted is None:
        return present
    missing = [v for v in wanted if v not in present]
    if missing:
        log.warning("case %s has no voxels of label(s) %s: skipped", case.name, ", ".join(map(str, missing)))
    return [v for v in wanted if v in present]


def evaluate_case(case: LoadedCase, model, settings: EvalSettings, bank=None) -> list:
    """One session per case; each chosen label is one object of it, run through the protocol."""
    from samed2.session import Session

    spacing_kji = case.volume.spacing[::-1]
    results = []
    with Session(case.volume, model, axis=slicing_axis(case.volume, settings.axis), preset=settings.preset,
                 device=settings.device, bank=bank, strategy=settings.strategy, precision=settings.precision,
                 backend=settings.backend, converted_cache=settings.converted_cache) as session:
        for value in chosen_labels(case, settings.labels):
            truth = case.labels == value
            name = case.names.get(value, f"label {value}")
            if settings.protocol == "cvpr25":
                result = run_cvpr25(session, value, truth, spacing_kji, case.name, name, settings.clicks)
            else:
                result = run_propagation(session, value, truth, spacing_kji, case.name, name)
            log.info("%s label %d: %s", case.name, value, _short(result.row()))
            results.append(result)
    return results


def _short(row: dict) -> str:
    keys = ("dsc_auc", "nsd_auc", "dsc_final", "nsd_final", "dsc", "nsd", "slice_dice_mean")
    return ", ".join(f"{k} {row[k]:.4f}" for k in keys if k in row)


# ---------------------------------------------------------------- outputs


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
