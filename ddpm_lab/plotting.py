"""Figure helpers shared by the chapters: small PNG figures and a slider with a static twin.

Figures are PNG at a modest DPI so stored notebooks stay small and nbval (which compares text, not
PNG bytes) sees only ``<Figure ...>`` lines.
"""

from __future__ import annotations

from typing import Callable, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch

__all__ = ["setup_notebook", "density_strip", "image_row", "slider"]


def setup_notebook(dpi: int = 72) -> None:
    """Inline figures as PNG at ``dpi``; call once at the top of a chapter."""
    plt.rcParams.update({"figure.dpi": dpi, "savefig.dpi": dpi, "figure.figsize": (6.4, 3.6),
                         "axes.spines.top": False, "axes.spines.right": False})
    try:
        from matplotlib_inline.backend_inline import set_matplotlib_formats

        set_matplotlib_formats("png")
    except ImportError:  # outside IPython: nothing to configure
        pass


def _np(x: torch.Tensor | np.ndarray) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def density_strip(
    ax: plt.Axes,
    grid: torch.Tensor | np.ndarray,
    densities: torch.Tensor | np.ndarray,
    ts: Sequence[int],
    cmap: str = "magma",
    vmax: float | None = None,
) -> None:
    """Draw densities p_t(x) (rows, one per t in ``ts``) over ``grid`` as a heat map: t across, x up.

    ``vmax`` caps the colour scale, so that a sharp density at small t does not wash out the rest."""
    d = _np(densities)
    if d.shape != (len(ts), len(grid)):
        raise ValueError(f"densities must have shape (len(ts), len(grid)) = {(len(ts), len(grid))}, got {d.shape}")
    g = _np(grid)
    ax.imshow(d.T, origin="lower", aspect="auto", cmap=cmap, vmin=0.0, vmax=vmax,
              extent=(-0.5, len(ts) - 0.5, float(g[0]), float(g[-1])))
    step = max(1, len(ts) // 8)
    ax.set_xticks(range(0, len(ts), step), [str(t) for t in list(ts)[::step]])
    ax.set_xlabel("t")
    ax.set_ylabel("x")


def image_row(images: Sequence[torch.Tensor | np.ndarray], titles: Sequence[str], cmap: str = "gray",
              vrange: tuple[float, float] = (-1.0, 1.0), size: float = 1.6) -> plt.Figure:
    """Show 2-D arrays (H, W) or (H, W, 3) side by side, values clipped to ``vrange``."""
    if len(images) != len(titles):
        raise ValueError(f"got {len(images)} images but {len(titles)} titles")
    fig, axes = plt.subplots(1, len(images), figsize=(size * len(images), size * 1.15))
    for ax, img, title in zip(np.atleast_1d(axes), images, titles):
        a = np.clip(_np(img), *vrange)
        if a.ndim == 3:
            a = (a - vrange[0]) / (vrange[1] - vrange[0])
        ax.imshow(a, cmap=cmap, vmin=vrange[0], vmax=vrange[1], interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    return fig


def slider(draw: Callable[..., None], **controls: object) -> object:
    """``ipywidgets.interact`` over ``draw`` with the given controls (sliders, dropdowns).

    Every parameter of ``draw`` becomes a control, so ``draw`` should take only the controlled
    values (bind anything else with a lambda or functools.partial). Live only in a running kernel:
    the rendered book cannot run Python, so every slider in a chapter sits next to a static figure
    that shows the same thing at a few settings.
    """
    import ipywidgets

    return ipywidgets.interact(draw, **controls)
