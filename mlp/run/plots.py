"""Figures of a run: confusion matrix, learning curves, misclassified digits."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # files only; no display needed

import numpy as np
import torch
from matplotlib.figure import Figure


def confusion_matrix_figure(cm: torch.Tensor, title: str = "Test set") -> Figure:
    """Counts on the left, rows normalised to 1 (recall per class) on the right.

    Plain imshow and text with fixed margins: a fifth of the time of seaborn's annotated
    heatmaps with a constrained layout, and every sweep trial draws one."""
    counts = cm.numpy()
    rates = counts / counts.sum(axis=1, keepdims=True).clip(min=1)
    fig = Figure(figsize=(13, 6))
    fig.subplots_adjust(left=0.05, right=0.99, bottom=0.1, top=0.92, wspace=0.15)
    panels = ((counts, "d", max(int(counts.max()), 1), "counts"), (rates, ".2f", 1.0, "row-normalised (recall)"))
    for ax, (values, fmt, vmax, what) in zip(fig.subplots(1, 2), panels, strict=True):
        ax.imshow(values, cmap="Blues", vmin=0, vmax=vmax)
        for (row, col), value in np.ndenumerate(values):
            dark = value > vmax / 2  # white text on the dark half of the colour map
            ax.text(
                col, row, format(value, fmt), ha="center", va="center", fontsize=9, color="white" if dark else "black"
            )
        ax.set(
            xticks=range(10), yticks=range(10), xlabel="predicted digit", ylabel="true digit", title=f"{title}: {what}"
        )
    return fig


def learning_curves_figure(history: list[dict[str, float]]) -> Figure:
    """Loss and accuracy by epoch, train and validation (fixed margins: 60% of the time of a
    constrained layout)."""
    fig = Figure(figsize=(12, 4.5))
    fig.subplots_adjust(left=0.06, right=0.99, bottom=0.12, top=0.93, wspace=0.18)
    for ax, metric in zip(fig.subplots(1, 2), ("loss", "acc"), strict=True):
        for split in ("train", "val"):
            points = [(h["epoch"], h[f"{split}/{metric}"]) for h in history if f"{split}/{metric}" in h]
            ax.plot(*zip(*points, strict=True), marker="o", ms=3, label=split)
        ax.set(
            xlabel="epoch",
            ylabel={"loss": "cross-entropy", "acc": "accuracy"}[metric],
            title={"loss": "Loss", "acc": "Accuracy"}[metric],
        )
        ax.grid(alpha=0.3)
        ax.legend()
    return fig


def misclassified_figure(
    images: torch.Tensor, labels: torch.Tensor, preds: torch.Tensor, confidence: torch.Tensor, limit: int = 40
) -> Figure:
    """The most confidently wrong test digits, each captioned true→predicted (confidence).

    One mosaic image in one axes: an axes per digit would take seconds to draw."""
    wrong = (preds != labels).nonzero().flatten()
    wrong = wrong[confidence[wrong].argsort(descending=True)][:limit].tolist()
    cols, cell, caption = 10, 28, 12  # pixels: tile side, and caption strip above each tile
    rows = max(1, -(-len(wrong) // cols))
    mosaic = torch.zeros(rows * (cell + caption), cols * cell)
    fig = Figure(figsize=(cols * 1.3, rows * 1.55 + 0.5))
    ax = fig.add_axes((0.01, 0.01, 0.98, 1 - 0.02 - 0.45 / (rows * 1.55 + 0.5)))  # the title's 0.45 inch above
    for n, i in enumerate(wrong):
        r, c = divmod(n, cols)
        top = r * (cell + caption) + caption
        mosaic[top : top + cell, c * cell : (c + 1) * cell] = images[i].float() / 255
        ax.text(
            c * cell + cell / 2,
            top - 2,
            f"{int(labels[i])}→{int(preds[i])} ({float(confidence[i]):.2f})",
            ha="center",
            va="bottom",
            fontsize=9,
        )
    ax.imshow(mosaic, cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
    ax.axis("off")
    total = int((preds != labels).sum())
    ax.set_title(f"Misclassified test digits, most confident first: true→predicted (confidence); {total} in all")
    return fig
