"""The engine's per-slice confidence of a segment, shaped for a strip along the slices (one cell per
slice) and for "go to the least confident slice". No Qt: the Slicer panel and the web page draw it."""
from typing import Dict, List, Optional

LOW, HIGH = 0.5, 0.8  # cells below LOW are drawn red, from LOW to HIGH amber, above HIGH green
COLOURS = {"low": "#d32f2f", "medium": "#f9a825", "high": "#43a047", "none": "transparent"}  # by level
STRIP_CELL = '<td bgcolor="{colour}" width="{width}%">&nbsp;</td>'  # a space: an empty cell has no height


def level(confidence: Optional[float]) -> str:
    if confidence is None:
        return "none"
    return "low" if confidence < LOW else "medium" if confidence < HIGH else "high"


def strip_cells(confidences: Dict[int, float], num_slices: int) -> List[dict]:
    """One cell per slice: {"slice", "confidence" (None: no result there), "level"}."""
    return [{"slice": k, "confidence": confidences.get(k), "level": level(confidences.get(k))}
            for k in range(num_slices)]


def least_confident(confidences: Dict[int, float]) -> Optional[int]:
    """The slice with the lowest confidence (the first of equals), None without results."""
    return min(confidences, key=lambda k: (confidences[k], k)) if confidences else None


def strip_html(confidences: Dict[int, float], num_slices: int, max_cells: int = 60) -> str:
    """The strip as rich text for a Qt label (a one-row table of coloured cells): one cell per
    slice, or per group of neighbouring slices when there are more than `max_cells`, a group showing
    its lowest confidence (a bad slice is never hidden by good neighbours). Empty without results."""
    if not confidences or num_slices <= 0:
        return ""
    groups = min(num_slices, max_cells)
    cells = []
    for group in range(groups):
        found = [confidences[k] for k in range(group * num_slices // groups, (group + 1) * num_slices // groups)
                 if k in confidences]
        cells.append(STRIP_CELL.format(colour=COLOURS[level(min(found) if found else None)],
                                       width=max(1, 100 // groups)))
    return f'<table width="100%" height="12" cellspacing="1"><tr>{"".join(cells)}</tr></table>'
