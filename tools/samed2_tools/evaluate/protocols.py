"""The two protocols (see the package doc) run on a session, object by object, and a case evaluated
with one session."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from samed2.choices import PropagationOptions
from samed2.errors import InputError
from samed2.model_coords import mask_box
from samed2.volume import Volume, get_slice
from samed2_tools.cases import LoadedCase
from samed2_tools.evaluate.clicks import Click, click_on_slice, corrective_click, extent, middle_slice, slice_click
from samed2_tools.evaluate.metrics import BAD_SLICE_DICE, auc, dice, scores, slice_dice

log = logging.getLogger(__name__)

PROTOCOLS = ("cvpr25", "propagation")
CLICKS = 5
AXIAL_NORMAL_RAS = (0.0, 0.0, 1.0)


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
    for _ in session.propagate([obj_id], PropagationOptions("both", start=limits[0], stop=limits[1])):
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


@dataclass
class EvalSettings:
    protocol: str = "cvpr25"
    labels: Optional[list[int]] = None  # None: every label of each case
    axis: Optional[int] = None  # None: the voxel axis closest to axial
    preset: Optional[str] = None
    device: str = "auto"
    strategy: Optional[str] = None  # None: the default for the bank given (samed2.strategy)
    clicks: int = CLICKS
    precision: str = "fp32"  # samed2.choices.PRECISIONS
    backend: str = "torch"  # samed2.choices.BACKENDS
    converted_cache: Optional[str] = None  # OpenVINO's converted encoders (samed2.backends)

    def __post_init__(self):
        if self.protocol not in PROTOCOLS:
            raise InputError(f"unknown protocol {self.protocol!r}; choose one of {', '.join(PROTOCOLS)}")
        if self.clicks < 2:
            raise InputError("the cvpr25 protocol needs at least 2 clicks (its AUC is over the click steps)")


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
