"""A classifier's penultimate features of its test split, projected to 2-D (PCA and t-SNE)."""

from __future__ import annotations

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from cnnlab import checkpoints
from cnnlab.errors import ConfigError
from cnnlab.visualize.inside import Loaded


def test_features(loaded: Loaded, limit: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Up to ``limit`` test images' pooled last-stage features (N, D), true labels and predicted labels."""
    net = loaded.net
    if loaded.contract.get("task") != "classification" or not hasattr(net, "forward_features"):
        raise ConfigError(
            f"embedding shows a classifier's features; {loaded.checkpoint} is a "
            f"{loaded.contract.get('task')} model"
        )
    saved = OmegaConf.create(checkpoints.run_config(checkpoints.read_checkpoint(loaded.checkpoint)))
    datamodule = instantiate(saved.data, _partial_=True)(augmentation=None, spec=loaded.task.samples)
    datamodule.prepare_data()
    datamodule.setup("test")
    found, truth, guessed, seen = [], [], [], 0
    with torch.no_grad():
        for images, labels in datamodule.test_dataloader():
            maps = net.forward_features(images)
            pooled = maps.mean(dim=(2, 3)) if maps.dim() == 4 else maps.flatten(1)
            found.append(pooled)
            truth.append(labels)
            guessed.append(net.forward_head(maps).argmax(1))
            seen += len(labels)
            if seen >= limit:
                break
    cat = [torch.cat(part)[:limit].numpy() for part in (found, truth, guessed)]
    return cat[0], cat[1], cat[2]


def project(values: np.ndarray, method: str, seed: int = 0) -> np.ndarray:
    """(N, D) features as (N, 2) points: ``pca`` or ``tsne`` (scikit-learn)."""
    if len(values) < 3:
        raise ConfigError(f"{len(values)} test images: a projection needs at least 3")
    if method == "pca":
        from sklearn.decomposition import PCA

        return PCA(n_components=2, random_state=seed).fit_transform(values)
    from sklearn.manifold import TSNE

    perplexity = min(30.0, (len(values) - 1) / 3)  # t-SNE needs fewer neighbours than points
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(values)


def figure(points: dict[str, np.ndarray], truth: np.ndarray, guessed: np.ndarray, names: list[str]):  # noqa: ANN201
    """One scatter per projection, coloured by true class, misclassified points ringed in black."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(points), figsize=(5.5 * len(points), 5), squeeze=False)
    colours = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    wrong = truth != guessed
    for ax, (method, xy) in zip(axes[0], points.items(), strict=True):
        for k, name in enumerate(names):
            mine = truth == k
            ax.scatter(*xy[mine].T, s=12, color=colours(k % colours.N), label=name)
        ax.scatter(*xy[wrong].T, s=40, facecolors="none", edgecolors="black", linewidths=0.8, label="wrong")
        ax.set_title(
            f"{method.upper()}: {len(xy)} test images, {int(wrong.sum())} misclassified", fontsize=10
        )
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0][-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5), markerscale=1.5)
    fig.tight_layout()
    return fig
