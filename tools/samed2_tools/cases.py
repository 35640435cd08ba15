"""The cases (an image and its label map) that training and evaluation read: finding them, splitting them
into train and validation, loading one with its labels on the image's grid.

Two ways to list cases:

- a CSV file with a header and columns ``image,label`` and optionally ``split`` (``train`` or
  ``val``) and ``case`` (a name); relative paths are relative to the CSV's folder;
- a folder in the nnU-Net / Medical Segmentation Decathlon layout::

      DIR/imagesTr/<case>.nii.gz   (or <case>_0000.nii.gz, .nii, .nrrd, .mha, or a folder
                                    <case>/ holding one DICOM series)
      DIR/labelsTr/<case>.nii.gz   (or .nii, .nrrd, .seg.nrrd, .mha)
      DIR/imagesVal/, DIR/labelsVal/   optional: validation cases, same naming

Cases without a given split are divided by case (never by slice) with a seeded shuffle.

A label map whose grid differs from the image's (size, spacing, origin or direction) is resampled
onto the image grid in physical space (nearest neighbour) with a warning that lists the
differences; one that does not overlap the image at all is refused. Arrays are never matched
by index alone.
"""
from __future__ import annotations

import csv
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from samed2.errors import InputError
from samed2.labelmap import labels_on_grid, read_labelmap
from samed2.volume import Volume
from samed2.volume_files import load_volume

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")
LABEL_SUFFIXES = (".seg.nrrd",) + IMAGE_SUFFIXES
SPLITS = ("train", "val")


@dataclass(frozen=True)
class Case:
    name: str
    image: Path
    label: Path
    split: Optional[str] = None


def list_cases(data: list) -> list[Case]:
    """The cases of `--data` as `samed2 eval` takes it: [IMAGE, LABELMAP], [CSV file] or [folder]."""
    paths = [Path(p).expanduser() for p in data]
    for path in paths:
        if not path.exists():
            raise InputError(f"--data: {path} does not exist")
    if len(paths) == 2:
        name = paths[0].name if paths[0].is_dir() else paths[0].name.split(".")[0]  # a DICOM folder: whole
        return [Case(name, paths[0], paths[1])]
    if len(paths) != 1 or (paths[0].is_file() and paths[0].suffix.lower() != ".csv"):
        raise InputError("--data takes IMAGE LABELMAP, a .csv file listing cases, or a folder of cases")
    return find_cases(paths[0])


def find_cases(data: str | Path) -> list[Case]:
    """The cases listed by a CSV file or found in a folder (see the module doc)."""
    path = Path(data).expanduser()
    if path.is_file():
        cases = read_case_csv(path)
    elif path.is_dir():
        cases = scan_case_folder(path)
    else:
        raise InputError(f"--data {path} is neither a CSV file nor a folder")
    if not cases:
        raise InputError(f"no training cases found in {path} (see `samed2 train --help` for the expected layout)")
    names = [case.name for case in cases]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise InputError(f"case names must be unique; repeated: {', '.join(duplicates)}")
    return cases


def read_case_csv(path: Path) -> list[Case]:
    with open(path, newline="", encoding="utf-8") as stream:
        rows = list(csv.DictReader(stream))
    if not rows or not {"image", "label"} <= set(rows[0]):
        raise InputError(f"{path} needs a header with the columns image,label (optional: split, case)")
    return [_csv_case(row, number, path.parent) for number, row in enumerate(rows, start=2)]


def _csv_case(row: dict, line: int, root: Path) -> Case:
    image, label = (_existing(root, row[column], f"line {line}: {column}") for column in ("image", "label"))
    split = (row.get("split") or "").strip().lower() or None
    if split not in (None,) + SPLITS:
        raise InputError(f"line {line}: split must be train or val, got {split!r}")
    return Case((row.get("case") or "").strip() or _stem(image), image, label, split)


def _existing(root: Path, text: str, what: str) -> Path:
    if not (text or "").strip():
        raise InputError(f"{what} is empty")
    path = Path(text.strip()).expanduser()
    path = path if path.is_absolute() else root / path
    if not path.exists():
        raise InputError(f"{what}: {path} does not exist")
    return path


def scan_case_folder(root: Path) -> list[Case]:
    if not (root / "imagesTr").is_dir() or not (root / "labelsTr").is_dir():
        raise InputError(f"{root} has no imagesTr/ and labelsTr/ folders (or give a CSV file with --data)")
    cases = _paired(root / "imagesTr", root / "labelsTr", None)
    if (root / "imagesVal").is_dir():
        cases += _paired(root / "imagesVal", root / "labelsVal", "val")
    return cases


def _paired(images: Path, labels: Path, split: Optional[str]) -> list[Case]:
    labels_by_case = {_stem(path): path for path in sorted(labels.iterdir()) if _has_suffix(path, LABEL_SUFFIXES)}
    cases = []
    for image in sorted(images.iterdir()):
        if not (image.is_dir() or _has_suffix(image, IMAGE_SUFFIXES)):
            continue
        name = _stem(image)
        name = name[:-5] if name.endswith("_0000") else name
        if name not in labels_by_case:
            raise InputError(f"{image} has no label map {labels / (name + '.nii.gz')} (or another supported format)")
        cases.append(Case(name, image, labels_by_case[name], split))
    return cases


def _has_suffix(path: Path, suffixes) -> bool:
    return path.is_file() and path.name.lower().endswith(suffixes)


def _stem(path: Path) -> str:
    name = path.name
    lowered = name.lower()
    for suffix in LABEL_SUFFIXES:
        if lowered.endswith(suffix):
            return name[: -len(suffix)]
    return name


def split_cases(cases: list[Case], val_fraction: float, seed: int) -> tuple[list[Case], list[Case]]:
    """(training cases, validation cases): given splits are kept, the rest split by case with a seeded shuffle.

    With no split given, round(n * val_fraction) cases (at least one when there are two or more
    cases and val_fraction > 0) go to validation.
    """
    given = any(case.split for case in cases)
    if given:
        return [c for c in cases if c.split != "val"], [c for c in cases if c.split == "val"]
    order = sorted(cases, key=lambda c: c.name)
    random.Random(seed).shuffle(order)
    count = round(len(order) * val_fraction)
    if val_fraction > 0 and len(order) >= 2:
        count = min(max(count, 1), len(order) - 1)
    validation = {c.name for c in order[:count]}
    return [c for c in cases if c.name not in validation], [c for c in cases if c.name in validation]


@dataclass
class LoadedCase:
    name: str
    volume: Volume
    labels: np.ndarray  # label values on the volume's grid, [k, j, i]
    names: dict  # label value -> name, where the label map carries names


def load_case(case: Case, use: str) -> LoadedCase:
    """Read a case's image and label map and put the labels on the image grid; `use` ("training",
    "evaluation") names what refuses a probability map."""
    volume = load_volume(case.image)
    labelmap = read_labelmap(case.label)
    if labelmap.is_probability:
        raise InputError(f"{case.label} is a probability map; {use} needs a label map with integer labels")
    labels = labels_on_grid(labelmap, volume.grid_image(), f"the image of case {case.name}")
    return LoadedCase(case.name, volume, labels, dict(labelmap.names))
