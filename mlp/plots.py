"""Figures of a run: confusion matrix, learning curves, misclassified digits."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # files only; no display needed

import matplotlib.pyplot as plt  # noqa: E402
import seaborn as sns  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402


def confusion_matrix_figure(cm: torch.Tensor, title: str = "Test set") -> Figure:
    """Counts on the left, rows normalised to 1 (recall per class) on the right."""
    counts = cm.numpy()
    rates = counts / counts.sum(axis=1, keepdims=True).clip(min=1)
    fig, axes = plt.subplots(1, 2, figsize=(15, 6.5), layout="constrained")
    sns.heatmap(counts, annot=True, fmt="d", cmap="Blues", cbar=False, square=True, ax=axes[0])
    sns.heatmap(
        rates, annot=True, fmt=".2f", cmap="Blues", vmin=0, vmax=1, square=True, ax=axes[1], annot_kws={"fontsize": 8}
    )
    for ax, what in zip(axes, ("counts", "row-normalised (recall)"), strict=True):
        ax.set(xlabel="predicted digit", ylabel="true digit", title=f"{title}: {what}")
    return fig


def learning_curves_figure(history: list[dict[str, float]]) -> Figure:
    """Loss and accuracy by epoch, train and validation."""
    epochs = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), layout="constrained")
    for ax, metric in zip(axes, ("loss", "acc"), strict=True):
        for split in ("train", "val"):
            ax.plot(epochs, [h[f"{split}/{metric}"] for h in history], marker="o", ms=3, label=split)
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
    fig, ax = plt.subplots(figsize=(cols * 1.3, rows * 1.55 + 0.5), layout="constrained")
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
