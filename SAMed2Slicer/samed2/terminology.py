"""Coded terms for segments: a built-in SNOMED CT table for common anatomy and lesions, and
segment metadata files in dcmqi's `seg-example*.json` format that override it.

Codes and colours of the built-in table follow 3D Slicer's "General Anatomy" terminology
(SegmentationCategoryTypeModifier-SlicerGeneralAnatomy.json) where it has the concept.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from samed2.errors import InputError

SLICER_TERMINOLOGY_CONTEXT = "Segmentation category and type - 3D Slicer General Anatomy list"
SLICER_ANATOMY_CONTEXT = "Anatomic codes - DICOM master list"


@dataclass(frozen=True)
class Code:
    """A coded concept: (CodeValue, CodingSchemeDesignator, CodeMeaning)."""

    value: str
    scheme: str
    meaning: str


@dataclass(frozen=True)
class SegmentTerm:
    """What a segment is: property category, type (with optional modifier) and display colour."""

    category: Code
    type: Code
    color: tuple[int, int, int]
    type_modifier: Code | None = None

    def slicer_tag(self) -> str:
        """The value of Slicer's `TerminologyEntry` segment tag for this term."""

        def fmt(code: Code | None) -> str:
            return f"{code.scheme}^{code.value}^{code.meaning}" if code else "^^"

        fields = [SLICER_TERMINOLOGY_CONTEXT, fmt(self.category), fmt(self.type), fmt(self.type_modifier),
                  SLICER_ANATOMY_CONTEXT, "^^", "^^"]
        return "~".join(fields)


def _sct(value: str, meaning: str) -> Code:
    return Code(value, "SCT", meaning)


TISSUE = _sct("85756007", "Tissue")
ANATOMICAL_STRUCTURE = _sct("123037004", "Anatomical Structure")
ALTERED_STRUCTURE = _sct("49755003", "Morphologically Altered Structure")
RIGHT = _sct("24028007", "Right")
LEFT = _sct("7771000", "Left")

# name -> (category, type code, meaning, colour)
_TABLE: dict[str, tuple[Code, str, str, tuple[int, int, int]]] = {
    "tissue": (TISSUE, "85756007", "Tissue", (128, 174, 128)),
    "artery": (TISSUE, "51114001", "Artery", (216, 101, 79)),
    "vein": (TISSUE, "29092000", "Vein", (0, 151, 206)),
    "capillary": (TISSUE, "20982000", "Capillary", (183, 156, 220)),
    "bone": (TISSUE, "272673000", "Bone", (241, 214, 145)),
    "muscle": (TISSUE, "71616004", "Muscle", (192, 104, 88)),
    "fat": (TISSUE, "248300009", "Body fat", (230, 220, 70)),
    "skin": (TISSUE, "39937001", "Skin", (177, 122, 101)),
    "nerve": (TISSUE, "119410002", "Nerve", (244, 214, 49)),
    "lymph node": (TISSUE, "59441001", "Lymph node", (68, 172, 100)),
    "liver": (ANATOMICAL_STRUCTURE, "10200004", "Liver", (221, 130, 101)),
    "spleen": (ANATOMICAL_STRUCTURE, "78961009", "Spleen", (157, 108, 162)),
    "kidney": (ANATOMICAL_STRUCTURE, "64033007", "Kidney", (185, 102, 83)),
    "adrenal gland": (ANATOMICAL_STRUCTURE, "23451007", "Adrenal gland", (249, 186, 150)),
    "lung": (ANATOMICAL_STRUCTURE, "39607008", "Lung", (197, 165, 145)),
    "gallbladder": (ANATOMICAL_STRUCTURE, "28231008", "Gallbladder", (139, 150, 98)),
    "stomach": (ANATOMICAL_STRUCTURE, "69695003", "Stomach", (216, 132, 105)),
    "pancreas": (ANATOMICAL_STRUCTURE, "15776009", "Pancreas", (249, 180, 111)),
    "duodenum": (ANATOMICAL_STRUCTURE, "38848004", "Duodenum", (255, 253, 229)),
    "small intestine": (ANATOMICAL_STRUCTURE, "30315005", "Small Intestine", (205, 167, 142)),
    "colon": (ANATOMICAL_STRUCTURE, "71854001", "Colon", (204, 168, 143)),
    "esophagus": (ANATOMICAL_STRUCTURE, "32849002", "Esophagus", (211, 171, 143)),
    "aorta": (ANATOMICAL_STRUCTURE, "15825003", "Aorta", (224, 97, 76)),
    "heart": (ANATOMICAL_STRUCTURE, "80891009", "Heart", (206, 110, 84)),
    "trachea": (ANATOMICAL_STRUCTURE, "44567001", "Trachea", (182, 228, 255)),
    "thyroid": (ANATOMICAL_STRUCTURE, "69748006", "Thyroid", (62, 162, 114)),
    "urinary bladder": (ANATOMICAL_STRUCTURE, "89837001", "Bladder", (222, 154, 132)),
    "prostate": (ANATOMICAL_STRUCTURE, "41216001", "Prostate", (230, 158, 140)),
    "uterus": (ANATOMICAL_STRUCTURE, "35039007", "Uterus", (255, 181, 158)),
    "brain": (ANATOMICAL_STRUCTURE, "12738006", "Brain", (250, 250, 225)),
    "spinal cord": (ANATOMICAL_STRUCTURE, "2748008", "Spinal cord", (244, 214, 49)),
    "skull": (ANATOMICAL_STRUCTURE, "89546000", "Skull", (241, 213, 144)),
    "rib": (ANATOMICAL_STRUCTURE, "113197003", "Rib", (253, 232, 158)),
    "sternum": (ANATOMICAL_STRUCTURE, "56873002", "Sternum", (244, 217, 154)),
    "cervical spine": (ANATOMICAL_STRUCTURE, "122494005", "Cervical spine", (255, 255, 207)),
    "thoracic spine": (ANATOMICAL_STRUCTURE, "122495006", "Thoracic spine", (226, 202, 134)),
    "lumbar spine": (ANATOMICAL_STRUCTURE, "122496007", "Lumbar spine", (212, 188, 102)),
    "mass": (ALTERED_STRUCTURE, "4147007", "Mass", (144, 238, 144)),
    "cyst": (ALTERED_STRUCTURE, "367643001", "Cyst", (205, 205, 100)),
    "edema": (ALTERED_STRUCTURE, "79654002", "Edema", (140, 224, 228)),
    "necrosis": (ALTERED_STRUCTURE, "6574001", "Necrosis", (216, 191, 216)),
    "hemorrhage": (ALTERED_STRUCTURE, "50960005", "Hemorrhage", (188, 65, 28)),
    "lesion": (ALTERED_STRUCTURE, "52988006", "Lesion", (255, 140, 60)),
    "neoplasm": (ALTERED_STRUCTURE, "108369006", "Neoplasm", (255, 90, 90)),
    "nodule": (ALTERED_STRUCTURE, "27925004", "Nodule", (255, 200, 60)),
}

