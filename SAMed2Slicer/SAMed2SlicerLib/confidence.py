"""The engine's per-slice confidence of a segment, shaped for a strip along the slices (one cell per
slice) and for "go to the least confident slice". No Qt: the Slicer panel and the web page draw it."""
from typing import Dict, List, Optional

LOW, HIGH = 0.5, 0.8  # cells below LOW are drawn red, from LOW to HIGH amber, above HIGH green


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
