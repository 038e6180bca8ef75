"""End-of-run pictures in TensorBoard: the first layer's filters and CAM overlays of a few validation images.

Off by default (``'callbacks=[default,visualize]'``); the course's classification recipes turn it on. The same
pictures, for any checkpoint and image, come from ``cnnlab-visualize``.
"""

from __future__ import annotations

import lightning.pytorch as L
import torch
from torchvision.utils import make_grid

from cnnlab.errors import ConfigError
from cnnlab.figures import denormalize, tensorboard


class EndOfRunPictures(L.Callback):
    """When fitting ends: ``visualize/filters`` and, for classifiers, ``visualize/cam`` of ``num_images``."""

    def __init__(self, num_images: int = 4, method: str = "gradcam") -> None:
        from cnnlab.visualize.inside import METHODS

        if method not in METHODS:
            raise ValueError(f"callbacks.visualize.method={method}: choose one of {', '.join(METHODS)}")
        if num_images < 0:
            raise ValueError(f"callbacks.visualize.num_images={num_images}: give a number of images >= 0")
        self.num_images, self.method = num_images, method

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        writer = tensorboard(trainer)
        if writer is None or not trainer.is_global_zero or trainer.interrupted:
            return
        from cnnlab.visualize import inside

        try:
            tiles = inside.filter_tiles(inside.first_filters(pl_module.net).float())
        except ConfigError:  # no convolution (an MLP): no filters to show
            tiles = []
        step = trainer.global_step
        if tiles:
            grid = make_grid([torch.from_numpy(t).permute(2, 0, 1) for t in tiles], nrow=8, padding=1)
            writer.add_image("visualize/filters", _enlarged(grid, 12), step)
        if pl_module.contract.get("task") == "classification" and self.num_images:
            overlays = self._cams(trainer, pl_module)
            if overlays:
                writer.add_image("visualize/cam", make_grid(overlays, nrow=len(overlays), padding=2), step)

    def _cams(self, trainer: L.Trainer, pl_module: L.LightningModule) -> list[torch.Tensor]:
        from cnnlab.serving import draw
        from cnnlab.visualize.inside import Loaded, cam

        images = next(iter(trainer.datamodule.val_dataloader()))[0][: self.num_images]
        contract = dict(pl_module.contract)
        loaded = Loaded(pl_module, contract, trainer.default_root_dir, None)
        was_training = pl_module.training
        frozen = [p for p in pl_module.parameters() if not p.requires_grad]
        pl_module.eval().requires_grad_(True)  # frozen stages too: the map needs their gradients
        overlays = []
        try:
            with torch.inference_mode(False), torch.enable_grad():
                for image in images.to(pl_module.device):
                    values, _ = cam(loaded, image[None], None, self.method)
                    shown = denormalize(image.cpu(), contract.get("mean"), contract.get("std"))
                    picture = draw.heat(draw.rgb(shown.permute(2, 0, 1)), values)
                    overlays.append(_enlarged(torch.from_numpy(picture).permute(2, 0, 1), 4))
        finally:
            for p in frozen:
                p.requires_grad_(False)
            pl_module.train(was_training)
        return overlays


def _enlarged(picture: torch.Tensor, times: int) -> torch.Tensor:
    """A small picture (C, h, w) enlarged by whole pixels: 3x3 filters and 16 px digits, visible."""
    return picture.repeat_interleave(times, -2).repeat_interleave(times, -1)