_ALIASES = {
    "bladder": "urinary bladder",
    "small bowel": "small intestine",
    "oesophagus": "esophagus",
    "gall bladder": "gallbladder",
    "tumor": "neoplasm",
    "tumour": "neoplasm",
    "oedema": "edema",
    "haemorrhage": "hemorrhage",
    "thyroid gland": "thyroid",
}

# colours for segments whose name is not in the table (Slicer's generic segment colours)
_PALETTE = [(128, 174, 128), (241, 214, 145), (177, 122, 101), (111, 184, 210), (216, 101, 79),
            (221, 130, 101), (144, 238, 144), (192, 104, 88), (220, 245, 20), (78, 63, 0)]


def _normalise(name: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"[_\-]", " ", name)).strip().lower()


def _split_laterality(name: str) -> tuple[str, Code | None]:
    """'left kidney' and TotalSegmentator's 'kidney_left' both -> ('kidney', Left)."""
    for word, code in (("left", LEFT), ("right", RIGHT)):
        if name.startswith(word + " "):
            return name[len(word) + 1:], code
        if name.endswith(" " + word):
            return name[: -len(word) - 1], code
    return name, None


def lookup_term(name: str) -> SegmentTerm | None:
    """The built-in term for a segment name (case, '_' and '-' ignored; left/right become a
    type modifier), or None when the name is not in the table."""
    base, laterality = _split_laterality(_normalise(name))
    entry = _TABLE.get(_ALIASES.get(base, base))
    if entry is None:
        return None
    category, value, meaning, color = entry
    return SegmentTerm(category, _sct(value, meaning), color, laterality)


def default_term(name: str, index: int) -> SegmentTerm:
    """The built-in term for `name`, or generic "Tissue" with a palette colour."""
    term = lookup_term(name)
    if term is not None:
        return term
    return SegmentTerm(TISSUE, TISSUE, _PALETTE[index % len(_PALETTE)])


# ---------------------------------------------------------------- dcmqi segment metadata


@dataclass
class SegmentAttributes:
    """One entry of dcmqi's `segmentAttributes`: metadata for one label of one label map."""

    label_id: int
    label: str | None = None
    description: str | None = None
    category: Code | None = None
    type: Code | None = None
    type_modifier: Code | None = None
    anatomic_region: Code | None = None
    algorithm_type: str | None = None
    algorithm_name: str | None = None
    color: tuple[int, int, int] | None = None
    tracking_id: str | None = None
    tracking_uid: str | None = None


