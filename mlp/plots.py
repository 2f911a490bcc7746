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
    sns.heatmap(rates, annot=True, fmt=".2f", cmap="Blues", vmin=0, vmax=1, square=True, ax=axes[1],
                annot_kws={"fontsize": 8})
    for ax, what in zip(axes, ("counts", "row-normalised (recall)")):
        ax.set(xlabel="predicted digit", ylabel="true digit", title=f"{title}: {what}")
    return fig


def learning_curves_figure(history: list[dict[str, float]]) -> Figure:
    """Loss and accuracy by epoch, train and validation."""
    epochs = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), layout="constrained")
    for ax, metric in zip(axes, ("loss", "acc")):
        for split in ("train", "val"):
            ax.plot(epochs, [h[f"{split}/{metric}"] for h in history], marker="o", ms=3, label=split)
        ax.set(xlabel="epoch", ylabel={"loss": "cross-entropy", "acc": "accuracy"}[metric],
               title={"loss": "Loss", "acc": "Accuracy"}[metric])
        ax.grid(alpha=0.3)
        ax.legend()
    return fig


def misclassified_figure(
    images: torch.Tensor, labels: torch.Tensor, preds: torch.Tensor, confidence: torch.Tensor, limit: int = 40
) -> Figure:
    """The most confidently wrong test digits, each titled true -> predicted (confidence)."""
    wrong = (preds != labels).nonzero().flatten()
    wrong = wrong[confidence[wrong].argsort(descending=True)][:limit]
    cols = 10
    rows = max(1, -(-len(wrong) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.4, rows * 1.65 + 0.6), squeeze=False, layout="constrained")
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, wrong.tolist()):
        ax.imshow(images[i].cpu(), cmap="gray_r")
        ax.set_title(f"{int(labels[i])}→{int(preds[i])} ({float(confidence[i]):.2f})", fontsize=9)
    fig.suptitle(f"Misclassified test digits: true→predicted (confidence); {int((preds != labels).sum())} in all")
    return fig
