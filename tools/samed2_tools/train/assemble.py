"""A run's data from its options: cases found, split by case, loaded, labels chosen, clips (single slices for
MedSAM-Lite) and validation slices."""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from samed2.errors import InputError
from samed2_tools.cases import find_cases, split_cases
from samed2_tools.train.data import TrainingClips, training_slice
from samed2_tools.train.lite import LiteSlices
from samed2_tools.train.options import MIN_SLICES, TrainOptions
from samed2_tools.train.validate import ValidationSet
from samed2_tools.train.volumes import CaseVolume, load_case_volume, resolve_labels

log = logging.getLogger(__name__)


@dataclass
class RunData:
    clips: TrainingClips  # or LiteSlices
    validation: ValidationSet
    values: list
    names: dict  # label value -> name where known


def assemble(options: TrainOptions, model) -> RunData:
    train_cases, val_cases = split_cases(find_cases(options.data), options.val_fraction, options.seed)
    if not train_cases:
        raise InputError("every case is marked for validation: nothing to train on")
    loaded_train = [load_case_volume(c, options.axis, options.preset) for c in train_cases]
    loaded_val = [load_case_volume(c, options.axis, options.preset) for c in val_cases]
    names = {c.name: c.names for c in loaded_train + loaded_val}
    values = resolve_labels(options.labels, names) if options.labels else _all_labels(loaded_train)
    _check_present(values, loaded_train)
    chosen = tuple(options.slices)
    if chosen:
        _check_chosen_slices(chosen, values, loaded_train, options)
    clips = _training_items(options, model, loaded_train, values, chosen)
    validation = ValidationSet.build(loaded_train, loaded_val, values, options.holdout_every, options.holdout_offset,
                                     chosen)
    log.info("%d training case(s), %d validation case(s), %d clips per epoch, labels %s", len(train_cases),
             len(val_cases), len(clips), ", ".join(str(v) for v in values))
    if not validation:
        log.warning("no validation slices: give validation cases or --holdout-every to measure validation Dice")
    merged = {v: n for case_names in names.values() for v, n in case_names.items() if v in values}
    return RunData(clips, validation, values, merged)


def _training_items(options: TrainOptions, model, cases: list[CaseVolume], values: list[int], chosen: tuple):
    o = options
    if not getattr(model, "has_memory", True):
        return LiteSlices(cases, values, model.image_size, o.holdout_every, o.holdout_offset, chosen, o.max_objects)
    normalize = "imagenet" if model.preprocess == "imagenet" else "none"
    clips = TrainingClips(cases, values, o.clip_length, model.image_size, normalize, o.holdout_every,
                          o.holdout_offset, o.max_objects, o.augment, o.end_repeat, chosen)
    if not len(clips):
        raise InputError(f"no clip of {o.clip_length} slices along axis {o.axis} starts on a chosen label: use a "
                         "shorter --clip-length (at most the number of --slices) or check --labels and --axis")
    return clips


def _check_chosen_slices(chosen: tuple, values: list[int], cases: list[CaseVolume], options: TrainOptions) -> None:
    """Every listed slice exists in every training case and holds a chosen label there; enough of them train."""
    for case in cases:
        outside = [k for k in chosen if k >= case.num_slices]
        if outside:
            raise InputError(f"--slices {outside} lie outside case {case.name}: it has {case.num_slices} slices "
                             f"along axis {options.axis} (0 to {case.num_slices - 1})")
        present = np.zeros(case.num_slices, dtype=bool)
        for value in values:
            present |= case.slices_with(value)
        empty = [k for k in chosen if not present[k]]
        if empty:
            raise InputError(f"slice(s) {empty} of case {case.name} hold none of the labels {values}: a slice "
                             "without the object teaches nothing here; list only slices you corrected")
        training = [k for k in chosen if training_slice(k, options.holdout_every, options.holdout_offset, chosen)]
        if len(training) < MIN_SLICES:
            raise InputError(f"only {len(training)} of --slices {list(chosen)} train in case {case.name} "
                             f"(--holdout-every removes the others); at least {MIN_SLICES} are needed")


def _all_labels(cases: list[CaseVolume]) -> list[int]:
    return sorted({int(v) for case in cases for v in np.unique(case.labels) if v != 0})


def _check_present(values: list[int], cases: list[CaseVolume]) -> None:
    found = {int(v) for case in cases for v in np.unique(case.labels)}
    missing = [v for v in values if v not in found]
    if missing:
        raise InputError(f"label value(s) {missing} appear in no training case")