@dataclass
class SegMetadata:
    """A dcmqi `seg-example*.json`: series-level fields and, per input label map, its segments."""

    series_description: str | None = None
    series_number: int | None = None
    instance_number: int | None = None
    content_creator_name: str | None = None
    content_label: str | None = None
    content_description: str | None = None
    segments: list[list[SegmentAttributes]] = field(default_factory=list)

    def attributes(self, map_index: int, label: int) -> SegmentAttributes | None:
        """Metadata for `label` of the `map_index`-th label map, if the file describes it."""
        if map_index >= len(self.segments):
            return None
        return next((s for s in self.segments[map_index] if s.label_id == label), None)


def _code(entry: dict, key: str, where: str) -> Code | None:
    item = entry.get(key)
    if item is None:
        return None
    fields = ("CodeValue", "CodingSchemeDesignator", "CodeMeaning")
    if not isinstance(item, dict) or not all(item.get(k) for k in fields):
        raise InputError(f"{where}: {key} needs CodeValue, CodingSchemeDesignator and CodeMeaning")
    return Code(str(item["CodeValue"]), str(item["CodingSchemeDesignator"]), str(item["CodeMeaning"]))


def _color(entry: dict, where: str) -> tuple[int, int, int] | None:
    rgb = entry.get("recommendedDisplayRGBValue")
    if rgb is None:
        return None
    if not (isinstance(rgb, list) and len(rgb) == 3 and all(isinstance(c, int) and 0 <= c <= 255 for c in rgb)):
        raise InputError(f"{where}: recommendedDisplayRGBValue must be three integers 0-255, got {rgb!r}")
    return (rgb[0], rgb[1], rgb[2])


def _segment_attributes(entry: dict, where: str) -> SegmentAttributes:
    if not isinstance(entry, dict) or not isinstance(entry.get("labelID"), int):
        raise InputError(f"{where}: every segment needs an integer labelID")
    algorithm_type = entry.get("SegmentAlgorithmType")
    if algorithm_type not in (None, "MANUAL", "SEMIAUTOMATIC", "AUTOMATIC"):
        raise InputError(f"{where}: SegmentAlgorithmType must be MANUAL, SEMIAUTOMATIC or AUTOMATIC, "
                         f"got {algorithm_type!r}")
    return SegmentAttributes(
        label_id=entry["labelID"],
        label=entry.get("SegmentLabel"),
        description=entry.get("SegmentDescription"),
        category=_code(entry, "SegmentedPropertyCategoryCodeSequence", where),
        type=_code(entry, "SegmentedPropertyTypeCodeSequence", where),
        type_modifier=_code(entry, "SegmentedPropertyTypeModifierCodeSequence", where),
        anatomic_region=_code(entry, "AnatomicRegionSequence", where),
        algorithm_type=algorithm_type,
        algorithm_name=entry.get("SegmentAlgorithmName"),
        color=_color(entry, where),
        tracking_id=entry.get("TrackingIdentifier"),
        tracking_uid=entry.get("TrackingUniqueIdentifier"),
    )


def _optional_int(data: dict, key: str, path: Path) -> int | None:
    value = data.get(key)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise InputError(f"{path}: {key} must be an integer, got {value!r}") from None


def parse_seg_metadata(data: dict, path: Path) -> SegMetadata:
    """Validate a parsed dcmqi metadata dictionary; `path` only names it in error messages."""
    groups = data.get("segmentAttributes") if isinstance(data, dict) else None
    if not isinstance(groups, list) or not all(isinstance(g, list) for g in groups):
        raise InputError(f"{path}: segmentAttributes must be a list of lists (one list per label map)")
    segments = [[_segment_attributes(e, f"{path}: segmentAttributes[{i}][{j}]") for j, e in enumerate(group)]
                for i, group in enumerate(groups)]
    return SegMetadata(
        series_description=data.get("SeriesDescription") or None,
        series_number=_optional_int(data, "SeriesNumber", path),
        instance_number=_optional_int(data, "InstanceNumber", path),
        content_creator_name=data.get("ContentCreatorName") or None,
        content_label=data.get("ContentLabel") or None,
        content_description=data.get("ContentDescription") or None,
        segments=segments,
    )


def load_seg_metadata(path: str | Path) -> SegMetadata:
    """Read a dcmqi `seg-example*.json` metadata file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"segment metadata file not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path} is not valid JSON: {exc}") from None
    return parse_seg_metadata(data, path)
