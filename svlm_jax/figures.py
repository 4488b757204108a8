"""Matplotlib figures drawn headless and written atomically, for the training plot and the benchmarks."""
from __future__ import annotations

import os


def subplots(*args, **kwargs):
    """`plt.subplots` on the Agg backend, so no display is needed; returns (fig, axes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(*args, **kwargs)


def save(fig, path: str, dpi: int = 120) -> str:
    """Lay out `fig`, write it to `path` (PNG) under a temporary name, rename it, and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    root, ext = os.path.splitext(path)
    tmp = f"{root}.part{ext or '.png'}"  # keeps the extension, which picks the format
    try:
        fig.savefig(tmp, dpi=dpi)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.remove(tmp)
    return path
