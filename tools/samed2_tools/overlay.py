"""PNG pictures of a slice with its mask and prompts (the CLI's --overlay, README figures)."""
from pathlib import Path

import numpy as np

from samed2.files import atomic_output, check_output_path


def render_overlay(image01: np.ndarray, mask: np.ndarray, path, points=(), boxes=(), title: str = "") -> Path:
    """Save a slice (values in [0, 1]) with the mask outlined and filled, positive points green,
    negative points red and boxes yellow; coordinates are slice pixels (x = column, y = row)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, cols = image01.shape
    fig, ax = plt.subplots(figsize=(6, 6 * rows / cols), dpi=100)
    ax.imshow(image01, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    if mask.any():
        ax.imshow(np.ma.masked_where(~mask, mask), cmap="autumn", alpha=0.4, interpolation="nearest")
        ax.contour(mask.astype(float), levels=[0.5], colors="orange", linewidths=1.0)
    for x, y, positive in points:
        ax.plot(x, y, marker="*", markersize=14, color="lime" if positive else "red", markeredgecolor="white")
    for x0, y0, x1, y1 in boxes:
        ax.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor="yellow", linewidth=1.5))
    ax.set_title(title, fontsize=9)
    ax.axis("off")
    fig.tight_layout()
    path = check_output_path(path, (".png",))
    try:
        with atomic_output(path) as temporary:
            fig.savefig(temporary, format="png")
    finally:
        plt.close(fig)
    return path
