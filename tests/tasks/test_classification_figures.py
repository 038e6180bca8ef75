"""The test-set figures of classification: the predictions grid drawn as one picture of tiles."""

from __future__ import annotations

import matplotlib
import numpy as np
import torch

from cnnlab.figures.classification import predictions_figure

matplotlib.use("Agg")


def test_the_predictions_grid_shows_each_image_under_its_title() -> None:
    generator = torch.Generator().manual_seed(0)
    samples = [(torch.rand(1, 8, 8, generator=generator), k % 3, 0) for k in range(10)]
    fig = predictions_figure(samples, ["cat", "dog", "owl"], {})
    (ax,) = fig.axes
    texts = [t.get_text() for t in ax.texts]
    assert texts == [f"{['cat', 'dog', 'owl'][k % 3]} (cat)" for k in range(10)]
    colours = [matplotlib.colors.to_hex(t.get_color()) for t in ax.texts]
    assert colours == [matplotlib.colors.to_hex("green" if k % 3 == 0 else "red") for k in range(10)]
    (shown,) = ax.get_images()
    canvas = np.asarray(shown.get_array())
    assert canvas.shape == (2 * (2 + 8), 8 * (1 + 8))  # 8 columns, 2 rows; a 2 px title band, 1 px gaps
    for k, (image, _, _) in enumerate(samples):
        top, left = (k // 8) * 10 + 2, (k % 8) * 9
        np.testing.assert_allclose(canvas[top : top + 8, left : left + 8], image[0].numpy(), atol=1e-6)
    # each title sits just above its tile
    for k, text in enumerate(ax.texts):
        x, y = text.get_position()
        assert (k % 8) * 9 <= x <= (k % 8) * 9 + 9 and y < (k // 8) * 10 + 2
