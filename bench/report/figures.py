"""Drawing the pictures of :mod:`bench.report.images` (matplotlib, Agg): the input-gradient
grid of a data set and the adversarial strip of one checkpoint."""

from __future__ import annotations

import io
from typing import Any

import torch


def _canvas(width: float, height: float) -> Any:
    # here: matplotlib is slow to import; only when a figure is drawn
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def _show(ax: Any, img: torch.Tensor) -> None:
    """An image [C, H, W] in [0, 1], greyscale or RGB, without ticks."""
    arr = img[0].numpy() if img.shape[0] == 1 else img.permute(1, 2, 0).numpy()
    ax.imshow(
        arr, cmap="gray" if img.shape[0] == 1 else None, vmin=0, vmax=1, interpolation="nearest"
    )
    ax.set_xticks([])
    ax.set_yticks([])


def gradient_image(g: torch.Tensor) -> torch.Tensor:
    """A gradient as an image: 0.5 is zero, scaled to its 99th percentile of |g|, clipped."""
    g = g.detach().float()
    scale = float(g.abs().flatten().quantile(0.99)) if g.numel() else 0.0
    return (0.5 + 0.5 * g / scale).clamp(0, 1) if scale > 0 else torch.full_like(g, 0.5)


def _name(classes: list[str], c: int) -> str:
    return classes[c] if 0 <= c < len(classes) else str(c)


def gradients_png(
    dataset: str,
    x: torch.Tensor,
    y: torch.Tensor,
    classes: list[str],
    rows: list[tuple[str, torch.Tensor]],
) -> bytes:
    """Row 0: the images with their labels; then one row of input gradients per checkpoint."""
    k, r = len(x), 1 + len(rows)
    fig = _canvas(1.6 + 1.25 * k, 0.6 + 1.3 * r)
    axes = fig.subplots(r, k, squeeze=False)
    for j in range(k):
        _show(axes[0][j], x[j])
        axes[0][j].set_title(_name(classes, int(y[j])), fontsize=8)
    axes[0][0].set_ylabel("image", fontsize=8, rotation=0, ha="right", va="center")
    for i, (label, grad) in enumerate(rows, 1):  # one checkpoint per row
        for j in range(k):
            _show(axes[i][j], gradient_image(grad[j]))
        axes[i][0].set_ylabel(label, fontsize=8, rotation=0, ha="right", va="center")
    fig.suptitle(f"Input gradients of the loss, {dataset}", fontsize=10)
    fig.tight_layout()
    return _png(fig)


def strip_png(
    title: str,
    x: torch.Tensor,
    y: torch.Tensor,
    classes: list[str],
    t: dict[str, torch.Tensor],
    captions: list[str],
    eps_large: str,
    eps_grid: str,
) -> bytes:
    """Clean, first attack at the grid's largest eps, PGD at a large eps (``eps_large``: e.g.
    ``eps 32/255``, ``L2 eps 2``); predicted labels."""
    k = len(x)
    rows = [
        ("clean", x, t["pred_clean"]),
        (f"first attack\n(grid max {eps_grid})", t["x_first"], t["pred_first"]),
        (f"PGD\n{eps_large}", t["x_large"], t["pred_large"]),
    ]
    fig = _canvas(1.9 + 1.35 * k, 0.6 + 1.65 * len(rows))
    axes = fig.subplots(len(rows), k, squeeze=False)
    for i, (label, imgs, pred) in enumerate(rows):
        for j in range(k):  # title: the prediction, green when right
            ax = axes[i][j]
            _show(ax, imgs[j])
            right = int(pred[j]) == int(y[j])
            ax.set_title(
                _name(classes, int(pred[j])), fontsize=7, color="green" if right else "red"
            )
            if i == 1:
                ax.set_xlabel(captions[j], fontsize=6)
        axes[i][0].set_ylabel(label, fontsize=8, rotation=0, ha="right", va="center")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _png(fig)
