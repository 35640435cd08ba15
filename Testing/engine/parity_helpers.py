"""Shared tolerance check for parity tests: |a - e| <= 1e-4 * max(1, max |e|)."""
import torch

TOLERANCE = 1e-4


def parity_error(actual: torch.Tensor, expected: torch.Tensor) -> str:
    """An explanation when `actual` misses `expected`, or '' when it is within tolerance."""
    actual, expected = torch.as_tensor(actual), torch.as_tensor(expected)
    if actual.shape != expected.shape:
        return f"shape {tuple(actual.shape)} != expected {tuple(expected.shape)}"
    diff = (actual.double() - expected.double()).abs().max().item() if expected.numel() else 0.0
    bound = TOLERANCE * max(1.0, expected.double().abs().max().item() if expected.numel() else 0.0)
    return "" if diff <= bound else f"max abs diff {diff:.3g} > {bound:.3g}"


def max_abs_diff(actual, expected) -> float:
    return (torch.as_tensor(actual).double() - torch.as_tensor(expected).double()).abs().max().item()
