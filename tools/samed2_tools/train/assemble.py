"""A run's data from its options: cases found, split by case, loaded, labels chosen, clips and validation slices."""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from samed2.errors import InputError
from samed2_tools.cases import find_cases, split_cases
from samed2_tools.train.data import TrainingClips
from samed2_tools.train.options import TrainOptions
from samed2_tools.train.validate import ValidationSet
from samed2_tools.train.volumes import CaseVolume, load_case, resolve_labels

log = logging.getLogger(__name__)


@dataclass
class RunData:
    clips: TrainingClips
    validation: ValidationSet
    values: list
    names: dict  # label value -> name where known


def assemble(options: TrainOptions, image_size: int, normalize: str) -> RunData:
    train_cases, val_cases = split_cases(find_cases(options.data), options.val_fraction, options.seed)
    if not train_cases:
        raise InputError("every case is marked for validation: nothing to train on")
    loaded_train = [load_case(c, options.axis, options.preset) for c in train_cases]
    loaded_val = [load_case(c, options.axis, options.preset) for c in val_cases]
    names = {c.name: c.names for c in loaded_train + loaded_val}
    values = resolve_labels(options.labels, names) if options.labels else _all_labels(loaded_train)
    _check_present(values, loaded_train)
    clips = TrainingClips(loaded_train, values, options.clip_length, image_size, normalize, options.holdout_every,
                          options.holdout_offset, options.max_objects, options.augment, options.end_repeat)
    if not len(clips):
        raise InputError(f"no clip of {options.clip_length} slices along axis {options.axis} starts on a chosen "
                         "label: use a shorter --clip-length or check --labels and --axis")
    validation = ValidationSet.build(loaded_train, loaded_val, values, options.holdout_every, options.holdout_offset)
    log.info("%d training case(s), %d validation case(s), %d clips per epoch, labels %s", len(train_cases),
             len(val_cases), len(clips), ", ".join(str(v) for v in values))
    if not validation:
        log.warning("no validation slices: give validation cases or --holdout-every to measure validation Dice")
    merged = {v: n for case_names in names.values() for v, n in case_names.items() if v in values}
    return RunData(clips, validation, values, merged)


def _all_labels(cases: list[CaseVolume]) -> list[int]:
    return sorted({int(v) for case in cases for v in np.unique(case.labels) if v != 0})


def _check_present(values: list[int], cases: list[CaseVolume]) -> None:
    found = {int(v) for case in cases for v in np.unique(case.labels)}
    missing = [v for v in values if v not in found]
    if missing:
        raise InputError(f"label value(s) {missing} appear in no training case")
